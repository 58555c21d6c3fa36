"""Bad input to the search gives one clear line and a non-zero exit, before any expensive work where it can
be checked up front: wrong study config values, a bad --storage, a search space the teacher cannot meet,
a run where every trial fails. And a reader of a busy SQLite study reads, or says what it waits for.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import subprocess
import sys

import optuna
import pytest

import search.objective
from ledger.storage import StorageError, load_existing_study, mask_password, open_storage
from search.run import main
from tests.search.conftest import STUDY, load, run_args, sqlite_url

SECRET = "s3cr3t-pw"


def _error_line(capsys) -> str:
    """The command's stderr, which must be exactly one line."""
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


def _edit(toml, old: str, new: str):
    text = toml.read_text()
    assert old in text
    toml.write_text(text.replace(old, new))
    return toml


# ----- study config values ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "old, new, named",
    [
        ("subset_size = 48", 'subset_size = "many"', "[data] subset_size = 'many': must be a whole number"),
        (
            "token_grid = [1, 8]",
            "token_grid = [1, 8, 9]",
            "[space] token_grid = [1, 8, 9]: must be a list of 2",
        ),
        ("trials = 6", "trials = 6.5", "[search] trials = 6.5: must be a whole number"),
        ('device = "cpu"', "device = cpu", "not valid TOML"),
    ],
    ids=["string-for-int", "three-bounds", "float-for-int", "toml-syntax"],
)
def test_a_bad_toml_value_names_the_file_and_the_key_before_anything_loads(
    old, new, named, world, tmp_path, capsys, caplog
):
    toml = _edit(world.toml(tmp_path), old, new)
    url = sqlite_url(tmp_path / "tiny.db")
    with caplog.at_level(logging.INFO):
        assert main(run_args(toml, url, 3)) == 2
    line = _error_line(capsys)
    assert str(toml) in line and named in line
    assert "loaded" not in caplog.text  # the teacher was never loaded
    assert not (tmp_path / "tiny.db").exists()


@pytest.mark.parametrize(
    "old, new, named",
    [
        (
            "token_grid = [1, 8]",
            "token_grid = [1, 99]",
            "token_grid = [1, 99]: the teacher's views have 8x8 tokens",
        ),
        (
            "view_sizes = [32, 48, 64]",
            "view_sizes = [20, 33]",
            "[20, 33] not a multiple of the teacher's patch size 8",
        ),
    ],
    ids=["token-grid", "view-sizes"],
)
def test_a_space_the_teacher_cannot_meet_is_rejected_before_any_trial(
    old, new, named, world, tmp_path, capsys
):
    toml = _edit(world.toml(tmp_path), old, new)
    url = sqlite_url(tmp_path / "tiny.db")
    assert main(run_args(toml, url, 3)) == 2
    assert named in _error_line(capsys)
    study = load(url)
    assert study.trials == [] and "baseline" not in study.user_attrs  # not even X was measured


def test_a_run_where_every_trial_fails_exits_non_zero(world, tmp_path, monkeypatch, caplog):
    def compress(teacher, compression):
        raise RuntimeError("boom")

    monkeypatch.setattr(search.objective, "compress", compress)
    url = sqlite_url(tmp_path / "tiny.db")
    with caplog.at_level(logging.INFO):
        assert main(run_args(world.toml(tmp_path), url, 3)) == 1
    assert "no trial finished" in caplog.text and "RuntimeError: boom" in caplog.text
    assert not [t for t in load(url).trials if t.state in (optuna.trial.TrialState.COMPLETE,)]


# ----- --storage ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "url, named",
    [
        ("not a url", "is not a database URL"),
        (f"postgresql://user:{SECRET}@localhost:port/db", "the port must be a number"),
        ("sqlite:////proc/no/such/dir/tiny.db", "cannot create the folder /proc/no/such/dir"),
        ("nosuchdb://host/db", "unknown database kind 'nosuchdb'"),
    ],
    ids=["malformed", "port", "unwritable-path", "unknown-kind"],
)
def test_a_bad_storage_url_is_one_line_with_the_password_masked(url, named, world, tmp_path, capsys):
    assert main(run_args(world.toml(tmp_path), url, 3)) == 2
    line = _error_line(capsys)
    assert named in line and SECRET not in line


def test_a_read_only_sqlite_folder_is_named(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(StorageError, match="is not writable"):
            open_storage(sqlite_url(folder / "tiny.db"))
    finally:
        folder.chmod(0o700)


def test_an_unreachable_database_fails_at_once_with_the_password_masked():
    pytest.importorskip("psycopg")  # SQLAlchemy's default PostgreSQL driver
    url = f"postgresql://user:{SECRET}@127.0.0.1:9/db"  # port 9 (discard): nothing listens there
    with pytest.raises(StorageError) as info:
        open_storage(url)
    message = str(info.value)
    assert SECRET not in message and "user:***@127.0.0.1:9" in message
    assert "cannot open the study database" in message and "tries" not in message  # not retried


def test_mask_password_also_masks_urls_that_do_not_parse():
    assert mask_password(f"postgresql://me:{SECRET}@host:xx/db") == "postgresql://me:***@host:xx/db"
    assert mask_password("sqlite:///studies/demo.db") == "sqlite:///studies/demo.db"


# ----- a busy SQLite study --------------------------------------------------------------------------------------
def _study_with_a_baseline(db) -> str:
    url = sqlite_url(db)
    study = optuna.create_study(
        study_name=STUDY, storage=open_storage(url), directions=["minimize", "maximize"]
    )
    study.set_user_attr("baseline", {"accuracy": 0.5, "ci_low": 0.4, "ci_high": 0.6, "n": 48, "gflops": 1.0})
    study.add_trial(optuna.trial.create_trial(values=[0.5, 0.45], params={}, distributions={}))
    return url


def _hold_lock(db, mode: str, seconds: float) -> subprocess.Popen:
    """Another process that takes SQLite's lock on `db` (`IMMEDIATE`: the write lock a search worker holds
    while it writes; `EXCLUSIVE`: what it holds while it commits) and keeps it for `seconds`."""
    code = (
        "import sqlite3, sys, time\n"
        "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        f"c.execute('BEGIN {mode}')\n"
        "c.execute('UPDATE studies SET study_name = study_name')\n"
        "print('locked', flush=True)\n"
        "time.sleep(float(sys.argv[2]))\n"
        "c.execute('COMMIT')\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(db), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_a_reader_reads_while_a_worker_holds_the_write_lock(tmp_path):
    db = tmp_path / "busy.db"
    _study_with_a_baseline(db)
    holder = _hold_lock(db, "IMMEDIATE", 600)
    try:
        study = load_existing_study(STUDY, sqlite_url(db), read_only=True)
        assert study.user_attrs["baseline"]["n"] == 48 and len(study.trials) == 1
        assert holder.poll() is None  # read while the lock was still held, not after it went
        # A writer's storage (BEGIN IMMEDIATE) would wait for that lock: this proves the lock is real.
        probe = sqlite3.connect(db, timeout=0.1, isolation_level=None)
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            probe.execute("BEGIN IMMEDIATE")
        probe.close()
    finally:
        holder.kill()
        holder.wait()


def test_promote_on_a_locked_study_says_what_it_waits_for_then_reads(tmp_path):
    db = tmp_path / "busy.db"
    url = _study_with_a_baseline(db)
    toml = tmp_path / f"{STUDY}.toml"
    toml.write_text(f'name = "{STUDY}"\n')
    holder = _hold_lock(db, "EXCLUSIVE", 4)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "distill.promote", "--study", str(toml), "--storage", url],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        holder.kill()
        holder.wait()
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert f"waiting for the study database {url}" in output, output
    assert "promoted trials" in output
