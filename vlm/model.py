"""nanoVLM's architecture on transformers' modules.

Vision encoder: `SiglipVisionModel` (pre-LN ViT, GELU-tanh, no CLS, no pooling head).
Connector: pixel shuffle + linear projector (nanoVLM's `MP`), optionally average-pooled to a k x k token
grid, or a Perceiver-style resampler trained from scratch.
Decoder: `LlamaForCausalLM` (SmolLM2 is Llama-shaped: RMSNorm, SiLU-gated MLP, RoPE, GQA).

Using transformers' modules gives users the attention kernels, KV cache, gradient checkpointing and peft
integration they expect. Image-token embeddings replace, in order, the positions whose id is the image token.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM, SiglipVisionConfig, SiglipVisionModel

from vlm.config import ConnectorConfig, ImageSpec, VLMConfig
from vlm.reducers import TokenSelector, merged_vision_forward

logger = logging.getLogger(__name__)


def pixel_shuffle(x: torch.Tensor, factor: int) -> torch.Tensor:
    """nanoVLM's pixel shuffle: [B, N, D] -> [B, (s/f)^2, D*f^2] with s = sqrt(N).

    Source: https://github.com/huggingface/nanoVLM/blob/main/models/modality_projector.py
    """
    batch, seq, dim = x.shape
    side = math.isqrt(seq)
    if side * side != seq or side % factor:
        raise ValueError(f"pixel shuffle needs a square patch grid divisible by {factor}, got {seq} patches")
    out = side // factor
    x = x.view(batch, side, side, dim)
    x = x.reshape(batch, out, factor, out, factor, dim)
    x = x.permute(0, 1, 3, 2, 4, 5).contiguous()  # [B, s/f, s/f, f, f, D]
    return x.reshape(batch, out * out, dim * factor * factor)


def pool_token_grid(x: torch.Tensor, grid: int) -> torch.Tensor:
    """Average-pool a square token grid [B, n*n, D] to [B, grid*grid, D] (adaptive, so any grid <= n)."""
    batch, seq, dim = x.shape
    side = math.isqrt(seq)
    if side == grid:
        return x
    x = x.transpose(1, 2).reshape(batch, dim, side, side)
    x = F.adaptive_avg_pool2d(x, grid)  # [B, D, grid, grid]
    return x.flatten(2).transpose(1, 2)


class PixelShuffleProjector(nn.Module):
    """nanoVLM's modality projector (`MP.proj`, no bias) with optional pooling of its output grid."""

    def __init__(self, vit_dim: int, lm_dim: int, factor: int, token_grid: int | None = None):
        super().__init__()
        self.factor = factor
        self.token_grid = token_grid
        self.proj = nn.Linear(vit_dim * factor * factor, lm_dim, bias=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.proj(pixel_shuffle(features, self.factor))  # [N, (s/f)^2, D_lm]
        if self.token_grid is not None:
            x = pool_token_grid(x, self.token_grid)  # [N, k*k, D_lm]
        return x


class PerceiverResampler(nn.Module):
    """k*k learned queries cross-attend to the ViT's patch features; one block, trained from scratch.

    Attention is written with linear layers and `scaled_dot_product_attention` (not nn.MultiheadAttention)
    so FLOP counters see every matmul.
    """

    def __init__(self, vit_dim: int, lm_dim: int, width: int, num_queries: int, heads: int = 4):
        super().__init__()
        if width % heads:
            raise ValueError(f"resampler width {width} must be divisible by its heads {heads}")
        self.heads = heads
        self.width = width
        self.queries = nn.Parameter(torch.randn(num_queries, width) * 0.02)
        self.kv_in = nn.Linear(vit_dim, width)
        self.norm_q = nn.LayerNorm(width)
        self.norm_kv = nn.LayerNorm(width)
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.o_proj = nn.Linear(width, width)
        self.norm_mlp = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, 2 * width), nn.GELU(approximate="tanh"), nn.Linear(2 * width, width)
        )
        self.out = nn.Linear(width, lm_dim)

    @property
    def num_queries(self) -> int:
        return self.queries.shape[0]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        n, p, _ = features.shape
        head_dim = self.width // self.heads
        kv = self.norm_kv(self.kv_in(features))  # [N, P, W]
        q = self.norm_q(self.queries).unsqueeze(0).expand(n, -1, -1)  # [N, Q, W]
        qh = self.q_proj(q).view(n, -1, self.heads, head_dim).transpose(1, 2)  # [N, H, Q, W/H]
        kh = self.k_proj(kv).view(n, p, self.heads, head_dim).transpose(1, 2)  # [N, H, P, W/H]
        vh = self.v_proj(kv).view(n, p, self.heads, head_dim).transpose(1, 2)
        attn = F.scaled_dot_product_attention(qh, kh, vh)  # [N, H, Q, W/H]
        x = q + self.o_proj(attn.transpose(1, 2).reshape(n, -1, self.width))
        x = x + self.mlp(self.norm_mlp(x))
        return self.out(x)  # [N, Q, D_lm]


def siglip_config(cfg: VLMConfig) -> SiglipVisionConfig:
    return SiglipVisionConfig(
        hidden_size=cfg.vit_hidden_dim,
        intermediate_size=cfg.vit_inter_dim,
        num_hidden_layers=cfg.vit_n_blocks,
        num_attention_heads=cfg.vit_n_heads,
        image_size=cfg.vit_img_size,
        patch_size=cfg.vit_patch_size,
        layer_norm_eps=cfg.vit_ln_eps,
        hidden_act="gelu_pytorch_tanh",
        attention_dropout=cfg.vit_dropout,
        vision_use_head=False,
    )


def llama_config(cfg: VLMConfig) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=cfg.lm_vocab_size,
        hidden_size=cfg.lm_hidden_dim,
        intermediate_size=cfg.lm_inter_dim,
        num_hidden_layers=cfg.lm_n_blocks,
        num_attention_heads=cfg.lm_n_heads,
        num_key_value_heads=cfg.lm_n_kv_heads,
        rms_norm_eps=cfg.lm_rms_eps,
        max_position_embeddings=cfg.lm_max_position_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": float(cfg.lm_re_base)},
        tie_word_embeddings=cfg.lm_tie_weights,
        attention_dropout=cfg.lm_dropout,
        hidden_act="silu",
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )


class VisionLanguageModel(nn.Module):
    """nanoVLM-compatible VLM. `forward(input_ids, images, attention_mask)` returns logits [B, T, V]."""

    def __init__(
        self,
        cfg: VLMConfig,
        image_token_id: int,
        connector: ConnectorConfig | None = None,
        attn_implementation: str = "sdpa",
    ):
        super().__init__()
        connector = connector or ConnectorConfig()
        native = cfg.native_token_grid
        if (
            connector.token_grid is not None
            and connector.resampler_width is None
            and connector.token_grid > native
        ):
            raise ValueError(f"token_grid {connector.token_grid} exceeds the native {native}x{native} grid")
        if not 0 <= image_token_id < cfg.lm_vocab_size:
            raise ValueError(
                f"image_token_id {image_token_id} is outside the vocabulary (size {cfg.lm_vocab_size})"
            )
        self.cfg = cfg
        self.connector_config = connector
        self.image_token_id = image_token_id
        vision_cfg = siglip_config(cfg)
        vision_cfg._attn_implementation = attn_implementation
        self.vision_encoder = SiglipVisionModel(vision_cfg)
        if connector.resampler_width is None:
            self.connector: nn.Module = PixelShuffleProjector(
                cfg.vit_hidden_dim, cfg.lm_hidden_dim, cfg.mp_pixel_shuffle_factor, connector.token_grid
            )
        else:
            grid = connector.token_grid or native
            self.connector = PerceiverResampler(
                cfg.vit_hidden_dim,
                cfg.lm_hidden_dim,
                connector.resampler_width,
                grid * grid,
                connector.resampler_heads,
            )
        if connector.merge_schedule and len(connector.merge_schedule) != cfg.vit_n_blocks:
            raise ValueError(
                f"merge_schedule has {len(connector.merge_schedule)} entries for {cfg.vit_n_blocks} encoder blocks"
            )
        self.token_selector: TokenSelector | None = None
        if connector.keep_tokens is not None:
            self.token_selector = TokenSelector(
                cfg.lm_hidden_dim, connector.keep_tokens, connector.keep_by, connector.scorer_width
            )
        decoder_cfg = llama_config(cfg)
        decoder_cfg._attn_implementation = attn_implementation
        self.decoder = LlamaForCausalLM(decoder_cfg)

    # ----- shapes -----------------------------------------------------------------------------------------
    @property
    def tokens_per_view(self) -> int:
        if self.connector_config.keep_tokens is not None:
            return self.connector_config.keep_tokens
        grid = self.connector_config.token_grid or self.cfg.native_token_grid
        return grid * grid

    def fresh_parameters(self) -> list[nn.Parameter]:
        """Weights a compression creates from scratch (a resampler, a token scorer): warm-up trains these."""
        params = list(self.connector.parameters()) if isinstance(self.connector, PerceiverResampler) else []
        if self.token_selector is not None:
            params += list(self.token_selector.parameters())
        return params

    @property
    def image_spec(self) -> ImageSpec:
        return ImageSpec(
            view_size=self.cfg.vit_img_size,
            max_grid_side=self.cfg.max_grid_side,
            tokens_per_view=self.tokens_per_view,
            resize_to_max_side_len=self.cfg.resize_to_max_side_len,
        )

    # ----- stages -----------------------------------------------------------------------------------------
    def encode_vision(self, images: torch.Tensor) -> torch.Tensor:
        """ViT features of every view: [N, 3, S, S] -> [N, patches, D_vit]."""
        images = images.to(device=self.decoder.device, dtype=self.vision_encoder.dtype)
        if any(self.connector_config.merge_schedule):  # token merging; r = 0 everywhere: the plain encoder
            return merged_vision_forward(self.vision_encoder, images, self.connector_config.merge_schedule)
        return self.vision_encoder(pixel_values=images).last_hidden_state

    def project(self, vision_features: torch.Tensor) -> torch.Tensor:
        """Connector (+ token selection): [N, patches, D_vit] -> [N, tokens_per_view, D_lm]."""
        x = self.connector(vision_features)
        if self.token_selector is not None:
            x = self.token_selector(x)  # [N, keep, D_lm]
        return x

    def embed(self, input_ids: torch.Tensor, image_embeds: torch.Tensor | None) -> torch.Tensor:
        """Token embeddings with image-token positions replaced, in order, by `image_embeds`."""
        embeds = self.decoder.get_input_embeddings()(input_ids)  # [B, T, D_lm]
        mask = input_ids == self.image_token_id
        n_slots = int(mask.sum())
        n_given = 0 if image_embeds is None else image_embeds.shape[0] * image_embeds.shape[1]
        if n_slots != n_given:
            raise ValueError(
                f"the prompt has {n_slots} image-token positions but the images give {n_given} embeddings "
                f"({self.tokens_per_view} per view): build prompts with this model's image_spec"
            )
        if n_slots == 0:
            return embeds
        flat = image_embeds.reshape(-1, image_embeds.shape[-1]).to(embeds.dtype)
        return embeds.masked_scatter(mask.unsqueeze(-1), flat)

    @staticmethod
    def position_ids(attention_mask: torch.Tensor | None, length: int, device: torch.device) -> torch.Tensor:
        """Positions that skip left padding, so a padded prompt sees the same RoPE angles as an unpadded one."""
        if attention_mask is None:
            return torch.arange(length, device=device).unsqueeze(0)
        return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)

    def language_forward(
        self,
        input_ids: torch.Tensor,
        image_embeds: torch.Tensor | None,
        attention_mask: torch.Tensor | None = None,
        logits_to_keep: int = 0,
    ) -> torch.Tensor:
        """Decoder logits from token ids and already-projected image embeddings."""
        embeds = self.embed(input_ids, image_embeds)
        positions = self.position_ids(attention_mask, input_ids.shape[1], input_ids.device)
        out = self.decoder(
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            position_ids=positions,
            use_cache=False,
            logits_to_keep=logits_to_keep,
        )
        return out.logits

    def forward(
        self,
        input_ids: torch.Tensor,
        images: torch.Tensor | None,
        attention_mask: torch.Tensor | None = None,
        logits_to_keep: int = 0,
    ) -> torch.Tensor:
        """Logits [B, T, V] (or the last `logits_to_keep` positions). `images`: all views [N, 3, S, S] in order."""
        image_embeds = (
            None if images is None or images.numel() == 0 else self.project(self.encode_vision(images))
        )
        return self.language_forward(input_ids, image_embeds, attention_mask, logits_to_keep)

    @torch.no_grad()
    def generate_greedy(
        self,
        input_ids: torch.Tensor,
        images: torch.Tensor | None,
        attention_mask: torch.Tensor | None = None,
        max_new_tokens: int = 10,
        eos_token_id: int | None = None,
    ) -> torch.Tensor:
        """Greedy decoding with the KV cache; stops when every row has produced `eos_token_id`.

        Returns the new token ids [B, <= max_new_tokens]; positions after a row's EOS hold EOS.
        """
        image_embeds = (
            None if images is None or images.numel() == 0 else self.project(self.encode_vision(images))
        )
        embeds = self.embed(input_ids, image_embeds)
        batch, length = input_ids.shape
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        positions = self.position_ids(attention_mask, length, input_ids.device)
        cache = DynamicCache(config=self.decoder.config)
        out = self.decoder(
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            position_ids=positions,
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        finished = torch.zeros(batch, dtype=torch.bool, device=input_ids.device)
        generated = []
        next_pos = positions[:, -1:] + 1
        for _ in range(max_new_tokens):
            token = out.logits[:, -1].argmax(-1)  # [B]
            if eos_token_id is not None:
                token = torch.where(finished, torch.full_like(token, eos_token_id), token)
                finished |= token == eos_token_id
            generated.append(token)
            if eos_token_id is not None and bool(finished.all()):
                break
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones(batch, 1)], dim=1)
            out = self.decoder(
                input_ids=token.unsqueeze(1),
                attention_mask=attention_mask,
                position_ids=next_pos,
                cache=out.cache,
                use_cache=True,
            )
            next_pos = next_pos + 1
        return torch.stack(generated, dim=1) if generated else input_ids.new_zeros(batch, 0)
