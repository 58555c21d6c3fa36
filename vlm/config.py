"""Configuration dataclasses: the nanoVLM model config and the compression config.

`VLMConfig` mirrors the fields nanoVLM writes to `config.json` (prefixes `vit_`, `lm_`, `mp_`), so a
checkpoint's config loads as-is. `CompressionConfig` describes one student; `vlm.compression.compress`
applies it to a teacher.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


MAX_CROP_GRID = 8  # nanoVLM defines crop tags <row_i_col_j> for i, j in 1..8


def default_extra_tokens() -> dict[str, str]:
    """nanoVLM's 66 extra special tokens: image token, global-image token, and an 8x8 grid of crop tags."""
    tokens = {"image_token": "<|image|>", "global_image_token": "<|global_image|>"}
    for row in range(1, 9):
        for col in range(1, 9):
            tokens[f"r{row}c{col}"] = f"<row_{row}_col_{col}>"
    return tokens


@dataclass(frozen=True)
class VLMConfig:
    """nanoVLM's VLMConfig fields that define the architecture, tokenizer and image pipeline.

    Defaults are nanoVLM's (the ~460M `lusxvr/nanoVLM`): SigLIP2-base-patch16-512 + SmolLM2-360M.
    """

    vit_hidden_dim: int = 768
    vit_inter_dim: int = 3072
    vit_patch_size: int = 16
    vit_img_size: int = 512
    vit_n_heads: int = 12
    vit_dropout: float = 0.0
    vit_n_blocks: int = 12
    vit_ln_eps: float = 1e-6
    vit_cls_flag: bool = False
    vit_model_type: str = "google/siglip2-base-patch16-512"

    lm_hidden_dim: int = 960
    lm_inter_dim: int = 2560
    lm_rms_eps: float = 1e-5
    lm_re_base: int = 100000
    lm_max_position_embeddings: int = 8192
    lm_base_vocab_size: int = 49152
    extra_token_amount: int = 66
    lm_vocab_size: int = 49152 + 66
    lm_n_heads: int = 15
    lm_n_kv_heads: int = 5
    lm_dropout: float = 0.0
    lm_n_blocks: int = 32
    lm_attn_scaling: float = 1.0
    lm_max_length: int = 4096
    lm_use_tokens: bool = False
    lm_tie_weights: bool = True
    lm_model_type: str = "HuggingFaceTB/SmolLM2-360M-Instruct"
    lm_tokenizer: str = "HuggingFaceTB/SmolLM2-360M-Instruct"
    lm_chat_template: str = CHAT_TEMPLATE

    mp_pixel_shuffle_factor: int = 4
    mp_image_token_length: int = 64

    max_img_size: int = 2048
    resize_to_max_side_len: bool = True

    vlm_extra_tokens: dict[str, str] = field(default_factory=default_extra_tokens)

    def __post_init__(self) -> None:
        if self.vit_cls_flag:
            raise ValueError("vit_cls_flag=True is not supported: nanoVLM's SigLIP encoder has no CLS token")
        if self.vit_img_size % self.vit_patch_size:
            raise ValueError(
                f"vit_img_size {self.vit_img_size} is not a multiple of vit_patch_size {self.vit_patch_size}"
            )
        grid = self.vit_img_size // self.vit_patch_size
        if grid % self.mp_pixel_shuffle_factor:
            raise ValueError(
                f"the patch grid ({grid}x{grid}) is not divisible by mp_pixel_shuffle_factor {self.mp_pixel_shuffle_factor}"
            )
        if (grid // self.mp_pixel_shuffle_factor) ** 2 != self.mp_image_token_length:
            raise ValueError(
                f"mp_image_token_length {self.mp_image_token_length} does not match the pixel-shuffled grid "
                f"({grid // self.mp_pixel_shuffle_factor}^2)"
            )
        if self.vit_hidden_dim % self.vit_n_heads or self.lm_hidden_dim % self.lm_n_heads:
            raise ValueError("hidden sizes must be divisible by the number of attention heads")
        if self.lm_n_heads % self.lm_n_kv_heads:
            raise ValueError(
                f"lm_n_heads {self.lm_n_heads} must be a multiple of lm_n_kv_heads {self.lm_n_kv_heads}"
            )
        if self.max_img_size % self.vit_img_size:
            raise ValueError(
                f"max_img_size {self.max_img_size} must be a multiple of vit_img_size {self.vit_img_size}"
            )

    @property
    def native_token_grid(self) -> int:
        """Visual tokens per side of one view after pixel shuffle (8 for nanoVLM)."""
        return self.vit_img_size // self.vit_patch_size // self.mp_pixel_shuffle_factor

    @property
    def max_grid_side(self) -> int:
        """Largest number of crops along the image's long side (4 for nanoVLM: 2048 / 512)."""
        return self.max_img_size // self.vit_img_size

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VLMConfig:
        """Build from a nanoVLM `config.json` dict; fields we do not model (training paths etc.) are ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        # nanoVLM derives lm_vocab_size from the two counts; honour an explicit value but fill a missing one.
        if "lm_vocab_size" not in kwargs and (
            "lm_base_vocab_size" in kwargs or "extra_token_amount" in kwargs
        ):
            kwargs["lm_vocab_size"] = kwargs.get("lm_base_vocab_size", 49152) + kwargs.get(
                "extra_token_amount", 66
            )
        return cls(**kwargs)

    @classmethod
    def from_json(cls, path: str | Path) -> VLMConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class CompressionConfig:
    """One compressed student, described relative to its teacher.

    Attributes:
        token_grid: k, so each view yields k*k visual tokens (1..native grid, 8 for nanoVLM). With the
            pixel-shuffle projector the projector's output grid is average-pooled to k x k; with a
            resampler, k*k learned queries.
        view_size: pixels per side of one view (None = the teacher's `vit_img_size`). Position
            embeddings are interpolated to the new patch grid.
        max_grid_side: the largest number of crops along the image's long side (None = the teacher's,
            4 for nanoVLM). 1 means a single view: the whole image squashed, i.e. the global view alone.
        drop_decoder_layers / drop_encoder_layers: indices of blocks removed from each tower.
        resampler_width: None keeps pixel shuffle + projector; an int replaces them with a Perceiver-style
            cross-attention resampler of that width, initialised from scratch.
        resampler_heads: attention heads of the resampler (its width must be divisible by it).
        keep_tokens_by_norm: keep this many tokens per view after the connector, those with the largest L2
            norm, in their original order (training-free; `vlm.reducers`).
        keep_tokens_by_score: keep this many tokens per view after the connector, chosen by a small scorer of
            width `scorer_width` trained from scratch (warm-up / distillation). At most one of the two.
        merge_per_block: token merging (ToMe) inside the vision encoder: tokens merged in each kept encoder
            block, one int for every block or a tuple with one entry per kept block; 0 = off.
    """

    token_grid: int | None = None
    view_size: int | None = None
    max_grid_side: int | None = None
    drop_decoder_layers: tuple[int, ...] = ()
    drop_encoder_layers: tuple[int, ...] = ()
    resampler_width: int | None = None
    resampler_heads: int = 4
    keep_tokens_by_norm: int | None = None
    keep_tokens_by_score: int | None = None
    scorer_width: int = 64
    merge_per_block: int | tuple[int, ...] = 0

    def __post_init__(self) -> None:
        # Normalise lists from JSON into sorted tuples so equal configs compare and hash equal.
        object.__setattr__(
            self, "drop_decoder_layers", tuple(sorted(set(int(i) for i in self.drop_decoder_layers)))
        )
        object.__setattr__(
            self, "drop_encoder_layers", tuple(sorted(set(int(i) for i in self.drop_encoder_layers)))
        )
        if self.token_grid is not None and self.token_grid < 1:
            raise ValueError(f"token_grid must be >= 1, got {self.token_grid}")
        if self.view_size is not None and self.view_size < 1:
            raise ValueError(f"view_size must be >= 1, got {self.view_size}")
        if self.max_grid_side is not None and self.max_grid_side < 1:
            raise ValueError(f"max_grid_side must be >= 1 (1 = global view only), got {self.max_grid_side}")
        if self.resampler_width is not None:
            if self.resampler_width < 1 or self.resampler_width % self.resampler_heads:
                raise ValueError(
                    f"resampler_width {self.resampler_width} must be positive and divisible by "
                    f"resampler_heads {self.resampler_heads}"
                )
        if self.keep_tokens_by_norm is not None and self.keep_tokens_by_score is not None:
            raise ValueError(
                "set keep_tokens_by_norm or keep_tokens_by_score, not both: one selection per view"
            )
        for name in ("keep_tokens_by_norm", "keep_tokens_by_score"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 (tokens kept per view), got {value}")
        if self.scorer_width < 1:
            raise ValueError(f"scorer_width must be >= 1, got {self.scorer_width}")
        if not isinstance(self.merge_per_block, int):
            object.__setattr__(self, "merge_per_block", tuple(int(r) for r in self.merge_per_block))
        merge = self.merge_per_block if isinstance(self.merge_per_block, tuple) else (self.merge_per_block,)
        if any(r < 0 for r in merge):
            raise ValueError(f"merge_per_block must be >= 0 tokens per block, got {self.merge_per_block}")

    @property
    def is_identity(self) -> bool:
        return self == CompressionConfig()

    @property
    def has_fresh_weights(self) -> bool:
        """A resampler or a token scorer starts from scratch: the student needs warm-up before scoring."""
        return self.resampler_width is not None or self.keep_tokens_by_score is not None

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["drop_decoder_layers"] = list(self.drop_decoder_layers)
        data["drop_encoder_layers"] = list(self.drop_encoder_layers)
        if isinstance(self.merge_per_block, tuple):
            data["merge_per_block"] = list(self.merge_per_block)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CompressionConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown CompressionConfig fields {sorted(unknown)}; known: {sorted(known)}")
        return cls(**data)

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> CompressionConfig:
        """Parse a JSON string or a path to a JSON file."""
        text = str(text_or_path)
        if not text.lstrip().startswith("{"):
            text = Path(text).read_text()
        return cls.from_dict(json.loads(text))


@dataclass(frozen=True)
class ImageSpec:
    """What the image processor and prompt builder need to know about a (possibly compressed) model."""

    view_size: int
    max_grid_side: int
    tokens_per_view: int
    resize_to_max_side_len: bool = True


@dataclass(frozen=True)
class ConnectorConfig:
    """How vision features become decoder tokens (the structural part of a compression).

    token_grid: k for k*k tokens per view (None = the native pixel-shuffled grid).
    resampler_width: None = pixel shuffle + projector; int = Perceiver resampler of that width.
    keep_tokens: None keeps every connector output; an int keeps that many per view, chosen by `keep_by`
        ("norm": largest L2 norm; "score": a scorer of width `scorer_width` trained from scratch).
    merge_schedule: () = the plain vision encoder; else tokens merged (ToMe) in each encoder block, already
        clamped (`vlm.plan.effective_merge_schedule`), un-merged to the full patch grid at the end.
    """

    token_grid: int | None = None
    resampler_width: int | None = None
    resampler_heads: int = 4
    keep_tokens: int | None = None
    keep_by: str = "norm"
    scorer_width: int = 64
    merge_schedule: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "merge_schedule", tuple(int(r) for r in self.merge_schedule))
        if self.keep_by not in ("norm", "score"):
            raise ValueError(f"keep_by must be 'norm' or 'score', got {self.keep_by!r}")


@dataclass(frozen=True)
class BenchSettings:
    """How much to measure. `batch_size` 0 skips the throughput run; `new_tokens` 0 skips generation."""

    warmup: int = 1
    repeats: int = 5
    batch_size: int = 8
    new_tokens: int = 10  # A-OKVQA direct answers are one to three words; evaluation allows 10 tokens
    components: bool = True
    memory: bool = True
    component_repeats: int | None = None  # timed passes per component (None: `repeats`)

    def __post_init__(self) -> None:
        if self.warmup < 0 or self.repeats < 1:
            raise ValueError(f"warmup must be >= 0 and repeats >= 1, got {self.warmup} and {self.repeats}")
        if self.component_repeats is not None and self.component_repeats < 1:
            raise ValueError(f"component_repeats must be >= 1, got {self.component_repeats}")
        if self.batch_size < 0 or self.new_tokens < 0:
            raise ValueError("batch_size and new_tokens must be >= 0 (0 skips that measurement)")
