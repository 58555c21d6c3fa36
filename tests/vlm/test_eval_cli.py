"""`python -m vlm.eval` on the tiny world: a fixed-seed subset, predictions in the leaderboard format."""

from __future__ import annotations

import json

from tests.tiny_world import build_tiny_world
from vlm.eval import main


def test_eval_cli_subset_is_seeded_and_writes_leaderboard_file(tmp_path, capsys):
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
    first = main([*args, "--direct-answer"])
    ids_first = set(json.loads(out.read_text()))
    second = main(args)
    assert set(json.loads(out.read_text())) == ids_first and len(ids_first) == 10
    assert first["mcq"]["n"] == 10 and first["mcq"]["accuracy"] == second["mcq"]["accuracy"]
    assert 0 <= first["mcq"]["ci_low"] <= first["mcq"]["accuracy"] <= first["mcq"]["ci_high"] <= 1
    entry = next(iter(json.loads(out.read_text()).values()))
    assert set(entry) == {"multiple_choice"}
    assert (tmp_path / "preds_summary.json").is_file()
    other_seed = [*args[:7], "4", "--out", str(tmp_path / "other.json")]  # same size, seed 4
    main(other_seed)
    assert set(json.loads((tmp_path / "other.json").read_text())) != ids_first
