"""`python -m distill.finalize --study NAME --trial N|best [--storage URL]`

Distill a promoted trial's student from the full teacher, evaluate it on the whole validation split, save
it, write test predictions, and record the result in the study (`distill.finalizer` does the work).
Under `accelerate launch --num_processes N` every process trains on its shard of each global batch
(`[distill] batch_size` is the global batch); the main process alone saves, evaluates and records.
"""

from __future__ import annotations

import argparse
import logging
import sys

from vlm.cli import UsageError, add_study_options, make_parser, run

logger = logging.getLogger("distill.finalize")


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(
        "distill.finalize",
        "Distill one promoted trial from the teacher, evaluate it on the full validation split, save the model "
        "and test predictions, and record the result in the study.",
    )
    add_study_options(parser)
    parser.add_argument(
        "--trial",
        required=True,
        help="a promoted trial's number (see `python -m distill.promote`), or 'best': the promoted trial "
        "with the fewest FLOPs",
    )
    parser.add_argument(
        "--allow-unpromoted",
        action="store_true",
        help="also finalize a completed trial that promotion did not pick (by default it is refused)",
    )
    return parser


def _run(args: argparse.Namespace) -> int:
    from distill.finalizer import FinalizeError, finalize, resolve_trial
    from distill.train import DistillationDiverged, DistillSettingsError, distributed_state
    from ledger.config import load_study_config
    from ledger.records import read_baseline, recorded_ratio
    from ledger.storage import load_existing_study
    from ledger.world import WorldUnavailable

    # accelerate logs every file of every checkpoint, and warns at each save that the tied LM head is stored
    # once ("Removed shared tensor"): expected for nanoVLM's tied weights, nothing a user can act on.
    logging.getLogger("accelerate").setLevel(logging.ERROR)
    main_process = distributed_state().is_main_process
    if not main_process:  # under `accelerate launch`: the main process speaks for all
        logging.getLogger().setLevel(logging.WARNING)
    config = load_study_config(args.study)
    study = load_existing_study(config.name, args.storage or config.default_storage)
    try:
        trial = resolve_trial(study, config, args.trial, allow_unpromoted=args.allow_unpromoted)
        record = finalize(config, study, trial)
    except (FinalizeError, DistillationDiverged, DistillSettingsError, WorldUnavailable) as err:
        raise UsageError(str(err)) from err
    if not main_process:
        return 0
    baseline, ratio = read_baseline(study), recorded_ratio(study)  # the line the search judged trials by
    logger.info(
        "trial %d distilled: MCQ %.3f [%.3f, %.3f] on %d validation questions (post hoc %.3f on the search "
        "subset), DA %.3f, %.4g GFLOPs per question (%.1f%% fewer than the teacher)",
        record.trial,
        record.mcq_accuracy,
        record.ci_low,
        record.ci_high,
        record.n,
        record.posthoc_subset_accuracy,
        record.da_accuracy,
        record.gflops,
        record.reduction_pct,
    )
    logger.info(
        "%s %.2f·X: accuracy %.3f %s the line %.3f (X = %.3f)",
        "keeps" if record.keeps_constraint else "does NOT keep",
        ratio,
        record.mcq_accuracy,
        ">=" if record.keeps_constraint else "<",
        ratio * baseline.accuracy,
        baseline.accuracy,
    )
    logger.info("model: %s", record.model_dir)
    logger.info("next: python -m reports.build --study %s", config.name)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(_run, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
