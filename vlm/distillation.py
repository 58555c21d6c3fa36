"""Knowledge-distillation loss as a small module (torchtune's ForwardKLLoss shape).

loss = kd_weight * T² * KL(softmax(teacher / T) || softmax(student / T)) + (1 - kd_weight) * CE(student, gold)

The T² factor keeps the soft-target gradients on the same scale as the hard ones when T changes
(Hinton et al., 2015, https://arxiv.org/abs/1503.02531).

It lives in `vlm/`, beside `vlm.supervised`, because two packages train with it: the search's warm-up of fresh
weights (`search.warmup`) and the finalize distillation (`distill.train`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DistillationLoss(nn.Module):
    def __init__(self, kd_weight: float = 0.7, temperature: float = 2.0, ignore_index: int = -100):
        super().__init__()
        if not 0.0 <= kd_weight <= 1.0:
            raise ValueError(f"kd_weight must be in [0, 1], got {kd_weight}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.kd_weight = kd_weight
        self.temperature = temperature
        self.ignore_index = ignore_index

    def forward(
        self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        """student/teacher logits [N, C] (rows = answer positions), labels [N] (ignore_index rows skipped)."""
        keep = labels != self.ignore_index
        if not bool(keep.any()):
            return student_logits.sum() * 0.0
        student = student_logits[keep].float()
        teacher = teacher_logits[keep].float().detach()
        t = self.temperature
        kl = F.kl_div(
            F.log_softmax(student / t, -1), F.log_softmax(teacher / t, -1), log_target=True, reduction="none"
        )
        kd = kl.sum(-1).mean() * t * t
        ce = F.cross_entropy(student, labels[keep])
        return self.kd_weight * kd + (1 - self.kd_weight) * ce
