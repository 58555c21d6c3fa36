"""Connector matching: a fresh resampler learns the teacher projector's tokens pooled to its grid."""

from __future__ import annotations

import math

import torch

from vlm.compression import compress
from vlm.config import CompressionConfig
from vlm.connector_match import can_match, connector_matching_loss, connector_targets, match_resampler
from vlm.model import PixelShuffleProjector

RESAMPLER = CompressionConfig(token_grid=3, resampler_width=16, resampler_heads=2)


def _features(model, n: int = 6, seed: int = 0) -> torch.Tensor:
    """ViT-shaped features [n, patches, D_vit] for the model's view size."""
    patches = (model.cfg.vit_img_size // model.cfg.vit_patch_size) ** 2
    return torch.randn(n, patches, model.cfg.vit_hidden_dim, generator=torch.Generator().manual_seed(seed))


def _endless(batches: list[torch.Tensor]):
    while True:
        yield from batches


def test_targets_are_what_a_pooled_student_feeds_the_decoder(tiny_model):
    features = _features(tiny_model)
    pooled = compress(tiny_model, CompressionConfig(token_grid=3))
    targets = connector_targets(tiny_model.connector, features, 3)
    assert targets.shape == (6, 9, tiny_model.cfg.lm_hidden_dim)
    torch.testing.assert_close(targets, pooled.project(features))


def test_matching_trains_only_the_resampler_towards_the_targets(tiny_model):
    torch.manual_seed(0)
    student = compress(tiny_model, RESAMPLER)
    batches = [_features(tiny_model, seed=s) for s in range(4)]
    held_out = _features(tiny_model, seed=99)
    targets = connector_targets(tiny_model.connector, held_out, 3)
    with torch.no_grad():
        before = float(connector_matching_loss(student.connector(held_out), targets))
    reference_weight = tiny_model.connector.proj.weight.detach().clone()
    decoder_before = {k: v.clone() for k, v in student.decoder.state_dict().items()}

    loss = match_resampler(student.connector, tiny_model.connector, _endless(batches), steps=150, lr=3e-3)

    with torch.no_grad():
        after = float(connector_matching_loss(student.connector(held_out), targets))
    assert math.isfinite(loss)
    assert after < 0.5 * before, (before, after)  # it generalises to features it never saw
    assert torch.equal(tiny_model.connector.proj.weight, reference_weight)
    assert all(torch.equal(v, decoder_before[k]) for k, v in student.decoder.state_dict().items())
    # Trainable before, trainable after: distillation goes on training a matched resampler.
    assert all(p.requires_grad for p in student.connector.parameters())


def test_the_same_seed_and_batches_give_the_same_resampler(tiny_model):
    resamplers = []
    for _ in range(2):
        torch.manual_seed(0)
        student = compress(tiny_model, RESAMPLER)
        batches = [_features(tiny_model, seed=s) for s in range(2)]
        match_resampler(student.connector, tiny_model.connector, _endless(batches), steps=5, lr=3e-3)
        resamplers.append(student.connector.state_dict())
    assert all(torch.equal(v, resamplers[1][k]) for k, v in resamplers[0].items())


def test_a_patch_grid_the_projector_cannot_shuffle_trains_nothing(tiny_model):
    torch.manual_seed(0)
    student = compress(tiny_model, RESAMPLER)
    before = {k: v.clone() for k, v in student.connector.state_dict().items()}
    factor = tiny_model.connector.factor
    odd = torch.randn(2, (2 * factor + 1) ** 2, tiny_model.cfg.vit_hidden_dim)  # side not divisible
    assert not can_match(tiny_model.connector, odd)
    loss = match_resampler(student.connector, tiny_model.connector, _endless([odd]), steps=3, lr=3e-3)
    assert math.isnan(loss)
    assert all(torch.equal(v, before[k]) for k, v in student.connector.state_dict().items())


def test_only_an_unpooled_pixel_shuffle_projector_is_a_reference(tiny_model):
    features = _features(tiny_model, n=1)
    assert can_match(tiny_model.connector, features)
    pooled = PixelShuffleProjector(
        tiny_model.cfg.vit_hidden_dim, tiny_model.cfg.lm_hidden_dim, 2, token_grid=2
    )
    assert not can_match(pooled, features)  # its tokens are already pooled: not the teacher's
    torch.manual_seed(0)
    assert not can_match(compress(tiny_model, RESAMPLER).connector, features)


def test_relative_loss_is_one_for_zero_outputs():
    targets = torch.randn(3, 4, 5) * 7
    assert float(connector_matching_loss(torch.zeros_like(targets), targets)) == 1.0
    assert float(connector_matching_loss(targets, targets)) == 0.0
