"""One process of a real multi-process distillation run, for tests/distill/test_train_multiprocess.py:

    accelerate launch --num_processes 2 --cpu -m tests.distill.ddp_worker --teacher T --data D --logits L --out O

Every process builds each case's student with its OWN seed (so DDP's start-up broadcast from the main process
is what makes the replicas equal), distills it with `train_student` in `O/<case>/run`, and saves its final
weights to `O/<case>/rank<r>.pt` and what each forward pass got (the model's class, the questions) to
`O/<case>/rank<r>.json`. `--crash-after-checkpoint` kills every process (os._exit, no clean-up) right
after the first checkpoint of the `resume` case is written; a later launch without it resumes that run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path

import torch

import distill.train
from distill.train import DistillSettingsError, build_student, train_student
from ledger.config import DataSettings, DistillSettings, ModelSettings
from ledger.world import load_split, load_teacher
from vlm.config import CompressionConfig

TRAIN_QUESTIONS = 16
BASE = DistillSettings(steps=2, batch_size=4, checkpoint_every=100, mixed_precision="no")


@dataclasses.dataclass(frozen=True)
class Case:
    compression: CompressionConfig
    settings: DistillSettings
    da_fraction: float


CASES = {
    # A fresh resampler at its own lr; 5 questions per global batch: shards of 3 and 2; both losses drawn.
    "resampler": Case(
        CompressionConfig(token_grid=4, resampler_width=16),
        dataclasses.replace(BASE, steps=4, batch_size=5),
        0.5,
    ),
    # LoRA adapters on a decoder with one block dropped (frozen base weights: DDP syncs only trained ones).
    "lora": Case(
        CompressionConfig(token_grid=4, drop_decoder_layers=(2,)),
        dataclasses.replace(BASE, lora_rank=4),
        0.5,
    ),
    # A learned token scorer (straight-through gate) beside pooled tokens.
    "scorer": Case(CompressionConfig(keep_tokens_by_score=24, scorer_width=8), BASE, 0.0),
    # Killed after its checkpoint at step 2 (with --crash-after-checkpoint), then resumed by a new launch.
    "resume": Case(
        CompressionConfig(token_grid=4, resampler_width=16),
        dataclasses.replace(BASE, steps=4, batch_size=5, checkpoint_every=2),
        0.5,
    ),
}


FORWARDS: list[list] = []  # [loss kind, questions, class of the model called] per forward pass


def _spy(name: str, kind: str, size) -> None:
    """Wrap `distill.train.<name>` to record each call's model class and number of questions."""
    real = getattr(distill.train, name)

    def spy(student, batch, *args, **kwargs):
        FORWARDS.append([kind, size(batch), type(student).__name__])
        return real(student, batch, *args, **kwargs)

    setattr(distill.train, name, spy)


def train_case(name: str, teacher, tokenizer, examples, logits, out: Path, seed: int) -> None:
    case = CASES[name]
    rank = int(os.environ.get("RANK", 0))
    torch.manual_seed(seed)  # fresh weights (resampler, scorer, LoRA) differ between processes
    student = build_student(teacher, case.compression, case.settings)
    FORWARDS.clear()
    train_student(
        student, tokenizer, examples, logits, case.settings, out / name / "run", da_fraction=case.da_fraction
    )
    weights = {k: v.detach().clone() for k, v in student.state_dict().items()}
    torch.save(weights, out / name / f"rank{rank}.pt")
    (out / name / f"rank{rank}.json").write_text(json.dumps({"forwards": FORWARDS}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--teacher", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--logits", required=True, help="the teacher's letter logits on the questions (.pt)")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--crash-after-checkpoint", action="store_true")
    parser.add_argument("--too-small", action="store_true", help="first try a global batch of 1 question")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rank = int(os.environ.get("RANK", 0))
    teacher, tokenizer = load_teacher(ModelSettings(teacher=args.teacher, device="cpu"))
    examples = load_split(DataSettings(source=args.data), "train", TRAIN_QUESTIONS, seed=0)
    logits = torch.load(args.logits, weights_only=True)
    _spy("_letter_logits", "letter", lambda batch: int(batch["input_ids"].shape[0]))
    _spy("_da_loss", "direct answer", len)
    if args.crash_after_checkpoint:
        save = distill.train._save_state

        def save_then_die(*a, **kw):
            save(*a, **kw)
            os._exit(17)  # a kill: no exception handling, no process-group shutdown

        distill.train._save_state = save_then_die
    if args.too_small:  # fewer questions than processes: refused on every process, before any step
        (args.out / "too-small").mkdir(parents=True, exist_ok=True)
        settings = dataclasses.replace(BASE, batch_size=1)
        student = build_student(teacher, CompressionConfig(token_grid=4), settings)
        try:
            train_student(student, tokenizer, examples, logits, settings, args.out / "too-small" / "run")
            message = "trained"
        except DistillSettingsError as err:
            message = str(err)
        (args.out / "too-small" / f"rank{rank}.txt").write_text(message)
    for name in args.cases.split(","):
        train_case(name, teacher, tokenizer, examples, logits, args.out, seed=100 + rank)


if __name__ == "__main__":
    main()
