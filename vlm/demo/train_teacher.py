"""Train the demo teacher from scratch: `python -m vlm.demo.train_teacher [--vqa-steps N] [--out DIR]`.

Trains on freshly generated scenes (see `vlm.demo.teacher.train_teacher`), saves in nanoVLM's layout with
its tokenizer, then prints validation MCQ accuracy with real and with blanked images (the blank score
shows the questions need the image) and writes it next to the checkpoint.

Long runs are safe to stop: the run is saved in ``--work-dir`` every ``--checkpoint-every`` steps, and the
same command started again continues from there (``--fresh`` starts over). ``--device cuda`` trains on a
GPU; the weights saved are the same format either way.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

from vlm.cli import UsageError, make_parser, parse_device, run
from vlm.demo.recipe import VIT_HEADS, TeacherTrainConfig

logger = logging.getLogger(__name__)


def blank_images(examples):
    """The same questions with every image replaced by a mid-grey one of the same size."""
    from PIL import Image

    return [dataclasses.replace(e, image=Image.new("RGB", e.image.size, (128, 128, 128))) for e in examples]


def accuracy_by_kind(result, kinds: dict[str, str], correct: dict[str, int]) -> dict[str, float]:
    """MCQ accuracy per question kind of the questions `result` answered."""
    hits: dict[str, list[bool]] = {}
    for question_id, choice in result.predictions.items():
        hits.setdefault(kinds[question_id], []).append(choice == correct[question_id])
    return {kind: round(sum(h) / len(h), 4) for kind, h in sorted(hits.items())}


def config_from_args(args: argparse.Namespace) -> TeacherTrainConfig:
    """The training recipe the options ask for; no options give `TeacherTrainConfig()`, the shipped recipe.

    The kind curriculum switches off with either half: `--first-steps 0` or `--first-kinds` given no kinds.
    """
    first_kinds, first_steps = tuple(args.first_kinds), args.first_steps
    if first_steps == 0 or not first_kinds:
        first_kinds, first_steps = (), 0
    if first_steps > args.vqa_steps:
        raise UsageError(
            f"--first-steps {first_steps} (the kind curriculum) is longer than --vqa-steps {args.vqa_steps}: "
            f"pass --first-steps N with N <= {args.vqa_steps}, or --first-steps 0 for no curriculum"
        )
    defaults = TeacherTrainConfig()
    try:
        return dataclasses.replace(
            defaults,
            vision_steps=args.vision_steps,
            vit_width=args.vit_width,
            letter_steps=args.letter_steps,
            vqa_steps=args.vqa_steps,
            batch_size=args.batch_size,
            lr=args.lr,
            seed=args.seed,
            first_kinds=first_kinds,
            first_steps=first_steps,
            step_seeds=args.step_seeds,
            session=dataclasses.replace(
                defaults.session,
                location_fraction=args.location_fraction,
                balance_relations=args.balance_relations,
            ),
        )
    except ValueError as error:
        raise UsageError(str(error)) from error


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
        "--vit-width",
        type=int,
        default=defaults.vit_width,
        help=f"the ViT's width (MLP 4x, {VIT_HEADS} heads; a multiple of {VIT_HEADS})",
    )
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
    parser.add_argument(
        "--first-kinds",
        nargs="*",
        default=list(defaults.first_kinds),
        metavar="KIND",
        help="kind curriculum: the first --first-steps VQA steps ask only these question kinds (given no "
        "kinds: no curriculum)",
    )
    parser.add_argument(
        "--first-steps",
        type=int,
        default=defaults.first_steps,
        help="VQA steps of the kind curriculum (0: none)",
    )
    parser.add_argument(
        "--location-fraction",
        type=float,
        default=defaults.session.location_fraction,
        help="share of VQA turns asking 'Where is the X?' (answered with its region)",
    )
    parser.add_argument(
        "--balance-relations",
        action="store_true",
        help="spatial turns pick a relation their scene supports, the vertical ones favoured (else "
        "left/right dominate)",
    )
    parser.add_argument(
        "--eval-every",
        type=int,
        default=250,
        help="score the VQA stage on the first --eval-questions validation MCQs every N steps (0: never; "
        "it does not change the weights)",
    )
    parser.add_argument("--eval-questions", type=int, default=500, help="questions for --eval-every")
    parser.add_argument(
        "--step-seeds",
        action="store_true",
        help="draw each step's scenes from their own seed (another scene stream than the shipped "
        "teacher's); needed by --data-workers",
    )
    parser.add_argument(
        "--data-workers",
        type=int,
        default=0,
        help="processes drawing the training batches ahead of the model (with --step-seeds; the weights "
        "do not depend on their number); a GPU needs them",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="where the run is saved while it trains and resumed from (default: .cache/teacher-training/)",
    )
    parser.add_argument(
        "--checkpoint-every", type=int, default=100, help="steps between saves of the running stage"
    )
    parser.add_argument(
        "--fresh", action="store_true", help="discard a saved run in --work-dir and start over"
    )
    return parser


def _run(args: argparse.Namespace) -> int:
    import torch

    from vlm.atomic import write_json
    from vlm.checkpoint import EXTRAS_FILE, load_pretrained
    from vlm.data import DataConfig, load_examples
    from vlm.demo.dataset import DemoDataConfig, ensure_demo_dataset, question_kinds
    from vlm.demo.teacher import SHIPPED_TEACHER, VQA_CURVE, build_demo_tokenizer, train_teacher
    from vlm.demo.training_state import discard
    from vlm.evaluate import EvalConfig, evaluate_mcq
    from vlm.paths import cache_dir

    if parse_device(args.device).type not in ("cpu", "cuda"):
        raise UsageError(f"--device {args.device}: the demo teacher trains on cpu or cuda")
    if args.checkpoint_every < 1:
        raise UsageError(f"--checkpoint-every must be >= 1, got {args.checkpoint_every}")
    if args.eval_every < 0 or args.eval_questions < 1:
        raise UsageError("--eval-every must be >= 0 and --eval-questions >= 1")
    config = config_from_args(args)  # every recipe error before anything is deleted or generated
    if args.data_workers < 0:
        raise UsageError(f"--data-workers must be >= 0, got {args.data_workers}")
    if args.data_workers and not args.step_seeds:
        raise UsageError(
            "--data-workers needs --step-seeds: the default scene stream is drawn in order by one process"
        )
    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.out or SHIPPED_TEACHER
    work_dir = args.work_dir or cache_dir() / "teacher-training"
    if args.fresh and discard(work_dir):
        logger.info("--fresh: removed the saved run in %s", work_dir)
    data_config = DemoDataConfig()
    data_dir = ensure_demo_dataset(data_config, cache_dir())
    val, _ = load_examples(DataConfig(source=str(data_dir), split="validation"))
    kinds = question_kinds(data_config, "validation")
    correct = {e.question_id: e.correct_choice_idx for e in val}
    eval_config = EvalConfig(batch_size=64, show_progress=False)

    curve_questions, curve_tokenizer = val[: args.eval_questions], build_demo_tokenizer()

    def score(model) -> dict:
        result = evaluate_mcq(model, curve_tokenizer, curve_questions, eval_config)
        return {"mcq": round(result.accuracy, 4), "by_kind": accuracy_by_kind(result, kinds, correct)}

    _, tokenizer = train_teacher(
        config,
        out,
        device=args.device,
        work_dir=work_dir,
        checkpoint_every=args.checkpoint_every,
        evaluate=score,
        eval_every=args.eval_every,
        data_workers=args.data_workers,
    )
    # Minutes across every run of this recipe, a stopped-and-resumed one included.
    extras = json.loads((Path(out) / EXTRAS_FILE).read_text())
    model = load_pretrained(out)  # score what ships (float16 weights), not the in-memory copy
    real = evaluate_mcq(model, tokenizer, val, eval_config)
    blank = evaluate_mcq(model, tokenizer, blank_images(val), eval_config)
    summary = {
        "train_minutes": extras["train_minutes"],
        "device": args.device,
        "validation_accuracy": real.summary(),
        "validation_accuracy_by_kind": accuracy_by_kind(real, kinds, correct),
        "blank_image_accuracy": blank.summary(),
        VQA_CURVE: extras[VQA_CURVE],
        "checkpoint": str(out),
    }
    write_json(Path(out) / "training_summary.json", summary, indent=2)
    # The run is complete and saved: the same command now trains a new teacher from scratch.
    discard(work_dir)
    print(json.dumps(summary, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(_run, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
