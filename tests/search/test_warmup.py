"""The search's warm-up of fresh weights on the tiny world: connector matching, then the teacher's letters."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from ledger.config import SearchSettings
from search.trial_eval import SubsetEvaluator
from search.warmup import (
    ConnectorMatching,
    ScorerSaliency,
    teacher_letter_logits,
    warm_up_as_study,
    warm_up_fresh_weights,
)
from vlm.compression import compress, plan_student
from vlm.config import CompressionConfig
from vlm.evaluate import EvalConfig, encode_mcq, letter_token_ids
from vlm.processing import collate
from vlm.token_saliency import token_saliency

RESAMPLER = CompressionConfig(token_grid=3, resampler_width=16)
POOLED = CompressionConfig(token_grid=3)


@pytest.fixture(scope="module")
def warmup(world_teacher, world_validation):
    teacher, tokenizer = world_teacher
    evaluator = SubsetEvaluator(
        tokenizer, world_validation[:16], EvalConfig(batch_size=8, show_progress=False)
    )
    return evaluator, teacher_letter_logits(teacher, evaluator, 8)


def _student(teacher, compression):
    torch.manual_seed(0)
    return compress(teacher, compression), plan_student(teacher.cfg, compression)


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _changed(before: dict, model) -> set[str]:
    return {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}


def _matched(teacher, warmup, compression):
    """(student, its weights before, the loss) after 4 matching steps and no letter steps."""
    evaluator, logits = warmup
    student, plan = _student(teacher, compression)
    before = _state(student)
    matching = ConnectorMatching(teacher.connector, steps=4, lr=3e-3)
    loss = warm_up_fresh_weights(student, plan, evaluator, logits, 0, 3e-3, 4, matching=matching)
    return student, before, loss


def test_matching_alone_trains_the_resampler_and_nothing_else(world_teacher, warmup):
    student, before, loss = _matched(world_teacher[0], warmup, RESAMPLER)
    changed = _changed(before, student)
    assert math.isfinite(loss)
    assert changed and all(k.startswith("connector.") for k in changed)
    assert not any(p.requires_grad for p in student.parameters())


def test_matching_is_skipped_for_a_student_without_a_resampler(world_teacher, warmup):
    student, before, loss = _matched(world_teacher[0], warmup, POOLED)
    assert math.isnan(loss) and not _changed(before, student)


def test_the_study_settings_decide_the_warm_up(world_teacher, warmup):
    teacher, _ = world_teacher
    evaluator, logits = warmup
    states = {}
    for match_steps in (0, 3):
        student, plan = _student(teacher, RESAMPLER)
        search = SearchSettings(
            resampler_warmup_steps=2, resampler_warmup_batch_size=4, resampler_match_steps=match_steps
        )
        warm_up_as_study(student, plan, teacher, search, evaluator, logits, seed=0)
        states[match_steps] = _state(student)
        # The same settings and seed give the same weights.
        again, _ = _student(teacher, RESAMPLER)
        warm_up_as_study(again, plan, teacher, search, evaluator, logits, seed=0)
        assert not _changed(states[match_steps], again)
    assert _changed(states[0], _load_into(_student(teacher, RESAMPLER)[0], states[3]))


@pytest.mark.parametrize(
    "field", ["resampler_match_steps", "resampler_warmup_steps", "scorer_saliency_steps"]
)
def test_negative_warm_up_steps_are_refused(field):
    with pytest.raises(ValueError, match=field):
        SearchSettings(**{field: -1})


def test_saliency_ranking_trains_only_the_scorer_to_keep_the_salient_tokens(world_teacher, warmup):
    teacher, _ = world_teacher
    evaluator, logits = warmup
    compression = CompressionConfig(keep_tokens_by_score=4)
    student, plan = _student(teacher, compression)
    before = _state(student)
    saliency = ScorerSaliency(steps=60, lr=1e-2)
    loss = warm_up_fresh_weights(student, plan, evaluator, logits, 0, 3e-3, 4, saliency=saliency)
    changed = _changed(before, student)
    assert math.isfinite(loss)
    assert changed and all(k.startswith("token_selector.scorer.") for k in changed)
    # The trained scorer's top tokens carry more saliency than the untrained scorer's.
    untrained, _ = _student(teacher, compression)
    assert _kept_saliency(student, plan, evaluator) > _kept_saliency(untrained, plan, evaluator)


def _kept_saliency(student, plan, evaluator) -> float:
    """Share of the saliency on the tokens the scorer keeps, over the first 8 warm-up questions."""
    every_token = dataclasses.replace(student.image_spec, tokens_per_view=plan.token_grid**2)
    examples = evaluator.examples[:8]
    batch = collate(
        [encode_mcq(evaluator.tokenizer, student, every_token, e) for e in examples],
        evaluator.tokenizer.pad_token_id,
    )
    with torch.no_grad():
        tokens = student.connector(student.encode_vision(batch["images"]))
    labels = torch.tensor([e.correct_choice_idx for e in examples])
    saliency = token_saliency(
        student,
        batch["input_ids"],
        batch["attention_mask"],
        tokens,
        letter_token_ids(evaluator.tokenizer),
        labels,
    )
    with torch.no_grad():
        kept = student.token_selector.scorer(tokens).topk(student.token_selector.keep, dim=-1).indices
    return float(saliency.gather(1, kept).sum() / saliency.sum())


def test_the_study_settings_decide_the_scorer_warm_up(world_teacher, warmup):
    teacher, _ = world_teacher
    evaluator, logits = warmup
    compression = CompressionConfig(keep_tokens_by_score=4)
    states = {}
    for saliency_steps in (0, 3):
        student, plan = _student(teacher, compression)
        search = SearchSettings(resampler_warmup_steps=0, scorer_saliency_steps=saliency_steps)
        warm_up_as_study(student, plan, teacher, search, evaluator, logits, seed=0)
        states[saliency_steps] = _state(student)
    changed = _changed(states[0], _load_into(_student(teacher, compression)[0], states[3]))
    assert changed and all(k.startswith("token_selector.scorer.") for k in changed)


def _load_into(student, state):
    student.load_state_dict(state)
    return student
