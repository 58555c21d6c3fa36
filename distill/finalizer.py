"""Finalize one trial (the library behind `python -m distill.finalize`).

Distill trial N's student from the teacher, evaluate it on the whole validation split (MCQ with interval,
direct answer), count its FLOPs per question, write test-split predictions in A-OKVQA's leaderboard format,
save the model (nanoVLM layout + its CompressionConfig) atomically, and record everything in the study
(user attribute `finalized:<N>`). A killed run resumes from its last training checkpoint.

Under `accelerate launch --num_processes N` every process trains (each on its shard of the global batch, see
`distill.train`); only the main process saves the model, evaluates, writes predictions and records the result
in the study, while the others wait for it at a barrier and then return the same record.
"""

from __future__ import annotations

import json
import logging
import time

import optuna
from accelerate import PartialState
from accelerate.utils import broadcast_object_list
from optuna.trial import TrialState

from distill.train import (
    build_student,
    distributed_state,
    match_fresh_resampler,
    merge_lora,
    rank_fresh_scorer,
    remove_checkpoints,
    teacher_cache_path,
    teacher_letter_logits_cached,
    train_student,
)
from ledger.config import StudyConfig
from ledger.records import (
    FinalizedRecord,
    check_world,
    failure_reason,
    read_baseline,
    read_promoted,
    recorded_ratio,
    trial_config,
)
from ledger.rules import promoted_trials, record_promotion
from ledger.world import load_split, load_teacher, teacher_digest
from vlm.atomic import write_json
from vlm.checkpoint import load_pretrained, save_pretrained
from vlm.compression import compress, plan_student
from vlm.config import BenchSettings, CompressionConfig
from vlm.evaluate import (
    EvalConfig,
    encode_mcq,
    evaluate_direct_answer,
    evaluate_mcq,
    leaderboard_predictions,
)
from vlm.flops import QuestionCost, mcq_question_cost
from vlm.timing import SHORT, compare_speed

logger = logging.getLogger(__name__)

SPEED_QUESTIONS = 4  # validation questions the teacher and the student are timed on (vlm.timing.SHORT)


class FinalizeError(RuntimeError):
    """Bad input to finalize: a clear message, and the study left as it was."""


def resolve_trial(
    study: optuna.Study, config: StudyConfig, which: str, allow_unpromoted: bool = False
) -> optuna.trial.FrozenTrial:
    """The trial `which` names ('best' or a number), refused unless promotion picked it (or the override)."""
    trials = study.get_trials(deepcopy=False)
    promoted = read_promoted(study)
    if promoted is None:  # `promote` has not run: apply its rule (and record it only when it picks the trial)
        main = distributed_state().is_main_process  # one process writes to the study
        rule = record_promotion if which == "best" and main else promoted_trials
        promoted = rule(study, config.search.promotion_margin)
    promoted_numbers = [row.trial for row in promoted]
    if which == "best":
        if not promoted:
            raise FinalizeError(
                f"study {study.study_name!r} has no promoted trials yet; run more search trials"
            )
        number = min(promoted, key=lambda r: (r.cost, -r.accuracy)).trial
    else:
        try:
            number = int(which)
        except ValueError as exc:
            raise FinalizeError(f"--trial must be a trial number or 'best', got {which!r}") from exc
    by_number = {t.number: t for t in trials}
    if number not in by_number:
        span = f"0..{max(by_number)}" if by_number else "none"
        raise FinalizeError(f"study {study.study_name!r} has no trial {number} (trials: {span})")
    trial = by_number[number]
    if trial.state != TrialState.COMPLETE:
        reason = failure_reason(trial) or "no result"
        raise FinalizeError(
            f"trial {number} is {trial.state.name}, not COMPLETE ({reason}); pick a promoted trial: "
            f"{_listing(promoted_numbers)}"
        )
    if trial_config(trial) is None:
        raise FinalizeError(f"trial {number} has no recorded config")
    if number not in promoted_numbers and not allow_unpromoted:
        raise FinalizeError(
            f"trial {number} was not promoted (not on the constrained Pareto front, nor a near-threshold "
            f"saving): pick one of {_listing(promoted_numbers)} (see `python -m distill.promote --study "
            f"{config.name}`), or pass --allow-unpromoted to distill it anyway"
        )
    return trial


def _mcq_cost(model, plan, tokenizer, examples) -> QuestionCost:
    """FLOPs per question (`vlm.flops`) on these questions' prompts as `model`'s processor builds them."""
    encodings = [encode_mcq(tokenizer, model, model.image_spec, e) for e in examples]
    return mcq_question_cost(
        plan, [int(e.images.shape[0]) for e in encodings], [int(e.input_ids.shape[0]) for e in encodings]
    )


def _listing(numbers: list[int]) -> str:
    return ", ".join(str(n) for n in sorted(numbers)) if numbers else "none promoted yet"


def _shared_record(state: PartialState, record: FinalizedRecord | None) -> FinalizedRecord:
    """The main process's record on every process: the others wait here until it has evaluated and saved."""
    if state.num_processes == 1:
        return record
    box = [record]
    broadcast_object_list(box, from_process=0)
    return box[0]


def finalize(
    config: StudyConfig,
    study: optuna.Study,
    trial: optuna.trial.FrozenTrial,
    speed_settings: BenchSettings = SHORT,
    speed_questions: int = SPEED_QUESTIONS,
) -> FinalizedRecord:
    """Distill, evaluate, save and record trial `trial` (see the module docstring). `speed_settings` and
    `speed_questions`: how long the teacher-vs-student timing runs (a dry run on a CPU shortens it)."""
    start = time.time()
    state = distributed_state()  # before the teacher is loaded: each GPU process on its own device
    main = state.is_main_process
    settings = config.distill
    compression = CompressionConfig.from_dict(trial_config(trial))
    run_dir = config.artifacts_dir / "finalize" / f"trial-{trial.number}"
    model_dir = run_dir / "model"
    teacher, tokenizer = load_teacher(config.model)
    teacher_id = teacher_digest(config.model)
    check_world(study, {"teacher": teacher_id}, record=False)  # distil from the teacher the search scored
    plan = plan_student(teacher.cfg, compression)

    # ----- distill (resumable) ------------------------------------------------------------------------------
    if (model_dir / "vlm_compress.json").is_file():
        if not main:
            return _shared_record(state, None)
        logger.info("trial %d already distilled at %s; re-evaluating", trial.number, model_dir)
        student = load_pretrained(model_dir, device=next(teacher.parameters()).device)
        train_info = json.loads((run_dir / "train_result.json").read_text())
    else:
        train = load_split(
            config.data, config.data.train_split, settings.train_size, seed=settings.train_seed
        )
        cache = teacher_cache_path(config.artifacts_dir / "cache", teacher_id, train)
        with state.main_process_first():  # the main process computes and caches them, the others read them
            teacher_logits = teacher_letter_logits_cached(
                teacher, tokenizer, train, cache, config.search.batch_size
            )
        student = build_student(teacher, compression, settings)

        def first_phase() -> None:  # skipped on resume: the checkpoint holds what it would train
            match_fresh_resampler(student, teacher, tokenizer, train, settings, seed=config.search.seed)
            rank_fresh_scorer(student, tokenizer, train, settings, seed=config.search.seed)

        result = train_student(
            student,
            tokenizer,
            train,
            teacher_logits,
            settings,
            run_dir,
            seed=config.search.seed,
            before_training=first_phase,
        )
        if not main:  # every process holds the same weights now: one saves, evaluates and records them
            return _shared_record(state, None)
        student = merge_lora(student)
        train_info = {
            "steps": result.steps,
            "final_loss": result.final_loss,
            "resumed_from": result.resumed_from,
            "seconds_per_step": result.seconds_per_step,
        }
        extras = {
            "compression": compression.to_dict(),
            "study": config.name,
            "trial": trial.number,
            "distill": train_info,
        }
        save_pretrained(student, model_dir, tokenizer=tokenizer, extras=extras)
        write_json(run_dir / "train_result.json", train_info)
        remove_checkpoints(run_dir)  # the saved model supersedes them (gigabytes on the real model)
        student = load_pretrained(
            model_dir, device=next(teacher.parameters()).device
        )  # evaluate what was saved

    # ----- evaluate on the whole validation split --------------------------------------------------------------
    eval_config = EvalConfig(batch_size=config.search.batch_size)
    val = load_split(config.data, config.data.split, None)
    mcq = evaluate_mcq(student, tokenizer, val, eval_config)
    da = evaluate_direct_answer(student, tokenizer, val, eval_config)
    posthoc = (
        evaluate_mcq(compress(teacher, compression), tokenizer, val, eval_config)
        if not compression.has_fresh_weights  # an untrained resampler or token scorer says nothing
        else None
    )
    cost = _mcq_cost(student, plan, tokenizer, val)
    # The reduction compares FLOPs on the same questions: the study's baseline FLOPs are averaged over the
    # search subset, and prompt lengths differ between subset and split (the teacher read -0.1% "fewer").
    teacher_cost = _mcq_cost(teacher, plan_student(teacher.cfg, CompressionConfig()), tokenizer, val)
    threshold = recorded_ratio(study) * read_baseline(study).accuracy  # the search's line, not today's TOML
    # Measured speed beside the counted FLOPs: teacher and student timed on the same questions and device.
    speed = compare_speed(student, teacher, tokenizer, val[:speed_questions], compression, speed_settings)

    # ----- test predictions in the leaderboard format ---------------------------------------------------------------
    test = load_split(config.data, "test", None)
    test_mcq = evaluate_mcq(student, tokenizer, test, eval_config)
    test_da = evaluate_direct_answer(student, tokenizer, test, eval_config)
    predictions = write_json(
        run_dir / "predictions_test.json", leaderboard_predictions(test, test_mcq, test_da)
    )

    low, high = mcq.interval
    record = FinalizedRecord(
        trial=trial.number,
        config=compression.to_dict(),
        model_dir=str(model_dir),
        predictions_test=str(predictions),
        mcq_accuracy=mcq.accuracy,
        ci_low=low,
        ci_high=high,
        n=mcq.n,
        da_accuracy=da.accuracy,
        posthoc_subset_accuracy=trial.values[1],
        posthoc_full_accuracy=posthoc.accuracy if posthoc else None,
        gflops=cost.flops / 1e9,
        teacher_gflops=teacher_cost.flops / 1e9,
        reduction_pct=100 * (1 - cost.flops / teacher_cost.flops),
        views=cost.views,
        image_tokens=cost.image_tokens,
        keeps_constraint=mcq.accuracy >= threshold,
        speed=speed,
        train=train_info,
        seconds=time.time() - start,
    )
    record.write(study)
    write_json(run_dir / "result.json", record.to_dict())
    return _shared_record(state, record)
