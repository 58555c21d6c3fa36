"""Scoring one student on the validation subset, sharing work across trials.

Caches (pure memoisation: a hit returns exactly what recomputation would):
- prompts + image views per `ImageSpec` (image pipeline and tokenizer run once per spec);
- ViT features per vision setting (view size, crop grid, kept encoder blocks, token merging) and question:
  trials that differ only in token grid, token selection, resampler or decoder share the encoder's work.
Evaluation stops early once the Wilson interval shows the trial cannot reach the promotion threshold.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from vlm.config import ImageSpec
from vlm.data import VQAExample
from vlm.evaluate import EvalConfig, MCQResult, encode_mcq, iter_mcq, wilson_interval
from vlm.flops import QuestionCost, mcq_question_cost
from vlm.model import VisionLanguageModel
from vlm.plan import StudentPlan
from vlm.processing import Encoded

logger = logging.getLogger(__name__)

# (view size, max grid side, kept encoder blocks, tokens merged per block)
VisionKey = tuple[int, int, tuple[int, ...], tuple[int, ...]]


def vision_key(plan: StudentPlan) -> VisionKey:
    return (
        plan.cfg.vit_img_size,
        plan.cfg.max_grid_side,
        plan.kept_encoder_layers,
        plan.connector.merge_schedule,
    )


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


class FeatureCache:
    """ViT features per (vision key, question id) within a byte budget: beyond it, the least recently used
    entries of other vision keys go; a key that does not fit whole keeps the questions cached first."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self._bytes = 0
        self.stats = CacheStats()

    def get(self, key: tuple) -> torch.Tensor | None:
        value = self._items.get(key)
        if value is None:
            self.stats.misses += 1
            return None
        self._items.move_to_end(key)
        self.stats.hits += 1
        return value

    def put(self, key: tuple, value: torch.Tensor) -> None:
        size = value.numel() * value.element_size()
        if size > self.max_bytes:
            return
        if key in self._items:
            old = self._items.pop(key)
            self._bytes -= old.numel() * old.element_size()
        # Room comes from the least recently used entries of OTHER vision settings (key[0]). When one setting's
        # questions do not all fit, the ones already kept stay and the rest are not cached: plain LRU evicted
        # them in the order a trial reads them, so the next trial on that setting hit nothing (the real study's
        # 500 questions x 13 views take 20 GB in float32 against a 16 GB budget).
        while self._bytes + size > self.max_bytes:
            victim = next((k for k in self._items if k[0] != key[0]), None)
            if victim is None:
                return
            old = self._items.pop(victim)
            self._bytes -= old.numel() * old.element_size()
        self._items[key] = value
        self._bytes += size


@dataclass
class FillStats:
    """ViT work done to fill the feature cache (cache misses): seconds, views encoded, and per vision
    setting the bytes one question's features take in the cache."""

    seconds: float = 0.0
    views: int = 0
    bytes_per_question: dict[VisionKey, float] = field(default_factory=dict)


@dataclass
class TrialScore:
    result: MCQResult
    total: int  # questions in the subset
    stopped_early: bool
    predictions: dict[str, int] = field(default_factory=dict)

    @property
    def accuracy(self) -> float:
        return self.result.accuracy


class SubsetEvaluator:
    """Scores students on a fixed list of validation questions, with the caches described above."""

    def __init__(
        self,
        tokenizer,
        examples: Sequence[VQAExample],
        eval_config: EvalConfig,
        feature_cache_bytes: int = 2 << 30,
    ):
        self.tokenizer = tokenizer
        self.examples = list(examples)
        self.eval_config = eval_config
        self._encodings: dict[ImageSpec, list[Encoded]] = {}
        self.encoding_stats = CacheStats()
        self.features = FeatureCache(feature_cache_bytes)
        self.fill = FillStats()

    def encodings(self, model: VisionLanguageModel, spec: ImageSpec | None = None) -> list[Encoded]:
        """The examples' prompts and views for `model`, built once per image spec (default: the model's;
        a scorer's saliency pass asks for every token's)."""
        spec = spec or model.image_spec
        if spec in self._encodings:
            self.encoding_stats.hits += 1
        else:
            self.encoding_stats.misses += 1
            self._encodings[spec] = [encode_mcq(self.tokenizer, model, spec, e) for e in self.examples]
        return self._encodings[spec]

    def cost(self, model: VisionLanguageModel, plan: StudentPlan) -> QuestionCost:
        """Analytic FLOPs per question (MCQ: one prefill, no decode step) averaged over the subset."""
        encodings = self.encodings(model)
        return mcq_question_cost(
            plan, [int(e.images.shape[0]) for e in encodings], [int(e.input_ids.shape[0]) for e in encodings]
        )

    def vision_fn_for(self, model: VisionLanguageModel, key: VisionKey):
        def fn(images: torch.Tensor, question_ids: Sequence[str], n_views: Sequence[int]) -> torch.Tensor:
            cached = [self.features.get((key, qid)) for qid in question_ids]
            if all(c is not None for c in cached):
                return torch.cat(cached)
            start = time.perf_counter()
            with torch.no_grad():
                features = model.encode_vision(images).detach().cpu()  # [sum views, P, D]
            self.fill.seconds += time.perf_counter() - start
            self.fill.views += int(features.shape[0])
            self.fill.bytes_per_question[key] = features.numel() * features.element_size() / len(question_ids)
            for qid, part in zip(question_ids, features.split(list(n_views))):
                self.features.put((key, qid), part)
            return features

        return fn

    def score(
        self,
        model: VisionLanguageModel,
        plan: StudentPlan | None,
        threshold: float | None = None,
        min_samples: int = 64,
    ) -> TrialScore:
        """MCQ accuracy on the subset; stops once the 95% Wilson upper bound falls below `threshold`.

        `plan` enables the feature cache (None: the model's vision encoder is not the teacher's, e.g. trained).
        """
        encodings = self.encodings(model)
        vision_fn = self.vision_fn_for(model, vision_key(plan)) if plan is not None else None
        result = MCQResult()
        stopped = False
        for chunk, logits in iter_mcq(
            model, self.tokenizer, self.examples, self.eval_config, encodings, vision_fn
        ):
            for example, choice in zip(chunk, logits.argmax(-1).tolist()):
                result.predictions[example.question_id] = int(choice)
                result.n += 1
                result.correct += int(choice == example.correct_choice_idx)
            if threshold is not None and result.n >= min_samples and result.n < len(self.examples):
                if wilson_interval(result.correct, result.n)[1] < threshold:
                    stopped = True
                    break
        return TrialScore(result, len(self.examples), stopped, result.predictions)
