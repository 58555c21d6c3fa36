"""An independent, plain-torch oracle for nanoVLM's forward pass, used only by the parity tests.

It deliberately uses no transformers modules and no code from `vlm/`: every step is written out with
tensor ops, following nanoVLM's `models/{vision_transformer,modality_projector,language_model,
vision_language_model}.py`. It reads checkpoints in nanoVLM's on-disk layout (`config.json` +
`model.safetensors`) and can write random ones in that layout.

Tied head: nanoVLM ties `decoder.head.weight` to `decoder.token_embedding.weight` and saves with
`safetensors.torch.save_model`, which keeps one name per shared storage. It keeps the alphabetically first
complete name (`_remove_duplicate_names` does `sorted(complete_names)[0]`), i.e. `decoder.head.weight`,
and records the dropped name in the file's metadata (`{"decoder.token_embedding.weight":
"decoder.head.weight"}`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from vlm.config import CHAT_TEMPLATE, default_extra_tokens

HEAD_KEY = "decoder.head.weight"
EMBED_KEY = "decoder.token_embedding.weight"


# --------------------------------------------------------------------------------------------- config


def tiny_nanovlm_config(**overrides: Any) -> dict[str, Any]:
    """A tiny config dict with nanoVLM's `VLMConfig` field names (as `asdict` writes them to config.json).

    8x8 patches per 32x32 view, pixel shuffle 2 -> 16 image tokens per view. It also carries fields nanoVLM
    writes that our `VLMConfig` ignores (`vlm_load_backbone_weights`, `vlm_checkpoint_path`, `hf_repo_name`).
    """
    cfg: dict[str, Any] = {
        "vit_hidden_dim": 32,
        "vit_inter_dim": 64,
        "vit_patch_size": 4,
        "vit_img_size": 32,
        "vit_n_heads": 2,
        "vit_dropout": 0.0,
        "vit_n_blocks": 2,
        "vit_ln_eps": 1e-6,
        "vit_cls_flag": False,
        "vit_model_type": "google/siglip2-base-patch16-512",
        "lm_hidden_dim": 48,
        "lm_inter_dim": 96,
        "lm_rms_eps": 1e-5,
        "lm_re_base": 10000,
        "lm_max_position_embeddings": 8192,
        "lm_base_vocab_size": 100,
        "extra_token_amount": 66,
        "lm_vocab_size": 166,
        "lm_n_heads": 4,
        "lm_n_kv_heads": 2,
        "lm_dropout": 0.0,
        "lm_n_blocks": 2,
        "lm_attn_scaling": 1.0,
        "lm_max_length": 4096,
        "lm_use_tokens": False,
        "lm_tie_weights": True,
        "lm_model_type": "HuggingFaceTB/SmolLM2-360M-Instruct",
        "lm_tokenizer": "HuggingFaceTB/SmolLM2-360M-Instruct",
        "lm_chat_template": CHAT_TEMPLATE,
        "mp_pixel_shuffle_factor": 2,
        "mp_image_token_length": 16,
        "max_img_size": 64,
        "resize_to_max_side_len": True,
        "vlm_extra_tokens": default_extra_tokens(),
        # Written by nanoVLM, not modelled by our VLMConfig: the loader must tolerate them.
        "vlm_load_backbone_weights": True,
        "vlm_checkpoint_path": "checkpoints",
        "hf_repo_name": "nanoVLM",
    }
    unknown = set(overrides) - set(cfg)
    if unknown:
        raise KeyError(f"not nanoVLM config fields: {sorted(unknown)}")
    cfg.update(overrides)
    return cfg


def image_token_id(cfg: dict[str, Any]) -> int:
    """Id of `<|image|>`: nanoVLM's tokenizer appends the extra tokens after the base vocabulary, in order."""
    return cfg["lm_base_vocab_size"] + list(cfg["vlm_extra_tokens"]).index("image_token")


# ------------------------------------------------------------------------------------------ checkpoint


def expected_shapes(cfg: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Every tensor of nanoVLM's `VisionLanguageModel.state_dict()` (head and embedding both listed)."""
    vd, vi, p = cfg["vit_hidden_dim"], cfg["vit_inter_dim"], cfg["vit_patch_size"]
    patches = (cfg["vit_img_size"] // p) ** 2
    ld, li, vocab = cfg["lm_hidden_dim"], cfg["lm_inter_dim"], cfg["lm_vocab_size"]
    head_dim = ld // cfg["lm_n_heads"]
    kv_dim = head_dim * cfg["lm_n_kv_heads"]
    f = cfg["mp_pixel_shuffle_factor"]

    shapes: dict[str, tuple[int, ...]] = {
        "vision_encoder.patch_embedding.conv.weight": (vd, 3, p, p),
        "vision_encoder.patch_embedding.conv.bias": (vd,),
        "vision_encoder.patch_embedding.position_embedding": (1, patches, vd),
    }
    for i in range(cfg["vit_n_blocks"]):
        b = f"vision_encoder.blocks.{i}."
        shapes.update(
            {
                b + "ln1.weight": (vd,),
                b + "ln1.bias": (vd,),
                b + "attn.qkv_proj.weight": (3 * vd, vd),
                b + "attn.qkv_proj.bias": (3 * vd,),
                b + "attn.out_proj.weight": (vd, vd),
                b + "attn.out_proj.bias": (vd,),
                b + "ln2.weight": (vd,),
                b + "ln2.bias": (vd,),
                b + "mlp.fc1.weight": (vi, vd),
                b + "mlp.fc1.bias": (vi,),
                b + "mlp.fc2.weight": (vd, vi),
                b + "mlp.fc2.bias": (vd,),
            }
        )
    shapes["vision_encoder.layer_norm.weight"] = (vd,)
    shapes["vision_encoder.layer_norm.bias"] = (vd,)

    shapes[EMBED_KEY] = (vocab, ld)
    shapes["decoder.rotary_embd.inv_freq"] = (head_dim // 2,)
    for i in range(cfg["lm_n_blocks"]):
        b = f"decoder.blocks.{i}."
        shapes.update(
            {
                b + "attn.q_proj.weight": (ld, ld),
                b + "attn.k_proj.weight": (kv_dim, ld),
                b + "attn.v_proj.weight": (kv_dim, ld),
                b + "attn.out_proj.weight": (ld, ld),
                b + "mlp.gate_proj.weight": (li, ld),
                b + "mlp.up_proj.weight": (li, ld),
                b + "mlp.down_proj.weight": (ld, li),
                b + "norm1.weight": (ld,),
                b + "norm2.weight": (ld,),
            }
        )
    shapes["decoder.norm.weight"] = (ld,)
    shapes[HEAD_KEY] = (vocab, ld)
    shapes["MP.proj.weight"] = (ld, vd * f * f)
    return shapes


def _random_tensor(
    name: str, shape: tuple[int, ...], gen: torch.Generator, cfg: dict[str, Any]
) -> torch.Tensor:
    """Random values with scales that keep activations O(1) and attention far from uniform."""

    def normal(std: float) -> torch.Tensor:
        return torch.randn(shape, generator=gen) * std

    if name == "decoder.rotary_embd.inv_freq":
        head_dim = cfg["lm_hidden_dim"] // cfg["lm_n_heads"]
        return 1.0 / (cfg["lm_re_base"] ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    if name == "vision_encoder.patch_embedding.position_embedding":
        return normal(0.5)
    if name == EMBED_KEY:
        return normal(0.3)
    leaf = name.rsplit(".", 2)[-2]
    is_norm = leaf in {"ln1", "ln2", "layer_norm", "norm1", "norm2", "norm"}
    if name.endswith(".weight") and is_norm:
        return 1.0 + normal(0.2)
    if name.endswith(".bias"):
        return normal(0.1)
    # Linear / conv weight: fan-in scaling so each projection preserves the activations' scale.
    fan_in = math.prod(shape[1:])
    return normal(1.0 / math.sqrt(fan_in))


def random_nanovlm_state_dict(cfg: dict[str, Any], seed: int = 0) -> dict[str, torch.Tensor]:
    """A full random state dict with nanoVLM's key names; head and embedding hold the same values (tied)."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in expected_shapes(cfg).items():
        if name == HEAD_KEY:
            continue
        state[name] = _random_tensor(name, shape, gen, cfg).contiguous()
    state[HEAD_KEY] = state[EMBED_KEY].clone()
    return state


def write_nanovlm_checkpoint(
    out_dir: Path, cfg: dict[str, Any], seed: int = 0, tie_in_file: str = "head"
) -> Path:
    """Write `config.json` + `model.safetensors` the way nanoVLM's `save_pretrained` does.

    tie_in_file: which of the two tied names the file holds. "head" is what `safetensors.torch.save_model`
    produces for nanoVLM (only `decoder.head.weight`, with the dropped name in the metadata); "embedding"
    holds only `decoder.token_embedding.weight`; "both" holds both keys (identical values).
    """
    if tie_in_file not in ("head", "embedding", "both"):
        raise ValueError(f"tie_in_file must be 'head', 'embedding' or 'both', got {tie_in_file!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = random_nanovlm_state_dict(cfg, seed)
    metadata: dict[str, str] | None = None
    if tie_in_file == "head":
        del state[EMBED_KEY]
        metadata = {EMBED_KEY: HEAD_KEY}
    elif tie_in_file == "embedding":
        del state[HEAD_KEY]
        metadata = {HEAD_KEY: EMBED_KEY}
    (out_dir / "config.json").write_text(json.dumps(cfg, indent=4))
    save_file(state, str(out_dir / "model.safetensors"), metadata=metadata)
    return out_dir


def load_nanovlm_checkpoint(ckpt_dir: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read a checkpoint folder; fill the tied name the file lacks from the one it has."""
    ckpt_dir = Path(ckpt_dir)
    cfg = json.loads((ckpt_dir / "config.json").read_text())
    state = load_file(str(ckpt_dir / "model.safetensors"))
    if HEAD_KEY not in state and EMBED_KEY in state:
        state[HEAD_KEY] = state[EMBED_KEY]
    if EMBED_KEY not in state and HEAD_KEY in state:
        state[EMBED_KEY] = state[HEAD_KEY]
    return cfg, state


# --------------------------------------------------------------------------------------------- forward


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    y = x @ weight.t()
    return y if bias is None else y + bias


def _layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    mean = x.mean(dim=-1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt((x * x).mean(dim=-1, keepdim=True) + eps) * weight


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def _silu(x: torch.Tensor) -> torch.Tensor:
    return x / (1.0 + torch.exp(-x))


def _softmax(scores: torch.Tensor) -> torch.Tensor:
    scores = scores - scores.amax(dim=-1, keepdim=True)
    e = torch.exp(scores)
    return e / e.sum(dim=-1, keepdim=True)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
    """q, k, v: [B, heads, T, hd] -> [B, heads, T, hd]; softmax(q k^T / sqrt(hd)) v."""
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    if causal:
        t = scores.shape[-1]
        future = torch.ones(t, t, dtype=torch.bool, device=scores.device).triu(1)
        scores = scores.masked_fill(future, float("-inf"))
    return _softmax(scores) @ v


def _split_heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    b, t, c = x.shape
    return x.reshape(b, t, n_heads, c // n_heads).permute(0, 2, 1, 3)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    b, h, t, d = x.shape
    return x.permute(0, 2, 1, 3).reshape(b, t, h * d)


def vision_features(cfg: dict[str, Any], sd: dict[str, torch.Tensor], images: torch.Tensor) -> torch.Tensor:
    """nanoVLM's ViT: [N, 3, H, W] -> [N, patches, vit_hidden_dim] (after the final LayerNorm)."""
    p = cfg["vit_patch_size"]
    n, c, h, w = images.shape
    gh, gw = h // p, w // p
    # Patch embedding as an explicit unfold + matmul (equivalent to the stride-p conv), row-major patches.
    patches = images.reshape(n, c, gh, p, gw, p).permute(0, 2, 4, 1, 3, 5).reshape(n, gh * gw, c * p * p)
    conv_w = sd["vision_encoder.patch_embedding.conv.weight"]
    x = _linear(patches, conv_w.reshape(conv_w.shape[0], -1), sd["vision_encoder.patch_embedding.conv.bias"])
    x = x + sd["vision_encoder.patch_embedding.position_embedding"]

    eps, heads, dim = cfg["vit_ln_eps"], cfg["vit_n_heads"], cfg["vit_hidden_dim"]
    for i in range(cfg["vit_n_blocks"]):
        b = f"vision_encoder.blocks.{i}."
        y = _layer_norm(x, sd[b + "ln1.weight"], sd[b + "ln1.bias"], eps)
        qkv = _linear(y, sd[b + "attn.qkv_proj.weight"], sd[b + "attn.qkv_proj.bias"])
        q, k, v = qkv[..., :dim], qkv[..., dim : 2 * dim], qkv[..., 2 * dim :]
        att = _attend(_split_heads(q, heads), _split_heads(k, heads), _split_heads(v, heads), causal=False)
        x = x + _linear(_merge_heads(att), sd[b + "attn.out_proj.weight"], sd[b + "attn.out_proj.bias"])
        y = _layer_norm(x, sd[b + "ln2.weight"], sd[b + "ln2.bias"], eps)
        y = _gelu_tanh(_linear(y, sd[b + "mlp.fc1.weight"], sd[b + "mlp.fc1.bias"]))
        x = x + _linear(y, sd[b + "mlp.fc2.weight"], sd[b + "mlp.fc2.bias"])
    return _layer_norm(x, sd["vision_encoder.layer_norm.weight"], sd["vision_encoder.layer_norm.bias"], eps)


def project(cfg: dict[str, Any], sd: dict[str, torch.Tensor], feats: torch.Tensor) -> torch.Tensor:
    """Pixel shuffle then `MP.proj`: [N, s*s, D] -> [N, (s/f)^2, lm_hidden_dim]."""
    n, seq, d = feats.shape
    s = math.isqrt(seq)
    f = cfg["mp_pixel_shuffle_factor"]
    g = s // f
    x = feats.reshape(n, g, f, g, f, d).permute(0, 1, 3, 2, 4, 5).reshape(n, g * g, d * f * f)
    return _linear(x, sd["MP.proj.weight"])


def _rope_cos_sin(cfg: dict[str, Any], inv_freq: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape [T, head_dim] for positions 0..T-1, as nanoVLM's RotaryEmbedding computes them."""
    if t > cfg["lm_max_position_embeddings"]:  # nanoVLM's dynamic scaling past the trained length
        inv_freq = inv_freq / (t / cfg["lm_max_position_embeddings"])
    angles = torch.arange(t, dtype=torch.float32).to(inv_freq.dtype)[:, None] * inv_freq[None, :]
    angles = torch.cat([angles, angles], dim=-1)
    scale = cfg["lm_attn_scaling"]
    return torch.cos(angles) * scale, torch.sin(angles) * scale


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


def decoder_hidden(cfg: dict[str, Any], sd: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """nanoVLM's LanguageModel on embeddings [B, T, D] -> final-normed hidden states [B, T, D]."""
    _, t, _ = x.shape
    n_heads, n_kv = cfg["lm_n_heads"], cfg["lm_n_kv_heads"]
    groups = n_heads // n_kv
    eps = cfg["lm_rms_eps"]
    cos, sin = _rope_cos_sin(cfg, sd["decoder.rotary_embd.inv_freq"].to(x.dtype), t)
    for i in range(cfg["lm_n_blocks"]):
        b = f"decoder.blocks.{i}."
        y = _rms_norm(x, sd[b + "norm1.weight"], eps)
        q = _rotate(_split_heads(_linear(y, sd[b + "attn.q_proj.weight"]), n_heads), cos, sin)
        k = _rotate(_split_heads(_linear(y, sd[b + "attn.k_proj.weight"]), n_kv), cos, sin)
        v = _split_heads(_linear(y, sd[b + "attn.v_proj.weight"]), n_kv)
        # Query head h reads kv head h // groups (nanoVLM's repeat_interleave on the head dim).
        kv_index = torch.arange(n_heads) // groups
        att = _attend(q, k[:, kv_index], v[:, kv_index], causal=True)
        x = x + _linear(_merge_heads(att), sd[b + "attn.out_proj.weight"])
        y = _rms_norm(x, sd[b + "norm2.weight"], eps)
        gated = _silu(_linear(y, sd[b + "mlp.gate_proj.weight"])) * _linear(y, sd[b + "mlp.up_proj.weight"])
        x = x + _linear(gated, sd[b + "mlp.down_proj.weight"])
    return _rms_norm(x, sd["decoder.norm.weight"], eps)


def merge_image_embeddings(
    token_embd: torch.Tensor, input_ids: torch.Tensor, image_embd: torch.Tensor, image_token_id: int
) -> torch.Tensor:
    """Replace, in row-major order over [B, T], the image-token positions by the flattened image embeddings."""
    flat = image_embd.reshape(-1, image_embd.shape[-1])
    positions = (input_ids == image_token_id).nonzero().tolist()
    if len(positions) != flat.shape[0]:
        raise ValueError(f"{len(positions)} image-token positions but {flat.shape[0]} image embeddings")
    out = token_embd.clone()
    for row, (bi, ti) in enumerate(positions):
        out[bi, ti] = flat[row]
    return out


def reference_forward_from_state(
    cfg: dict[str, Any],
    sd: dict[str, torch.Tensor],
    input_ids: torch.Tensor,
    images: torch.Tensor,
    image_token_id: int,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    sd = {k: v.to(dtype) for k, v in sd.items()}
    token_embd = sd[EMBED_KEY][input_ids]
    if images is not None and images.shape[0] > 0:
        image_embd = project(cfg, sd, vision_features(cfg, sd, images.to(dtype)))
        token_embd = merge_image_embeddings(token_embd, input_ids, image_embd, image_token_id)
    hidden = decoder_hidden(cfg, sd, token_embd)
    return _linear(hidden, sd[HEAD_KEY])


@torch.no_grad()
def reference_forward(
    ckpt_dir: Path,
    input_ids: torch.Tensor,
    images: torch.Tensor,
    image_token_id: int,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """nanoVLM's `VisionLanguageModel.forward` + head, without padding: logits [B, T, lm_vocab_size]."""
    cfg, sd = load_nanovlm_checkpoint(ckpt_dir)
    return reference_forward_from_state(cfg, sd, input_ids, images, image_token_id, dtype)
