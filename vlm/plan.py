"""A student's plan: what a `CompressionConfig` makes of a teacher, derived from configs alone.

`plan_student` checks a config against the teacher's architecture and derives the student's effective
`VLMConfig` + connector without touching any weights (and without importing torch), so an invalid config
fails before any compute and FLOPs can be counted from the plan alone. `vlm.compression.compress` builds
the student from it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from vlm.config import MAX_CROP_GRID, CompressionConfig, ConnectorConfig, VLMConfig


class CompressionError(ValueError):
    """A CompressionConfig that cannot be applied to this teacher."""


@dataclass(frozen=True)
class StudentPlan:
    """Everything about a student that follows from (teacher config, compression config)."""

    cfg: VLMConfig
    connector: ConnectorConfig
    kept_encoder_layers: tuple[int, ...]
    kept_decoder_layers: tuple[int, ...]
    compression: CompressionConfig

    @property
    def token_grid(self) -> int:
        return self.connector.token_grid or self.cfg.native_token_grid

    @property
    def tokens_per_view(self) -> int:
        return self.connector.keep_tokens or self.token_grid**2


def _kept(n_layers: int, dropped: tuple[int, ...], tower: str) -> tuple[int, ...]:
    bad = [i for i in dropped if not 0 <= i < n_layers]
    if bad:
        raise CompressionError(f"cannot drop {tower} layers {bad}: the teacher has layers 0..{n_layers - 1}")
    kept = tuple(i for i in range(n_layers) if i not in set(dropped))
    if not kept:
        raise CompressionError(f"dropping all {n_layers} {tower} layers leaves no {tower}; keep at least one")
    return kept


def plan_student(teacher_cfg: VLMConfig, compression: CompressionConfig) -> StudentPlan:
    """Validate `compression` against the teacher and derive the student's architecture (no compute)."""
    patch = teacher_cfg.vit_patch_size
    factor = teacher_cfg.mp_pixel_shuffle_factor
    view = compression.view_size or teacher_cfg.vit_img_size
    grid_side = compression.max_grid_side or teacher_cfg.max_grid_side
    if view % patch:
        raise CompressionError(f"view_size {view} must be a multiple of the patch size {patch}")
    if grid_side > MAX_CROP_GRID:
        raise CompressionError(
            f"max_grid_side {grid_side} exceeds {MAX_CROP_GRID}: nanoVLM has no crop tags beyond 8x8"
        )
    patches_per_side = view // patch
    teacher_native = teacher_cfg.native_token_grid
    kept_enc = _kept(teacher_cfg.vit_n_blocks, compression.drop_encoder_layers, "encoder")
    kept_dec = _kept(teacher_cfg.lm_n_blocks, compression.drop_decoder_layers, "decoder")

    if compression.resampler_width is None:
        if patches_per_side % factor:
            raise CompressionError(
                f"view_size {view} gives a {patches_per_side}x{patches_per_side} patch grid, not divisible by the "
                f"pixel-shuffle factor {factor}: use a multiple of {patch * factor} or a resampler"
            )
        native = patches_per_side // factor
        grid = compression.token_grid or native
        if grid > native:
            raise CompressionError(
                f"token_grid {grid} exceeds the {native}x{native} tokens that view_size {view} yields after pixel shuffle"
            )
        connector = ConnectorConfig(token_grid=None if grid == native else grid)
        cfg = dataclasses.replace(
            teacher_cfg,
            vit_img_size=view,
            max_img_size=view * grid_side,
            mp_image_token_length=native * native,
            vit_n_blocks=len(kept_enc),
            lm_n_blocks=len(kept_dec),
        )
    else:
        grid = compression.token_grid or teacher_native
        if grid > teacher_native:
            raise CompressionError(f"token_grid {grid} exceeds the teacher's native {teacher_native}")
        # The resampler reads raw patches, so pixel shuffle is off (factor 1) in the effective config.
        connector = ConnectorConfig(
            token_grid=grid,
            resampler_width=compression.resampler_width,
            resampler_heads=compression.resampler_heads,
        )
        cfg = dataclasses.replace(
            teacher_cfg,
            vit_img_size=view,
            max_img_size=view * grid_side,
            mp_pixel_shuffle_factor=1,
            mp_image_token_length=patches_per_side * patches_per_side,
            vit_n_blocks=len(kept_enc),
            lm_n_blocks=len(kept_dec),
        )
    connector = _plan_reducers(compression, connector, grid * grid, patches_per_side**2, len(kept_enc))
    return StudentPlan(cfg, connector, kept_enc, kept_dec, compression)


def _plan_reducers(
    compression: CompressionConfig, connector: ConnectorConfig, tokens: int, patches: int, blocks: int
) -> ConnectorConfig:
    """Add token selection (`tokens` connector outputs per view) and the ToMe schedule to the connector."""
    keep, by = compression.keep_tokens_by_norm, "norm"
    if compression.keep_tokens_by_score is not None:
        keep, by = compression.keep_tokens_by_score, "score"
    if keep is not None and keep > tokens:
        name = f"keep_tokens_by_{by}"
        raise CompressionError(
            f"{name} {keep} exceeds the {tokens} tokens per view the connector gives: keep at most {tokens}"
        )
    merge = compression.merge_per_block
    if isinstance(merge, int):
        merge = (merge,) * blocks
    elif len(merge) != blocks:
        raise CompressionError(
            f"merge_per_block has {len(merge)} entries but the student keeps {blocks} encoder blocks: "
            "give one per kept block, or a single int for all"
        )
    schedule = effective_merge_schedule(patches, merge)
    if by == "score":
        connector = dataclasses.replace(connector, keep_by=by, scorer_width=compression.scorer_width)
    return dataclasses.replace(connector, keep_tokens=keep, merge_schedule=schedule if any(schedule) else ())


# ----- token merging schedule ------------------------------------------------------------------------------
def effective_merge_schedule(n_tokens: int, per_block: Sequence[int]) -> tuple[int, ...]:
    """Tokens actually merged in each block: r clamped to floor(N/2) of the N tokens the block sees."""
    schedule = []
    for r in per_block:
        r = max(0, min(int(r), n_tokens // 2))
        schedule.append(r)
        n_tokens -= r
    return tuple(schedule)


def merged_token_counts(n_tokens: int, schedule: Sequence[int]) -> list[int]:
    """Tokens entering each block, then the tokens left after the last one (len(schedule) + 1 numbers)."""
    counts = [n_tokens]
    for r in effective_merge_schedule(n_tokens, schedule):
        counts.append(counts[-1] - r)
    return counts
