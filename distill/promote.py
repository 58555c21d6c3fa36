"""`python -m distill.promote [--study NAME] [--storage URL]`: which trials are worth fine-tuning.

The rule is `ledger.rules.promoted_trials`: the constrained Pareto set (feasible trials not dominated in
cost and accuracy) plus infeasible trials within `promotion_margin` below the study's ratio·X line that cost
less than every feasible trial: distillation usually recovers a few points, and those are the big savings.
The list is recorded in the study (`ledger.records.PROMOTED`). The line is the ratio the study was searched
with; a study TOML edited since then is named in a warning, never silently used.
"""

from __future__ import annotations

import argparse
import logging
import sys

from vlm.cli import add_study_options, make_parser, run

logger = logging.getLogger("distill.promote")


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(
        "distill.promote",
        "List the trials worth distilling (the constrained Pareto set plus near-threshold big savings) and "
        "record them in the study.",
    )
    add_study_options(parser)
    return parser


def _run(args: argparse.Namespace) -> int:
    from ledger.config import load_study_config
    from ledger.records import recorded_ratio
    from ledger.rules import record_promotion
    from ledger.storage import load_existing_study

    config = load_study_config(args.study)
    study = load_existing_study(config.name, args.storage or config.default_storage, read_only=True)
    rows = record_promotion(study, config.search.promotion_margin)
    ratio = recorded_ratio(study)
    if abs(ratio - config.search.constraint_ratio) > 1e-12:
        logger.warning(
            "the study was searched with constraint_ratio = %s; its config now says %s: promotion keeps the "
            "search's line (see another ratio with python -m reports.build --what-if-ratio %s)",
            ratio,
            config.search.constraint_ratio,
            config.search.constraint_ratio,
        )
    logger.info("%d promoted trials at %.2f·X (recorded in study %r):", len(rows), ratio, config.name)
    for row in rows:
        logger.info(
            "  trial %4d  %-15s %10.4g GFLOPs  accuracy %.3f", row.trial, row.why, row.gflops, row.accuracy
        )
    if rows:
        logger.info(
            "next: python -m distill.finalize --study %s --trial %d   (or --trial best: the cheapest, #%d)",
            config.name,
            rows[-1].trial,
            rows[0].trial,
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(_run, build_parser(), argv, log_format="%(message)s")


if __name__ == "__main__":
    sys.exit(main())
