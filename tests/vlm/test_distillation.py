"""DistillationLoss against the formula written out by hand on a 2x3 example."""

from __future__ import annotations

import math

import pytest
import torch

from vlm.distillation import DistillationLoss

STUDENT = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
TEACHER = [[2.0, 0.0, 1.0], [1.0, 1.0, 1.0]]
LABELS = [1, 2]


def _softmax(row: list[float], t: float) -> list[float]:
    exps = [math.exp(x / t) for x in row]
    return [e / sum(exps) for e in exps]


def _kl(p: list[float], q: list[float]) -> float:
    """KL(p || q) = sum_i p_i log(p_i / q_i)."""
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


def _ce(row: list[float], label: int) -> float:
    return -math.log(_softmax(row, 1.0)[label])


def _by_hand(kd_weight: float, t: float, rows: list[int]) -> float:
    """kd_weight * T² * mean KL(teacher_T || student_T) + (1 - kd_weight) * mean CE, over `rows`."""
    kl = sum(_kl(_softmax(TEACHER[r], t), _softmax(STUDENT[r], t)) for r in rows) / len(rows)
    ce = sum(_ce(STUDENT[r], LABELS[r]) for r in rows) / len(rows)
    return kd_weight * t * t * kl + (1 - kd_weight) * ce


def _loss(kd_weight: float, t: float, labels=LABELS) -> torch.Tensor:
    loss_fn = DistillationLoss(kd_weight=kd_weight, temperature=t)
    return loss_fn(torch.tensor(STUDENT), torch.tensor(TEACHER), torch.tensor(labels))


@pytest.mark.parametrize(("kd_weight", "t"), [(0.7, 2.0), (0.3, 1.0), (0.5, 4.0)])
def test_matches_hand_computation(kd_weight, t):
    assert _loss(kd_weight, t).item() == pytest.approx(_by_hand(kd_weight, t, [0, 1]), abs=1e-6)


def test_kd_weight_zero_is_cross_entropy_and_one_is_scaled_kl():
    ce = sum(_ce(STUDENT[r], LABELS[r]) for r in (0, 1)) / 2
    kl = sum(_kl(_softmax(TEACHER[r], 3.0), _softmax(STUDENT[r], 3.0)) for r in (0, 1)) / 2
    assert _loss(0.0, 3.0).item() == pytest.approx(ce, abs=1e-6)  # the temperature plays no part
    assert _loss(1.0, 3.0).item() == pytest.approx(9.0 * kl, abs=1e-6)  # T² = 9
    # Pure KD does not look at the labels at all.
    assert _loss(1.0, 3.0, labels=[0, 0]).item() == pytest.approx(9.0 * kl, abs=1e-6)


def test_ignored_rows_are_skipped():
    assert _loss(0.7, 2.0, labels=[-100, 2]).item() == pytest.approx(_by_hand(0.7, 2.0, [1]), abs=1e-6)


def test_all_rows_ignored_gives_zero_with_a_gradient():
    student = torch.tensor(STUDENT, requires_grad=True)
    loss = DistillationLoss()(student, torch.tensor(TEACHER), torch.tensor([-100, -100]))
    assert loss.item() == 0.0
    loss.backward()  # still part of the graph, so a batch of ignored rows does not break the step
    assert torch.equal(student.grad, torch.zeros_like(student))


def test_gradient_flows_to_the_student_only():
    student = torch.tensor(STUDENT, requires_grad=True)
    teacher = torch.tensor(TEACHER, requires_grad=True)
    DistillationLoss()(student, teacher, torch.tensor(LABELS)).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kd_weight": -0.1}, "kd_weight"),
        ({"kd_weight": 1.5}, "kd_weight"),
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": -1.0}, "temperature"),
    ],
)
def test_invalid_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DistillationLoss(**kwargs)
