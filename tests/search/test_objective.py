"""The objective end to end on the tiny world: what a study stores, resuming, invalid configs, early stopping."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass

import optuna
import pytest
import torch
from optuna.trial import TrialState
from optuna_dashboard._serializer import serialize_frozen_trial

from ledger.config import load_study_config
from ledger.records import OBJECTIVE_NAMES, REFERENCE
from ledger.rules import count_finished, is_feasible, pareto_front
from ledger.world import load_split
from search.references import reference_params
from search.run import main
from search.trial_eval import FeatureCache, SubsetEvaluator
from tests.search.conftest import load, run_args, sqlite_url
from vlm.compression import plan_student
from vlm.config import CompressionConfig
from vlm.evaluate import EvalConfig
from vlm.flops import count_question, plan_image_spec
from vlm.processing import encode_example, mcq_user_text

FIRST_RUN = 8
SECOND_RUN = 11
TRIAL_ATTRS = (
    "views",
    "image_tokens",
    "gflops",
    "reduction_pct",
    "samples_evaluated",
    "ci_low",
    "ci_high",
    "seconds",
    "stopped_early",
    "config",
)
# view 32 with the tiny world's 8 px patches and pixel-shuffle factor 1 gives a 4x4 grid: 8x8 cannot fit.
INVALID = {
    "token_grid": 8,
    "view_size": 32,
    "max_grid_side": 1,
    "n_drop_decoder": 0,
    "n_drop_encoder": 0,
    "resampler_width": 0,
}


@contextmanager
def captured(name: str):
    """Log records of logger `name` (a module-scoped fixture cannot use caplog)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    previous = logger.level
    logger.setLevel(logging.INFO)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


@dataclass
class Searched:
    study: optuna.Study
    config: object
    attrs_after_first: dict
    trials_after_first: int
    trials_after_repeat: int
    resume_log: list[str]
    invalid_number: int


@pytest.fixture(scope="module")
def searched(world, tmp_path_factory) -> Searched:
    """Run 8 trials, re-run with the same target, enqueue an invalid config and resume to 11."""
    directory = tmp_path_factory.mktemp("objective")
    toml = world.toml(directory)
    url = sqlite_url(directory / "tiny.db")
    assert main(run_args(toml, url, FIRST_RUN)) == 0
    first = load(url)
    attrs_after_first = dict(first.user_attrs)
    trials_after_first = len(first.trials)

    assert main(run_args(toml, url, FIRST_RUN)) == 0
    trials_after_repeat = len(load(url).trials)

    first.enqueue_trial(INVALID)
    with captured("search") as records:
        assert main(run_args(toml, url, SECOND_RUN)) == 0
    study = load(url)
    invalid = [t for t in study.trials if t.number >= trials_after_repeat and t.params == INVALID]
    return Searched(
        study,
        load_study_config(str(toml)),
        attrs_after_first,
        trials_after_first,
        trials_after_repeat,
        [r.getMessage() for r in records],
        invalid[0].number,
    )


def test_metric_names(searched):
    assert searched.study.metric_names == OBJECTIVE_NAMES == ["gflops_per_question", "accuracy"]
    assert [d.name for d in searched.study.directions] == ["MINIMIZE", "MAXIMIZE"]


def test_references_come_first_teacher_first(searched, world_teacher):
    teacher, _ = world_teacher
    expected = reference_params(teacher.cfg, searched.config.space)
    trials = sorted(searched.study.trials, key=lambda t: t.number)
    firsts = trials[: len(expected)]
    assert [t.user_attrs.get(REFERENCE) for t in firsts] == list(expected)
    assert firsts[0].user_attrs[REFERENCE] == "teacher"
    for trial in firsts:
        assert trial.params == expected[trial.user_attrs[REFERENCE]]
    assert all(REFERENCE not in t.user_attrs for t in trials[len(expected) :])


def test_teacher_trial_reproduces_the_baseline(searched):
    baseline = searched.study.user_attrs["baseline"]
    teacher = searched.study.trials[0]
    assert teacher.state == TrialState.COMPLETE
    assert teacher.values[1] == baseline["accuracy"]
    assert teacher.values[0] == pytest.approx(baseline["gflops"], rel=1e-12)
    assert teacher.user_attrs["reduction_pct"] == pytest.approx(0.0, abs=1e-9)
    assert (
        teacher.user_attrs["config"]
        == CompressionConfig(token_grid=8, view_size=64, max_grid_side=2).to_dict()
    )


def test_complete_trials_carry_their_measurements(searched):
    complete = searched.study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) >= 6
    for trial in complete:
        missing = [k for k in TRIAL_ATTRS if k not in trial.user_attrs]
        assert not missing, (trial.number, missing)
        attrs = trial.user_attrs
        assert attrs["gflops"] == trial.values[0]
        assert attrs["ci_low"] <= trial.values[1] <= attrs["ci_high"]
        assert 0 < attrs["samples_evaluated"] <= 48
        assert attrs["stopped_early"] == (attrs["samples_evaluated"] < 48)
        assert attrs["seconds"] > 0
        assert CompressionConfig.from_dict(attrs["config"])  # the stored config parses back


def test_feasible_iff_accuracy_reaches_the_floor(searched):
    floor = searched.config.search.constraint_ratio * searched.study.user_attrs["baseline"]["accuracy"]
    complete = searched.study.get_trials(states=(TrialState.COMPLETE,))
    for trial in complete:
        assert is_feasible(trial) == (trial.values[1] >= floor), trial.number
        # Optuna's own constraint (what the samplers and best_trials read) is ratio·X - accuracy, and the only one.
        margin = trial.constraints["accuracy_floor"]
        # (the dashboard's list form reads back as key "0": the same value)
        assert margin == pytest.approx(floor - trial.values[1], abs=1e-12)
        assert set(trial.constraints.values()) == {margin}
        # ... and optuna-dashboard, which reads the list form only, sees the same value.
        assert serialize_frozen_trial(0, trial, {})["constraints"] == [margin]
    assert any(is_feasible(t) for t in complete)  # at least the teacher
    # study.best_trials (what the dashboard's front and users' scripts read) is the feasible front.
    best = searched.study.best_trials
    assert best and all(is_feasible(t) for t in best)
    assert {t.number for t in best} >= {
        t.number for t in pareto_front([t for t in complete if is_feasible(t)])
    }


def test_same_target_runs_nothing_more(searched):
    assert searched.trials_after_first == FIRST_RUN  # no failures: every trial finished
    assert searched.trials_after_repeat == searched.trials_after_first


def test_bigger_target_resumes_without_remeasuring(searched):
    study = searched.study
    assert count_finished(study) == SECOND_RUN
    for key in ("baseline", "block_importance", "references_enqueued"):
        assert study.user_attrs[key] == searched.attrs_after_first[key]
    assert any("teacher X =" in message for message in searched.resume_log)  # the log was captured
    assert not any("measuring the teacher" in message for message in searched.resume_log)
    assert sum(t.user_attrs.get(REFERENCE) == "teacher" for t in study.trials) == 1


def test_resampler_trial_scores_the_same_whatever_ran_before_it(searched, world, tmp_path):
    # A second study, run after the global torch RNG has moved on: the resampler reference gets the same
    # trial number, so the same fresh weights and warm-up, and the same score.
    torch.manual_seed(12345)
    torch.rand(1000)
    url = sqlite_url(tmp_path / "again.db")
    first = _reference(searched.study, "50% resampler")
    assert main(run_args(world.toml(tmp_path), url, first.number + 1)) == 0
    again = _reference(load(url), "50% resampler")
    assert again.number == first.number
    assert again.values == first.values
    assert again.user_attrs["fresh_weights_warmup_loss"] == first.user_attrs["fresh_weights_warmup_loss"]


def _reference(study: optuna.Study, name: str):
    return next(t for t in study.trials if t.user_attrs.get(REFERENCE) == name)


def test_invalid_config_is_pruned_with_its_reason(searched):
    trial = searched.study.trials[searched.invalid_number]
    assert trial.state == TrialState.PRUNED
    assert "token_grid 8 exceeds the 4x4 tokens" in trial.user_attrs["invalid_reason"]
    assert trial.user_attrs["config"]["view_size"] == 32


def _analytic_gflops(teacher_cfg, tokenizer, examples, compression: CompressionConfig) -> float:
    """Mean analytic GFLOPs per question, counted by vlm.flops from each image's size and prompt length."""
    plan = plan_student(teacher_cfg, compression)
    spec = plan_image_spec(plan)
    total = 0.0
    for example in examples:
        encoded = encode_example(
            tokenizer, teacher_cfg, spec, example.image, mcq_user_text(example.question, example.choices)
        )
        image_tokens = int(encoded.images.shape[0]) * plan.tokens_per_view
        text_tokens = int(encoded.input_ids.shape[0]) - image_tokens
        count = count_question(teacher_cfg, compression, example.image.size, text_tokens, with_fvcore=False)
        assert count["views"] == encoded.images.shape[0]
        total += count["analytic"]["total"]
    return total / len(examples) / 1e9


def test_gflops_match_an_independent_analytic_count(searched, world_teacher):
    teacher, tokenizer = world_teacher
    data = searched.config.data
    examples = load_split(data, data.split, data.subset_size)
    complete = searched.study.get_trials(states=(TrialState.COMPLETE,))
    references = [t for t in complete if REFERENCE in t.user_attrs]
    assert {t.user_attrs[REFERENCE] for t in references} >= {"teacher", "50% resampler"}
    for trial in references:
        compression = CompressionConfig.from_dict(trial.user_attrs["config"])
        expected = _analytic_gflops(teacher.cfg, tokenizer, examples, compression)
        assert trial.values[0] == pytest.approx(expected, rel=1e-9), trial.user_attrs[REFERENCE]
    assert searched.study.user_attrs["baseline"]["gflops"] == pytest.approx(
        _analytic_gflops(teacher.cfg, tokenizer, examples, CompressionConfig()), rel=1e-9
    )


@pytest.fixture(scope="module")
def evaluator(world_teacher, world_validation) -> SubsetEvaluator:
    _, tokenizer = world_teacher
    return SubsetEvaluator(tokenizer, world_validation, EvalConfig(batch_size=16, show_progress=False))


def test_early_stop_when_the_floor_is_out_of_reach(world_teacher, evaluator):
    teacher, _ = world_teacher  # random weights: about chance (0.25), far below 0.99
    plan = plan_student(teacher.cfg, CompressionConfig())
    score = evaluator.score(teacher, plan, threshold=0.99, min_samples=16)
    assert score.stopped_early
    assert score.total == 48
    assert 16 <= score.result.n < score.total
    assert len(score.predictions) == score.result.n


def test_no_threshold_scores_everything(world_teacher, evaluator):
    teacher, _ = world_teacher
    plan = plan_student(teacher.cfg, CompressionConfig())
    score = evaluator.score(teacher, plan, threshold=None, min_samples=16)
    assert not score.stopped_early
    assert score.result.n == score.total == 48
    # The feature cache is pure memoisation: scoring again hits it and predicts exactly the same.
    hits = evaluator.features.stats.hits
    again = evaluator.score(teacher, plan, threshold=None, min_samples=16)
    assert evaluator.features.stats.hits == hits + 48
    assert again.predictions == score.predictions
    assert again.result.correct == score.result.correct


def test_feature_cache_evicts_least_recently_used_within_its_budget():
    cache = FeatureCache(max_bytes=3 * 4 * 10)  # three float32 tensors of 10 values
    for name in "abc":
        cache.put((name,), torch.zeros(10))
    assert cache.get(("a",)) is not None  # "a" is now the most recently used
    cache.put(("d",), torch.zeros(10))
    assert cache.get(("b",)) is None  # evicted: least recently used
    assert all(cache.get((name,)) is not None for name in "acd")
    cache.put(("huge",), torch.zeros(100))  # larger than the whole budget: not kept, nothing evicted
    assert cache.get(("huge",)) is None and cache.get(("c",)) is not None
    assert cache.stats.hits == 5 and cache.stats.misses == 2


def test_feature_cache_replacing_an_entry_frees_its_own_bytes():
    cache = FeatureCache(max_bytes=1000)
    cache.put(("a",), torch.zeros(10))  # 40 bytes
    cache.put(("a",), torch.zeros(10, dtype=torch.float64))  # 80 bytes
    assert cache._bytes == 80


def test_feature_cache_keeps_a_setting_that_does_not_fit_partly_cached():
    """One vision setting larger than the budget, read in the same order by every trial: plain LRU evicted
    each entry just before it was read again (zero hits); the first entries now stay and hit."""
    cache = FeatureCache(max_bytes=3 * 4 * 10)  # three float32 tensors of 10 values
    for _ in range(2):  # two trials on the same setting, five questions each
        for question in "abcde":
            if cache.get(("setting", question)) is None:
                cache.put(("setting", question), torch.zeros(10))
    assert cache.stats.hits == 3 and cache.stats.misses == 7
    cache.put(("other setting", "a"), torch.zeros(10))  # a new setting evicts the old one's oldest entry
    assert cache.get(("setting", "a")) is None and cache.get(("other setting", "a")) is not None
