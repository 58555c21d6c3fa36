"""The whole demo flow that README reports, as one resumable command (issue 14: re-measure after a teacher).

`python -m benchmarks.demo_flow [--study demo] [--trials 200] [--also N ...] [--sensitivity] [--fresh]`

Runs, each as its own process exactly as a user types it, one at a time:

1. `python -m search.run --study S --trials N` (continues a study that has fewer trials);
2. `python -m distill.promote --study S`;
3. `python -m distill.finalize --study S --trial T` for every promoted trial and every trial of ``--also``
   (those with `--allow-unpromoted`; by default the study's teacher and hand-picked references), skipping
   trials the study has finalized already, so a stopped flow resumes where it was;
4. `python -m reports.build --study S --png`;
5. with ``--sensitivity``, `python -m benchmarks.sensitivity` (the knob table).

A study searched with another teacher or on other questions refuses to go on (`ledger.records.check_world`);
``--fresh`` first moves the study's SQLite database and folder aside (renamed with a time stamp: nothing is
deleted) and starts a new one, e.g. to re-measure after a new demo teacher. It logs each step's wall time
with the load average before and after it (a timing taken while something else ran is not a
measurement), then writes the table of finalized trials (post hoc on the search subset,
post hoc on the whole validation split, distilled) and the post-hoc -> distilled Spearman rho with its
interval to ``benchmarks/results/demo_flow_<study>.json`` and ``.md``.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from vlm.cli import UsageError, make_parser, run

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent  # the steps import this checkout, whatever the cwd


def _parser():
    parser = make_parser("benchmarks.demo_flow", __doc__.split("\n\n")[0])
    parser.add_argument("--study", default="demo", help="study name or .toml path (default: demo)")
    parser.add_argument("--trials", type=int, default=200, help="search trials in all (as `make demo`)")
    parser.add_argument(
        "--also",
        type=int,
        nargs="*",
        default=None,
        metavar="TRIAL",
        help="trials finalized besides the promoted ones, with --allow-unpromoted (default: the study's teacher "
        "and hand-picked references)",
    )
    parser.add_argument(
        "--fresh",
        action="store_true",
        help="move the study's SQLite database and folder aside (time-stamped) and search from scratch",
    )
    parser.add_argument(
        "--no-png", action="store_true", help="build the report without its PNG (no Chromium)"
    )
    parser.add_argument("--sensitivity", action="store_true", help="also run benchmarks.sensitivity")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="where the summary goes")
    return parser


def _step(name: str, args: list[str], steps: list[dict]) -> None:
    """Run ``python -m args...``; record its wall time and the load average around it; stop on failure."""
    load_before = os.getloadavg()[0]
    start = time.monotonic()
    logger.info("%s: python -m %s (load average %.2f)", name, " ".join(args), load_before)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }
    code = subprocess.run([sys.executable, "-m", *args], check=False, env=env).returncode
    seconds = time.monotonic() - start
    steps.append(
        {"step": name, "command": " ".join(args), "seconds": round(seconds, 1), "rc": code}
        | {"load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2)}
    )
    logger.info("%s: rc %d after %.1f min", name, code, seconds / 60)
    if code != 0:
        raise UsageError(f"{name} failed (exit {code}): fix it and run the same command again to resume")


def _open(study_name: str):
    from ledger.config import load_study_config
    from ledger.storage import load_existing_study

    config = load_study_config(study_name)
    return load_existing_study(config.name, config.default_storage, read_only=True)


def summary_table(study) -> dict:
    """Finalized trials (post hoc and distilled) and how well post hoc ranked them, from the study (the
    report's own rank correlation, `reports.data.rank_correlation`)."""
    import pandas as pd

    from ledger.records import read_finalized
    from reports.data import rank_correlation

    records = sorted(read_finalized(study).values(), key=lambda r: -r.gflops)
    rows = [
        {
            "trial": r.trial,
            "gflops": round(r.gflops, 4),
            "reduction_pct": round(r.reduction_pct, 1),
            "posthoc_subset": r.posthoc_subset_accuracy,
            "posthoc_full": r.posthoc_full_accuracy,
            "distilled": r.mcq_accuracy,
            "distilled_ci": [round(r.ci_low, 3), round(r.ci_high, 3)],
        }
        for r in records
    ]
    frame = pd.DataFrame(
        {
            "posthoc_accuracy": [r["posthoc_subset"] for r in rows],
            "distilled_accuracy": [r["distilled"] for r in rows],
        }
    )
    correlation = rank_correlation(frame)
    return {"finalized": rows, "rank_correlation": correlation._asdict()}


def _move_aside(study_name: str) -> None:
    """`--fresh`: rename the study's default SQLite database and artifact folder with a time stamp."""
    from ledger.config import load_study_config
    from ledger.storage import parse_storage_url

    config = load_study_config(study_name)
    parsed = parse_storage_url(config.default_storage)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for path in (Path(parsed.database), config.artifacts_dir):
        if path.exists():
            aside = path.with_name(f"{path.name}.{stamp}.bak")
            path.rename(aside)
            logger.info("--fresh: moved %s to %s", path, aside)


def _markdown(summary: dict) -> str:
    lines = [
        "| trial | GFLOPs | reduction | post hoc (subset) | post hoc (validation) | distilled [95% CI] |",
        "|---|---|---|---|---|---|",
    ]
    for r in summary["finalized"]:
        full = "" if r["posthoc_full"] is None else f"{r['posthoc_full']:.3f}"
        low, high = r["distilled_ci"]
        lines.append(
            f"| {r['trial']} | {r['gflops']:.3f} | {r['reduction_pct']:.1f}% | {r['posthoc_subset']:.3f} | "
            f"{full} | {r['distilled']:.3f} [{low:.3f}, {high:.3f}] |"
        )
    lines += ["", f"Post hoc -> distilled: {summary['rank_correlation']['note']}"]
    lines += ["", "| step | minutes | load before -> after |", "|---|---|---|"]
    for s in summary["steps"]:
        lines.append(f"| {s['step']} | {s['seconds'] / 60:.1f} | {s['load_before']} -> {s['load_after']} |")
    return "\n".join(lines) + "\n"


def _finalize_list(study, promoted: list[int], also: list[int] | None) -> list[int]:
    """Promoted trials, then ``also`` (default: the references), keeping only trials that completed."""
    from optuna.trial import TrialState

    from ledger.rules import reference_trials

    if also is None:
        also = sorted(t.number for t in reference_trials(study).values())
    complete = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}
    missing = [n for n in also if n not in complete]
    if missing:
        logger.warning("not finalizing %s: no such COMPLETE trial in the study", missing)
    return list(dict.fromkeys([*promoted, *(n for n in also if n in complete)]))


def _write(out: Path, study_name: str, summary: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    name = Path(study_name).stem
    (out / f"demo_flow_{name}.json").write_text(json.dumps(summary, indent=2))
    if "finalized" in summary:
        (out / f"demo_flow_{name}.md").write_text(_markdown(summary))


def _run(args) -> int:
    from ledger.records import read_finalized, read_promoted

    if args.trials < 1:
        raise UsageError(f"--trials must be >= 1, got {args.trials}")
    if args.fresh:
        _move_aside(args.study)
    steps: list[dict] = []
    try:
        _step("search", ["search.run", "--study", args.study, "--trials", str(args.trials)], steps)
        _step("promote", ["distill.promote", "--study", args.study], steps)
        study = _open(args.study)
        promoted = [p.trial for p in read_promoted(study) or []]
        done = set(read_finalized(study))
        wanted = _finalize_list(study, promoted, args.also)
        logger.info(
            "promoted %s; finalizing %s (%s done before)", promoted, wanted, sorted(done & set(wanted))
        )
        for trial in wanted:
            if trial in done:
                continue
            extra = [] if trial in promoted else ["--allow-unpromoted"]
            command = ["distill.finalize", "--study", args.study, "--trial", str(trial), *extra]
            _step(f"finalize #{trial}", command, steps)
        _step("report", ["reports.build", "--study", args.study, *([] if args.no_png else ["--png"])], steps)
        if args.sensitivity:
            _step("knob table", ["benchmarks.sensitivity"], steps)
    except UsageError:
        _write(args.out, args.study, {"study": args.study, "steps": steps, "stopped": True})  # timings so far
        raise
    study = _open(args.study)  # again: finalize wrote to it
    summary = {"study": args.study, "promoted": promoted, **summary_table(study), "steps": steps}
    _write(args.out, args.study, summary)
    print(_markdown(summary))
    return 0


def main(argv=None) -> int:
    return run(_run, _parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
