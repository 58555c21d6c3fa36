"""How long a warm-up do the search's fresh weights need on the demo teacher? (issue 14 follow-up)

`python -m benchmarks.warmup_sweep [--steps 0 40 120] [--lr 3e-3 1e-3] [--n 1000]`

Trials with fresh weights (a from-scratch resampler, a token scorer) are scored after a short warm-up
(`search.warmup.warm_up_resampler`: only the fresh weights train, distilled from the teacher's answer letters
on the study's warm-up questions). The demo study's 40 steps at lr 3e-3 were set on the 0.393 teacher; on the
0.731 one the 50% resampler reference scores 0.280 in the search and the 50% score pruner 0.231. This sweeps
steps and lr for a 50% scorer and a 50% resampler (6x6 queries at half the decoder's width, 96; the study's
reference is width 64, the largest of its `resampler_widths`) at the demo study's warm-up batch size and
questions, and prints the accuracy on the validation split beside the seconds each warm-up took (0 steps:
the fresh weights untrained, once). Results: `benchmarks/results/warmup_sweep.json`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path

import torch

from ledger.config import DataSettings, ModelSettings, load_study_config
from ledger.world import load_split, load_teacher
from search.trial_eval import SubsetEvaluator
from search.warmup import teacher_letter_logits, warm_up_resampler
from vlm.compression import compress, plan_student
from vlm.config import CompressionConfig
from vlm.evaluate import EvalConfig


def fresh_weight_configs(cfg) -> dict[str, CompressionConfig]:
    """Two configs with fresh weights, like the demo study's references (the resampler at width 96)."""
    native = round(cfg.mp_image_token_length**0.5)
    return {
        "50% resampler": CompressionConfig(
            token_grid=round(native / 2**0.5), resampler_width=cfg.lm_hidden_dim // 2
        ),
        "score prune 50%": CompressionConfig(keep_tokens_by_score=cfg.mp_image_token_length // 2),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[0, 40, 120])
    parser.add_argument("--lr", type=float, nargs="+", default=[3e-3, 1e-3])
    parser.add_argument("--n", type=int, default=1000, help="validation questions")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/warmup_sweep.json"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    study = load_study_config("demo")
    teacher, tokenizer = load_teacher(ModelSettings(teacher="demo", device="cpu"))
    val = load_split(DataSettings(source="demo"), "validation", args.n)
    evaluator = SubsetEvaluator(tokenizer, val, EvalConfig(batch_size=100, show_progress=False))
    warmup_examples = load_split(
        study.data, study.data.train_split, study.data.warmup_size, seed=study.data.subset_seed + 1
    )
    warmup = SubsetEvaluator(tokenizer, warmup_examples, EvalConfig(batch_size=100, show_progress=False))
    logits = teacher_letter_logits(teacher, warmup, study.search.batch_size)
    rows = []
    print(f"{'config':<18} {'steps':>6} {'lr':>8} {'accuracy':>9} {'seconds':>8}")
    for name, compression in fresh_weight_configs(teacher.cfg).items():
        plan = plan_student(teacher.cfg, compression)
        for steps in args.steps:
            for lr in args.lr[:1] if steps == 0 else args.lr:  # lr is moot without a step
                torch.manual_seed(0)  # the fresh weights, as a trial draws them
                student = compress(teacher, compression)
                start = time.perf_counter()
                loss = warm_up_resampler(
                    student, plan, warmup, logits, steps, lr, study.search.resampler_warmup_batch_size
                )
                seconds = time.perf_counter() - start
                score = evaluator.score(student, plan)
                row = {
                    "config": name,
                    "steps": steps,
                    "lr": lr,
                    "accuracy": score.accuracy,
                    "interval": list(score.result.interval),
                    "final_loss": loss,
                    "warmup_seconds": round(seconds, 1),
                    "compression": compression.to_dict(),
                }
                rows.append(row)
                print(f"{name:<18} {steps:>6} {lr:>8.0e} {score.accuracy:>9.3f} {seconds:>8.1f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "n": len(val),
                "threads": torch.get_num_threads(),
                "rows": rows,
                "study": dataclasses.asdict(study.search),
            },
            indent=2,
            default=str,
        )
    )


if __name__ == "__main__":
    main()
