"""The objective: trial -> CompressionConfig -> student -> (GFLOPs per question, proxy accuracy).

With `[search] cost = "latency"` the first value is instead the student's measured MCQ latency relative to
the teacher's, both timed in this process (GFLOPs are still recorded as the user attribute `gflops`).

Study-level facts are measured once and cached in the study's user attributes, so every worker and every
resumed run reads the same values: the teacher's accuracy X on the validation subset, its FLOPs, and the
block-importance ranking. The objective itself keeps no state between trials beyond memoisation caches.
"""

from __future__ import annotations

import logging
import time

import optuna
import torch

from ledger.config import StudyConfig
from ledger.records import (
    BASELINE,
    BLOCK_IMPORTANCE,
    FAIL_REASON,
    INVALID_REASON,
    Baseline,
    LatencyRecord,
    TrialRecord,
    check_world,
    record_config,
    record_constraint,
    record_settings,
)
from ledger.world import load_split, load_teacher, questions_digest, teacher_digest
from search.claims import measure_once
from search.importance import block_influence, drop_order
from search.space import check_space, suggest_compression
from search.stages import StageMeter
from search.trial_eval import SubsetEvaluator, vision_key
from search.warmup import load_warmup_set, teacher_letter_logits, warm_up_as_study
from vlm.compression import CompressionError, compress, plan_student
from vlm.evaluate import EvalConfig
from vlm.flops import CONVENTION

logger = logging.getLogger(__name__)


class SearchContext:
    """Everything trials share: teacher, tokenizer, the scored subset, caches and the study-level facts."""

    def __init__(self, config: StudyConfig, study: optuna.Study):
        self.config = config
        self.teacher, self.tokenizer = load_teacher(config.model)
        check_space(config.space, self.teacher.cfg, f"study {config.name!r}")
        data = config.data
        eval_config = EvalConfig(batch_size=config.search.batch_size, show_progress=False)
        cache_bytes = config.search.feature_cache_mb << 20
        subset = load_split(data, data.split, data.subset_size)
        # A study describes one teacher on one set of questions: refuse to mix in another (a retrained or
        # edited teacher under the same path, a new demo generator writing other questions under the same ids).
        check_world(study, {"teacher": teacher_digest(config.model), "subset": questions_digest(subset)})
        self.subset = SubsetEvaluator(self.tokenizer, subset, eval_config, cache_bytes)
        self._warmup: SubsetEvaluator | None = None
        self._warmup_logits: torch.Tensor | None = None
        self.baseline = self._baseline(study)
        self.decoder_order, self.encoder_order = self._layer_orders(study)

    # ----- study-level facts, measured once and stored in the study --------------------------------------
    def _baseline(self, study: optuna.Study) -> Baseline:
        n = len(self.subset.examples)

        def measure() -> dict:
            logger.info("measuring the teacher's accuracy X on %d validation questions", n)
            plan = plan_student(self.teacher.cfg, _identity())
            score = self.subset.score(self.teacher, plan)
            low, high = score.result.interval
            cost = self.subset.cost(self.teacher, plan)
            record_settings(study, self.config.to_dict(), CONVENTION)
            return Baseline(score.accuracy, low, high, score.result.n, cost.flops / 1e9).to_attr()

        # One worker measures, however many start on a fresh study together (search.claims).
        value = measure_once(
            study,
            BASELINE,
            measure,
            f"the teacher's X on {n} questions",
            lambda v: v.get("n") == n,
            **self._claim_timing,
        )
        return Baseline.from_attr(value)

    def _layer_orders(self, study: optuna.Study) -> tuple[list[int], list[int]]:
        def measure() -> dict:
            calibration = load_split(
                self.config.data, self.config.data.train_split, self.config.data.calibration_size
            )
            decoder, encoder = block_influence(self.teacher, self.tokenizer, calibration)
            return {"decoder": decoder, "encoder": encoder}

        cached = measure_once(study, BLOCK_IMPORTANCE, measure, "the layer ranking", **self._claim_timing)
        return drop_order(cached["decoder"]), drop_order(cached["encoder"])

    @property
    def _claim_timing(self) -> dict:
        search = self.config.search
        return {"heartbeat_interval": search.heartbeat_interval, "grace_period": search.grace_period}

    # ----- resampler warm-up data, loaded on first use ----------------------------------------------------
    def warmup_data(self) -> tuple[SubsetEvaluator, torch.Tensor]:
        if self._warmup is None:
            self._warmup = load_warmup_set(
                self.config,
                self.tokenizer,
                self.subset.eval_config,
                self.config.search.feature_cache_mb << 19,
            )
            self._warmup_logits = teacher_letter_logits(
                self.teacher, self._warmup, self.config.search.batch_size
            )
        return self._warmup, self._warmup_logits

    @property
    def threshold(self) -> float:
        return self.config.search.constraint_ratio * self.baseline.accuracy

    @property
    def promotion_threshold(self) -> float:
        return self.threshold - self.config.search.promotion_margin


def _identity():
    from vlm.config import CompressionConfig

    return CompressionConfig()


class Objective:
    """Callable for `study.optimize`. Invalid configs are pruned with their reason; errors fail the trial."""

    def __init__(self, context: SearchContext):
        self.context = context

    def __call__(self, trial: optuna.Trial) -> tuple[float, float]:
        start = time.time()
        ctx = self.context
        search = ctx.config.search
        compression = suggest_compression(trial, ctx.config.space, ctx.decoder_order, ctx.encoder_order)
        record_config(trial, compression.to_dict())
        try:
            plan = plan_student(ctx.teacher.cfg, compression)
        except CompressionError as err:
            trial.set_user_attr(INVALID_REASON, str(err))
            raise optuna.TrialPruned(f"invalid config: {err}") from err
        try:
            # seconds and peak memory by stage
            meter = StageMeter(next(ctx.teacher.parameters()).device, exact=search.exact_stage_memory)
            # A resampler starts from fresh weights: seed them by trial, so a trial scores the same whatever
            # ran before it in this process (a resumed study, another worker, a different trial order).
            with meter.stage("build"), torch.random.fork_rng(devices=[]):
                torch.manual_seed(search.seed + trial.number)
                student = compress(ctx.teacher, compression)
            with meter.stage("prompts"):  # image views and token ids per image spec, then counted FLOPs
                cost = ctx.subset.cost(student, plan)
            if compression.has_fresh_weights:  # a resampler or a token scorer
                with meter.stage("warmup_data"):  # once per process: the teacher's logits on the warm-up set
                    warmup, teacher_logits = ctx.warmup_data()
                with meter.stage("warmup"):
                    loss = warm_up_as_study(
                        student, plan, ctx.teacher, search, warmup, teacher_logits, search.seed + trial.number
                    )
                trial.set_user_attr("fresh_weights_warmup_loss", loss)
            threshold = ctx.promotion_threshold if search.early_stop else None
            fill = (ctx.subset.fill.seconds, ctx.subset.fill.views)
            with meter.stage("score"):  # feature-cache fill (ViT on misses), connector and decoder prefill
                score = ctx.subset.score(student, plan, threshold, search.early_stop_min_samples)
            key = vision_key(plan)
            stages = meter.as_dict()
            stages["score"]["vision_fill_seconds"] = ctx.subset.fill.seconds - fill[0]
            stages["score"]["vision_fill_views"] = ctx.subset.fill.views - fill[1]
            stages["score"]["feature_bytes_per_question"] = ctx.subset.fill.bytes_per_question.get(key)
            trial.set_user_attr("stages", stages)
            timing = self._latency(student) if search.cost == "latency" else None
        except Exception as err:
            trial.set_user_attr(FAIL_REASON, f"{type(err).__name__}: {err}")
            raise
        low, high = score.result.interval
        gflops = cost.flops / 1e9
        latency = None
        if timing is not None:
            latency = LatencyRecord(
                latency_ratio=timing["ratio"],
                latency_ratio_spread=[timing["ratio_min"], timing["ratio_max"]],
                latency_ratio_iqr=timing["ratio_iqr"],
                latency_s=timing["latency_s"],
                teacher_latency_s=timing["reference_latency_s"],
                speedup=1 / timing["ratio"],
            )
        TrialRecord(
            views=cost.views,
            image_tokens=cost.image_tokens,
            prompt_tokens=cost.prompt_tokens,
            tokens_per_view=plan.tokens_per_view,
            decoder_layers_kept=len(plan.kept_decoder_layers),
            encoder_layers_kept=len(plan.kept_encoder_layers),
            gflops=gflops,
            reduction_pct=100 * (1 - gflops / ctx.baseline.gflops),
            samples_evaluated=score.result.n,
            ci_low=low,
            ci_high=high,
            stopped_early=score.stopped_early,
            seconds=time.time() - start,
            latency=latency,
        ).write(trial)
        record_constraint(trial, ctx.threshold - score.accuracy)  # feasible when <= 0
        return (gflops if timing is None else timing["ratio"]), score.accuracy

    def _latency(self, student) -> dict:
        """The student's MCQ latency relative to the teacher's, both timed now (vlm.timing.relative_latency)
        on the subset's first questions: a ratio stays comparable across workers, machines and load."""
        from vlm.timing import relative_latency

        ctx, search = self.context, self.context.config.search
        k = search.latency_questions
        return relative_latency(
            student,
            ctx.teacher,
            ctx.subset.encodings(student)[:k],
            ctx.subset.encodings(ctx.teacher)[:k],
            ctx.tokenizer.pad_token_id,
            search.latency_warmup,
            search.latency_repeats,
        )
