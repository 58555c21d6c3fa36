"""`python -m vlm.eval --model PATH_OR_HUB_ID [--data SOURCE] [--split validation] [--max-samples N] [--seed S]`

Evaluates one model on a dataset in A-OKVQA's schema: MCQ accuracy with its 95% Wilson interval and,
with `--direct-answer`, A-OKVQA's direct-answer score; writes per-question predictions in the leaderboard
format ({question_id: {"multiple_choice": ..., "direct_answer": ...}}) and a summary JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from vlm.checkpoint import TOKENIZER_DIR, load_pretrained
from vlm.data import DataConfig, load_examples
from vlm.evaluate import (
    EvalConfig,
    evaluate_direct_answer,
    evaluate_mcq,
    leaderboard_predictions,
    write_json_atomic,
)
from vlm.tokenizer import load_tokenizer

logger = logging.getLogger("vlm.eval")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description="Evaluate a nanoVLM-format model on an A-OKVQA-schema dataset."
    )
    parser.add_argument("--model", required=True, help="checkpoint folder or hub id")
    parser.add_argument(
        "--tokenizer", default=None, help="default: the checkpoint's tokenizer/ folder, else cfg.lm_tokenizer"
    )
    parser.add_argument(
        "--data", default="HuggingFaceM4/A-OKVQA", help="hub id, save_to_disk folder, or parquet"
    )
    parser.add_argument("--split", default="validation")
    parser.add_argument(
        "--max-samples", type=int, default=None, help="a fixed random subset of this many questions"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of that subset")
    parser.add_argument(
        "--skip-bad-rows", action="store_true", help="skip and count bad rows instead of failing"
    )
    parser.add_argument("--direct-answer", action="store_true", help="also decode and score direct answers")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--out", type=Path, default=Path("predictions.json"), help="leaderboard-format predictions"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    model = load_pretrained(args.model, device=args.device)
    local_tokenizer = Path(args.model) / TOKENIZER_DIR
    tokenizer = load_tokenizer(
        args.tokenizer or (str(local_tokenizer) if local_tokenizer.is_dir() else model.cfg.lm_tokenizer),
        model.cfg,
    )
    data = DataConfig(
        args.data, args.split, args.max_samples, args.seed, "skip" if args.skip_bad_rows else "raise"
    )
    examples, skipped = load_examples(data)
    config = EvalConfig(batch_size=args.batch_size)
    mcq = evaluate_mcq(model, tokenizer, examples, config)
    da = evaluate_direct_answer(model, tokenizer, examples, config) if args.direct_answer else None
    write_json_atomic(args.out, leaderboard_predictions(examples, mcq, da))
    summary = {
        "model": args.model,
        "data": args.data,
        "split": args.split,
        "skipped_rows": skipped,
        "mcq": mcq.summary(),
        "direct_answer": da.summary() if da else None,
        "predictions": str(args.out),
    }
    write_json_atomic(args.out.with_name(args.out.stem + "_summary.json"), summary)
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
