"""Connector matching: a fresh resampler learns to give the decoder the tokens the teacher's connector gives.

A resampler trained from scratch replaces nanoVLM's pixel-shuffle projector. Distilled only from the teacher's
answer letters through the frozen decoder, it gets four numbers of signal per question, and on the demo teacher
40-120 such steps left the 50% resampler near chance (0.26-0.31, `benchmarks/warmup_sweep.py`). Its natural
target is denser: the teacher's projector output on the same ViT features, average-pooled to the resampler's
k x k grid, which is exactly what a pooled (`token_grid=k`) student feeds the decoder. Matching it (D_lm numbers
per token) first puts the resampler where pooling is; the letter warm-up or distillation refines from there.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator

import torch
from torch import nn

from vlm.model import PerceiverResampler, PixelShuffleProjector, pixel_shuffle, pool_token_grid

logger = logging.getLogger(__name__)


def can_match(reference: nn.Module, features: torch.Tensor) -> bool:
    """Whether `reference` (the teacher's projector) can make targets for these ViT features [N, P, D]."""
    if not isinstance(reference, PixelShuffleProjector) or reference.token_grid is not None:
        return False
    try:
        pixel_shuffle(features[:1, :, :1], reference.factor)
    except ValueError:  # the student's view size gives a patch grid the projector cannot shuffle
        return False
    return True


@torch.no_grad()
def connector_targets(reference: PixelShuffleProjector, features: torch.Tensor, grid: int) -> torch.Tensor:
    """The teacher projector's tokens for `features` [N, P, D_vit], pooled to grid x grid: [N, grid^2, D_lm].
    A grid finer than the projector's output (a small view's resampler keeps the teacher's query count)
    repeats its tokens: the same information as pooling, spread over the resampler's queries."""
    return pool_token_grid(reference(features), grid)


def connector_matching_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean squared error relative to the targets' mean square, so 1.0 is "outputs all zero" at any scale."""
    return (outputs.float() - targets.float()).pow(2).mean() / targets.float().pow(2).mean().clamp_min(1e-12)


def match_resampler(
    resampler: PerceiverResampler,
    reference: nn.Module,
    features: Iterator[torch.Tensor],
    steps: int,
    lr: float,
) -> float:
    """Train `resampler` alone for `steps` steps to reproduce `reference`'s pooled tokens on ViT feature
    batches drawn from `features` ([N, P, D_vit] each); returns the last loss. Nothing trains, and the loss is
    nan, when the reference cannot shuffle these features' patch grid (then the caller's other warm-up is all
    the resampler gets)."""
    grid = math.isqrt(resampler.num_queries)
    reference_dtype = next(reference.parameters()).dtype
    params = list(resampler.parameters())
    was_trainable = [param.requires_grad for param in params]  # put back after: distillation trains them
    for param in params:
        param.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    loss_value = float("nan")
    resampler.train()
    for _ in range(steps):
        batch = next(features)
        if not can_match(reference, batch):
            logger.warning(
                "no connector matching: the teacher's projector cannot shuffle %d patches; the resampler "
                "gets only the letter warm-up",
                batch.shape[1],
            )
            break
        targets = connector_targets(reference, batch.to(reference_dtype), grid)
        loss = connector_matching_loss(resampler(batch), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_value = float(loss.detach())
    resampler.eval()
    for param, trainable in zip(params, was_trainable):
        param.requires_grad_(trainable)
    return loss_value
