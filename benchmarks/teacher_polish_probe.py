"""Does a short extra stage on top of a trained demo teacher lift it, and does weight averaging help? (issue 14)

`python -m benchmarks.teacher_polish_probe --init vlm/demo/assets/teacher --steps 500 --lr 1e-4 --threads 2`

The shipped recipe's cosine ends at 0.1x its peak after 5,000 VQA steps, where the curve has flattened
(0.730 at 4,000, 0.736 at 5,000 on 500 questions). This probe continues the VQA stage from a trained
teacher for ``--steps`` more steps (the shipped session mix, or ``--kinds`` only) at ``--lr`` after 20
warm-up steps, decaying to ``--min-lr-ratio`` of it, and keeps a running average of the weights from
``--average-from`` on, one snapshot every ``--average-every`` steps (`torch.optim.swa_utils.AveragedModel`,
stochastic weight averaging). Every ``--eval-every`` steps it scores the current weights on the 1,000
validation MCQs; at the end it scores the current and the averaged weights, with blank images too.
Results go to ``benchmarks/results/teacher_polish_<tag>.json``.
"""

from __future__ import annotations

import json
import logging
import random
import time
from functools import partial
from pathlib import Path

from vlm.cli import UsageError, make_parser, run

logger = logging.getLogger(__name__)


def _parser():
    parser = make_parser("benchmarks.teacher_polish_probe", __doc__.split("\n\n")[0])
    parser.add_argument("--init", type=Path, required=True, help="trained teacher checkpoint to start from")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--lr", type=float, default=1e-4, help="peak lr after 20 warm-up steps")
    parser.add_argument("--min-lr-ratio", type=float, default=1.0, help="cosine floor (1.0: constant lr)")
    parser.add_argument("--average-from", type=int, default=100, help="first step averaged")
    parser.add_argument("--average-every", type=int, default=25)
    parser.add_argument("--kinds", nargs="*", default=[], help="dataset question kinds asked (none: all)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tag", default="default")
    return parser


def _run(args) -> int:
    import torch
    from torch.optim.swa_utils import AveragedModel

    from vlm.atomic import write_json
    from vlm.checkpoint import TOKENIZER_DIR, load_pretrained
    from vlm.data import DataConfig, load_examples
    from vlm.demo.dataset import DemoDataConfig, ensure_demo_dataset, question_kinds
    from vlm.demo.recipe import SessionMix, TeacherTrainConfig
    from vlm.demo.step_batches import StepBatches
    from vlm.demo.teacher import VQA_STAGE, train_decoder_stage, vqa_batch
    from vlm.demo.train_teacher import accuracy_by_kind, blank_images
    from vlm.demo.training_state import TrainingState
    from vlm.evaluate import EvalConfig, evaluate_mcq
    from vlm.paths import cache_dir
    from vlm.tokenizer import load_tokenizer

    if not 1 <= args.average_from <= args.steps or args.average_every < 1:
        raise UsageError(
            f"--average-from {args.average_from} must be in [1, --steps {args.steps}] and --average-every >= 1: "
            "otherwise no snapshot is averaged"
        )
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    data_config = DemoDataConfig()
    val, _ = load_examples(
        DataConfig(source=str(ensure_demo_dataset(data_config, cache_dir())), split="validation")
    )
    kinds = question_kinds(data_config, "validation")
    correct = {e.question_id: e.correct_choice_idx for e in val}
    eval_config = EvalConfig(batch_size=64, show_progress=False)

    model = load_pretrained(args.init).float()
    # The checkpoint's own tokenizer: another generator version's vocabulary would give other word ids.
    tokenizer = load_tokenizer(str(args.init / TOKENIZER_DIR), model.cfg)

    def score(model, examples=val) -> dict:
        result = evaluate_mcq(model, tokenizer, examples, eval_config)
        return {"mcq": round(result.accuracy, 4), "by_kind": accuracy_by_kind(result, kinds, correct)}

    config = TeacherTrainConfig(
        vqa_steps=args.steps,
        batch_size=args.batch_size,
        session=SessionMix(kinds=tuple(args.kinds)),
        first_kinds=(),
        first_steps=0,
        lr=args.lr,
        min_lr_ratio=args.min_lr_ratio,
        warmup_steps=20,
        seed=args.seed,
    )
    averaged = AveragedModel(model)
    curve = [{"step": 0, **score(model)}]
    logger.info("step 0: %s", curve[-1])

    def after_step(done: int) -> None:
        if done >= args.average_from and (done - args.average_from) % args.average_every == 0:
            averaged.update_parameters(model)
        if done % args.eval_every == 0 or done == args.steps:
            model.eval()
            curve.append({"step": done, **score(model)})
            model.train()
            logger.info("step %d: %s", done, curve[-1])

    rng = random.Random(f"teacher-polish/{args.seed}")
    make = partial(vqa_batch, tokenizer=tokenizer, cfg=model.cfg, spec=model.image_spec, config=config)
    start = time.time()
    batches = StepBatches(make, rng, None)
    train_decoder_stage(
        model, VQA_STAGE, args.steps, batches, config, TrainingState(None, {}), after_step=after_step
    )
    seconds = time.time() - start
    average = averaged.module.eval()
    blank = blank_images(val)
    results = {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "train_seconds": round(seconds, 1),
        "curve": curve,
        "averaged": {**score(average), "snapshots": int(averaged.n_averaged)},
        "averaged_blank": score(average, blank)["mcq"],
        "final_blank": score(model, blank)["mcq"],
    }
    out = Path("benchmarks/results") / f"teacher_polish_{args.tag}.json"
    write_json(out, results, indent=2)
    print(json.dumps(results, indent=2))
    return 0


def main(argv=None) -> int:
    return run(_run, _parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
