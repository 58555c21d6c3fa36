"""The report of a study as files (the library behind `python -m reports.build`).

`build_report` writes `<out>/index.html`: one self-contained page, plotly.js inline so it opens offline.
Beside it, every table of the page as CSV (raw numbers) and Markdown (as shown): `summary` (constrained
Pareto set + finalized trials), `finalized`, `speed`, `importances`, `trials` (all of them), and
`hypervolume.csv`. `render_pareto_png` renders the Pareto plot to a PNG with headless Chromium
(`apt-get install -y chromium`).
"""

from __future__ import annotations

import html
import logging
import math
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
import plotly.offline

from ledger.config import DRY_RUN_SUFFIX, StudyConfig
from ledger.storage import load_existing_study
from reports import figures
from reports.data import ReportData, headline, hypervolume_reference, report_data, state_counts
from vlm.atomic import atomic_file, write_text

logger = logging.getLogger(__name__)

# Headless Chromium, quiet and offline: no first-run work, no background fetches, no QUIC; the virtual time
# budget lets the page's scripts run (and plotly draw) before the DOM is dumped or the screenshot taken.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--virtual-time-budget=5000",
)
PLOT_CONFIG = {"displaylogo": False, "responsive": True}


# ----- files ---------------------------------------------------------------------------------------------------
def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (pandas' `to_markdown` needs `tabulate`, not a dependency here)."""

    def cell(value) -> str:
        text = "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)
        return text.replace("|", "\\|").replace("\n", " ")

    lines = [
        "| " + " | ".join(cell(c) for c in frame.columns) + " |",
        "|" + "|".join("---" for _ in frame.columns) + "|",
    ]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines) + "\n"


# ----- tables as shown -------------------------------------------------------------------------------------------
def _fmt(value, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return format(value, spec)


def _with_interval(value, low, high) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if any(v is None or (isinstance(v, float) and math.isnan(v)) for v in (low, high)):
        return f"{value:.3f}"
    return f"{value:.3f} [{low:.3f}, {high:.3f}]"


def _layers(decoder, encoder) -> str:
    if any(v is None or (isinstance(v, float) and math.isnan(v)) for v in (decoder, encoder)):
        return ""
    return f"{int(decoder)} / {int(encoder)}"


# Two verdicts on two question sets, named so no table seems to contradict another: the search's post-hoc
# accuracy on its subset, and the distilled model's on the whole validation split, each against ratio·X.
POSTHOC_KEEPS = "keeps ratio·X post hoc (search subset)"
DISTILLED_KEEPS = "keeps ratio·X distilled (full validation)"


def display_summary(summary: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "trial": summary["number"],
            "role": summary["role"],
            "reference": summary["reference"],
            "config": summary["config"],
            "GFLOPs": [_fmt(v, ".4g") for v in summary["gflops"]],
            "reduction %": [_fmt(v, ".1f") for v in summary["reduction_pct"]],
            "accuracy [interval]": [
                _with_interval(*v) for v in zip(summary["accuracy"], summary["ci_low"], summary["ci_high"])
            ],
            POSTHOC_KEEPS: ["yes" if v else "no" for v in summary["feasible"]],
            "views": [_fmt(v, ".3g") for v in summary["views"]],
            "image tokens": [_fmt(v, ".4g") for v in summary["image_tokens"]],
            "layers kept (dec / enc)": [
                _layers(*v) for v in zip(summary["decoder_layers_kept"], summary["encoder_layers_kept"])
            ],
            "distilled accuracy [interval]": [
                _with_interval(*v)
                for v in zip(
                    summary["distilled_accuracy"], summary["distilled_ci_low"], summary["distilled_ci_high"]
                )
            ],
            "DA accuracy": [_fmt(v, ".3f") for v in summary["da_accuracy"]],
            "measured speed-up": [_times(v) for v in summary["speedup_x"]],
            **_latency_column(summary),
        }
    )


def _latency_column(frame: pd.DataFrame) -> dict[str, list[str]]:
    """A latency study's objective (latency relative to the teacher), when the trials carry it."""
    if "latency_ratio" not in frame or frame["latency_ratio"].isna().all():
        return {}
    return {"latency vs teacher (search)": [_times(v) for v in frame["latency_ratio"]]}


def _times(value) -> str:
    text = _fmt(value, ".2f")
    return f"{text}x" if text else ""


def display_finalized(finalized: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "trial": finalized["trial"],
            "config": finalized["config"],
            "post-hoc GFLOPs": [_fmt(v, ".4g") for v in finalized["posthoc_gflops"]],
            "post-hoc accuracy (subset)": [_fmt(v, ".3f") for v in finalized["posthoc_accuracy"]],
            "post-hoc accuracy (full val)": [_fmt(v, ".3f") for v in finalized["posthoc_full_accuracy"]],
            "distilled GFLOPs": [_fmt(v, ".4g") for v in finalized["distilled_gflops"]],
            "reduction %": [_fmt(v, ".1f") for v in finalized["distilled_reduction_pct"]],
            "distilled MCQ [interval]": [
                _with_interval(*v)
                for v in zip(
                    finalized["distilled_accuracy"],
                    finalized["distilled_ci_low"],
                    finalized["distilled_ci_high"],
                )
            ],
            "n": finalized["distilled_n"],
            "DA accuracy": [_fmt(v, ".3f") for v in finalized["da_accuracy"]],
            DISTILLED_KEEPS: ["yes" if v else "no" for v in finalized["keeps_constraint"]],
            "FLOP reduction": [_times(v) for v in finalized["flop_reduction_x"]],
            "measured speed-up": [_times(v) for v in finalized["speedup_x"]],
            "latency ms (student / teacher)": [
                f"{_fmt(a, '.4g')} / {_fmt(b, '.4g')}" if _fmt(a, "g") else ""
                for a, b in zip(finalized["latency_ms"], finalized["teacher_latency_ms"])
            ],
            "memory MiB (student / teacher)": [
                f"{_fmt(a, '.0f')} / {_fmt(b, '.0f')}" if _fmt(a, "g") else ""
                for a, b in zip(finalized["memory_mb"], finalized["teacher_memory_mb"])
            ],
        }
    )


def display_speed(speed: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "trial": speed["trial"],
            "config": speed["config"],
            "FLOP reduction": [_times(v) for v in speed["flop_reduction_x"]],
            "measured speed-up": [_times(v) for v in speed["speedup_x"]],
            "speed-up / FLOP reduction": [_fmt(v, ".2f") for v in speed["speedup_per_flop_reduction"]],
            "timed on": speed["speed_device"],
        }
    )


def display_importances(frame: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "objective": frame["objective"],
            "param": frame["param"],
            "importance": [_fmt(v, ".3f") for v in frame["importance"]],
        }
    )


def display_trials(trials: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "trial": trials["number"],
            "state": trials["state"],
            "reference": trials["reference"],
            "config": trials["config"],
            "GFLOPs": [_fmt(v, ".4g") for v in trials["gflops"]],
            "accuracy [interval]": [
                _with_interval(*v) for v in zip(trials["accuracy"], trials["ci_low"], trials["ci_high"])
            ],
            **_latency_column(trials),
            "feasible": ["yes" if v else "" for v in trials["feasible"]],
            "questions": [_fmt(v, ".0f") for v in trials["samples_evaluated"]],
            "stopped early": ["yes" if v else "" for v in trials["stopped_early"]],
            "why not finished": trials["reason"],
        }
    )


# ----- the page ------------------------------------------------------------------------------------------------
def settings_items(data: ReportData) -> list[str]:
    """The study's settings as sentences (plain text)."""
    facts, s = data.facts, data.facts.settings
    model, dataset, search, space = (s.get(k, {}) for k in ("model", "data", "search", "space"))
    counts = state_counts(data.trials)
    items = [
        f"Teacher: {model.get('teacher', '?')} ({model.get('dtype', '?')}); "
        f"{facts.gflops:.4g} GFLOPs per question.",
        f"Data: {dataset.get('source', '?')}, split {dataset.get('split', '?')}; each trial is scored on a "
        f"subset of {dataset.get('subset_size', '?')} questions (seed {dataset.get('subset_seed', '?')}).",
        f"Teacher accuracy X = {facts.accuracy:.3f} [{facts.ci_low:.3f}, {facts.ci_high:.3f}] on "
        f"{facts.n} questions.",
        f"Constraint: accuracy >= {facts.ratio:g}·X = {facts.threshold:.3f} (feasible trials).",
        f"Search: sampler {search.get('sampler', '?')}, seed {search.get('seed', '?')}, "
        f"target {search.get('trials', '?')} trials; early stop {search.get('early_stop', '?')}; "
        f"promotion margin {search.get('promotion_margin', '?')}.",
        "Trials: " + ", ".join(f"{n} {state.lower()}" for state, n in counts.items()) + ".",
    ]
    if facts.latency_cost:
        items.insert(
            4,
            "Cost objective: measured latency (objective "
            f"{facts.objective!r}): each trial's MCQ latency at batch 1 divided by the teacher's, both timed "
            f"in the searching process, median of {search.get('latency_repeats', '?')} paired rounds over "
            f"{search.get('latency_questions', '?')} subset questions after {search.get('latency_warmup', '?')} "
            "warm-up pass(es); GFLOPs are recorded beside it.",
        )
    else:
        items.insert(4, f"Cost objective: counted FLOPs (objective {facts.objective!r}).")
    if space:
        items.append("Search space: " + "; ".join(f"{k} {v}" for k, v in space.items()) + ".")
    return items


def _figure_html(fig: go.Figure | None, div_id: str) -> str:
    if fig is None:
        return ""
    # The div's id must differ from the sections' ids: Plotly finds its div with getElementById.
    return pio.to_html(
        fig, full_html=False, include_plotlyjs=False, div_id=f"figure-{div_id}", config=PLOT_CONFIG
    )


def _table_html(frame: pd.DataFrame) -> str:
    return frame.to_html(index=False, escape=True, na_rep="", border=0, classes="table")


_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1500px; margin: auto; padding: 1em 2em; color: #222; }
h2 { margin-top: 2em; border-bottom: 1px solid #ddd; }
table.table { border-collapse: collapse; font-size: 13px; }
table.table td, table.table th { border: 1px solid #ddd; padding: 3px 6px; }
table.table th { background: #f4f4f4; }
.note { color: #555; }
"""


# A dry run (`python -m dryrun.run`) has a random-weight teacher and generated questions.
DRY_RUN_BANNER = (
    "<p class='note' style='color:#b00;font-size:1.3em'><b>DRY RUN: the teacher has random weights and the "
    "questions are generated, so every accuracy on this page is meaningless.</b> Only shapes, seconds and "
    "memory were being tested.</p>"
)


def render_page(data: ReportData) -> str:
    """The whole report as one HTML document with plotly.js inline."""
    facts, esc = data.facts, html.escape
    corr, imp = data.correlation, data.importances
    reference = hypervolume_reference(facts)
    unit = "latency ratio" if facts.latency_cost else "GFLOPs"
    hypervolume = figures.hypervolume_figure(data.hypervolume, reference, unit)
    settings = "".join(f"<li>{esc(item)}</li>" for item in settings_items(data))
    imp_notes = "".join(f"<li>{esc(k)}: {esc(v)}</li>" for k, v in imp.notes.items())
    sections = [
        f"<h1>Compression study <code>{esc(facts.name)}</code></h1>",
        f"<p id='answer' class='answer'><b>{esc(headline(data).text)}</b></p>",
        DRY_RUN_BANNER if facts.name.endswith(DRY_RUN_SUFFIX) else "",
        f"<section id='settings'><h2>Settings</h2><ul>{settings}</ul>"
        f"<p><b>FLOP counting convention:</b> {esc(facts.convention)} FLOPs are per question, averaged over "
        "the evaluated questions.</p></section>",
        f"<section id='pareto'><h2>{esc(figures.cost_title(facts)).capitalize()} vs accuracy</h2>"
        "<p class='note'>Every finished trial; the constrained Pareto front is drawn over feasible trials "
        f"only. Green arrows go from a finalized trial's search result to its distilled result.</p>"
        f"{_figure_html(figures.pareto_figure(data), 'pareto')}</section>",
        "<section id='summary'><h2>Constrained Pareto set and finalized trials</h2>"
        f"{_table_html(display_summary(data.summary))}</section>",
        "<section id='prediction'><h2>Did post-hoc accuracy predict distilled accuracy?</h2>"
        f"<p>{esc(corr.note)}.</p>"
        f"{_figure_html(figures.correlation_figure(data.finalized, corr), 'prediction')}"
        f"{_table_html(display_finalized(data.finalized)) if len(data.finalized) else ''}</section>",
        "<section id='speed'><h2>Measured speed-up vs FLOP reduction</h2>"
        "<p class='note'>distill.finalize times the teacher and each finalized student on the same "
        "validation questions and device in one run (MCQ at batch 1: every view, the connector, the prefill; "
        "median of repeats after warm-up). On the y = x line the saved FLOPs became saved time; below it "
        "they did not (fixed per-call overheads, memory-bound steps, kernels that run small shapes "
        "less efficiently).</p>"
        f"{_figure_html(figures.speedup_figure(data.speed), 'speed')}"
        f"{_table_html(display_speed(data.speed)) if data.speed is not None and len(data.speed) else ''}"
        "</section>",
        "<section id='params'><h2>Searched parameters</h2>"
        f"{_figure_html(figures.params_figure(data), 'params')}</section>",
        f"<section id='importances'><h2>Parameter importances</h2><p>{esc(imp.method)}.</p>"
        f"{f'<ul>{imp_notes}</ul>' if imp_notes else ''}"
        f"{_figure_html(figures.importance_figure(imp), 'importances')}</section>",
        "<section id='hypervolume'><h2>Search progress</h2>"
        f"{_figure_html(hypervolume, 'hypervolume')}</section>",
        f"<section id='trials'><h2>All trials</h2><details><summary>{len(data.trials)} trials</summary>"
        f"{_table_html(display_trials(data.trials))}</details></section>",
    ]
    return (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
        f"<title>Study {esc(facts.name)}: compression report</title>"
        f"<script type='text/javascript'>{plotly.offline.get_plotlyjs()}</script>"
        f"<style>{_STYLE}</style></head>\n<body>\n" + "\n".join(sections) + "\n</body></html>\n"
    )


# ----- screenshots -----------------------------------------------------------------------------------------------
def chromium_binary() -> str | None:
    for name in ("chromium", "chromium-browser"):
        if found := shutil.which(name):
            return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").is_file() else None


def chromium_command(binary: str, profile_dir: str | Path, *args: str) -> list[str]:
    """The headless Chromium command line used for screenshots and the page test."""
    return [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile_dir}", *args]


def render_png(html_path: str | Path, png_path: str | Path, window: tuple[int, int] = (1400, 900)) -> Path:
    """Screenshot `html_path` with headless Chromium into `png_path` (written atomically)."""
    binary = chromium_binary()
    if binary is None:
        raise RuntimeError("chromium not found; install it with `apt-get install -y chromium`")
    png = Path(png_path)
    with atomic_file(png) as tmp, tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        tmp.unlink()  # so that only a screenshot chromium really wrote passes the check below
        command = chromium_command(
            binary,
            profile,
            f"--screenshot={tmp}",
            f"--window-size={window[0]},{window[1]}",
            "--hide-scrollbars",
            Path(html_path).resolve().as_uri(),
        )
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if done.returncode != 0 or not tmp.is_file():
            raise RuntimeError(f"chromium failed ({done.returncode}): {done.stderr[-2000:]}")
    return png


def render_pareto_png(data: ReportData, png_path: Path, window: tuple[int, int] = (1400, 900)) -> Path:
    """The Pareto figure alone, sized to the window, as a PNG."""
    fig = figures.pareto_figure(data).update_layout(width=window[0] - 20, height=window[1] - 20)
    with tempfile.TemporaryDirectory(prefix="pareto-") as tmp:
        page = Path(tmp) / "pareto.html"
        page.write_text(pio.to_html(fig, full_html=True, include_plotlyjs=True, config=PLOT_CONFIG))
        return render_png(page, png_path, window)


# ----- entry point ----------------------------------------------------------------------------------------------
def build_report(data: ReportData, out_dir: Path) -> list[Path]:
    """Write index.html and the tables; returns the paths written."""
    start = time.time()
    tables = {
        "summary": (data.summary, display_summary(data.summary)),
        "finalized": (data.finalized, display_finalized(data.finalized)),
        "speed": (data.speed, display_speed(data.speed)),
        "importances": (data.importances.frame, display_importances(data.importances.frame)),
        "trials": (data.trials, display_trials(data.trials)),
    }
    written = [write_text(out_dir / "index.html", render_page(data))]
    for name, (raw, shown) in tables.items():
        written.append(write_text(out_dir / f"{name}.csv", raw.to_csv(index=False)))
        written.append(write_text(out_dir / f"{name}.md", markdown_table(shown)))
    written.append(write_text(out_dir / "hypervolume.csv", data.hypervolume.to_csv(index=False)))
    logger.info("wrote %d files to %s in %.1f s", len(written), out_dir, time.time() - start)
    return written


def load_report_data(
    config: StudyConfig, storage_url: str | None, what_if_ratio: float | None = None
) -> ReportData:
    """The study's report data; feasibility is the search's own unless `what_if_ratio` asks for another."""
    study = load_existing_study(config.name, storage_url or config.default_storage, read_only=True)
    data = report_data(study, what_if_ratio)
    if (
        what_if_ratio is None
        and data.facts.settings
        and abs(data.facts.ratio - config.search.constraint_ratio) > 1e-12
    ):
        logger.warning(
            "study %r was searched with constraint_ratio = %s; its config now says %s: the report keeps the "
            "search's line (ask for --what-if-ratio %s to see the other, labelled as a what-if)",
            config.name,
            data.facts.ratio,
            config.search.constraint_ratio,
            config.search.constraint_ratio,
        )
    if not data.facts.settings:  # a study from before "study_config" was recorded: the TOML is all we have
        data = data._replace(facts=data.facts._replace(settings=config.to_dict()))
    return data
