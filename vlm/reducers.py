"""Visual-token reducers beyond pooling: norm-based dropping and learned score pruning after the connector,
and token merging (ToMe) inside the vision encoder.

- Norm-based dropping (training-free): each view keeps the k connector outputs with the largest L2 norm,
  in their original order.
- Score pruning: a small scorer (LayerNorm -> Linear -> GELU -> Linear -> 1), trained from scratch, keeps
  the k highest-scoring tokens of each view in their original order. Top-k has no gradient, so each kept
  token is multiplied by g = 1 + sigmoid(s) - stopgrad(sigmoid(s)): g is exactly 1 in the forward pass
  (a pruned student with k = all tokens is the teacher, bit for bit), while the loss's gradient reaches
  the score as (dL/dx · x) · sigmoid'(s), the gradient of a sigmoid gate on the token (straight-through).
- Token merging, after Bolya et al., "Token Merging: Your ViT but Faster" (ICLR 2023,
  https://arxiv.org/abs/2210.09461, reference code https://github.com/facebookresearch/ToMe): in each
  encoder block, between attention and MLP, tokens are split into alternating sets A (even) and B (odd),
  each A token is matched to its most similar B token by the cosine similarity of the attention keys
  (averaged over heads), and the r most similar pairs are merged by a size-weighted average; later blocks
  add log(size) to the attention logits (proportional attention). After the last block every original
  patch position gets a copy of the token it was merged into (un-merging), so the connector sees the full
  patch grid. A block merges at most floor(N/2) of its N tokens (as in ToMe), so r is clamped when the grid
  is small; `vlm.plan.effective_merge_schedule` gives the clamped schedule that both the model and the FLOP count use.

Every shape depends only on (tokens, k, r), never on the data, so `torch.jit.trace` (fvcore) records the
real computation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


# ----- token merging -----------------------------------------------------------------------------------------
def _attention(attn: nn.Module, x: torch.Tensor, log_size: torch.Tensor | None):
    """SigLIP self-attention with log(size) added to the logits; also returns the keys averaged over heads.

    `attn` is transformers' `SiglipAttention` (q/k/v/out projections with biases, scale head_dim^-0.5).
    """
    batch, n, _ = x.shape
    heads, head_dim = attn.num_heads, attn.head_dim
    q = attn.q_proj(x).view(batch, n, heads, head_dim).transpose(1, 2)  # [B, H, N, hd]
    k = attn.k_proj(x).view(batch, n, heads, head_dim).transpose(1, 2)
    v = attn.v_proj(x).view(batch, n, heads, head_dim).transpose(1, 2)
    bias = None if log_size is None else log_size.view(batch, 1, 1, n).to(q.dtype)  # same for every query
    dropout = attn.dropout if attn.training else 0.0
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout, scale=attn.scale)
    out = attn.out_proj(out.transpose(1, 2).reshape(batch, n, heads * head_dim))  # [B, N, D]
    return out, k.mean(dim=1)  # metric: [B, N, hd]


def bipartite_merge(
    x: torch.Tensor, size: torch.Tensor, origin: torch.Tensor, metric: torch.Tensor, r: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Merge the r most similar (A, B) pairs: ToMe's bipartite soft matching with a size-weighted average.

    x [B, N, D] tokens, size [B, N, 1] patches per token, origin [B, P] the current token of each of the P
    original patches, metric [B, N, C]. Returns (x [B, N-r, D], size [B, N-r, 1], origin [B, P]).
    New order: the unmerged A tokens (by decreasing similarity), then all B tokens.
    """
    batch, n, dim = x.shape
    n_a = (n + 1) // 2
    n_b = n - n_a
    n_kept_a = n_a - r
    with torch.no_grad():
        metric = metric / metric.norm(dim=-1, keepdim=True)
        scores = metric[:, ::2] @ metric[:, 1::2].transpose(1, 2)  # [B, n_a, n_b] cosine similarities
        best, best_b = scores.max(dim=-1)  # each A token's closest B token
        order = best.argsort(dim=-1, descending=True, stable=True)  # most similar first
        kept_a, merged_a = order[:, r:], order[:, :r]  # [B, n_a - r], [B, r]
        target_b = best_b.gather(1, merged_a)  # [B, r]

    def merge_sum(t: torch.Tensor) -> torch.Tensor:
        c = t.shape[-1]
        a, b = t[:, ::2], t[:, 1::2]
        kept = a.gather(1, kept_a.unsqueeze(-1).expand(batch, n_kept_a, c))
        moved = a.gather(1, merged_a.unsqueeze(-1).expand(batch, r, c))
        b = b.scatter_add(1, target_b.unsqueeze(-1).expand(batch, r, c), moved)
        return torch.cat([kept, b], dim=1)  # [B, N - r, c]

    x = merge_sum(x * size)
    size = merge_sum(size)
    x = x / size
    # Where each of the N old tokens went, then where each original patch is now.
    steps = torch.arange(max(n_a, n_b), device=x.device).unsqueeze(0).expand(batch, -1)
    new_a = torch.zeros(batch, n_a, dtype=torch.long, device=x.device)
    new_a = new_a.scatter(1, kept_a, steps[:, :n_kept_a])
    new_a = new_a.scatter(1, merged_a, n_kept_a + target_b)
    new_index = torch.zeros(batch, n, dtype=torch.long, device=x.device)
    new_index[:, ::2] = new_a
    new_index[:, 1::2] = n_kept_a + steps[:, :n_b]
    return x, size, new_index.gather(1, origin)


def merged_vision_forward(
    vision_encoder: nn.Module, pixel_values: torch.Tensor, schedule: Sequence[int]
) -> torch.Tensor:
    """SigLIP forward with token merging: [N, 3, S, S] -> [N, patches, D], un-merged to the full patch grid.

    `schedule`: tokens merged in each encoder block (already clamped: see `effective_merge_schedule`).
    """
    layers = vision_encoder.encoder.layers
    if len(schedule) != len(layers):
        raise ValueError(f"merge schedule has {len(schedule)} entries for {len(layers)} encoder blocks")
    x = vision_encoder.embeddings(pixel_values)  # [B, P, D]
    batch, patches, dim = x.shape
    origin = torch.arange(patches, device=x.device).unsqueeze(0).expand(batch, -1)  # [B, P]
    size = x.new_ones(batch, patches, 1)
    log_size = None  # every token is one patch until the first merge
    for layer, r in zip(layers, schedule):
        attn_out, metric = _attention(layer.self_attn, layer.layer_norm1(x), log_size)
        x = x + attn_out
        if r > 0:
            x, size, origin = bipartite_merge(x, size, origin, metric, int(r))
            log_size = size.log().squeeze(-1)  # [B, N]
        x = x + layer.mlp(layer.layer_norm2(x))
    x = vision_encoder.post_layernorm(x)  # per token: the same before or after un-merging
    return x.gather(1, origin.unsqueeze(-1).expand(batch, patches, dim))  # [B, P, D]


# ----- keeping k tokens per view ----------------------------------------------------------------------------------
def keep_top_k(x: torch.Tensor, scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k highest-scoring tokens of each view, in their original order: ([N, k, D], indices [N, k])."""
    index = scores.topk(k, dim=-1).indices.sort(dim=-1).values  # [N, k]
    return x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1])), index


class TokenScorer(nn.Module):
    """One score per token: LayerNorm -> Linear(D, width) -> GELU -> Linear(width, 1)."""

    def __init__(self, dim: int, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, width)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.norm(x)))).squeeze(-1)  # [N, T]


class TokenSelector(nn.Module):
    """Keeps `keep` tokens per view of the connector's output, by L2 norm (`by="norm"`) or a learned score."""

    def __init__(self, dim: int, keep: int, by: str = "norm", scorer_width: int = 64):
        super().__init__()
        if by not in ("norm", "score"):
            raise ValueError(f"tokens are kept by 'norm' or 'score', got {by!r}")
        self.keep = keep
        self.by = by
        self.scorer = TokenScorer(dim, scorer_width) if by == "score" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N, T, D] -> [N, keep, D]."""
        if self.scorer is None:
            kept, _ = keep_top_k(x, x.float().norm(dim=-1), self.keep)
            return kept
        scores = self.scorer(x)  # [N, T]
        kept, index = keep_top_k(x, scores, self.keep)
        gate = torch.sigmoid(scores.gather(1, index)).unsqueeze(-1)  # [N, keep, 1]
        return kept + kept * (gate - gate.detach())  # == kept; the score gets a gate's gradient
