"""PostgreSQL for real: two `python -m search.run` workers (real subprocesses) share one study on a real server,
and no command ever shows a storage URL's password.

The server: `VLMC_TEST_POSTGRES_URL` (`.ci/run` starts a throwaway cluster with `.ci/postgres start DIR` and
sets it). Without it the server tests skip locally and FAIL under CI=true, so CI cannot silently skip them.
The password tests that need no server (an unreachable one) run everywhere.
"""

from __future__ import annotations

import importlib
import logging
import os
import time
import traceback
import uuid

import optuna
import pytest
from optuna.trial import TrialState

from ledger.records import REFERENCE
from ledger.rules import FINISHED
from ledger.storage import mask_password
from tests.search.conftest import run_workers

URL_VAR = "VLMC_TEST_POSTGRES_URL"
SECRET = "s3cret-Pa55word"
# Nothing listens on port 9 (discard) of 127.0.0.1: connecting fails at once.
UNREACHABLE = f"postgresql://vlmc:{SECRET}@127.0.0.1:9/vlmc_test"


@pytest.fixture(scope="module")
def postgres_url() -> str:
    url = os.environ.get(URL_VAR)
    if not url:
        message = (
            f"no PostgreSQL server: set {URL_VAR}=postgresql://USER:PASSWORD@HOST:PORT/DB "
            "(`.ci/postgres start DIR` starts a throwaway one and prints its URL)"
        )
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{message}; CI must run this test, not skip it (.ci/run sets it up)")
        pytest.skip(message)
    return url


@pytest.fixture
def study_name(postgres_url):
    """A fresh study name in the shared database, deleted afterwards."""
    name = f"tiny-{uuid.uuid4().hex[:8]}"
    yield name
    try:
        optuna.delete_study(study_name=name, storage=postgres_url)
    except KeyError:
        pass


def _password(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).password or ""


def _cli(module: str, args: list[str], capsys, caplog) -> tuple[int | None, str]:
    """Run `python -m module args` in this process: (its exit status, or None when it raised; everything it
    printed and logged, a traceback included)."""
    caplog.clear()
    capsys.readouterr()
    text = ""
    with caplog.at_level(logging.DEBUG):
        try:
            code = importlib.import_module(module).main(args)
        except SystemExit as exit_:
            code = exit_.code
        except Exception as err:  # what a user would see is what is checked
            code, text = None, "".join(traceback.format_exception(err))
    captured = capsys.readouterr()
    return code, captured.out + captured.err + caplog.text + text


def test_two_workers_share_one_study_on_postgres(
    world, postgres_url, study_name, tmp_path, monkeypatch, capsys, caplog
):
    toml = world.toml(tmp_path, name=study_name)
    logs = run_workers(toml, postgres_url, 12, tmp_path, 2)

    trials = optuna.load_study(study_name=study_name, storage=postgres_url).trials
    finished = sum(t.state in FINISHED for t in trials)
    # As on SQLite (tests/search/test_robustness.py): each worker counts the other's running trial towards
    # the target; one over stays possible when both start a trial at the same moment one short of it.
    assert 12 <= finished <= 13, finished
    assert sorted(t.number for t in trials) == list(range(len(trials))), "a trial number lost or doubled"
    assert not [t.number for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    references = [t.user_attrs[REFERENCE] for t in trials if REFERENCE in t.user_attrs]
    assert len(references) == len(set(references)) == 6, references  # each enqueued config run once
    configs = [str(sorted(t.params.items())) for t in trials if REFERENCE in t.user_attrs]
    assert len(configs) == len(set(configs))
    password = _password(postgres_url)
    for log in logs:
        assert password not in log.read_text(), f"{log.name} shows the storage password"

    # The readers, on the same study: promote, the report (its page and tables), and their logs.
    monkeypatch.chdir(tmp_path)
    for module, extra in (("distill.promote", []), ("reports.build", ["--out", "report"])):
        code, output = _cli(module, ["--study", str(toml), "--storage", postgres_url, *extra], capsys, caplog)
        assert code == 0, output[-3000:]
        assert password not in output, f"{module} shows the storage password"
    for path in (tmp_path / "report").iterdir():
        assert password not in path.read_text(errors="replace"), f"{path.name} shows the storage password"


@pytest.mark.parametrize("module", ["distill.promote", "distill.finalize", "reports.build"])
def test_a_study_missing_from_postgres_is_named_without_the_password(
    module, world, postgres_url, tmp_path, monkeypatch, capsys, caplog
):
    monkeypatch.chdir(tmp_path)
    toml = world.toml(tmp_path, name=f"absent-{uuid.uuid4().hex[:8]}")
    args = ["--study", str(toml), "--storage", postgres_url]
    extra = ["--trial", "best"] if module == "distill.finalize" else []
    code, output = _cli(module, args + extra, capsys, caplog)
    assert code != 0
    assert "absent-" in output and mask_password(postgres_url) in output, output[-2000:]
    assert _password(postgres_url) not in output


@pytest.mark.parametrize(
    "module, extra",
    [
        ("search.run", ["--trials", "1"]),
        ("distill.promote", []),
        ("distill.finalize", ["--trial", "best"]),
        ("reports.build", []),
    ],
)
def test_an_unreachable_server_is_named_without_the_password(
    module, extra, world, tmp_path, monkeypatch, capsys, caplog
):
    monkeypatch.chdir(tmp_path)
    toml = world.toml(tmp_path)
    code, output = _cli(module, ["--study", str(toml), "--storage", UNREACHABLE, *extra], capsys, caplog)
    assert code != 0
    assert SECRET not in output, output[-2000:]
    assert mask_password(UNREACHABLE) in output, output[-2000:]


def test_a_wrong_password_fails_at_once_in_one_line_without_it(
    world, postgres_url, tmp_path, monkeypatch, capsys, caplog
):
    """A real server refusing the login: one line, exit 2, no retries, neither password shown."""
    from sqlalchemy.engine import make_url

    monkeypatch.chdir(tmp_path)
    wrong = make_url(postgres_url).set(password="not-the-password-" + uuid.uuid4().hex[:6])
    url = wrong.render_as_string(hide_password=False)
    toml = world.toml(tmp_path)
    start = time.monotonic()
    code, output = _cli(
        "search.run", ["--study", str(toml), "--storage", url, "--trials", "1"], capsys, caplog
    )
    assert code == 2 and time.monotonic() - start < 20
    assert "password authentication failed" in output or "authentication" in output, output[-2000:]
    assert wrong.password not in output and _password(postgres_url) not in output
    assert mask_password(url) in output
