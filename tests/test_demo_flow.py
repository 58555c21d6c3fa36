"""benchmarks.demo_flow on the tiny world: the whole flow as separate processes, then resumed."""

from __future__ import annotations

import json

from benchmarks.demo_flow import _move_aside, main
from ledger.records import read_finalized, read_promoted
from ledger.storage import load_existing_study
from tests.tiny_world import make_tiny_world, tiny_study_toml


def test_the_flow_searches_promotes_finalizes_reports_and_resumes(tmp_path, monkeypatch):
    world = make_tiny_world(tmp_path / "world")
    toml = tiny_study_toml(tmp_path, "flow", world.teacher, world.data, trials=6)
    monkeypatch.setenv("VLMC_HOME", str(tmp_path))  # the steps' processes put the study under it
    monkeypatch.chdir(tmp_path)
    results = tmp_path / "results"
    # Trial 99 does not exist: it is left out with a warning, not a failed finalize that blocks every rerun.
    args = ["--study", str(toml), "--trials", "6", "--also", "0", "99", "--no-png", "--out", str(results)]
    assert main(args) == 0

    study = load_existing_study("flow", f"sqlite:///{tmp_path / 'studies' / 'flow.db'}", read_only=True)
    promoted = {p.trial for p in read_promoted(study)}
    summary = json.loads((results / "demo_flow_flow.json").read_text())
    assert {r["trial"] for r in summary["finalized"]} == promoted | {0} == set(read_finalized(study))
    assert [s["step"] for s in summary["steps"]][:2] == ["search", "promote"]
    assert (tmp_path / "out" / "reports" / "flow" / "index.html").is_file()
    assert "Post hoc -> distilled: " in (results / "demo_flow_flow.md").read_text()

    # Run again: the study is complete and every trial finalized, so only search (a no-op), promote and the
    # report run.
    assert main(args) == 0
    again = json.loads((results / "demo_flow_flow.json").read_text())
    assert [s["step"] for s in again["steps"]] == ["search", "promote", "report"]
    assert again["finalized"] == summary["finalized"]


def test_fresh_moves_the_study_aside_and_deletes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("VLMC_HOME", str(tmp_path))
    toml = tmp_path / "aside.toml"
    toml.write_text('name = "aside"\n')
    (tmp_path / "studies" / "aside").mkdir(parents=True)
    (tmp_path / "studies" / "aside" / "kept.txt").write_text("x")
    (tmp_path / "studies" / "aside.db").write_text("db")
    _move_aside(str(toml))
    moved = sorted(p.name for p in (tmp_path / "studies").iterdir())
    assert len(moved) == 2 and all(".bak" in name for name in moved), moved
    folder = next(p for p in (tmp_path / "studies").iterdir() if p.is_dir())
    assert (folder / "kept.txt").read_text() == "x"
