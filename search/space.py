"""The search space: one pure function from a trial to a CompressionConfig.

This is the only place that calls `trial.suggest_*`, so any stored trial replays exactly with
`optuna.trial.FixedTrial(trial.params)`. Which layers are dropped is not searched: the `n` least important
blocks go first, by an importance ranking computed once per study (`search.importance`).
"""

from __future__ import annotations

from collections.abc import Sequence

import optuna

from ledger.config import SpaceSettings, StudyConfigError
from ledger.records import SEARCH_PARAMS
from vlm.config import MAX_CROP_GRID, CompressionConfig, VLMConfig

PARAMS = SEARCH_PARAMS  # the names are part of the study's record schema (ledger.records)
# Sampled only when [space] reducers lists more than "none"; keep_fraction / merge_r only for their reducer.
REDUCER_PARAMS = ("token_reducer", "keep_fraction", "merge_r")


def suggest_compression(
    trial: optuna.trial.BaseTrial,
    space: SpaceSettings,
    decoder_drop_order: Sequence[int],
    encoder_drop_order: Sequence[int],
) -> CompressionConfig:
    """Sample one config. `*_drop_order`: layer indices, least important first."""
    token_grid = trial.suggest_int("token_grid", *space.token_grid)
    view_size = trial.suggest_categorical("view_size", list(space.view_sizes))
    max_grid_side = trial.suggest_int("max_grid_side", *space.max_grid_side)
    n_drop_decoder = trial.suggest_int(
        "n_drop_decoder", 0, min(space.max_drop_decoder, len(decoder_drop_order) - 1)
    )
    n_drop_encoder = trial.suggest_int(
        "n_drop_encoder", 0, min(space.max_drop_encoder, len(encoder_drop_order) - 1)
    )
    resampler_width = trial.suggest_categorical("resampler_width", list(space.resampler_widths))
    return CompressionConfig(
        token_grid=token_grid,
        view_size=view_size,
        max_grid_side=max_grid_side,
        drop_decoder_layers=tuple(decoder_drop_order[:n_drop_decoder]),
        drop_encoder_layers=tuple(encoder_drop_order[:n_drop_encoder]),
        resampler_width=resampler_width or None,
        **_suggest_reducer(trial, space, token_grid),
    )


def _suggest_reducer(trial: optuna.trial.BaseTrial, space: SpaceSettings, token_grid: int) -> dict:
    """CompressionConfig fields of the token reducer; no suggestion at all when the space has none."""
    if tuple(space.reducers) == ("none",):
        return {}
    reducer = trial.suggest_categorical("token_reducer", list(space.reducers))
    if reducer in ("norm_drop", "score_prune"):
        fraction = trial.suggest_categorical("keep_fraction", list(space.keep_fractions))
        keep = max(1, int(fraction * token_grid * token_grid + 0.5))  # of the k*k tokens after pooling
        if reducer == "norm_drop":
            return {"keep_tokens_by_norm": keep}
        return {"keep_tokens_by_score": keep, "scorer_width": space.scorer_width}
    if reducer == "merge":
        return {"merge_per_block": trial.suggest_int("merge_r", *space.merge_r)}
    return {}


def check_space(space: SpaceSettings, teacher_cfg: VLMConfig, where: str = "study config") -> None:
    """Reject bounds the teacher cannot meet before any trial runs (they would only fail trial after trial).

    Raises `StudyConfigError` naming the [space] key, the bad value and the teacher's limit.
    """
    native = teacher_cfg.native_token_grid
    patch = teacher_cfg.vit_patch_size
    if space.token_grid[1] > native:
        raise StudyConfigError(
            f"{where} [space] token_grid = {list(space.token_grid)}: the teacher's views have {native}x{native} "
            f"tokens, so the upper bound must be at most {native}"
        )
    bad_views = [v for v in space.view_sizes if v < patch or v % patch]
    if bad_views:
        raise StudyConfigError(
            f"{where} [space] view_sizes = {list(space.view_sizes)}: {bad_views} not a multiple of the teacher's "
            f"patch size {patch} (e.g. {sorted({max(patch, patch * round(v / patch)) for v in bad_views})})"
        )
    if space.max_grid_side[1] > MAX_CROP_GRID:
        raise StudyConfigError(
            f"{where} [space] max_grid_side = {list(space.max_grid_side)}: nanoVLM has crop tags up to "
            f"{MAX_CROP_GRID}x{MAX_CROP_GRID}, so the upper bound must be at most {MAX_CROP_GRID}"
        )
