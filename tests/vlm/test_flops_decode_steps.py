"""Decode-step FLOPs (the lab's 3 generation steps with and without 5 warm-up steps): hand count, analytic,
fvcore and the CLI.

Per decode step with `context` keys, one decoder block costs (multiply-adds) q,o: 2d², k,v: 2·d·kv,
q·kᵀ and attn·v: 2·context·d, gated MLP: 3·d·inter; the LM head d·V once per step; 2 FLOPs per multiply-add.
"""

from __future__ import annotations

import json

import pytest

from vlm.compression import plan_student
from vlm.config import CompressionConfig, VLMConfig
from vlm.flops import (
    build_on_meta,
    count_decode_steps,
    decode_flops,
    decode_steps_flops,
    fvcore_decode_steps_flops,
    main,
)


def _hand(d: int, kv: int, inter: int, blocks: int, vocab: int, prompt: int, steps: int, warmup: int) -> int:
    """Closed form: the contexts are prompt+warmup+1 .. prompt+warmup+steps, so they sum to
    steps·(prompt+warmup) + steps·(steps+1)/2."""
    context_sum = steps * (prompt + warmup) + steps * (steps + 1) // 2
    per_step_fixed = blocks * (2 * d * d + 2 * d * kv + 3 * d * inter) + d * vocab
    return 2 * (steps * per_step_fixed + blocks * 2 * d * context_sum)


def test_tiny_three_steps_with_and_without_five_warmup_steps(tiny_cfg):
    # Tiny LM: d=48, kv dim 24, inter 96, 2 blocks, vocabulary 166; prompt of 68 tokens.
    cold = decode_steps_flops(tiny_cfg, 68, steps=3)
    warm = decode_steps_flops(tiny_cfg, 68, steps=3, warmup_steps=5)
    assert cold == _hand(48, 24, 96, 2, 166, 68, 3, 0) == 377_280
    assert warm == _hand(48, 24, 96, 2, 166, 68, 3, 5) == 383_040
    # Five more keys in each of 3 steps x 2 blocks: 2 FLOPs x 2 matmuls x 48 dims each.
    assert warm - cold == 3 * 2 * 5 * 2 * 2 * 48


def test_decode_flops_is_steps_after_the_prefill(tiny_cfg):
    # An answer of A tokens: the first from the prefill, then A-1 decode steps with no warm-up.
    assert decode_flops(tiny_cfg, 68, 4) == decode_steps_flops(tiny_cfg, 68, 3)
    assert decode_steps_flops(tiny_cfg, 68, 0, warmup_steps=5) == 0
    with pytest.raises(ValueError, match="must be >= 0"):
        decode_steps_flops(tiny_cfg, 68, -1)


@pytest.mark.parametrize("warmup", [0, 5])
def test_fvcore_matches_analytic_tiny(tiny_cfg, warmup):
    model = build_on_meta(plan_student(tiny_cfg, CompressionConfig()))
    assert fvcore_decode_steps_flops(model, 68, 3, warmup) == decode_steps_flops(tiny_cfg, 68, 3, warmup)


def test_nanovlm_lab_numbers():
    # nanoVLM (d=960, 5 KV heads of 64 -> 320, inter 2560, 32 blocks, vocabulary 49218), 900-token prompt.
    cfg = VLMConfig()
    result = count_decode_steps(cfg, CompressionConfig(), 900, steps=3, warmup_steps=5, with_fvcore=False)
    cold, warm = _hand(960, 320, 2560, 32, 49218, 900, 3, 0), _hand(960, 320, 2560, 32, 49218, 900, 3, 5)
    assert (cold, warm) == (2_503_445_760, 2_505_288_960)
    assert result["analytic"] == {"without_warmup": cold, "with_warmup": warm}
    # fvcore on the 460M architecture (meta device): one step after the 5 warm-up steps (~2 s per traced step).
    model = build_on_meta(plan_student(cfg, CompressionConfig()))
    assert fvcore_decode_steps_flops(model, 900, 1, 5) == decode_steps_flops(cfg, 900, 1, 5)


def test_cli_decode_steps(capsys):
    args = ["--config", "default", "--image-size", "640x480", "--decode-steps", "3", "--warmup-steps", "5"]
    main([*args, "--no-fvcore"])
    result = json.loads(capsys.readouterr().out)
    steps = result["decode_steps"]
    assert steps["prompt_tokens"] == result["prompt_tokens"] == 900
    assert steps["analytic"] == {"without_warmup": 2_503_445_760, "with_warmup": 2_505_288_960}


def test_cli_rejects_negative_warmup(capsys):
    with pytest.raises(SystemExit):
        main(["--decode-steps", "3", "--warmup-steps", "-1", "--no-fvcore"])
    assert "--warmup-steps" in capsys.readouterr().err


def test_cli_decode_steps_follow_the_student(capsys):
    # 4x4 tokens per view: 13 views x 16 = 208 image tokens, 68 text tokens -> a 276-token prompt.
    main(["--compression", '{"token_grid": 4}', "--decode-steps", "3", "--no-fvcore"])
    steps = json.loads(capsys.readouterr().out)["decode_steps"]
    assert steps["prompt_tokens"] == 276
    assert steps["analytic"]["without_warmup"] == _hand(960, 320, 2560, 32, 49218, 276, 3, 0)
    assert "fvcore" not in steps
