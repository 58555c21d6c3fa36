"""`python -m vlm.score --model PATH|HUB_ID|demo --data SOURCE|demo [--split validation] [--max-samples N]`

Evaluates one model on a dataset in A-OKVQA's schema: MCQ accuracy with its 95% Wilson interval and,
with `--direct-answer`, A-OKVQA's direct-answer score; writes per-question predictions in the leaderboard
format ({question_id: {"multiple_choice": ..., "direct_answer": ...}}) and a summary JSON beside them.
`demo` names the offline demo world: the shipped demo teacher, or the generated demo dataset.
The command is `score` so that it cannot be confused with `vlm.evaluate`, the library it calls.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from pathlib import Path

from vlm.cli import UsageError, make_parser, run

logger = logging.getLogger("vlm.score")

DEMO = "demo"


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(
        "vlm.score",
        "Evaluate a nanoVLM-format model on an A-OKVQA-schema dataset (MCQ accuracy with its 95% interval, "
        "optionally A-OKVQA's direct-answer score) and write leaderboard-format predictions.",
        epilog="Offline example: python -m vlm.score --model demo --data demo --max-samples 200",
    )
    parser.add_argument(
        "--model", required=True, help="checkpoint folder, hub id, or 'demo' (the shipped demo teacher)"
    )
    parser.add_argument(
        "--tokenizer",
        default=None,
        help="tokenizer (default: the checkpoint's tokenizer/ folder, else its config's)",
    )
    parser.add_argument(
        "--data",
        default="HuggingFaceM4/A-OKVQA",
        help="hub id, save_to_disk folder, parquet file/folder, or 'demo' (the offline demo dataset)",
    )
    parser.add_argument("--split", default="validation", help="split to evaluate")
    parser.add_argument(
        "--max-samples",
        type=int,
        default=None,
        help="a fixed random subset of this many questions (default: all)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of that subset")
    parser.add_argument(
        "--skip-bad-rows", action="store_true", help="skip and count bad rows instead of failing"
    )
    parser.add_argument("--direct-answer", action="store_true", help="also decode and score direct answers")
    parser.add_argument("--batch-size", type=int, default=16, help="questions per forward pass")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="predictions file; the summary goes beside it as <name>_summary.json "
        "(default: evals/<model>-<split>.json under $VLMC_HOME or the current folder)",
    )
    return parser


def _tag(model: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", Path(model).name or model).strip("_") or "model"


def _resolve_sources(args: argparse.Namespace) -> tuple[str, str]:
    """(model, data) as paths or hub ids; `demo` resolved; a hub id fails at once when the hub is offline."""
    from vlm.hub import hub_reachable
    from vlm.paths import cache_dir

    model, data = args.model, args.data
    remote = [
        f"--{name} {value!r}"
        for name, value in (("model", model), ("data", data))
        if value != DEMO and not Path(value).exists()
    ]
    if remote and not hub_reachable():
        raise UsageError(
            f"{' and '.join(remote)}: not a local path, and the Hugging Face hub cannot be reached; offline, use "
            "`--model demo --data demo` (the demo teacher and dataset) or local paths"
        )
    if model == DEMO:
        from vlm.demo.teacher import SHIPPED_TEACHER

        model = str(SHIPPED_TEACHER)
    if data == DEMO:
        from vlm.demo.dataset import DemoDataConfig, ensure_demo_dataset

        data = str(ensure_demo_dataset(DemoDataConfig(), cache_dir()))
    return model, data


def evaluate(args: argparse.Namespace) -> dict:
    """Run the evaluation `args` describe, write predictions and summary, return the summary."""
    from vlm.atomic import write_json
    from vlm.checkpoint import TOKENIZER_DIR, load_pretrained
    from vlm.data import DataConfig, load_examples
    from vlm.evaluate import (
        EvalConfig,
        evaluate_direct_answer,
        evaluate_mcq,
        leaderboard_predictions,
    )
    from vlm.paths import project_root
    from vlm.tokenizer import load_tokenizer

    model_source, data_source = _resolve_sources(args)
    out = args.out or project_root() / "evals" / f"{_tag(args.model)}-{args.split}.json"
    model = load_pretrained(model_source, device=args.device)
    local_tokenizer = Path(model_source) / TOKENIZER_DIR
    tokenizer = load_tokenizer(
        args.tokenizer or (str(local_tokenizer) if local_tokenizer.is_dir() else model.cfg.lm_tokenizer),
        model.cfg,
    )
    data = DataConfig(
        data_source, args.split, args.max_samples, args.seed, "skip" if args.skip_bad_rows else "raise"
    )
    examples, skipped = load_examples(data)
    if not examples:
        raise UsageError(
            f"no question of {args.data!r} split {args.split!r} could be scored ({skipped} bad rows skipped): "
            "fix the rows (run without --skip-bad-rows to see the first bad one) or pick another split"
        )
    config = EvalConfig(batch_size=args.batch_size)
    mcq = evaluate_mcq(model, tokenizer, examples, config)
    da = evaluate_direct_answer(model, tokenizer, examples, config) if args.direct_answer else None
    write_json(out, leaderboard_predictions(examples, mcq, da))
    summary = {
        "model": args.model,
        "data": args.data,
        "split": args.split,
        "skipped_rows": skipped,
        "mcq": mcq.summary(),
        "direct_answer": da.summary() if da else None,
        "predictions": str(out),
    }
    summary_path = out.with_name(out.stem + "_summary.json")
    write_json(summary_path, summary)
    low, high = mcq.interval
    logger.info(
        "MCQ accuracy %.3f [%.3f, %.3f] on %d questions%s",
        mcq.accuracy,
        low,
        high,
        mcq.n,
        f"; direct answer {da.accuracy:.3f}" if da else "",
    )
    logger.info("predictions: %s; summary: %s", out, summary_path)
    return summary


def _run(args: argparse.Namespace) -> int:
    print(json.dumps(evaluate(args), indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(_run, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
