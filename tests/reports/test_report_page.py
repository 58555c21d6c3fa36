"""`python -m reports.build` end to end on the hand-built study: the files, and the page rendered by headless
Chromium without script errors (skipped where Chromium is missing; `.ci/run` installs it).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import optuna
import pandas as pd
import pytest

from reports.build import main
from reports.page import chromium_binary, chromium_command
from tests.reports.conftest import NAME, RATIO, make_study

TABLES = ("summary", "finalized", "importances", "trials")


def _study_toml(root: Path) -> Path:
    path = root / f"{NAME}.toml"
    path.write_text(f'name = "{NAME}"\n[search]\nconstraint_ratio = {RATIO}\n')
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> tuple[Path, str]:
    """(study TOML, storage URL) of the hand-built study in SQLite."""
    root = tmp_path_factory.mktemp("report")
    url = f"sqlite:///{root / 'study.db'}"
    make_study(url)
    return _study_toml(root), url


@pytest.fixture(scope="module")
def out(world, tmp_path_factory) -> Path:
    toml, url = world
    out = tmp_path_factory.mktemp("out")
    assert main(["--study", str(toml), "--storage", url, "--out", str(out)]) == 0
    return out


def _chromium() -> str:
    binary = chromium_binary()
    if binary is None:
        pytest.skip("chromium is not installed (.ci/run installs it: apt-get install -y chromium)")
    return binary


def test_files_are_written(out):
    assert (out / "index.html").is_file()
    for name in TABLES:
        assert (out / f"{name}.csv").is_file() and (out / f"{name}.md").is_file()
    assert (out / "hypervolume.csv").is_file()
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temporary files behind


def test_tables_hold_the_study(out):
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary["number"]) == [4, 2, 1, 0]
    assert list(summary["role"]) == ["finalized", "pareto, finalized", "pareto, finalized", "pareto"]
    markdown = (out / "summary.md").read_text()
    assert markdown.startswith("| trial | role |")
    assert "0.750 [0.720, 0.780]" in markdown and "0.780 [0.750, 0.810]" in markdown
    trials = pd.read_csv(out / "trials.csv")
    assert len(trials) == 9 and set(trials["state"]) == {"COMPLETE", "PRUNED", "FAIL"}
    assert len(pd.read_csv(out / "hypervolume.csv")) == 9


def test_page_is_self_contained_and_states_the_settings(out):
    page = (out / "index.html").read_text()
    scripts = re.findall(r"<script\b[^>]*>", page)
    assert scripts and not any("src=" in tag for tag in scripts)  # nothing fetched: it opens offline
    assert "plotly.js v" in page and len(page) > 1_000_000  # plotly.js is inline
    assert "2 FLOPs per multiply-add (test convention)" in page
    assert "accuracy &gt;= 0.85·X = 0.680" in page
    assert "X = 0.800 [0.770, 0.830] on 500 questions" in page
    assert "not shown: 3 finalized trials, a rank correlation needs at least 5" in page
    # It opens with the answer: the cheapest feasible trial post hoc and after distillation.
    answer = re.search(r"<p id='answer'[^>]*><b>(.*?)</b></p>", page).group(1)
    assert answer.startswith("Cheapest config keeping 0.85·X = 0.680") and "post hoc, trial #" in answer
    assert "after distillation, trial #" in answer and "validation questions" in answer
    assert "skipped: 7 complete trials" in page  # too few for importances: said, not plotted


def test_page_renders_in_chromium(out, tmp_path):
    binary = _chromium()
    page = out / "index.html"
    command = chromium_command(
        binary, tmp_path / "profile", "--enable-logging=stderr", "--v=0", "--dump-dom", page.as_uri()
    )
    done = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    dom, log = done.stdout, done.stderr
    figures = page.read_text().count('class="plotly-graph-div"')
    assert figures == 4  # Pareto, post-hoc vs distilled, parameters, hypervolume (no importances)
    assert dom.count('class="plot-container plotly"') == figures  # every figure was drawn ...
    assert dom.count('class="main-svg"') >= figures  # ... as SVG
    errors = [
        line
        for line in log.splitlines()
        if "Uncaught" in line or "ERROR:CONSOLE" in line or (":CONSOLE" in line and "Error" in line)
    ]
    assert not errors, "\n".join(errors)
    assert "constrained Pareto front (3)" in dom  # the legend, drawn from the data
    assert "distilled, on all " in dom and "validation questions (3)" in dom
    assert "#2: " in dom  # front points carry their trial number and config


def test_png_flag_renders_the_pareto_plot(world, tmp_path):
    _chromium()
    toml, url = world
    png = tmp_path / "pareto.png"
    assert main(["--study", str(toml), "--storage", url, "--out", str(tmp_path), "--png", str(png)]) == 0
    data = png.read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 10_000


def test_a_study_without_baseline_is_an_error(tmp_path):
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    optuna.create_study(study_name=NAME, storage=url, directions=["minimize", "maximize"])
    assert main(["--study", str(_study_toml(tmp_path)), "--storage", url, "--out", str(tmp_path)]) == 2


def test_a_study_with_a_baseline_but_no_trials_still_builds(tmp_path):
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    study = optuna.create_study(study_name=NAME, storage=url, directions=["minimize", "maximize"])
    study.set_user_attr("baseline", {"accuracy": 0.8, "ci_low": 0.7, "ci_high": 0.9, "n": 10, "gflops": 5.0})
    out = tmp_path / "out"
    assert main(["--study", str(_study_toml(tmp_path)), "--storage", url, "--out", str(out)]) == 0
    page = (out / "index.html").read_text()
    assert "not shown: 0 finalized trials" in page and "skipped: 0 complete trials" in page
