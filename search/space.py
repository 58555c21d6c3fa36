"""The search space: one pure function from a trial to a CompressionConfig.

This is the only place that calls `trial.suggest_*`, so any stored trial replays exactly with
`optuna.trial.FixedTrial(trial.params)`. Which layers are dropped is not searched: the `n` least important
blocks go first, by an importance ranking computed once per study (`search.importance`).
"""

from __future__ import annotations

from collections.abc import Sequence

import optuna

from search.study_config import SpaceSettings
from vlm.config import CompressionConfig

PARAMS = ("token_grid", "view_size", "max_grid_side", "n_drop_decoder", "n_drop_encoder", "resampler_width")


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
    )
