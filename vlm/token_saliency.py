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

from collections.abc import Sequence

import torch
import torch.nn.functional as F

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
    return (grad * x).sum(-1).abs().detach()


def scorer_ranking_loss(scores: torch.Tensor, saliency: torch.Tensor) -> torch.Tensor:
    """Listwise cross-entropy between each view's score softmax and its saliency share ([views, T] each):
    the scorer learns the saliency's ranking, not its scale."""
    target = saliency / saliency.sum(-1, keepdim=True).clamp_min(1e-12)
    return -(target * F.log_softmax(scores.float(), dim=-1)).sum(-1).mean()
