"""Which visual tokens does the model use? A dense target for a token scorer trained from scratch.

Score pruning keeps each view's top-k tokens by a small scorer. Trained through its straight-through gate on
the answer letters, the scorer only learns whether scaling up a token it already keeps helps, never which
tokens it should have kept, and on the demo teacher every such warm-up left it worse than an untrained one
(`benchmarks/warmup_sweep.py`). Here the model itself says which tokens matter: with *every* token in the
prompt, the gradient-times-input saliency |dlog p(gold letter)/dx_t . x_t| of each connector output x_t
(Simonyan et al. 2014; Shrikumar et al. 2017) marks the tokens its answer depends on. The scorer then learns
to rank tokens like the saliency does (a listwise loss per view), on connector outputs alone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vlm.config import ImageSpec
from vlm.model import VisionLanguageModel


def token_saliency(
    model: VisionLanguageModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    tokens: torch.Tensor,
    letter_ids: Sequence[int],
    labels: torch.Tensor,
) -> torch.Tensor:
    """|grad . x| per visual token: [views, T] for connector outputs `tokens` [views, T, D] (every token, no
    selection) placed in prompts `input_ids` built for T tokens per view. The gradient is of the gold letter's
    log-probability; the model's weights get none."""
    x = tokens.detach().requires_grad_(True)
    logits = model.language_forward(input_ids, x, attention_mask, logits_to_keep=1)[:, -1, list(letter_ids)]
    log_p = F.log_softmax(logits.float(), dim=-1).gather(1, labels.view(-1, 1)).sum()
    (grad,) = torch.autograd.grad(log_p, x)
    return (grad.float() * x.float()).sum(-1).abs().detach()  # float32: D products summed (bf16 models)


def scorer_ranking_loss(scores: torch.Tensor, saliency: torch.Tensor) -> torch.Tensor:
    """Listwise cross-entropy between each view's score softmax and its saliency share ([views, T] each):
    the scorer learns the saliency's ranking, not its scale."""
    target = saliency / saliency.sum(-1, keepdim=True).clamp_min(1e-12)
    return -(target * F.log_softmax(scores.float(), dim=-1)).sum(-1).mean()


def every_token_spec(model: VisionLanguageModel) -> ImageSpec:
    """`model`'s image spec with every connector output in the prompt (no token selection)."""
    grid = model.connector_config.token_grid or model.cfg.native_token_grid
    return dataclasses.replace(model.image_spec, tokens_per_view=grid * grid)


def tokens_and_saliency(
    model: VisionLanguageModel,
    batch: dict,
    features: torch.Tensor,
    letter_ids: Sequence[int],
    labels: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(connector outputs [views, T, D], their saliency [views, T]) for a batch collated from prompts built with
    `every_token_spec(model)` and its views' ViT `features`."""
    device = next(model.parameters()).device
    with torch.no_grad():
        tokens = model.connector(features.to(device))
    ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
    return tokens, token_saliency(model, ids, mask, tokens, letter_ids, labels.to(device))


def fit_scorer(
    scorer: nn.Module,
    tokens: torch.Tensor,
    saliency: torch.Tensor,
    steps: int,
    lr: float,
    views_per_step: int,
    seed: int = 0,
) -> float:
    """Train `scorer` alone for `steps` steps of `scorer_ranking_loss` on random views of `tokens` [V, T, D] and
    their `saliency` [V, T]; returns the last loss. Deterministic given `seed`."""
    params = list(scorer.parameters())
    was_trainable = [param.requires_grad for param in params]  # put back after: distillation trains them
    for param in params:
        param.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    n = tokens.shape[0]
    loss_value = float("nan")
    for _ in range(steps):
        idx = torch.randperm(n, generator=generator)[: min(views_per_step, n)].to(tokens.device)
        loss = scorer_ranking_loss(scorer(tokens[idx]), saliency[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_value = float(loss.detach())
    for param, trainable in zip(params, was_trainable):
        param.requires_grad_(trainable)
    return loss_value


def fit_scorer_to_saliency(
    model: VisionLanguageModel,
    batches: Iterable[tuple[dict, torch.Tensor, torch.Tensor]],
    letter_ids: Sequence[int],
    steps: int,
    lr: float,
    views_per_step: int,
    seed: int = 0,
) -> float:
    """One saliency pass over `batches` ((batch collated with `every_token_spec(model)`, its views' ViT
    features, gold letter indices) each), then `fit_scorer` on the model's token scorer; returns the last
    ranking loss."""
    pairs = [
        tokens_and_saliency(model, batch, features, letter_ids, labels) for batch, features, labels in batches
    ]
    tokens = torch.cat([t for t, _ in pairs])
    saliency = torch.cat([s for _, s in pairs])
    return fit_scorer(model.token_selector.scorer, tokens, saliency, steps, lr, views_per_step, seed)
