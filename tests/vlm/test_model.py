"""The model's contract: shapes, image tokens consumed in order, padding-aware positions, greedy decoding."""

from __future__ import annotations

import pytest
import torch

from vlm.model import VisionLanguageModel

TOKENS_PER_VIEW = 16  # tiny config: 8x8 patches, pixel shuffle 2 -> 4x4


def _text_ids(model: VisionLanguageModel, n: int, seed: int) -> list[int]:
    """Random ids of plain words (above the 4 base specials and the 66 image tokens)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(70, model.cfg.lm_vocab_size, (n,), generator=gen).tolist()


def _prompt(model: VisionLanguageModel, layout: list[int | str], seed: int = 0) -> torch.Tensor:
    """Ids from a layout: an int n is n random words, "img" is one view's run of image tokens. [T]"""
    ids: list[int] = []
    for i, part in enumerate(layout):
        if part == "img":
            ids += [model.image_token_id] * TOKENS_PER_VIEW
        else:
            ids += _text_ids(model, part, seed + i)
    return torch.tensor(ids, dtype=torch.long)


def _views(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))  # [N, 3, S, S]


def test_forward_shapes(tiny_model):
    ids = torch.stack([_prompt(tiny_model, [3, "img", 4]), _prompt(tiny_model, [2, "img", 5], seed=9)])
    images = _views(2)
    vocab = tiny_model.cfg.lm_vocab_size
    assert tiny_model.tokens_per_view == TOKENS_PER_VIEW
    with torch.no_grad():
        features = tiny_model.encode_vision(images)
        embeds = tiny_model.project(features)
        logits = tiny_model(ids, images)
        last = tiny_model(ids, images, logits_to_keep=1)
    assert features.shape == (2, 64, 32)  # 8x8 patches of width 32
    assert embeds.shape == (2, TOKENS_PER_VIEW, 48)
    assert logits.shape == (2, ids.shape[1], vocab)
    assert last.shape == (2, 1, vocab)
    torch.testing.assert_close(last[:, 0], logits[:, -1], atol=1e-5, rtol=1e-5)


def test_text_only_forward(tiny_model):
    ids = _prompt(tiny_model, [6]).unsqueeze(0)
    with torch.no_grad():
        logits = tiny_model(ids, None)
    assert logits.shape == (1, 6, tiny_model.cfg.lm_vocab_size)


def test_image_embeddings_fill_image_positions_in_order(tiny_model):
    ids = _prompt(tiny_model, [3, "img", 2, "img", 2]).unsqueeze(0)
    image_embeds = torch.randn(2, TOKENS_PER_VIEW, tiny_model.cfg.lm_hidden_dim)
    embeds = tiny_model.embed(ids, image_embeds)[0]  # [T, D]
    first, second = 3, 3 + TOKENS_PER_VIEW + 2
    torch.testing.assert_close(embeds[first : first + TOKENS_PER_VIEW], image_embeds[0])
    torch.testing.assert_close(embeds[second : second + TOKENS_PER_VIEW], image_embeds[1])
    words = tiny_model.decoder.get_input_embeddings()(ids)[0]
    torch.testing.assert_close(embeds[:first], words[:first])


def test_swapping_views_changes_later_image_positions_only(tiny_model):
    ids = _prompt(tiny_model, [3, "img", 2, "img", 2]).unsqueeze(0)
    images = _views(2)
    with torch.no_grad():
        logits = tiny_model(ids, images)[0]
        swapped = tiny_model(ids, images.flip(0))[0]
    first, second = 3, 3 + TOKENS_PER_VIEW + 2
    # Causal: nothing before the first image token sees the images.
    torch.testing.assert_close(swapped[:first], logits[:first])
    later = slice(second, second + TOKENS_PER_VIEW)
    assert (swapped[later] - logits[later]).abs().max() > 1e-3


def test_image_token_count_mismatch_raises(tiny_model):
    ids = _prompt(tiny_model, [3, "img", 2]).unsqueeze(0)
    with pytest.raises(ValueError, match=r"16 image-token positions but the images give 32 embeddings"):
        tiny_model(ids, _views(2))
    with pytest.raises(ValueError, match=r"16 image-token positions but the images give 0"):
        tiny_model(ids, None)


def test_position_ids_skip_left_padding():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    positions = VisionLanguageModel.position_ids(mask, 5, torch.device("cpu"))
    assert positions.tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]]
    assert VisionLanguageModel.position_ids(None, 3, torch.device("cpu")).tolist() == [[0, 1, 2]]


def test_left_padded_row_matches_unpadded(tiny_model):
    short = _prompt(tiny_model, [2, "img", 3])
    long = _prompt(tiny_model, [5, "img", 4], seed=5)
    pad = long.shape[0] - short.shape[0]
    ids = torch.stack([torch.cat([torch.zeros(pad, dtype=torch.long), short]), long])
    mask = torch.ones_like(ids)
    mask[0, :pad] = 0
    images = _views(2)
    with torch.no_grad():
        batched = tiny_model(ids, images, mask)
        alone = tiny_model(short.unsqueeze(0), images[:1])
    torch.testing.assert_close(batched[0, pad:], alone[0], atol=1e-4, rtol=1e-4)


def _greedy_without_cache(model, ids, images, mask, steps):
    """Reference decoding: a full forward over prompt + generated tokens at every step, argmax of the last."""
    with torch.no_grad():
        embeds = model.embed(ids, model.project(model.encode_vision(images)))
        new = []
        for _ in range(steps):
            positions = model.position_ids(mask, embeds.shape[1], ids.device)
            logits = model.decoder(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).logits
            token = logits[:, -1].argmax(-1)  # [B]
            new.append(token)
            # Feed the token's word embedding (even if it happens to be the image token's id).
            embeds = torch.cat([embeds, model.decoder.get_input_embeddings()(token)[:, None]], dim=1)
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
    return torch.stack(new, dim=1)


def test_generate_greedy_with_cache_matches_full_forwards(tiny_model):
    short = _prompt(tiny_model, [2, "img", 3])
    long = _prompt(tiny_model, [4, "img", 6], seed=3)
    pad = long.shape[0] - short.shape[0]
    ids = torch.stack([torch.cat([torch.zeros(pad, dtype=torch.long), short]), long])
    mask = torch.ones_like(ids)
    mask[0, :pad] = 0
    images = _views(2, seed=1)
    generated = tiny_model.generate_greedy(ids, images, mask, max_new_tokens=4)
    assert generated.shape == (2, 4)
    assert generated.tolist() == _greedy_without_cache(tiny_model, ids, images, mask, 4).tolist()
    # The padded row decodes as it would alone.
    alone = tiny_model.generate_greedy(short.unsqueeze(0), images[:1], max_new_tokens=4)
    assert alone[0].tolist() == generated[0].tolist()


def test_generate_greedy_stops_at_eos(tiny_model):
    ids = torch.stack([_prompt(tiny_model, [2, "img", 3]), _prompt(tiny_model, [3, "img", 2], seed=7)])
    images = _views(2, seed=2)
    free = tiny_model.generate_greedy(ids[:1], images[:1], max_new_tokens=5)
    first = int(free[0, 0])
    stopped = tiny_model.generate_greedy(ids[:1], images[:1], max_new_tokens=5, eos_token_id=first)
    assert stopped.tolist() == [[first]]

    # In a batch, a finished row keeps emitting EOS while the others go on.
    both = tiny_model.generate_greedy(ids, images, max_new_tokens=5)
    row1 = both[1].tolist()
    assert first not in row1, "pick prompts whose second row never produces the first row's token"
    batched = tiny_model.generate_greedy(ids, images, max_new_tokens=5, eos_token_id=first)
    assert batched.shape == (2, 5)
    assert batched[0].tolist() == [first] * 5
    assert batched[1].tolist() == row1
