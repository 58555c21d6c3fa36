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
import time
from pathlib import Path

import torch

from vlm.checkpoint import load_pretrained
from vlm.data import DataConfig, load_examples
from vlm.demo.dataset import DemoDataConfig, ensure_demo_dataset
from vlm.demo.teacher import SHIPPED_TEACHER, TeacherTrainConfig, train_teacher
from vlm.evaluate import EvalConfig, evaluate_mcq
from vlm.paths import cache_dir

logger = logging.getLogger(__name__)


def blank_images(examples):
    """The same questions with every image replaced by a mid-grey one of the same size."""
    from PIL import Image

    return [dataclasses.replace(e, image=Image.new("RGB", e.image.size, (128, 128, 128))) for e in examples]


def main(argv: list[str] | None = None) -> None:
    defaults = TeacherTrainConfig()
    parser = argparse.ArgumentParser(
        description="Train the offline demo teacher (nanoVLM architecture, tiny)."
    )
    parser.add_argument("--vision-steps", type=int, default=defaults.vision_steps)
    parser.add_argument("--letter-steps", type=int, default=defaults.letter_steps)
    parser.add_argument("--vqa-steps", type=int, default=defaults.vqa_steps)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="images per VQA step")
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--out", type=Path, default=SHIPPED_TEACHER, help="checkpoint folder to write")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)

    data_dir = ensure_demo_dataset(DemoDataConfig(), cache_dir())
    val, _ = load_examples(DataConfig(source=str(data_dir), split="validation"))
    config = dataclasses.replace(
        defaults,
        vision_steps=args.vision_steps,
        letter_steps=args.letter_steps,
        vqa_steps=args.vqa_steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
    )
    start = time.time()
    _, tokenizer = train_teacher(config, args.out)
    minutes = (time.time() - start) / 60
    model = load_pretrained(args.out)  # score what ships (float16 weights), not the in-memory copy
    eval_config = EvalConfig(batch_size=64)
    real = evaluate_mcq(model, tokenizer, val, eval_config)
    blank = evaluate_mcq(model, tokenizer, blank_images(val), eval_config)
    summary = {
        "train_minutes": round(minutes, 2),
        "validation_accuracy": real.summary(),
        "blank_image_accuracy": blank.summary(),
        "checkpoint": str(args.out),
    }
    (Path(args.out) / "training_summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
