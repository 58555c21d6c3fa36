"""Parity of our nanoVLM port with an independent reference implementation of nanoVLM's forward pass.

Checkpoints are random, in nanoVLM's exact on-disk layout (tests/nanovlm_reference.py writes them); the
reference was checked against nanoVLM's own modules to ~5e-6. No padding: nanoVLM has no padding-aware
positions.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import vlm
from tests.nanovlm_reference import (
    EMBED_KEY,
    HEAD_KEY,
    image_token_id,
    reference_forward,
    tiny_nanovlm_config,
    write_nanovlm_checkpoint,
)

ATOL = 1e-4
TOKENS_PER_VIEW = 16  # tiny config: 8x8 patches, pixel shuffle 2


def _image_run(ids: list[int], tag: int, image_tok: int) -> None:
    ids.append(tag)
    ids.extend([image_tok] * TOKENS_PER_VIEW)


def make_batch(cfg: dict, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Two equal-length prompts: 3 views (global + 2 crops) then 2 views (global + 1 crop).

    Returns input_ids [2, T], images [5, 3, 32, 32] (consumed in order: prompt 0's views, then prompt 1's)
    and the image token id.
    """
    gen = torch.Generator().manual_seed(seed)
    image_tok = image_token_id(cfg)
    base = cfg["lm_base_vocab_size"]
    extra = list(cfg["vlm_extra_tokens"])
    global_tok = base + extra.index("global_image_token")
    crop_toks = [base + extra.index(f"r1c{c}") for c in (1, 2)]

    def text(n: int) -> list[int]:
        return torch.randint(0, base, (n,), generator=gen).tolist()

    p0 = text(3)
    _image_run(p0, global_tok, image_tok)
    for tag in crop_toks:
        _image_run(p0, tag, image_tok)
    p0 += text(7)

    p1 = text(5)
    _image_run(p1, global_tok, image_tok)
    p1 += text(4)
    _image_run(p1, crop_toks[0], image_tok)
    p1 += text(len(p0) - len(p1))
    assert len(p0) == len(p1)

    input_ids = torch.tensor([p0, p1], dtype=torch.long)
    assert int((input_ids == image_tok).sum()) == 5 * TOKENS_PER_VIEW
    images = torch.rand(5, 3, cfg["vit_img_size"], cfg["vit_img_size"], generator=gen)
    return input_ids, images, image_tok


def _our_logits(
    ckpt: Path, input_ids: torch.Tensor, images: torch.Tensor, image_tok: int, **kwargs
) -> torch.Tensor:
    model = vlm.load_pretrained(str(ckpt), image_token_id=image_tok)
    model.eval()
    with torch.no_grad():
        return model(input_ids, images, **kwargs).float()


def _assert_close(ours: torch.Tensor, ref: torch.Tensor) -> None:
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    diff = (ours - ref).abs()
    worst = divmod(int(diff.flatten().argmax()) // ref.shape[-1], ref.shape[1])
    assert float(diff.max()) <= ATOL, (
        f"max |ours - ref| = {float(diff.max()):.3e} at (batch, position) {worst}; "
        f"mean {float(diff.mean()):.3e}; logit std {float(ref.std()):.3f}"
    )


@pytest.mark.parametrize("tie_in_file", ["head", "embedding", "both"])
def test_logits_match_reference(tmp_path: Path, tie_in_file: str) -> None:
    cfg = tiny_nanovlm_config()
    ckpt = write_nanovlm_checkpoint(tmp_path / "ckpt", cfg, seed=7, tie_in_file=tie_in_file)
    input_ids, images, image_tok = make_batch(cfg, seed=1)
    assert image_tok == 100

    ref = reference_forward(ckpt, input_ids, images, image_tok)
    ours = _our_logits(ckpt, input_ids, images, image_tok)
    assert ours.shape == (2, input_ids.shape[1], cfg["lm_vocab_size"])
    _assert_close(ours, ref)


def test_all_ones_attention_mask_matches_reference(tmp_path: Path) -> None:
    cfg = tiny_nanovlm_config()
    ckpt = write_nanovlm_checkpoint(tmp_path / "ckpt", cfg, seed=3)
    input_ids, images, image_tok = make_batch(cfg, seed=2)
    ref = reference_forward(ckpt, input_ids, images, image_tok)
    ours = _our_logits(ckpt, input_ids, images, image_tok, attention_mask=torch.ones_like(input_ids))
    _assert_close(ours, ref)


def test_single_prompt_matches_its_batch_row(tmp_path: Path) -> None:
    """Prompt 1 alone (its 2 views only) gives the reference's logits for that prompt."""
    cfg = tiny_nanovlm_config()
    ckpt = write_nanovlm_checkpoint(tmp_path / "ckpt", cfg, seed=5)
    input_ids, images, image_tok = make_batch(cfg, seed=4)
    ref = reference_forward(ckpt, input_ids[1:], images[3:], image_tok)
    ours = _our_logits(ckpt, input_ids[1:], images[3:], image_tok)
    _assert_close(ours, ref)


def test_deeper_gqa_config_matches_reference(tmp_path: Path) -> None:
    """Another shape: one kv head for four query heads, three blocks per tower, non-default RoPE base."""
    cfg = tiny_nanovlm_config(lm_n_kv_heads=1, lm_n_blocks=3, vit_n_blocks=3, lm_re_base=100000)
    ckpt = write_nanovlm_checkpoint(tmp_path / "ckpt", cfg, seed=11)
    input_ids, images, image_tok = make_batch(cfg, seed=6)
    _assert_close(
        _our_logits(ckpt, input_ids, images, image_tok), reference_forward(ckpt, input_ids, images, image_tok)
    )


# ------------------------------------------------------------------------------- strict loading errors


def _rewrite_weights(ckpt: Path, edit) -> None:
    path = ckpt / "model.safetensors"
    state = load_file(str(path))
    edit(state)
    save_file(state, str(path))


def test_missing_key_is_named(tmp_path: Path) -> None:
    ckpt = write_nanovlm_checkpoint(tmp_path / "ckpt", tiny_nanovlm_config())
    key = "decoder.blocks.1.mlp.up_proj.weight"
    _rewrite_weights(ckpt, lambda sd: sd.pop(key))
    with pytest.raises(Exception, match=re.escape(key)):
        vlm.load_pretrained(str(ckpt), image_token_id=100)


def test_missing_vision_key_is_named(tmp_path: Path) -> None:
    ckpt = write_nanovlm_checkpoint(tmp_path / "ckpt", tiny_nanovlm_config())
    key = "vision_encoder.blocks.0.attn.qkv_proj.bias"
    _rewrite_weights(ckpt, lambda sd: sd.pop(key))
    with pytest.raises(Exception, match=re.escape(key)):
        vlm.load_pretrained(str(ckpt), image_token_id=100)


def test_missing_both_tied_names_is_an_error(tmp_path: Path) -> None:
    ckpt = write_nanovlm_checkpoint(tmp_path / "ckpt", tiny_nanovlm_config(), tie_in_file="both")

    def drop_both(sd: dict) -> None:
        del sd[HEAD_KEY]
        del sd[EMBED_KEY]

    _rewrite_weights(ckpt, drop_both)
    with pytest.raises(Exception, match=r"decoder\.(head|token_embedding)\.weight"):
        vlm.load_pretrained(str(ckpt), image_token_id=100)


def test_unexpected_key_is_named(tmp_path: Path) -> None:
    ckpt = write_nanovlm_checkpoint(tmp_path / "ckpt", tiny_nanovlm_config())
    key = "decoder.blocks.0.attn.q_proj.bias"
    _rewrite_weights(ckpt, lambda sd: sd.__setitem__(key, torch.zeros(48)))
    with pytest.raises(Exception, match=re.escape(key)):
        vlm.load_pretrained(str(ckpt), image_token_id=100)


def test_wrong_shape_names_key_and_both_shapes(tmp_path: Path) -> None:
    ckpt = write_nanovlm_checkpoint(tmp_path / "ckpt", tiny_nanovlm_config())
    key = "decoder.blocks.0.mlp.gate_proj.weight"  # expected [96, 48]
    _rewrite_weights(ckpt, lambda sd: sd.__setitem__(key, torch.zeros(97, 48)))
    with pytest.raises(Exception) as info:
        vlm.load_pretrained(str(ckpt), image_token_id=100)
    message = str(info.value)
    assert key in message
    assert re.search(r"96\D{1,3}48", message), message
    assert re.search(r"97\D{1,3}48", message), message
