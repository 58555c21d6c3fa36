"""Hand-picked configs earlier projects chose, enqueued after the teacher so the study always holds the
points the search must beat. Each is expressed in the search space's parameters so it replays exactly.
"""

from __future__ import annotations

from ledger.config import SpaceSettings
from vlm.config import VLMConfig


def _closest(values, target: float):
    return min(values, key=lambda v: (abs(v - target), v))


def reference_params(cfg: VLMConfig, space: SpaceSettings) -> dict[str, dict[str, int | float | str]]:
    """{name: trial params}: teacher, 6x6 and 4x4 pooling, 3/4 view size, global view only, 50% resampler,
    and, when the space has token reducers, norm-based dropping and score pruning of 50% of the tokens."""
    native = cfg.native_token_grid
    teacher = {
        "token_grid": native,
        "view_size": cfg.vit_img_size,
        "max_grid_side": min(cfg.max_grid_side, space.max_grid_side[1]),
        "n_drop_decoder": 0,
        "n_drop_encoder": 0,
        "resampler_width": 0,
    }
    three_quarter_view = _closest(space.view_sizes, 0.75 * cfg.vit_img_size)
    three_quarter_grid = three_quarter_view // cfg.vit_patch_size // cfg.mp_pixel_shuffle_factor
    half_width = _closest(
        [w for w in space.resampler_widths if w > 0] or [cfg.lm_hidden_dim // 2], cfg.lm_hidden_dim / 2
    )
    reducers = {}
    if tuple(space.reducers) != ("none",):  # the space samples a token reducer: every reference names one
        teacher["token_reducer"] = "none"
        half = _closest(space.keep_fractions, 0.5)
        if "norm_drop" in space.reducers:  # keep the 50% of tokens with the largest norm
            reducers["norm drop 50%"] = {**teacher, "token_reducer": "norm_drop", "keep_fraction": half}
        if "score_prune" in space.reducers:  # a scorer trained from scratch keeps 50%
            reducers["score prune 50%"] = {**teacher, "token_reducer": "score_prune", "keep_fraction": half}
    return {
        "teacher": teacher,
        "pool 6x6": {**teacher, "token_grid": max(1, round(native * 6 / 8))},
        "pool 4x4": {**teacher, "token_grid": max(1, native // 2)},
        "3/4 view size": {**teacher, "view_size": three_quarter_view, "token_grid": three_quarter_grid},
        "global view only": {**teacher, "max_grid_side": 1},
        # Attention pooling to ~50% of the tokens (6x6 = 36 of 64) at half the decoder's width.
        "50% resampler": {
            **teacher,
            "token_grid": max(1, round(native / 2**0.5)),
            "resampler_width": half_width,
        },
        **reducers,
    }
