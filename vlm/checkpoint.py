"""Reading and writing checkpoints in nanoVLM's layout.

nanoVLM's `save_pretrained` writes `config.json` (its VLMConfig as a dict) and `model.safetensors`
(`safetensors.torch.save_model`, so of the tied pair `decoder.head.weight` / `decoder.token_embedding.weight`
the file may hold only one). We map those keys onto transformers' SigLIP and Llama modules and back.

Compressed students are saved in the same layout with the *effective* VLMConfig (fewer blocks, the new view
size) plus `vlm_compress.json` holding the connector (pooled grid or resampler, token selection, token
merging) and the CompressionConfig that produced it; resampler weights live under `resampler.*`, a token
scorer's under `token_selector.scorer.*`.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from vlm.atomic import atomic_dir
from vlm.cli import UsageError
from vlm.config import CompressionConfig, VLMConfig
from vlm.model import ConnectorConfig, PerceiverResampler, VisionLanguageModel

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
EXTRAS_FILE = "vlm_compress.json"  # connector, image token id, CompressionConfig, provenance
TOKENIZER_DIR = "tokenizer"
HEAD_KEY = "decoder.head.weight"
EMBED_KEY = "decoder.token_embedding.weight"
INV_FREQ_KEY = "decoder.rotary_embd.inv_freq"


class CheckpointError(UsageError, ValueError):
    """A checkpoint that does not match the architecture its config describes, or a broken file."""


class DiskFullError(UsageError, OSError):
    """Not enough free space where a model or checkpoint is written: the message says where and how much."""

    def __str__(self) -> str:
        return str(self.strerror)  # the message alone, without OSError's "[Errno 28]" prefix


_MB = 1 << 20


def _free_bytes(folder: Path) -> int:
    folder = Path(folder)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return shutil.disk_usage(folder).free


def require_free_space(folder: str | Path, needed: int, what: str) -> None:
    """Fail before writing `needed` bytes of `what` under `folder` when the disk cannot hold them."""
    free = _free_bytes(Path(folder))
    if free < needed + 16 * _MB:  # a margin for config, tokenizer and file-system overhead
        raise DiskFullError(
            errno.ENOSPC,
            f"not enough disk space for {what} in {folder}: about {needed / _MB:.0f} MB needed, "
            f"{free / _MB:.0f} MB free; free some space there (or set VLMC_HOME to a larger disk) and run again",
        )


@contextlib.contextmanager
def disk_full_as_error(folder: str | Path, what: str) -> Iterator[None]:
    """Turn the writers' errors on a full disk (OSError ENOSPC, or torch's `unexpected pos N vs M` and
    safetensors' I/O errors, which do not say why) into one `DiskFullError` naming the folder."""
    try:
        yield
    except DiskFullError:
        raise
    except (OSError, RuntimeError, SafetensorError) as err:
        full = getattr(err, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "space" in str(err).lower()
        if not full and _free_bytes(Path(folder)) >= _MB:
            raise
        raise DiskFullError(
            errno.ENOSPC,
            f"the disk is full: writing {what} in {folder} failed ({type(err).__name__}: {err}); "
            "free some space there and run again",
        ) from err


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a `model.safetensors`; a truncated or corrupt file fails naming itself."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(
            f"cannot read {path}: {err} (size {path.stat().st_size} bytes; truncated or corrupt?); "
            "copy or download the checkpoint again"
        ) from err


@dataclass(frozen=True)
class KeyRule:
    """One nanoVLM tensor and where it goes in our model; `to_ours`/`to_nano` reshape between them."""

    nano_key: str
    our_keys: tuple[str, ...]
    to_ours: Callable[[torch.Tensor], tuple[torch.Tensor, ...]]
    to_nano: Callable[[tuple[torch.Tensor, ...]], torch.Tensor]


def _same(key: str, ours: str) -> KeyRule:
    return KeyRule(key, (ours,), lambda t: (t,), lambda ts: ts[0])


def key_rules(model: VisionLanguageModel) -> list[KeyRule]:
    """The full nanoVLM <-> ours key map for `model`'s architecture (head and inv_freq handled apart)."""
    cfg = model.cfg
    v = "vision_encoder."  # transformers 5's SiglipVisionModel holds embeddings, encoder, post_layernorm itself
    rules = [
        _same("vision_encoder.patch_embedding.conv.weight", f"{v}embeddings.patch_embedding.weight"),
        _same("vision_encoder.patch_embedding.conv.bias", f"{v}embeddings.patch_embedding.bias"),
        KeyRule(
            "vision_encoder.patch_embedding.position_embedding",
            (f"{v}embeddings.position_embedding.weight",),
            lambda t: (t.squeeze(0),),  # nanoVLM: bare [1, P, D] parameter; SigLIP: Embedding [P, D]
            lambda ts: ts[0].unsqueeze(0),
        ),
        _same("vision_encoder.layer_norm.weight", f"{v}post_layernorm.weight"),
        _same("vision_encoder.layer_norm.bias", f"{v}post_layernorm.bias"),
    ]
    for i in range(cfg.vit_n_blocks):
        nano, ours = f"vision_encoder.blocks.{i}.", f"{v}encoder.layers.{i}."
        for part in ("weight", "bias"):
            rules += [
                _same(f"{nano}ln1.{part}", f"{ours}layer_norm1.{part}"),
                _same(f"{nano}ln2.{part}", f"{ours}layer_norm2.{part}"),
                _same(f"{nano}attn.out_proj.{part}", f"{ours}self_attn.out_proj.{part}"),
                _same(f"{nano}mlp.fc1.{part}", f"{ours}mlp.fc1.{part}"),
                _same(f"{nano}mlp.fc2.{part}", f"{ours}mlp.fc2.{part}"),
                KeyRule(  # nanoVLM fuses q, k, v on the output dimension, in that order
                    f"{nano}attn.qkv_proj.{part}",
                    tuple(f"{ours}self_attn.{p}_proj.{part}" for p in ("q", "k", "v")),
                    lambda t: tuple(t.chunk(3, dim=0)),
                    lambda ts: torch.cat(ts, dim=0),
                ),
            ]
    for i in range(cfg.lm_n_blocks):
        nano, ours = f"decoder.blocks.{i}.", f"decoder.model.layers.{i}."
        rules += [
            _same(f"{nano}attn.q_proj.weight", f"{ours}self_attn.q_proj.weight"),
            _same(f"{nano}attn.k_proj.weight", f"{ours}self_attn.k_proj.weight"),
            _same(f"{nano}attn.v_proj.weight", f"{ours}self_attn.v_proj.weight"),
            _same(f"{nano}attn.out_proj.weight", f"{ours}self_attn.o_proj.weight"),
            _same(f"{nano}mlp.gate_proj.weight", f"{ours}mlp.gate_proj.weight"),
            _same(f"{nano}mlp.up_proj.weight", f"{ours}mlp.up_proj.weight"),
            _same(f"{nano}mlp.down_proj.weight", f"{ours}mlp.down_proj.weight"),
            _same(f"{nano}norm1.weight", f"{ours}input_layernorm.weight"),
            _same(f"{nano}norm2.weight", f"{ours}post_attention_layernorm.weight"),
        ]
    rules.append(_same("decoder.norm.weight", "decoder.model.norm.weight"))
    rules.append(_same(EMBED_KEY, "decoder.model.embed_tokens.weight"))
    if not cfg.lm_tie_weights:
        rules.append(_same(HEAD_KEY, "decoder.lm_head.weight"))
    if isinstance(model.connector, PerceiverResampler):
        rules += [
            _same(f"resampler.{name}", f"connector.{name}") for name, _ in model.connector.named_parameters()
        ]
    else:
        rules.append(_same("MP.proj.weight", "connector.proj.weight"))
    if model.token_selector is not None:  # a token scorer (norm-based selection has no weights)
        rules += [
            _same(f"token_selector.{name}", f"token_selector.{name}")
            for name, _ in model.token_selector.named_parameters()
        ]
    return rules


def nanovlm_state_to_ours(
    state: dict[str, torch.Tensor], model: VisionLanguageModel
) -> dict[str, torch.Tensor]:
    """Convert a nanoVLM-layout state dict for `model`, failing with the offending key on any mismatch."""
    state = dict(state)
    if model.cfg.lm_tie_weights:
        # The file holds the tied pair once (either name) or twice (then they must agree).
        head, embed = state.pop(HEAD_KEY, None), state.get(EMBED_KEY)
        if embed is None and head is not None:
            state[EMBED_KEY] = head
        elif head is not None and not torch.equal(head, embed):
            raise CheckpointError(f"{HEAD_KEY} and {EMBED_KEY} differ but lm_tie_weights=True ties them")
    inv_freq = state.pop(INV_FREQ_KEY, None)
    if inv_freq is not None:
        ours = model.decoder.model.rotary_emb.inv_freq
        if inv_freq.shape != ours.shape or not torch.allclose(
            inv_freq.float(), ours.float().cpu(), rtol=1e-4
        ):
            raise CheckpointError(
                f"{INV_FREQ_KEY} does not match lm_re_base={model.cfg.lm_re_base} of config.json"
            )

    rules = key_rules(model)
    expected = {r.nano_key for r in rules}
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)
    if missing:
        raise CheckpointError(
            f"checkpoint is missing key {missing[0]!r} ({len(missing)} missing in all: {missing[:5]})"
        )
    if unexpected:
        raise CheckpointError(
            f"checkpoint has unexpected key {unexpected[0]!r} ({len(unexpected)} in all: {unexpected[:5]}); "
            "does config.json describe this checkpoint?"
        )
    targets = model.state_dict()
    converted: dict[str, torch.Tensor] = {}
    for rule in rules:
        tensor = state[rule.nano_key]
        parts = rule.to_ours(tensor)
        for our_key, part in zip(rule.our_keys, parts):
            want = tuple(targets[our_key].shape)
            if tuple(part.shape) != want:
                raise CheckpointError(
                    f"key {rule.nano_key!r} has shape {tuple(tensor.shape)}, which does not fit the "
                    f"architecture in config.json (expects {want} for {our_key})"
                )
            converted[our_key] = part
    return converted


def ours_to_nanovlm_state(model: VisionLanguageModel) -> dict[str, torch.Tensor]:
    """nanoVLM-layout state dict of `model` (tied head stored once, as `decoder.head.weight`)."""
    ours = model.state_dict()
    out = {}
    for rule in key_rules(model):
        out[rule.nano_key] = rule.to_nano(tuple(ours[k] for k in rule.our_keys)).detach().cpu().contiguous()
    if model.cfg.lm_tie_weights:
        out[HEAD_KEY] = out.pop(EMBED_KEY)
    out[INV_FREQ_KEY] = model.decoder.model.rotary_emb.inv_freq.detach().cpu().float().contiguous()
    return out


def default_image_token_id(cfg: VLMConfig) -> int:
    """nanoVLM's tokenizer appends its extra tokens after the base vocabulary, image token first."""
    return cfg.lm_base_vocab_size + list(cfg.vlm_extra_tokens).index("image_token")


def _resolve_files(path_or_repo_id: str, revision: str | None) -> Path:
    path = Path(path_or_repo_id)
    if path.exists():
        if not path.is_dir():
            raise FileNotFoundError(
                f"{path} is not a folder: pass a folder holding {CONFIG_FILE} and {WEIGHTS_FILE}"
            )
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            if not (path / name).is_file():
                raise FileNotFoundError(f"{path / name} not found: a nanoVLM checkpoint folder needs {name}")
        return path
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(
                path_or_repo_id, revision=revision, allow_patterns=[CONFIG_FILE, WEIGHTS_FILE, EXTRAS_FILE]
            )
        )
    except Exception as exc:  # network, auth or missing repo: one clear message
        raise FileNotFoundError(
            f"could not load {path_or_repo_id!r}: it is not a local folder and the hub download failed ({exc}). "
            "Pass a local checkpoint folder, or run offline with the demo world (`--study demo`)."
        ) from exc


def weights_digest(path_or_repo_id: str | Path, revision: str | None = None) -> str:
    """SHA-256 (first 16 hex digits) of a checkpoint's weights file: which weights a result describes.

    Reads the whole file (about a second per GB), so two checkpoints in the same folder at different times,
    or a retrained teacher shipped under the same path, tell apart."""
    folder = _resolve_files(str(path_or_repo_id), revision)
    with open(folder / WEIGHTS_FILE, "rb") as weights:
        return hashlib.file_digest(weights, "sha256").hexdigest()[:16]


def _image_token_id_for(folder: Path, cfg: VLMConfig, extras: dict) -> int:
    if "image_token_id" in extras:
        return int(extras["image_token_id"])
    if (folder / TOKENIZER_DIR).is_dir():
        from vlm.tokenizer import load_tokenizer, special_token_ids

        return special_token_ids(load_tokenizer(str(folder / TOKENIZER_DIR), cfg), cfg)["image_token"]
    return default_image_token_id(cfg)


def load_pretrained(
    path_or_repo_id: str | Path,
    image_token_id: int | None = None,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    revision: str | None = None,
    attn_implementation: str = "sdpa",
) -> VisionLanguageModel:
    """Load a nanoVLM checkpoint (local folder or hub id) or a compressed student saved by `save_pretrained`.

    `image_token_id` defaults to the id recorded with the checkpoint, else the id of `<|image|>` in its
    `tokenizer/` folder, else nanoVLM's (base vocabulary size + 0).
    """
    folder = _resolve_files(str(path_or_repo_id), revision)
    cfg = VLMConfig.from_json(folder / CONFIG_FILE)
    extras = json.loads((folder / EXTRAS_FILE).read_text()) if (folder / EXTRAS_FILE).is_file() else {}
    connector = ConnectorConfig(**extras.get("connector", {}))
    token_id = image_token_id if image_token_id is not None else _image_token_id_for(folder, cfg, extras)
    model = VisionLanguageModel(cfg, token_id, connector, attn_implementation=attn_implementation)
    state = nanovlm_state_to_ours(read_weights(folder / WEIGHTS_FILE), model)
    missing, unexpected = model.load_state_dict(state, strict=False)
    # Only the tied head may be absent (it shares the embedding's storage).
    real_missing = [k for k in missing if not (cfg.lm_tie_weights and k == "decoder.lm_head.weight")]
    if real_missing or unexpected:
        raise CheckpointError(
            f"internal key map incomplete: missing {real_missing[:5]}, unexpected {unexpected[:5]}"
        )
    if "compression" in extras:  # a student: keep its record, so saving it again keeps it too
        model.compression = CompressionConfig.from_dict(extras["compression"])
    model.eval()
    if dtype is not None or device is not None:
        model.to(device=device, dtype=dtype)
    logger.info(
        "loaded %s (%.1fM parameters)", path_or_repo_id, sum(p.numel() for p in model.parameters()) / 1e6
    )
    return model


def save_pretrained(
    model: VisionLanguageModel,
    out_dir: str | Path,
    *,
    tokenizer=None,
    extras: dict | None = None,
    weights_dtype: torch.dtype | None = None,
) -> Path:
    """Write `model` in nanoVLM's layout, atomically: a half-written folder never replaces a good one.

    `weights_dtype` stores floating tensors in that dtype (e.g. float16 halves a shipped checkpoint);
    `load_pretrained` casts them back to the model's dtype.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    state = ours_to_nanovlm_state(model)
    if weights_dtype is not None:
        state = {
            k: v.to(weights_dtype) if v.is_floating_point() and k != INV_FREQ_KEY else v
            for k, v in state.items()
        }
    weight_bytes = sum(v.numel() * v.element_size() for v in state.values())
    require_free_space(out_dir.parent, weight_bytes, f"the model {out_dir.name}/")
    with (
        atomic_dir(out_dir) as tmp,
        disk_full_as_error(out_dir.parent, f"the model {out_dir.name}/"),
    ):
        _write_model(model, tmp, state, tokenizer, extras)
    return out_dir


def _write_model(model: VisionLanguageModel, tmp: Path, state: dict, tokenizer, extras: dict | None) -> None:
    """The files of a saved model, written into the fresh folder `tmp`."""
    (tmp / CONFIG_FILE).write_text(json.dumps(model.cfg.to_dict(), indent=2))
    save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
    info = dict(extras or {})
    compression = getattr(model, "compression", None)  # set by vlm.compression.compress
    if compression is not None and not compression.is_identity:
        info.setdefault("compression", compression.to_dict())
    connector = model.connector_config
    # Without the file a loader falls back to nanoVLM's image token id, so write it whenever that is wrong.
    if connector != ConnectorConfig() or info or model.image_token_id != default_image_token_id(model.cfg):
        info["connector"] = {
            "token_grid": connector.token_grid,
            "resampler_width": connector.resampler_width,
            "resampler_heads": connector.resampler_heads,
        }
        if connector.keep_tokens is not None or connector.merge_schedule:  # token reducers
            info["connector"].update(
                keep_tokens=connector.keep_tokens,
                keep_by=connector.keep_by,
                scorer_width=connector.scorer_width,
                merge_schedule=list(connector.merge_schedule),
            )
        info["image_token_id"] = model.image_token_id
        (tmp / EXTRAS_FILE).write_text(json.dumps(info, indent=2))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(tmp / TOKENIZER_DIR))
