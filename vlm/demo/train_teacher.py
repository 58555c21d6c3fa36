"""Train the demo teacher from scratch: `python -m vlm.demo.train_teacher [--vqa-steps N] [--out DIR]`.

Trains on freshly generated scenes (see `vlm.demo.teacher.train_teacher`), saves in nanoVLM's layout with
its tokenizer, then prints validation MCQ accuracy with real and with blanked images (the blank score
shows the questions need the image) and writes it next to the checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

from vlm.cli import make_parser, run
from vlm.demo.recipe import TeacherTrainConfig

logger = logging.getLogger(__name__)


def blank_images(examples):
    """The same questions with every image replaced by a mid-grey one of the same size."""
    from PIL import Image

    return [dataclasses.replace(e, image=Image.new("RGB", e.image.size, (128, 128, 128))) for e in examples]


def build_parser() -> argparse.ArgumentParser:
    defaults = TeacherTrainConfig()
    parser = make_parser(
        "vlm.demo.train_teacher",
        "Train the offline demo teacher (nanoVLM's architecture at toy scale) from scratch on freshly generated "
        "scenes,\nsave it in nanoVLM's layout, and score it on the demo validation split with real and blank "
        "images.",
    )
    parser.add_argument("--vision-steps", type=int, default=defaults.vision_steps, help="stage 1: ViT steps")
    parser.add_argument(
        "--letter-steps",
        type=int,
        default=defaults.letter_steps,
        help="stage 2: text-only letter drill steps",
    )
    parser.add_argument("--vqa-steps", type=int, default=defaults.vqa_steps, help="stage 3: VQA steps")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="images per VQA step")
    parser.add_argument(
        "--lr", type=float, default=defaults.lr, help="peak learning rate of the decoder stages"
    )
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seed of the scenes and the init")
    parser.add_argument(
        "--out", type=Path, default=None, help="checkpoint folder to write (default: the shipped teacher's)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    return parser


def _run(args: argparse.Namespace) -> int:
    import torch

    from vlm.atomic import write_json
    from vlm.checkpoint import load_pretrained
    from vlm.data import DataConfig, load_examples
    from vlm.demo.dataset import DemoDataConfig, ensure_demo_dataset
    from vlm.demo.teacher import SHIPPED_TEACHER, train_teacher
    from vlm.evaluate import EvalConfig, evaluate_mcq
    from vlm.paths import cache_dir

    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.out or SHIPPED_TEACHER
    data_dir = ensure_demo_dataset(DemoDataConfig(), cache_dir())
    val, _ = load_examples(DataConfig(source=str(data_dir), split="validation"))
    config = dataclasses.replace(
        TeacherTrainConfig(),
        vision_steps=args.vision_steps,
        letter_steps=args.letter_steps,
        vqa_steps=args.vqa_steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
    )
    start = time.time()
    _, tokenizer = train_teacher(config, out)
    minutes = (time.time() - start) / 60
    model = load_pretrained(out)  # score what ships (float16 weights), not the in-memory copy
    eval_config = EvalConfig(batch_size=64)
    real = evaluate_mcq(model, tokenizer, val, eval_config)
    blank = evaluate_mcq(model, tokenizer, blank_images(val), eval_config)
    summary = {
        "train_minutes": round(minutes, 2),
        "validation_accuracy": real.summary(),
        "blank_image_accuracy": blank.summary(),
        "checkpoint": str(out),
    }
    write_json(Path(out) / "training_summary.json", summary, indent=2)
    print(json.dumps(summary, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(_run, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
