"""The search space replays exactly, drops the least important blocks first, and block influence is sane."""

from __future__ import annotations

import math

import optuna
import pytest

from ledger.config import SpaceSettings
from search.importance import block_influence, drop_order
from search.space import PARAMS, suggest_compression
from vlm.config import CompressionConfig

SPACE = SpaceSettings(
    token_grid=(1, 8),
    view_sizes=(32, 48, 64),
    max_grid_side=(1, 2),
    max_drop_decoder=3,
    max_drop_encoder=2,
    resampler_widths=(0, 16, 32),
)
DECODER_ORDER = [3, 1, 0, 2]  # least important first
ENCODER_ORDER = [2, 0, 1]


@pytest.fixture(scope="module")
def sampled() -> list[tuple[optuna.trial.FrozenTrial, CompressionConfig]]:
    """30 random trials of an in-memory study, each with the config the space built for it."""
    configs: dict[int, CompressionConfig] = {}

    def objective(trial: optuna.Trial) -> float:
        configs[trial.number] = suggest_compression(trial, SPACE, DECODER_ORDER, ENCODER_ORDER)
        return 0.0

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(objective, n_trials=30)
    return [(trial, configs[trial.number]) for trial in study.trials]


def test_fixed_trial_replays_the_same_config(sampled):
    for trial, config in sampled:
        assert set(trial.params) == set(PARAMS)
        replay = suggest_compression(
            optuna.trial.FixedTrial(trial.params), SPACE, DECODER_ORDER, ENCODER_ORDER
        )
        assert replay == config


def test_least_important_layers_are_dropped_first(sampled):
    seen_decoder, seen_encoder = set(), set()
    for trial, config in sampled:
        n_dec, n_enc = trial.params["n_drop_decoder"], trial.params["n_drop_encoder"]
        assert config.drop_decoder_layers == tuple(sorted(DECODER_ORDER[:n_dec]))
        assert config.drop_encoder_layers == tuple(sorted(ENCODER_ORDER[:n_enc]))
        seen_decoder.add(n_dec)
        seen_encoder.add(n_enc)
    # max_drop_decoder 3 of 4 blocks; max_drop_encoder 2 (the encoder's cap of len - 1 = 2 coincides).
    assert seen_decoder == {0, 1, 2, 3}
    assert seen_encoder == {0, 1, 2}


def test_never_drops_every_block():
    """The drop counts are capped at len(order) - 1 even where the space allows more."""
    space = SpaceSettings(max_drop_decoder=16, max_drop_encoder=6)
    study = optuna.create_study()
    trial = study.ask()
    suggest_compression(trial, space, [0, 1, 2, 3], [2, 0, 1])
    study.tell(trial, 0.0)
    distributions = study.trials[0].distributions
    assert distributions["n_drop_decoder"].high == 3
    assert distributions["n_drop_encoder"].high == 2
    assert distributions["view_size"].choices == space.view_sizes


def test_resampler_width_zero_means_no_resampler(sampled):
    widths = {trial.params["resampler_width"]: config.resampler_width for trial, config in sampled}
    assert widths == {0: None, 16: 16, 32: 32}


def test_drop_order_least_important_first():
    assert drop_order([0.5, 0.1, 0.3]) == [1, 2, 0]
    assert drop_order([]) == []


def test_drop_order_ties_go_to_the_later_layer():
    assert drop_order([0.2, 0.2, 0.1]) == [2, 1, 0]
    assert drop_order([0.0, 0.0, 0.0, 0.0]) == [3, 2, 1, 0]
    assert drop_order([0.1, 0.3, 0.1, 0.3]) == [2, 0, 3, 1]


def test_block_influence_on_the_tiny_teacher(world_teacher, world_validation):
    teacher, tokenizer = world_teacher
    decoder, encoder = block_influence(teacher, tokenizer, world_validation[:6], batch_size=4)
    assert len(decoder) == teacher.cfg.lm_n_blocks
    assert len(encoder) == teacher.cfg.vit_n_blocks
    for score in decoder + encoder:
        assert math.isfinite(score) and 0.0 <= score <= 2.0
    assert any(score > 0 for score in decoder) and any(score > 0 for score in encoder)
    # Pure measurement: no hooks left behind, the same scores again, independent of the batch size.
    again = block_influence(teacher, tokenizer, world_validation[:6], batch_size=6)
    assert again[0] == pytest.approx(decoder, rel=1e-4, abs=1e-6)
    assert again[1] == pytest.approx(encoder, rel=1e-4, abs=1e-6)
