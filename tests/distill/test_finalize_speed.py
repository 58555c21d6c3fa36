"""`distill.finalize` times the finalized student and the teacher in the same run and records both beside
their counted FLOPs; the report reads the record back (FLOP reduction beside measured speed-up)."""

from __future__ import annotations

import pytest

from distill.finalize import main
from distill.finalizer import SPEED_QUESTIONS
from ledger.records import FINALIZED_PREFIX
from reports.data import report_data


def test_finalize_records_measured_speed_beside_flops(searched):
    assert main(searched.args("best")) == 0
    study = searched.load()
    (key,) = [k for k in study.user_attrs if k.startswith(FINALIZED_PREFIX)]
    speed = study.user_attrs[key]["speed"]

    assert speed["device"] == "cpu" and speed["questions"] == SPEED_QUESTIONS and speed["threads"] >= 1
    for prefix in ("", "teacher_"):
        low, high = speed[f"{prefix}latency_spread_s"]
        assert 0 < low <= speed[f"{prefix}latency_s"] <= high
        assert speed[f"{prefix}throughput_qps"] > 0 and speed[f"{prefix}da_latency_s"] > 0
        assert speed[f"{prefix}memory_bytes"] > 0 and speed[f"{prefix}gflops"] > 0
    assert speed["speedup"] == pytest.approx(speed["teacher_latency_s"] / speed["latency_s"])
    assert speed["flop_reduction"] == pytest.approx(speed["teacher_gflops"] / speed["gflops"])
    # The timed questions are the first of the validation split the record's FLOPs average over: the
    # student needs fewer FLOPs than the teacher on both (the promoted trial is cheaper).
    record = study.user_attrs[key]
    assert (speed["flop_reduction"] > 1) == (record["gflops"] < record["teacher_gflops"])

    timed = report_data(study).speed
    assert list(timed["trial"]) == [record["trial"]]
    assert timed["speedup_x"].iloc[0] == pytest.approx(speed["speedup"])
