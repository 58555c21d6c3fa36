"""Norm-based dropping and score pruning after the connector: token counts, exactness at k = all, which
tokens are kept, gradients to the scorer, validation, FLOPs and saving.

Tiny config (tests/conftest.py): 32 px views of 8x8 patches, pixel shuffle 2 -> 4x4 = 16 tokens per view,
LM width 48.
"""

from __future__ import annotations

import pytest
import torch

from vlm.checkpoint import load_pretrained, save_pretrained
from vlm.compression import CompressionError, compress, plan_student
from vlm.config import CompressionConfig
from vlm.evaluate import encode_mcq
from vlm.flops import connector_flops_per_view, count_question
from vlm.reducers import keep_top_k

IMAGE = (64, 32)  # 1x2 crops + global = 3 views in the tiny config


def _inputs(model, n_views: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """One prompt with `n_views` views for `model`'s view size and tokens per view."""
    gen = torch.Generator().manual_seed(seed)
    text = torch.randint(70, model.cfg.lm_vocab_size, (6,), generator=gen)
    image = torch.full((model.tokens_per_view,), model.image_token_id)
    parts = [text[:2]] + [torch.cat([image, text[2 + i : 3 + i]]) for i in range(n_views)] + [text[4:]]
    size = model.cfg.vit_img_size
    return torch.cat(parts).unsqueeze(0), torch.rand(n_views, 3, size, size, generator=gen)


def _logits(model, ids, images) -> torch.Tensor:
    with torch.no_grad():
        return model(ids, images)


SELECTIONS = {
    "norm 5": (CompressionConfig(keep_tokens_by_norm=5), 5),
    "score 5": (CompressionConfig(keep_tokens_by_score=5, scorer_width=8), 5),
    "pool 3x3 + norm 4": (CompressionConfig(token_grid=3, keep_tokens_by_norm=4), 4),
    "resampler + score 3": (
        CompressionConfig(token_grid=2, resampler_width=16, resampler_heads=2, keep_tokens_by_score=3),
        3,
    ),
    "global view + half view + norm 2": (
        CompressionConfig(view_size=16, max_grid_side=1, keep_tokens_by_norm=2),
        2,
    ),
}


@pytest.mark.parametrize("name", list(SELECTIONS))
def test_token_counts_follow_the_plan(tiny_model, tiny_tokenizer, tiny_examples, name):
    compression, keep = SELECTIONS[name]
    plan = plan_student(tiny_model.cfg, compression)
    torch.manual_seed(0)
    student = compress(tiny_model, compression)
    assert plan.tokens_per_view == student.tokens_per_view == student.image_spec.tokens_per_view == keep
    size = student.cfg.vit_img_size
    images = torch.rand(3, 3, size, size)
    with torch.no_grad():
        embeds = student.project(student.encode_vision(images))
    assert embeds.shape == (3, keep, student.cfg.lm_hidden_dim)
    for example in tiny_examples:  # prompts hold keep image tokens per view, and the model accepts them
        encoded = encode_mcq(tiny_tokenizer, student, student.image_spec, example)
        n_views = encoded.images.shape[0]
        assert int((encoded.input_ids == student.image_token_id).sum()) == n_views * keep
        logits = _logits(student, encoded.input_ids.unsqueeze(0), encoded.images)
        assert torch.isfinite(logits).all()
    count = count_question(tiny_model.cfg, compression, IMAGE, 20, with_fvcore=False)
    assert count["image_tokens"] == count["views"] * keep


@pytest.mark.parametrize(
    "compression",
    [
        CompressionConfig(keep_tokens_by_norm=16),
        CompressionConfig(keep_tokens_by_score=16),
    ],
    ids=["norm", "score"],
)
def test_keeping_every_token_is_the_teacher_exactly(tiny_model, compression):
    student = compress(tiny_model, compression)
    ids, images = _inputs(tiny_model)
    assert torch.equal(_logits(student, ids, images), _logits(tiny_model, ids, images))


def test_keeping_every_pooled_token_is_plain_pooling_exactly(tiny_model):
    pooled = compress(tiny_model, CompressionConfig(token_grid=3))
    for compression in (
        CompressionConfig(token_grid=3, keep_tokens_by_norm=9),
        CompressionConfig(token_grid=3, keep_tokens_by_score=9),
    ):
        student = compress(tiny_model, compression)
        ids, images = _inputs(student)
        assert torch.equal(_logits(student, ids, images), _logits(pooled, ids, images))


def test_norm_dropping_keeps_the_largest_norms_in_order(tiny_model):
    student = compress(tiny_model, CompressionConfig(keep_tokens_by_norm=5))
    images = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        full = tiny_model.project(tiny_model.encode_vision(images))  # [4, 16, 48]
        kept = student.project(student.encode_vision(images))  # [4, 5, 48]
    for view in range(4):
        norms = full[view].norm(dim=-1)
        expected = sorted(norms.argsort(descending=True)[:5].tolist())
        assert torch.equal(kept[view], full[view, expected])
        # Every kept token's norm is at least every dropped token's.
        dropped = [i for i in range(16) if i not in expected]
        assert norms[expected].min() >= norms[dropped].max()


def test_keep_top_k_order_and_indices():
    x = torch.arange(12.0).view(1, 6, 2)
    kept, index = keep_top_k(x, torch.tensor([[0.1, 5.0, -1.0, 3.0, 4.0, 0.0]]), 3)
    assert index.tolist() == [[1, 3, 4]]  # the three best, in their original order
    assert torch.equal(kept, x[:, [1, 3, 4]])


def test_score_pruning_passes_gradients_to_the_scorer(tiny_model):
    torch.manual_seed(0)
    student = compress(tiny_model, CompressionConfig(keep_tokens_by_score=6, scorer_width=8))
    fresh = student.fresh_parameters()
    assert fresh and all(id(p) in {id(q) for q in student.token_selector.parameters()} for p in fresh)
    for param in student.parameters():
        param.requires_grad_(False)
    for param in fresh:
        param.requires_grad_(True)
    ids, images = _inputs(student)
    logits = student(ids, images)
    logits[0, -1].logsumexp(-1).backward()
    grads = {name: p.grad for name, p in student.token_selector.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert grads["scorer.fc2.weight"].abs().sum() > 0 and grads["scorer.fc1.weight"].abs().sum() > 0
    # Training the scorer changes which tokens it keeps: push every kept token's score down.
    features = student.encode_vision(images).detach()
    tokens = student.connector(features)
    with torch.no_grad():
        before = keep_top_k(tokens, student.token_selector.scorer(tokens), 6)[1]
    optimizer = torch.optim.SGD(fresh, lr=1.0)
    for _ in range(20):
        scores = student.token_selector.scorer(tokens)
        loss = scores.gather(1, before).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        after = keep_top_k(tokens, student.token_selector.scorer(tokens), 6)[1]
    assert not torch.equal(before, after)


def test_norm_dropping_has_no_fresh_weights(tiny_model):
    student = compress(tiny_model, CompressionConfig(keep_tokens_by_norm=4))
    assert student.fresh_parameters() == []
    assert not CompressionConfig(keep_tokens_by_norm=4).has_fresh_weights
    assert CompressionConfig(keep_tokens_by_score=4).has_fresh_weights


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"keep_tokens_by_norm": 2, "keep_tokens_by_score": 2}, "not both"),
        ({"keep_tokens_by_norm": 0}, "keep_tokens_by_norm must be >= 1"),
        ({"keep_tokens_by_score": -1}, "keep_tokens_by_score must be >= 1"),
        ({"scorer_width": 0}, "scorer_width"),
    ],
)
def test_bad_selection_configs_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CompressionConfig(**kwargs)


@pytest.mark.parametrize(
    "compression, message",
    [
        (CompressionConfig(keep_tokens_by_norm=17), "keep_tokens_by_norm 17 exceeds the 16 tokens"),
        (
            CompressionConfig(token_grid=2, keep_tokens_by_score=5),
            "keep_tokens_by_score 5 exceeds the 4 tokens",
        ),
    ],
)
def test_keeping_more_than_the_connector_gives_fails_before_building(tiny_model, compression, message):
    with pytest.raises(CompressionError, match=message):
        plan_student(tiny_model.cfg, compression)
    with pytest.raises(CompressionError, match=message):
        compress(tiny_model, compression)


def test_scorer_flops_by_hand(tiny_cfg):
    plan = plan_student(tiny_cfg, CompressionConfig(token_grid=3, keep_tokens_by_score=4, scorer_width=8))
    projector = 2 * 16 * 128 * 48  # pixel shuffle: 16 rows of 32*4 -> 48
    scorer = 2 * 9 * (48 * 8 + 8 * 1)  # over the 9 pooled tokens: 48 -> 8 -> 1
    assert connector_flops_per_view(plan.cfg, plan.connector) == projector + scorer
    norm = plan_student(tiny_cfg, CompressionConfig(token_grid=3, keep_tokens_by_norm=4))
    assert connector_flops_per_view(norm.cfg, norm.connector) == projector  # norms are elementwise


@pytest.mark.parametrize(
    "compression",
    [
        CompressionConfig(keep_tokens_by_norm=7),
        CompressionConfig(keep_tokens_by_score=7, scorer_width=8),
        CompressionConfig(token_grid=3, max_grid_side=1, keep_tokens_by_score=4, scorer_width=8),
        CompressionConfig(token_grid=3, resampler_width=16, resampler_heads=2, keep_tokens_by_norm=5),
    ],
    ids=["norm", "score", "score+pool+global-only", "resampler+norm"],
)
def test_analytic_matches_fvcore(tiny_cfg, compression):
    result = count_question(tiny_cfg, compression, IMAGE, 20, answer_tokens=2)
    for stage in ("vision_per_view", "connector_per_view", "prefill", "decode", "total"):
        assert result["fvcore"][stage] == pytest.approx(result["analytic"][stage], rel=0.01), stage
    assert result["relative_difference"] < 0.01


@pytest.mark.parametrize(
    "compression",
    [
        CompressionConfig(keep_tokens_by_norm=5),
        CompressionConfig(keep_tokens_by_score=5, scorer_width=8),
        CompressionConfig(token_grid=3, keep_tokens_by_score=4, merge_per_block=(20, 4)),
    ],
    ids=["norm", "score", "score+pool+merge"],
)
def test_saved_student_reloads_with_identical_predictions(tiny_model, tmp_path, compression):
    torch.manual_seed(3)
    student = compress(tiny_model, compression)
    if student.token_selector is not None and student.token_selector.scorer is not None:
        with torch.no_grad():  # as if trained: a scorer that differs from any fresh initialisation
            for param in student.token_selector.parameters():
                param.add_(torch.randn_like(param))
    save_pretrained(student, tmp_path / "student")
    torch.manual_seed(99)  # a reload must not depend on the RNG
    loaded = load_pretrained(tmp_path / "student")
    assert loaded.connector_config == student.connector_config
    assert loaded.compression == compression
    ids, images = _inputs(student, n_views=3)
    assert torch.equal(_logits(loaded, ids, images), _logits(student, ids, images))
