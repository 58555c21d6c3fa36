"""Short, fixed-budget warm-up of a freshly initialised resampler or token scorer, distilled from the
teacher.

Only the fresh weights train; ViT features come from the shared feature cache and the teacher's answer-letter
logits on the warm-up questions are computed once per study process. Without this a fresh resampler is
random and every resampler trial would score chance.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence

import torch

from search.trial_eval import SubsetEvaluator, vision_key
from vlm.distillation import DistillationLoss
from vlm.evaluate import all_letter_logits, letter_token_ids, mcq_letter_logits
from vlm.model import VisionLanguageModel
from vlm.plan import StudentPlan
from vlm.processing import collate

logger = logging.getLogger(__name__)


def teacher_letter_logits(
    teacher: VisionLanguageModel, warmup: SubsetEvaluator, batch_size: int
) -> torch.Tensor:
    """[N, 4] teacher logits of the choice letters on the warm-up questions."""
    return all_letter_logits(
        teacher, warmup.tokenizer, warmup.examples, batch_size, warmup.encodings(teacher)
    )


def warm_up_resampler(
    student: VisionLanguageModel,
    plan: StudentPlan,
    warmup: SubsetEvaluator,
    teacher_logits: torch.Tensor,
    steps: int,
    lr: float,
    batch_size: int,
    seed: int = 0,
    loss_fn: DistillationLoss | None = None,
) -> float:
    """Train the student's fresh weights (`fresh_parameters`: a resampler, a token scorer) for `steps` steps;
    returns the last loss. Deterministic given `seed`."""
    loss_fn = loss_fn or DistillationLoss(kd_weight=0.8, temperature=1.0)
    letters = letter_token_ids(warmup.tokenizer)
    encodings = warmup.encodings(student)
    labels = torch.tensor([e.correct_choice_idx for e in warmup.examples])
    vision_fn = warmup.vision_fn_for(student, vision_key(plan))
    device = next(student.parameters()).device
    for param in student.parameters():
        param.requires_grad_(False)
    params = student.fresh_parameters()
    for param in params:
        param.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    rng = random.Random(seed)
    order: list[int] = []
    loss_value = float("nan")
    student.train()
    for _ in range(steps):
        if len(order) < batch_size:
            order += rng.sample(range(len(encodings)), len(encodings))
        idx: Sequence[int] = order[:batch_size]
        order = order[batch_size:]
        batch = collate([encodings[i] for i in idx], warmup.tokenizer.pad_token_id)
        features = vision_fn(batch["images"], [warmup.examples[i].question_id for i in idx], batch["n_views"])
        logits = mcq_letter_logits(student, batch, letters, features.to(device))
        loss = loss_fn(logits, teacher_logits[idx].to(device), labels[idx].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_value = float(loss.detach())
    student.eval()
    for param in student.parameters():
        param.requires_grad_(False)
    return loss_value
