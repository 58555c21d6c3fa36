"""Short, fixed-budget warm-up of freshly initialised weights (a resampler, a token scorer) before a trial is
scored.

Only the fresh weights train, in up to two phases. First a dense target of their own: a resampler learns the
teacher's projector tokens pooled to its grid (`vlm.connector_match`), a scorer learns to rank tokens by the
student's gradient saliency (`vlm.token_saliency`). Then a few steps distilled from the teacher's answer
letters. ViT features come from the shared feature cache, and the teacher's letter logits on the warm-up
questions are computed once per study process. Without a warm-up a fresh resampler is random and every
resampler trial would score chance.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from ledger.config import SearchSettings, StudyConfig
from ledger.world import load_split
from search.trial_eval import SubsetEvaluator, vision_key
from vlm.connector_match import match_resampler
from vlm.distillation import DistillationLoss
from vlm.evaluate import EvalConfig, all_letter_logits, letter_token_ids, mcq_letter_logits
from vlm.model import PerceiverResampler, VisionLanguageModel
from vlm.plan import StudentPlan
from vlm.processing import collate
from vlm.token_saliency import every_token_spec, fit_scorer_to_saliency

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScorerSaliency:
    """The first warm-up phase of a fresh token scorer: `steps` steps at `lr` learning to rank each view's
    tokens as the student's own gradient saliency, with every token in the prompt, does (`vlm.token_saliency`)."""

    steps: int
    lr: float


@dataclass(frozen=True)
class ConnectorMatching:
    """The first warm-up phase of a fresh resampler: `steps` steps at `lr` matching `reference` (the teacher's
    pixel-shuffle projector) pooled to the resampler's grid (`vlm.connector_match`)."""

    reference: nn.Module
    steps: int
    lr: float


def load_warmup_set(
    config: StudyConfig, tokenizer, eval_config: EvalConfig, feature_cache_bytes: int = 2 << 30
) -> SubsetEvaluator:
    """The study's warm-up questions: `warmup_size` training questions, drawn apart from the subset's."""
    data = config.data
    examples = load_split(data, data.train_split, data.warmup_size, seed=data.subset_seed + 1)
    return SubsetEvaluator(tokenizer, examples, eval_config, feature_cache_bytes)


def warm_up_as_study(
    student: VisionLanguageModel,
    plan: StudentPlan,
    teacher: VisionLanguageModel,
    search: SearchSettings,
    warmup: SubsetEvaluator,
    teacher_logits: torch.Tensor,
    seed: int,
) -> float:
    """`warm_up_fresh_weights` with the study's [search] settings (what a trial with fresh weights gets)."""
    return warm_up_fresh_weights(
        student,
        plan,
        warmup,
        teacher_logits,
        search.resampler_warmup_steps,
        search.resampler_warmup_lr,
        search.resampler_warmup_batch_size,
        seed=seed,
        loss_fn=DistillationLoss(search.resampler_warmup_kd_weight, search.resampler_warmup_temperature),
        matching=ConnectorMatching(
            teacher.connector, search.resampler_match_steps, search.resampler_match_lr
        ),
        saliency=ScorerSaliency(search.scorer_saliency_steps, search.scorer_saliency_lr),
    )


def teacher_letter_logits(
    teacher: VisionLanguageModel, warmup: SubsetEvaluator, batch_size: int
) -> torch.Tensor:
    """[N, 4] teacher logits of the choice letters on the warm-up questions."""
    return all_letter_logits(
        teacher, warmup.tokenizer, warmup.examples, batch_size, warmup.encodings(teacher)
    )


def warm_up_fresh_weights(
    student: VisionLanguageModel,
    plan: StudentPlan,
    warmup: SubsetEvaluator,
    teacher_logits: torch.Tensor,
    steps: int,
    lr: float,
    batch_size: int,
    seed: int = 0,
    loss_fn: DistillationLoss | None = None,
    matching: ConnectorMatching | None = None,
    saliency: ScorerSaliency | None = None,
) -> float:
    """Train the student's fresh weights (`fresh_parameters`: a resampler, a token scorer) for `steps` steps
    on the teacher's letters, after `matching` (a resampler only) and `saliency` (a token scorer only); returns
    the last letter loss (the first phase's loss when `steps` is 0). Deterministic given `seed`."""
    loss_fn = loss_fn or DistillationLoss(kd_weight=0.8, temperature=1.0)
    letters = letter_token_ids(warmup.tokenizer)
    encodings = warmup.encodings(student)
    labels = torch.tensor([e.correct_choice_idx for e in warmup.examples])
    vision_fn = warmup.vision_fn_for(student, vision_key(plan))
    device = next(student.parameters()).device
    for param in student.parameters():
        param.requires_grad_(False)
    loss_value = float("nan")
    if matching is not None and matching.steps > 0 and isinstance(student.connector, PerceiverResampler):
        features = warmup_features(student, warmup, vision_fn, batch_size, seed + 1)
        loss_value = match_resampler(
            student.connector, matching.reference, features, matching.steps, matching.lr
        )
    scorer = student.token_selector.scorer if student.token_selector is not None else None
    if saliency is not None and saliency.steps > 0 and scorer is not None:
        loss_value = rank_by_saliency(student, warmup, vision_fn, saliency, batch_size, seed)
    params = student.fresh_parameters()
    if steps == 0 or not params:
        student.eval()
        return loss_value
    for param in params:
        param.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    batches = _batches(len(encodings), batch_size, random.Random(seed))
    student.train()
    for _ in range(steps):
        idx = next(batches)
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


def _batches(n: int, batch_size: int, rng: random.Random):
    """Endless batches of indices into n items: shuffled passes, each index once per pass."""
    order: list[int] = []
    while True:
        if len(order) < batch_size:
            order += rng.sample(range(n), n)
        yield order[:batch_size]
        order = order[batch_size:]


def warmup_features(
    student: VisionLanguageModel, warmup: SubsetEvaluator, vision_fn: Callable, batch_size: int, seed: int
) -> Iterator[torch.Tensor]:
    """Endless batches of the student's ViT features on the warm-up images (cached after the first pass)."""
    encodings = warmup.encodings(student)
    device = next(student.parameters()).device
    for idx in _batches(len(encodings), batch_size, random.Random(seed)):
        batch = collate([encodings[i] for i in idx], warmup.tokenizer.pad_token_id)
        ids = [warmup.examples[i].question_id for i in idx]
        yield vision_fn(batch["images"], ids, batch["n_views"]).to(device)


def rank_by_saliency(
    student: VisionLanguageModel,
    warmup: SubsetEvaluator,
    vision_fn: Callable,
    saliency: ScorerSaliency,
    batch_size: int,
    seed: int,
) -> float:
    """Train the student's token scorer alone to rank each view's tokens as their saliency does: saliency from
    one pass over the warm-up questions with every token in the prompt, then `saliency.steps` steps of the
    listwise loss on the connector outputs (`vlm.token_saliency`). Returns the last loss."""
    encodings = warmup.encodings(student, every_token_spec(student))
    labels = torch.tensor([e.correct_choice_idx for e in warmup.examples])

    def batches():
        for start in range(0, len(encodings), batch_size):
            idx = list(range(start, min(start + batch_size, len(encodings))))
            batch = collate([encodings[i] for i in idx], warmup.tokenizer.pad_token_id)
            ids = [warmup.examples[i].question_id for i in idx]
            yield batch, vision_fn(batch["images"], ids, batch["n_views"]), labels[idx]

    letters = letter_token_ids(warmup.tokenizer)
    return fit_scorer_to_saliency(
        student, batches(), letters, saliency.steps, saliency.lr, 4 * batch_size, seed + 2
    )
