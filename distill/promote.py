"""`python -m distill.promote [--study NAME] [--storage URL]`: which trials are worth fine-tuning.

Rule (from the study config): the constrained Pareto set (feasible trials not dominated in FLOPs and
accuracy) plus infeasible trials within `promotion_margin` below the 0.85·X line whose FLOPs are lower than
every feasible trial's: distillation usually recovers a few points, and those are the big savings.
The list is recorded in the study's user attribute `promoted`.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys

import optuna
from optuna.trial import TrialState

from search.storage import load_existing_study
from search.study import is_feasible
from search.study_config import load_study_config
from vlm.cli import UsageError, add_study_options, make_parser, run

logger = logging.getLogger("distill.promote")


def pareto_front(trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    """Trials not dominated in (min FLOPs, max accuracy), sorted by FLOPs."""
    front = []
    for t in trials:
        dominated = any(
            o.values[0] <= t.values[0]
            and o.values[1] >= t.values[1]
            and (o.values[0] < t.values[0] or o.values[1] > t.values[1])
            for o in trials
        )
        if not dominated:
            front.append(t)
    return sorted(front, key=lambda t: (t.values[0], -t.values[1]))


def first_of_each_config(trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    """The earliest trial of every distinct config: TPE re-samples configs in a small discrete space, and
    distilling the same config twice would only waste a finalize run."""
    seen: dict[tuple, optuna.trial.FrozenTrial] = {}
    for t in sorted(trials, key=lambda t: t.number):
        seen.setdefault(tuple(sorted(t.params.items())), t)
    return list(seen.values())


def promoted_trials(study: optuna.Study, ratio: float, margin: float) -> list[dict]:
    """[{trial, why, gflops, accuracy}], fewest FLOPs first; one trial per distinct config."""
    baseline = study.user_attrs.get("baseline")
    if baseline is None:
        raise UsageError(f"study {study.study_name!r} has no baseline yet: run search.run first")
    threshold = ratio * baseline["accuracy"]
    complete = first_of_each_config(
        [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.values]
    )
    feasible = [t for t in complete if is_feasible(t)]
    cheapest_feasible = min((t.values[0] for t in feasible), default=math.inf)
    chosen = {t.number: "pareto" for t in pareto_front(feasible)}
    for t in complete:
        if t.number in chosen or is_feasible(t) or t.user_attrs.get("stopped_early"):
            continue
        if t.values[1] >= threshold - margin and t.values[0] < cheapest_feasible:
            chosen[t.number] = "near-threshold"
    by_number = {t.number: t for t in complete}
    # "cost" is objective 0 (GFLOPs, or latency relative to the teacher in a `cost = "latency"` study).
    rows = [
        {
            "trial": n,
            "why": why,
            "gflops": by_number[n].user_attrs.get("gflops", by_number[n].values[0]),
            "cost": by_number[n].values[0],
            "accuracy": by_number[n].values[1],
        }
        for n, why in chosen.items()
    ]
    return sorted(rows, key=lambda r: (r["cost"], -r["accuracy"]))


def record_promotion(study: optuna.Study, ratio: float, margin: float) -> list[dict]:
    rows = promoted_trials(study, ratio, margin)
    study.set_user_attr("promoted", rows)
    return rows


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(
        "distill.promote",
        "List the trials worth distilling (the constrained Pareto set plus near-threshold big savings) and "
        "record them in the study.",
    )
    add_study_options(parser)
    return parser


def _run(args: argparse.Namespace) -> int:
    config = load_study_config(args.study)
    study = load_existing_study(config.name, args.storage or config.default_storage, read_only=True)
    rows = record_promotion(study, config.search.constraint_ratio, config.search.promotion_margin)
    logger.info("%d promoted trials (recorded in study %r):", len(rows), config.name)
    for row in rows:
        logger.info(
            "  trial %4d  %-15s %10.4g GFLOPs  accuracy %.3f",
            row["trial"],
            row["why"],
            row["gflops"],
            row["accuracy"],
        )
    if rows:
        logger.info(
            "next: python -m distill.finalize --study %s --trial %d   (or --trial best: the cheapest, #%d)",
            config.name,
            rows[-1]["trial"],
            rows[0]["trial"],
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(_run, build_parser(), argv, log_format="%(message)s")


if __name__ == "__main__":
    sys.exit(main())
