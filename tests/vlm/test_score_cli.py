"""`python -m vlm.score` on the tiny world: a fixed-seed subset, predictions in the leaderboard format."""

from __future__ import annotations

import json

from tests.tiny_world import build_tiny_world
from vlm.score import main


def test_score_cli_subset_is_seeded_and_writes_leaderboard_file(tmp_path, capsys):
    teacher, data = build_tiny_world(tmp_path)
    out = tmp_path / "preds.json"
    args = [
        "--model",
        str(teacher),
        "--data",
        str(data),
        "--max-samples",
        "10",
        "--seed",
        "3",
        "--out",
        str(out),
    ]
    summary = tmp_path / "preds_summary.json"
    assert main([*args, "--direct-answer"]) == 0
    first = json.loads(summary.read_text())
    ids_first = set(json.loads(out.read_text()))
    assert main(args) == 0
    second = json.loads(summary.read_text())
    assert set(json.loads(out.read_text())) == ids_first and len(ids_first) == 10
    assert first["mcq"]["n"] == 10 and first["mcq"]["accuracy"] == second["mcq"]["accuracy"]
    assert 0 <= first["mcq"]["ci_low"] <= first["mcq"]["accuracy"] <= first["mcq"]["ci_high"] <= 1
    entry = next(iter(json.loads(out.read_text()).values()))
    assert set(entry) == {"multiple_choice"}
    other_seed = [*args[:7], "4", "--out", str(tmp_path / "other.json")]  # same size, seed 4
    main(other_seed)
    assert set(json.loads((tmp_path / "other.json").read_text())) != ids_first


def test_eval_demo_world_offline_writes_nothing_in_the_working_folder(tmp_path, monkeypatch, capsys):
    """`--model demo --data demo` works without the hub; the default output goes under evals/, not `.`."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("VLMC_HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    assert main(["--model", "demo", "--data", "demo", "--max-samples", "8"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["mcq"]["n"] == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == [".cache", "evals"]
    assert sorted(p.name for p in (tmp_path / "evals").iterdir()) == [
        "demo-validation.json",
        "demo-validation_summary.json",
    ]


def test_eval_hub_id_offline_fails_at_once_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("VLMC_HOME", str(tmp_path))
    assert main(["--model", "some-org/not-a-model", "--data", "demo"]) == 2
    (error,) = capsys.readouterr().err.strip().splitlines()
    assert error.startswith("vlm.score: error: --model 'some-org/not-a-model'") and "--model demo" in error
