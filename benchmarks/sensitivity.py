"""Sensitivity of the demo teacher to each compression knob at its strongest setting.

`python -m benchmarks.sensitivity [--teacher DIR] [--n 1000] [--out benchmarks/results/sensitivity.json]`
prints accuracy (with its 95% interval), the exact paired (McNemar) p-value of its difference from the
teacher on the same questions, and analytic FLOPs per question on the demo validation split for:
the teacher, global view only, 6x6, 4x4 and 2x2 tokens per view, 3/4 and half the view size, a quarter of the decoder
blocks dropped, a quarter of the encoder blocks dropped (least important first, as the search drops them),
a 50% resampler (6x6 queries), the token reducers (50% of the tokens kept by norm, 50% and 25% by a scorer, token
merging at 4, 8 and 12 tokens per encoder block; fresh weights after the demo study's warm-up), and the same
questions with blank images.
`--only NAME [NAME ...]` evaluates just those rows (plus the teacher, which every row is compared with).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

from ledger.config import DataSettings, ModelSettings, load_study_config
from ledger.world import load_split, load_teacher
from search.importance import block_influence, drop_order
from search.trial_eval import SubsetEvaluator
from search.warmup import load_warmup_set, teacher_letter_logits, warm_up_as_study
from vlm.compression import compress, plan_student
from vlm.config import CompressionConfig
from vlm.demo.train_teacher import blank_images
from vlm.evaluate import EvalConfig, disagreements, paired_exact_p


def knob_configs(cfg, decoder_order, encoder_order) -> dict[str, CompressionConfig]:
    quarter_dec = max(1, cfg.lm_n_blocks // 4)
    quarter_enc = max(1, cfg.vit_n_blocks // 4)
    return {
        "teacher": CompressionConfig(),
        "global view only": CompressionConfig(max_grid_side=1),
        "token grid 6x6": CompressionConfig(token_grid=6),
        "token grid 4x4": CompressionConfig(token_grid=4),
        "token grid 2x2": CompressionConfig(token_grid=2),
        "3/4 view size": CompressionConfig(view_size=cfg.vit_img_size * 3 // 4),
        "half view size": CompressionConfig(view_size=cfg.vit_img_size // 2),
        "1/4 decoder layers dropped": CompressionConfig(
            drop_decoder_layers=tuple(decoder_order[:quarter_dec])
        ),
        "1/4 encoder layers dropped": CompressionConfig(
            drop_encoder_layers=tuple(encoder_order[:quarter_enc])
        ),
        # The demo study's reference: 6x6 queries at width 64, from scratch, after the study's warm-up.
        "50% resampler (warmed up)": CompressionConfig(token_grid=6, resampler_width=64),
        "norm drop 50%": CompressionConfig(keep_tokens_by_norm=cfg.mp_image_token_length // 2),
        "score prune 50% (warmed up)": CompressionConfig(keep_tokens_by_score=cfg.mp_image_token_length // 2),
        # The demo-reducers study's smallest keep fraction: its strongest pruning.
        "score prune 25% (warmed up)": CompressionConfig(keep_tokens_by_score=cfg.mp_image_token_length // 4),
        "merge r=4 per block": CompressionConfig(merge_per_block=4),
        "merge r=8 per block": CompressionConfig(merge_per_block=8),
        # The demo-reducers study's largest r: 64 patches lose 48 of them over the 4 encoder blocks.
        "merge r=12 per block": CompressionConfig(merge_per_block=12),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--teacher", default="demo", help="checkpoint folder (default: the shipped demo teacher)"
    )
    parser.add_argument("--n", type=int, default=1000, help="validation questions")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/sensitivity.json"))
    parser.add_argument(
        "--only", nargs="+", default=None, metavar="NAME", help="rows to evaluate (names as printed)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    teacher, tokenizer = load_teacher(ModelSettings(teacher=args.teacher, device="cpu"))
    data = DataSettings(source="demo")
    val = load_split(data, "validation", args.n)
    calibration = load_split(data, "train", 64)
    decoder_scores, encoder_scores = block_influence(teacher, tokenizer, calibration)
    evaluator = SubsetEvaluator(tokenizer, val, EvalConfig(batch_size=100, show_progress=False))
    rows = []
    teacher_flops = None
    teacher_result = None
    correct = {e.question_id: e.correct_choice_idx for e in val}

    def paired_vs_teacher(result) -> dict:
        only_teacher, only_knob = disagreements(teacher_result, result, correct)
        return {
            "only_teacher_right": only_teacher,
            "only_config_right": only_knob,
            "paired_p": paired_exact_p(only_teacher, only_knob),
        }

    configs = knob_configs(teacher.cfg, drop_order(decoder_scores), drop_order(encoder_scores))
    unknown = sorted(set(args.only or ()) - set(configs) - {BLANK})
    if unknown:
        raise SystemExit(f"--only: unknown row(s) {unknown}; rows: {[*configs, BLANK]}")
    for name, compression in configs.items():
        if args.only and name != "teacher" and name not in args.only:
            continue
        plan = plan_student(teacher.cfg, compression)
        torch.manual_seed(0)  # a resampler's or scorer's fresh weights
        student = compress(teacher, compression)
        if compression.has_fresh_weights:  # as the demo study does before scoring such a trial
            warm_up(student, plan, teacher, tokenizer)
        score = evaluator.score(student, plan)
        cost = evaluator.cost(student, plan)
        teacher_flops = teacher_flops or cost.flops
        teacher_result = teacher_result or score.result
        low, high = score.result.interval
        rows.append(
            {
                "config": name,
                "accuracy": score.accuracy,
                "ci_low": low,
                "ci_high": high,
                **paired_vs_teacher(score.result),
                "mflops_per_question": cost.flops / 1e6,
                "flops_vs_teacher": cost.flops / teacher_flops,
                "views": cost.views,
                "image_tokens": cost.image_tokens,
                "compression": compression.to_dict(),
            }
        )
    if args.only and BLANK not in args.only:
        _write(rows, args.out, len(val), decoder_scores, encoder_scores)
        return
    blank = SubsetEvaluator(tokenizer, blank_images(val), EvalConfig(batch_size=100, show_progress=False))
    blank_score = blank.score(teacher, None)
    rows.append(
        {
            "config": BLANK,
            "accuracy": blank_score.accuracy,
            "ci_low": blank_score.result.interval[0],
            "ci_high": blank_score.result.interval[1],
            **paired_vs_teacher(blank_score.result),
            "mflops_per_question": rows[0]["mflops_per_question"],
            "flops_vs_teacher": 1.0,
            "views": rows[0]["views"],
            "image_tokens": rows[0]["image_tokens"],
            "compression": None,
        }
    )

    _write(rows, args.out, len(val), decoder_scores, encoder_scores)


BLANK = "teacher, blank images"


def warm_up(student, plan, teacher, tokenizer) -> None:
    """The demo study's warm-up of fresh weights (its [search] settings and warm-up questions)."""
    study = load_study_config("demo")
    warmup = load_warmup_set(study, tokenizer, EvalConfig(batch_size=100, show_progress=False))
    logits = teacher_letter_logits(teacher, warmup, study.search.batch_size)
    warm_up_as_study(student, plan, teacher, study.search, warmup, logits, seed=0)


def _write(rows, out: Path, n: int, decoder_scores, encoder_scores) -> None:
    print(
        f"{'config':<28} {'accuracy':>9} {'95% CI':>15} {'paired p':>9} {'MFLOPs/q':>10} {'vs teacher':>10} "
        f"{'views':>6} {'img tok':>8}"
    )
    for r in rows:
        print(
            f"{r['config']:<28} {r['accuracy']:>9.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}] {r['paired_p']:>9.2g} "
            f"{r['mflops_per_question']:>10.1f} {r['flops_vs_teacher']:>10.2f} {r['views']:>6.1f} {r['image_tokens']:>8.1f}"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {"n": n, "rows": rows, "block_influence": {"decoder": decoder_scores, "encoder": encoder_scores}},
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
