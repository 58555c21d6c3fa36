"""FLOP counting: each analytic stage pinned to a hand computation, analytic vs fvcore, the knobs, the CLI.

Tiny config: ViT d=32, inter=64, patch 4, 32 px views (n = 64 patches), 2 blocks; pixel shuffle 2;
LM d=48, inter=96, 4 heads / 2 KV heads (head 12, kv dim 24), 2 blocks, vocabulary 166.
Convention: 2 FLOPs per multiply-add, full attention score matrix, nothing elementwise.
"""

from __future__ import annotations

import json

import pytest

from vlm.config import CompressionConfig, VLMConfig
from vlm.flops import (
    analytic_flops,
    connector_flops_per_view,
    count_question,
    decode_flops,
    main,
    prefill_flops,
    vision_flops_per_view,
)
from vlm.model import ConnectorConfig

IMAGE = (64, 32)  # 1x2 crops + global = 3 views in the tiny config
TEXT = 20


def _lm_layer_macs(tokens: int, context: int) -> int:
    """Tiny LM, one block: q,o (48x48), k,v (48x24), q·kᵀ and attn·v, gated MLP (3 x 48x96)."""
    return tokens * (2 * 48 * 48 + 2 * 48 * 24) + 2 * tokens * context * 48 + 3 * tokens * 48 * 96


HEAD_MACS = 48 * 166


def test_vision_per_view_by_hand(tiny_cfg):
    n, d, inter, blocks = 64, 32, 64, 2
    conv = n * 3 * 4 * 4 * d  # each patch: 3x4x4 inputs -> d outputs
    block = 4 * n * d * d + 2 * n * n * d + 2 * n * d * inter
    assert vision_flops_per_view(tiny_cfg) == 2 * (conv + blocks * block) == 3_342_336


def test_connector_per_view_by_hand(tiny_cfg):
    # Pixel shuffle: 16 rows of 32*4 = 128 features -> 48.
    assert connector_flops_per_view(tiny_cfg, ConnectorConfig()) == 2 * 16 * 128 * 48 == 196_608
    # Pooling is elementwise: the projector's cost does not change.
    assert connector_flops_per_view(tiny_cfg, ConnectorConfig(token_grid=2)) == 196_608
    # Resampler of width 16 with 9 queries over 64 patches of width 32.
    n, d, w, q, lm = 64, 32, 16, 9, 48
    macs = n * d * w + 2 * q * w * w + 2 * n * w * w + 2 * q * n * w + 4 * q * w * w + q * w * lm
    resampler = ConnectorConfig(token_grid=3, resampler_width=16, resampler_heads=2)
    assert connector_flops_per_view(tiny_cfg, resampler) == 2 * macs == 209_408


def test_prefill_by_hand(tiny_cfg):
    tokens = 50
    per_layer = 6912 * tokens + 96 * tokens * tokens + 13824 * tokens
    assert per_layer == _lm_layer_macs(tokens, tokens)
    assert prefill_flops(tiny_cfg, tokens) == 2 * (2 * per_layer + HEAD_MACS) == 5_123_136


def test_decode_by_hand(tiny_cfg):
    prompt = 68
    # Answer of 3 tokens: the first comes from the prefill; steps 2 and 3 attend to 69 and 70 keys.
    steps = [2 * _lm_layer_macs(1, context) + HEAD_MACS for context in (69, 70)]
    assert decode_flops(tiny_cfg, prompt, 3) == 2 * sum(steps) == 251_136
    assert decode_flops(tiny_cfg, prompt, 1) == 0  # MCQ: the letter is read from the prefill


def test_breakdown_totals(tiny_cfg):
    b = analytic_flops(tiny_cfg, ConnectorConfig(), n_views=3, prompt_tokens=68, answer_tokens=3)
    assert b.vision == 3 * 3_342_336 and b.connector == 3 * 196_608
    assert b.total == b.vision + b.connector + prefill_flops(tiny_cfg, 68) + 251_136
    assert b.to_dict()["total"] == b.total


STUDENTS = {
    "teacher": CompressionConfig(),
    "token_grid_2": CompressionConfig(token_grid=2),
    "view_16": CompressionConfig(view_size=16),
    "drop_layers": CompressionConfig(drop_decoder_layers=(0,), drop_encoder_layers=(1,)),
    "resampler": CompressionConfig(token_grid=3, resampler_width=16, resampler_heads=2),
    "global_only": CompressionConfig(max_grid_side=1),
}


@pytest.mark.parametrize("name", list(STUDENTS))
def test_analytic_matches_fvcore(tiny_cfg, name):
    result = count_question(tiny_cfg, STUDENTS[name], IMAGE, TEXT, answer_tokens=3)
    analytic, auto = result["analytic"], result["fvcore"]
    for stage in ("vision_per_view", "connector_per_view", "prefill", "decode", "total"):
        assert auto[stage] == pytest.approx(analytic[stage], rel=0.01), stage
    assert analytic["decode"] > 0
    assert result["relative_difference"] < 0.01


def test_analytic_matches_fvcore_on_full_nanovlm():
    # The real 460M architecture, built on the meta device (no weights): ~a second or two.
    result = count_question(VLMConfig(), CompressionConfig(), (640, 480), text_tokens=68)
    assert result["views"] == 13 and result["prompt_tokens"] == 900
    for stage in ("vision_per_view", "connector_per_view", "prefill", "total"):
        assert result["fvcore"][stage] == pytest.approx(result["analytic"][stage], rel=0.01), stage


def _count(cfg, compression, answer_tokens=1):
    return count_question(cfg, compression, IMAGE, TEXT, answer_tokens, with_fvcore=False)


def test_token_grid_changes_prefill_by_the_token_difference(tiny_cfg):
    teacher = _count(tiny_cfg, CompressionConfig())
    pooled = _count(tiny_cfg, CompressionConfig(token_grid=2))
    assert teacher["image_tokens"] == 3 * 16 and pooled["image_tokens"] == 3 * 4
    t1, t2 = TEXT + 48, TEXT + 12
    expected = 2 * 2 * (_lm_layer_macs(t1, t1) - _lm_layer_macs(t2, t2))
    assert teacher["analytic"]["prefill"] - pooled["analytic"]["prefill"] == expected
    assert teacher["analytic"]["vision"] == pooled["analytic"]["vision"]
    assert teacher["analytic"]["connector"] == pooled["analytic"]["connector"]


def test_global_only_divides_vision_by_the_view_ratio(tiny_cfg):
    teacher = _count(tiny_cfg, CompressionConfig())
    single = _count(tiny_cfg, CompressionConfig(max_grid_side=1))
    assert (teacher["views"], single["views"]) == (3, 1)
    assert teacher["analytic"]["vision"] == 3 * single["analytic"]["vision"]
    assert teacher["analytic"]["connector"] == 3 * single["analytic"]["connector"]
    assert single["image_tokens"] == 16


def test_dropping_layers_removes_their_share(tiny_cfg):
    teacher = _count(tiny_cfg, CompressionConfig(), answer_tokens=3)["analytic"]
    dropped = _count(tiny_cfg, CompressionConfig(drop_decoder_layers=(1,), drop_encoder_layers=(0,)), 3)
    dropped = dropped["analytic"]
    head = 2 * HEAD_MACS
    assert dropped["prefill"] - head == (teacher["prefill"] - head) // 2
    assert dropped["decode"] - 2 * head == (teacher["decode"] - 2 * head) // 2
    conv = 2 * 64 * 3 * 16 * 32
    assert dropped["vision_per_view"] - conv == (teacher["vision_per_view"] - conv) // 2


def test_smaller_views_shrink_the_vit(tiny_cfg):
    small = _count(tiny_cfg, CompressionConfig(view_size=16))
    n, d = 16, 32  # 4x4 patches
    block = 4 * n * d * d + 2 * n * n * d + 2 * n * d * 64
    assert small["analytic"]["vision_per_view"] == 2 * (n * 3 * 16 * d + 2 * block)
    assert small["image_tokens"] == 3 * 4  # 2x2 tokens per view after pixel shuffle


def test_cli_on_nanovlm_coco_image(capsys):
    main(["--config", "default", "--image-size", "640x480", "--prompt-tokens", "900", "--no-fvcore"])
    result = json.loads(capsys.readouterr().out)
    assert result["views"] == 13
    assert result["image_tokens"] == 832
    assert result["text_tokens"] == 68 and result["prompt_tokens"] == 900
    assert result["analytic"]["vision"] == pytest.approx(2.78e12, rel=0.01)
    assert 3.4e12 <= result["analytic"]["total"] <= 3.5e12
    assert "fvcore" not in result
    assert "2 FLOPs per multiply-add" in result["convention"]


def test_cli_with_compression(capsys):
    main(["--image-size", "640x480", "--compression", '{"token_grid": 4, "max_grid_side": 1}', "--no-fvcore"])
    result = json.loads(capsys.readouterr().out)
    assert result["views"] == 1 and result["image_tokens"] == 16
    assert result["prompt_tokens"] == 68 + 16
    assert result["compression"]["token_grid"] == 4


@pytest.mark.parametrize("size", ["640by480", "640x480x3", "x480", "0x480", "-5x480"])
def test_cli_rejects_bad_image_size(capsys, size):
    with pytest.raises(SystemExit) as info:
        main([f"--image-size={size}", "--no-fvcore"])
    assert info.value.code == 2  # argparse's usage error
    assert "640x480" in capsys.readouterr().err


def test_cli_rejects_prompt_shorter_than_the_image(capsys):
    assert main(["--prompt-tokens", "100", "--no-fvcore"]) == 2
    (error,) = capsys.readouterr().err.strip().splitlines()
    assert error.startswith("vlm.flops: error: ") and "shorter than the 832 image tokens" in error


def test_cli_rejects_a_compression_the_teacher_cannot_take_in_one_line(capsys):
    assert main(["--compression", '{"view_size": 500}', "--no-fvcore"]) == 2
    (error,) = capsys.readouterr().err.strip().splitlines()
    assert "view_size 500 must be a multiple of the patch size 16" in error
