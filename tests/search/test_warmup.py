"""The search's warm-up of fresh weights on the tiny world: connector matching, then the teacher's letters."""

from __future__ import annotations

import math

import pytest
import torch

from ledger.config import SearchSettings
from search.trial_eval import SubsetEvaluator
from search.warmup import ConnectorMatching, teacher_letter_logits, warm_up_as_study, warm_up_resampler
from vlm.compression import compress, plan_student
from vlm.config import CompressionConfig
from vlm.evaluate import EvalConfig

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


def test_matching_alone_trains_the_resampler_and_nothing_else(world_teacher, warmup):
    teacher, _ = world_teacher
    evaluator, logits = warmup
    student, plan = _student(teacher, RESAMPLER)
    before = _state(student)
    matching = ConnectorMatching(teacher.connector, steps=4, lr=3e-3)
    loss = warm_up_resampler(student, plan, evaluator, logits, 0, 3e-3, 4, matching=matching)
    changed = _changed(before, student)
    assert math.isfinite(loss)
    assert changed and all(k.startswith("connector.") for k in changed)
    assert not any(p.requires_grad for p in student.parameters())


def test_matching_is_skipped_for_a_student_without_a_resampler(world_teacher, warmup):
    teacher, _ = world_teacher
    evaluator, logits = warmup
    student, plan = _student(teacher, POOLED)
    before = _state(student)
    matching = ConnectorMatching(teacher.connector, steps=4, lr=3e-3)
    loss = warm_up_resampler(student, plan, evaluator, logits, 0, 3e-3, 4, matching=matching)
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
    assert _changed(states[0], _load(teacher, states[3]))


def _load(teacher, state):
    student, _ = _student(teacher, RESAMPLER)
    student.load_state_dict(state)
    return student


@pytest.mark.parametrize("field", ["resampler_match_steps", "resampler_warmup_steps"])
def test_negative_warm_up_steps_are_refused(field):
    with pytest.raises(ValueError, match=field):
        SearchSettings(**{field: -1})
