"""The token-reducer part of the search space: conditional parameters that replay exactly, nothing new
sampled without reducers, and the reducers' reference trials scored by a real study on the tiny world."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from ledger.config import SpaceSettings, load_study_config
from ledger.records import REFERENCE
from ledger.world import load_split
from search.references import reference_params
from search.run import main
from search.space import PARAMS, REDUCER_PARAMS, suggest_compression
from tests.search.conftest import load, run_args, sqlite_url
from vlm.compression import plan_student
from vlm.config import CompressionConfig
from vlm.flops import count_question, plan_image_spec
from vlm.processing import encode_example, mcq_user_text

SPACE = SpaceSettings(
    token_grid=(2, 4),
    view_sizes=(32, 64),
    max_grid_side=(1, 2),
    max_drop_decoder=1,
    max_drop_encoder=1,
    resampler_widths=(0, 16),
    reducers=("none", "norm_drop", "score_prune", "merge"),
    keep_fractions=(0.25, 0.5),
    merge_r=(1, 6),
    scorer_width=8,
)
ORDER = [1, 0]


def _sample(space: SpaceSettings, n: int = 60):
    configs = {}

    def objective(trial: optuna.Trial) -> float:
        configs[trial.number] = suggest_compression(trial, space, ORDER, ORDER)
        return 0.0

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(objective, n_trials=n)
    return [(trial, configs[trial.number]) for trial in study.trials]


def test_reducer_params_are_conditional_and_replay_exactly():
    seen = set()
    for trial, config in _sample(SPACE):
        params = trial.params
        reducer = params["token_reducer"]
        seen.add(reducer)
        expected_extra = {
            "norm_drop": {"keep_fraction"},
            "score_prune": {"keep_fraction"},
            "merge": {"merge_r"},
        }
        assert set(params) == set(PARAMS) | {"token_reducer"} | expected_extra.get(reducer, set())
        keep = max(1, int(params.get("keep_fraction", 0) * params["token_grid"] ** 2 + 0.5))  # half up
        assert config.keep_tokens_by_norm == (keep if reducer == "norm_drop" else None)
        assert config.keep_tokens_by_score == (keep if reducer == "score_prune" else None)
        assert config.merge_per_block == params.get("merge_r", 0)
        replay = suggest_compression(optuna.trial.FixedTrial(params), SPACE, ORDER, ORDER)
        assert replay == config
    assert seen == set(SPACE.reducers)


def test_without_reducers_nothing_new_is_sampled():
    """The default space ([space] without `reducers`) and reducers = ["none"] sample the old parameters
    only, so an old study's trials replay from their six parameters."""
    for space in (SpaceSettings(), SpaceSettings(reducers=("none",))):
        old_params = {
            "token_grid": 4,
            "view_size": 512,
            "max_grid_side": 2,
            "n_drop_decoder": 1,
            "n_drop_encoder": 0,
            "resampler_width": 0,
        }
        config = suggest_compression(optuna.trial.FixedTrial(old_params), space, ORDER, ORDER)
        assert config == CompressionConfig(
            token_grid=4, view_size=512, max_grid_side=2, drop_decoder_layers=(1,)
        )
    plain = SpaceSettings(
        token_grid=(2, 4), view_sizes=(32, 64), max_grid_side=(1, 2), resampler_widths=(0, 16)
    )
    assert all(set(trial.params) == set(PARAMS) for trial, _ in _sample(plain, 10))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"reducers": ("norm_drop",)}, "must include 'none'"),
        ({"reducers": ("none", "prune")}, "name only"),
        ({"keep_fractions": (0.0, 0.5)}, "keep_fractions"),
        ({"keep_fractions": ()}, "keep_fractions"),
        ({"merge_r": (0, 4)}, "merge_r"),
        ({"merge_r": (5, 4)}, "merge_r"),
        ({"scorer_width": 0}, "scorer_width"),
    ],
)
def test_reducer_settings_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SpaceSettings(**kwargs)


def _with_reducers(toml) -> None:
    text = toml.read_text().replace(
        "resampler_widths = [0, 16]",
        'resampler_widths = [0, 16]\nreducers = ["none", "norm_drop", "score_prune", "merge"]\n'
        "keep_fractions = [0.25, 0.5]\nmerge_r = [1, 8]\nscorer_width = 8",
    )
    toml.write_text(text)


def test_reducer_references_run_in_a_study(world, world_teacher, tmp_path):
    """A study with reducers queues the 50% norm-drop and score-prune references; the scorer is warmed up,
    and each trial's GFLOPs equal vlm.flops' count of its config on the subset's questions."""
    teacher, tokenizer = world_teacher
    toml = world.toml(tmp_path)
    _with_reducers(toml)
    url = sqlite_url(tmp_path / "tiny.db")
    config = load_study_config(str(toml))
    n_refs = len(reference_params(teacher.cfg, config.space))
    assert main(run_args(toml, url, n_refs)) == 0
    study = load(url)
    by_name = {t.user_attrs.get(REFERENCE): t for t in study.trials}
    norm, score = by_name["norm drop 50%"], by_name["score prune 50%"]
    assert norm.state == score.state == TrialState.COMPLETE
    assert set(norm.params) - set(PARAMS) <= set(REDUCER_PARAMS)
    assert norm.user_attrs["config"]["keep_tokens_by_norm"] == 32  # half of the 8x8 tokens per view
    assert score.user_attrs["config"]["keep_tokens_by_score"] == 32
    assert (
        "fresh_weights_warmup_loss" in score.user_attrs and "fresh_weights_warmup_loss" not in norm.user_attrs
    )
    assert norm.user_attrs["tokens_per_view"] == score.user_attrs["tokens_per_view"] == 32
    teacher_trial = by_name["teacher"]
    assert norm.user_attrs["image_tokens"] == pytest.approx(teacher_trial.user_attrs["image_tokens"] / 2)
    examples = load_split(config.data, config.data.split, config.data.subset_size)
    for trial in (norm, score):
        compression = CompressionConfig.from_dict(trial.user_attrs["config"])
        plan = plan_student(teacher.cfg, compression)
        total = 0.0
        for example in examples:
            encoded = encode_example(
                tokenizer,
                teacher.cfg,
                plan_image_spec(plan),
                example.image,
                mcq_user_text(example.question, example.choices),
            )
            image_tokens = int(encoded.images.shape[0]) * plan.tokens_per_view
            text_tokens = int(encoded.input_ids.shape[0]) - image_tokens
            count = count_question(
                teacher.cfg, compression, example.image.size, text_tokens, with_fvcore=False
            )
            total += count["analytic"]["total"]
        assert trial.values[0] == pytest.approx(total / len(examples) / 1e9, rel=1e-9)
    assert score.values[0] > norm.values[0]  # the same tokens, plus the scorer
