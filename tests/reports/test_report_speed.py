"""Measured speed in the report: finalized records with a `speed` entry (as `distill.finalize` writes it)
become FLOP reduction beside measured speed-up in the data, the tables and the page."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from reports import data, figures
from reports.build import main
from reports.page import display_finalized, display_speed, display_summary
from tests.reports.conftest import NAME, RATIO, make_study

# trial -> (teacher latency s, student latency s, teacher GFLOPs, student GFLOPs) on the timed questions
TIMED = {1: (1.0, 0.8, 100.0, 50.0), 2: (1.0, 0.25, 100.0, 18.0)}  # trial 4 was finalized before timing


def _speed(teacher_s: float, student_s: float, teacher_gflops: float, gflops: float) -> dict:
    return {
        "device": "cpu",
        "device_name": "Test CPU",
        "dtype": "float32",
        "threads": 2,
        "latency_s": student_s,
        "teacher_latency_s": teacher_s,
        "throughput_qps": 8 / student_s,
        "memory_bytes": 300 * 2**20,
        "teacher_memory_bytes": 500 * 2**20,
        "gflops": gflops,
        "teacher_gflops": teacher_gflops,
        "speedup": teacher_s / student_s,
        "flop_reduction": teacher_gflops / gflops,
    }


def timed_study(storage=None):
    study = make_study(storage)
    for number, numbers in TIMED.items():
        record = dict(study.user_attrs[f"finalized:{number}"], speed=_speed(*numbers))
        study.set_user_attr(f"finalized:{number}", record)
    return study


def test_speed_frame_puts_measured_speedup_beside_flop_reduction():
    report = data.report_data(timed_study(), RATIO)
    speed = report.speed
    assert list(speed["trial"]) == [1, 2]  # least FLOP reduction first; trial 4 has no timing
    row = speed.set_index("trial").loc[2]
    assert row["flop_reduction_x"] == pytest.approx(100 / 18)
    assert row["speedup_x"] == pytest.approx(4.0)
    assert row["speedup_per_flop_reduction"] == pytest.approx(4.0 / (100 / 18))
    assert row["speed_device"] == "Test CPU (cpu, 2 threads, float32)"
    finalized = report.finalized.set_index("trial")
    assert finalized.loc[1, "latency_ms"] == pytest.approx(800.0)
    assert finalized.loc[1, "teacher_memory_mb"] == pytest.approx(500.0)
    assert math.isnan(finalized.loc[4, "speedup_x"])  # a record from before timing keeps its other columns
    summary = report.summary.set_index("number")
    assert summary.loc[1, "speedup_x"] == pytest.approx(1.25) and math.isnan(summary.loc[0, "speedup_x"])


def test_tables_show_both_and_the_figure_has_the_diagonal():
    report = data.report_data(timed_study(), RATIO)
    shown = display_finalized(report.finalized).set_index("trial")
    assert (shown.loc[2, "FLOP reduction"], shown.loc[2, "measured speed-up"]) == ("5.56x", "4.00x")
    assert shown.loc[4, "measured speed-up"] == ""
    assert display_speed(report.speed).set_index("trial").loc[1, "speed-up / FLOP reduction"] == "0.62"
    assert "measured speed-up" in display_summary(report.summary).columns
    fig = figures.speedup_figure(report.speed)
    diagonal, points = fig.data
    assert list(diagonal.x) == list(diagonal.y)  # y = x
    assert list(points.x) == pytest.approx([2.0, 100 / 18]) and list(points.y) == pytest.approx([1.25, 4.0])
    assert figures.speedup_figure(data.report_data(make_study(), RATIO).speed) is None  # nothing timed


def test_page_and_speed_table(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    timed_study(url)
    toml = tmp_path / f"{NAME}.toml"
    toml.write_text(f'name = "{NAME}"\n[search]\nconstraint_ratio = {RATIO}\n')
    assert main(["--study", str(toml), "--storage", url, "--out", str(tmp_path / "out")]) == 0
    page = (tmp_path / "out" / "index.html").read_text()
    assert "Measured speed-up vs FLOP reduction" in page and "figure-speed" in page
    table = pd.read_csv(tmp_path / "out" / "speed.csv")
    assert list(table["trial"]) == [1, 2] and table["speedup_x"].tolist() == pytest.approx([1.25, 4.0])
