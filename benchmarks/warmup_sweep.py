"""How should the search warm up its fresh weights on the demo teacher? (issue 14 follow-up)

`python -m benchmarks.warmup_sweep [--match-steps 0 200] [--saliency-steps 0 200] [--steps 0 40 120] [--lr 3e-3 1e-3]
[--n 1000]`

Trials with fresh weights (a from-scratch resampler, a token scorer) are scored after a short warm-up
(`search.warmup.warm_up_fresh_weights`): optionally `--match-steps` steps of connector matching (a resampler only:
it learns to reproduce the teacher's projector tokens pooled to its grid, `vlm.connector_match`) or
`--saliency-steps` steps of saliency ranking (a scorer only: it learns to rank tokens as the student's gradient
saliency with every token in the prompt does, `vlm.token_saliency`), then
`--steps` steps distilled from the teacher's answer letters, only the fresh weights training. This sweeps both
for the "50% resampler" and "score prune 50%" references of the demo study with reducers (`search.references`,
`studies/demo-reducers.toml`) at the study's
warm-up batch size and questions, and prints the accuracy on the validation split beside the seconds each
warm-up took (0 and 0 steps: the fresh weights untrained). Results: `benchmarks/results/warmup_sweep.json`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path

import optuna
import torch

from ledger.config import DataSettings, ModelSettings, load_study_config
from ledger.world import load_split, load_teacher
from search.references import reference_params
from search.space import suggest_compression
from search.trial_eval import SubsetEvaluator
from search.warmup import (
    ConnectorMatching,
    ScorerSaliency,
    load_warmup_set,
    teacher_letter_logits,
    warm_up_fresh_weights,
)
from vlm.compression import compress, plan_student
from vlm.config import CompressionConfig
from vlm.evaluate import EvalConfig


def fresh_weight_configs(cfg, space) -> dict[str, CompressionConfig]:
    """The demo study's references with fresh weights, as its search builds them."""
    params = reference_params(cfg, space)
    layers = list(range(max(cfg.lm_n_blocks, cfg.vit_n_blocks)))  # no reference drops a block
    return {
        name: suggest_compression(optuna.trial.FixedTrial(params[name]), space, layers, layers)
        for name in ("50% resampler", "score prune 50%")
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--match-steps", type=int, nargs="+", default=[0, 200], help="resampler only")
    parser.add_argument("--match-lr", type=float, default=3e-3)
    parser.add_argument("--saliency-steps", type=int, nargs="+", default=[0, 200], help="scorer only")
    parser.add_argument("--saliency-lr", type=float, default=3e-3)
    parser.add_argument("--steps", type=int, nargs="+", default=[0, 40, 120], help="letter steps")
    parser.add_argument("--lr", type=float, nargs="+", default=[3e-3, 1e-3], help="letter lr")
    parser.add_argument("--n", type=int, default=1000, help="validation questions")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/warmup_sweep.json"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    study = load_study_config("demo-reducers")  # the demo study with score pruning in its space
    teacher, tokenizer = load_teacher(ModelSettings(teacher="demo", device="cpu"))
    val = load_split(DataSettings(source="demo"), "validation", args.n)
    evaluator = SubsetEvaluator(tokenizer, val, EvalConfig(batch_size=100, show_progress=False))
    warmup = load_warmup_set(study, tokenizer, EvalConfig(batch_size=100, show_progress=False))
    logits = teacher_letter_logits(teacher, warmup, study.search.batch_size)
    rows = []
    print(f"{'config':<18} {'first':>6} {'steps':>6} {'lr':>8} {'accuracy':>9} {'seconds':>8}")
    for name, compression in fresh_weight_configs(teacher.cfg, study.space).items():
        plan = plan_student(teacher.cfg, compression)
        first_phase = args.match_steps if compression.resampler_width else args.saliency_steps
        for match_steps in first_phase:
            for steps in args.steps:
                for lr in args.lr[:1] if steps == 0 else args.lr:  # lr is moot without a step
                    torch.manual_seed(0)  # the fresh weights, as a trial draws them
                    student = compress(teacher, compression)
                    matching = ConnectorMatching(teacher.connector, match_steps, args.match_lr)
                    saliency = ScorerSaliency(match_steps, args.saliency_lr)
                    start = time.perf_counter()
                    loss = warm_up_fresh_weights(
                        student,
                        plan,
                        warmup,
                        logits,
                        steps,
                        lr,
                        study.search.resampler_warmup_batch_size,
                        matching=matching,
                        saliency=saliency,
                    )
                    seconds = time.perf_counter() - start
                    score = evaluator.score(student, plan)
                    rows.append(
                        {
                            "config": name,
                            "first_phase": "matching" if compression.resampler_width else "saliency",
                            "first_phase_steps": match_steps,
                            "first_phase_lr": args.match_lr
                            if compression.resampler_width
                            else args.saliency_lr,
                            "steps": steps,
                            "lr": lr,
                            "accuracy": score.accuracy,
                            "interval": list(score.result.interval),
                            "final_loss": loss,
                            "warmup_seconds": round(seconds, 1),
                            "compression": compression.to_dict(),
                        }
                    )
                    print(
                        f"{name:<18} {match_steps:>6} {steps:>6} {lr:>8.0e} {score.accuracy:>9.3f} {seconds:>8.1f}",
                        flush=True,
                    )
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
