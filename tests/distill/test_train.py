"""The distillation loop on the tiny world's random teacher: a real accelerate loop on CPU, real checkpoints."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil

import pytest
import torch
from accelerate import Accelerator
from peft import PeftModel
from transformers import LlamaForCausalLM

import distill.train
from distill.train import (
    STATE_FILE,
    DistillationDiverged,
    build_student,
    match_fresh_resampler,
    merge_lora,
    rank_fresh_scorer,
    teacher_cache_path,
    teacher_letter_logits_cached,
    train_student,
)
from tests.distill.conftest import TRAIN
from vlm.checkpoint import load_pretrained, save_pretrained
from vlm.config import CompressionConfig
from vlm.distillation import DistillationLoss
from vlm.evaluate import encode_mcq
from vlm.processing import collate

POOLED = CompressionConfig(token_grid=4, drop_decoder_layers=(2,))
RESAMPLER = CompressionConfig(token_grid=4, resampler_width=16)


def _student(teacher, compression, settings=TRAIN, seed=0):
    torch.manual_seed(seed)  # a resampler starts from random weights
    return build_student(teacher, compression, settings)


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _changed(before: dict, after: dict) -> set[str]:
    return {k for k in before if not torch.equal(before[k], after[k])}


@pytest.mark.parametrize("compression", [POOLED, RESAMPLER], ids=["pooled", "resampler"])
def test_two_steps_train_the_student_and_leave_the_teacher(
    compression, world_teacher, train_examples, teacher_logits, tmp_path
):
    teacher, tokenizer = world_teacher
    teacher_before = _state(teacher)
    student = _student(teacher, compression)
    before = _state(student)

    result = train_student(student, tokenizer, train_examples, teacher_logits, TRAIN, tmp_path / "run")

    assert (result.steps, result.resumed_from) == (2, 0)
    assert math.isfinite(result.final_loss) and result.final_loss > 0
    changed = _changed(before, _state(student))
    assert any(k.startswith("connector.") for k in changed), "the connector did not train"
    assert any(k.startswith("decoder.") for k in changed), "the decoder did not train"
    assert any(k.startswith("vision_encoder.") for k in changed), "the vision encoder did not train"
    assert not student.training, "train_student hands the student back in eval mode"
    assert not _changed(teacher_before, _state(teacher)), "training the student changed the teacher"
    # checkpoint_every=1 of 2 steps: one checkpoint, at step 1 (the last step is saved as the model instead).
    state = json.loads((tmp_path / "run" / "checkpoint" / STATE_FILE).read_text())
    assert state["step"] == 1


@pytest.mark.parametrize("da_fraction", [0.0, 1.0], ids=["mcq-only", "direct-answer-only"])
def test_both_losses_train(da_fraction, world_teacher, train_examples, teacher_logits, tmp_path):
    teacher, tokenizer = world_teacher
    student = _student(teacher, POOLED)
    before = _state(student)
    settings = dataclasses.replace(TRAIN, steps=1)
    result = train_student(
        student, tokenizer, train_examples, teacher_logits, settings, tmp_path, da_fraction=da_fraction
    )
    assert math.isfinite(result.final_loss) and result.final_loss > 0
    assert _changed(before, _state(student))


class _Crash(Exception):
    pass


def test_resume_after_a_crash_matches_an_uninterrupted_run(
    world_teacher, train_examples, teacher_logits, tmp_path, monkeypatch, caplog
):
    teacher, tokenizer = world_teacher
    settings = dataclasses.replace(TRAIN, steps=4, checkpoint_every=2)
    args = (tokenizer, train_examples, teacher_logits, settings)

    straight = _student(teacher, RESAMPLER)
    straight_result = train_student(straight, *args, tmp_path / "straight", da_fraction=0.5)

    calls = 0

    class CrashingAccelerator(Accelerator):
        """Dies in the middle of step 3 (after its forward pass), i.e. after the checkpoint at step 2."""

        def backward(self, loss, **kwargs):
            nonlocal calls
            calls += 1
            if calls == 3:
                raise _Crash
            super().backward(loss, **kwargs)

    first_phases = []  # the first phase of fresh weights runs on a fresh start only, never on resume
    run = tmp_path / "crashed"
    with monkeypatch.context() as patch:
        patch.setattr(distill.train, "Accelerator", CrashingAccelerator)
        with pytest.raises(_Crash):
            train_student(
                _student(teacher, RESAMPLER),
                *args,
                run,
                da_fraction=0.5,
                before_training=lambda: first_phases.append("crashed"),
            )
    assert first_phases == ["crashed"]
    assert json.loads((run / "checkpoint" / STATE_FILE).read_text())["step"] == 2
    # The same crash, had it come while the next checkpoint was being swapped in: the complete one has been
    # moved aside to checkpoint.old/ and the new one is still a half-written checkpoint.tmp/.
    swapping = tmp_path / "crashed-while-swapping"
    shutil.copytree(run, swapping)
    (swapping / "checkpoint").rename(swapping / "checkpoint.old")
    (swapping / "checkpoint.tmp").mkdir()

    want = _state(straight)
    for run_dir in (run, swapping):
        # A new process: a fresh student (its resampler from another seed) that the checkpoint overwrites.
        resumed = _student(teacher, RESAMPLER, seed=1)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="distill.train"):
            result = train_student(
                resumed,
                *args,
                run_dir,
                da_fraction=0.5,
                before_training=lambda: first_phases.append("resumed"),
            )
        assert "resuming distillation from step 2" in caplog.text
        assert first_phases == ["crashed"], "a resumed run trained its first phase again"
        assert (result.steps, result.resumed_from) == (4, 2)
        assert result.final_loss == pytest.approx(straight_result.final_loss, abs=1e-6)
        got = _state(resumed)
        assert want.keys() == got.keys()
        for key in want:
            torch.testing.assert_close(got[key], want[key], rtol=0, atol=1e-6, msg=key)


def test_nan_loss_raises_diverged_and_takes_no_step(
    world_teacher, train_examples, teacher_logits, tmp_path, monkeypatch
):
    teacher, tokenizer = world_teacher
    monkeypatch.setattr(
        DistillationLoss, "forward", lambda self, student, teacher, labels: student.sum() * float("nan")
    )
    student = _student(teacher, POOLED)
    before = _state(student)
    with pytest.raises(DistillationDiverged, match=r"loss became nan at step 0; lower the learning rate"):
        train_student(student, tokenizer, train_examples, teacher_logits, TRAIN, tmp_path, da_fraction=0.0)
    assert not _changed(before, _state(student))


def _full_logits(model, tokenizer, examples) -> torch.Tensor:
    batch = collate(
        [encode_mcq(tokenizer, model, model.image_spec, e) for e in examples], tokenizer.pad_token_id
    )
    with torch.no_grad():
        return model(batch["input_ids"], batch["images"], batch["attention_mask"])  # [B, T, V]


def test_lora_trains_adapters_and_merges_into_a_plain_decoder(
    world_teacher, train_examples, teacher_logits, tmp_path
):
    teacher, tokenizer = world_teacher
    settings = dataclasses.replace(TRAIN, lora_rank=4)
    student = _student(teacher, POOLED, settings)
    assert isinstance(student.decoder, PeftModel)
    frozen_before = {k: v for k, v in _state(student.decoder).items() if "lora_" not in k}

    train_student(student, tokenizer, train_examples, teacher_logits, settings, tmp_path / "run")

    decoder_state = _state(student.decoder)
    assert not _changed(frozen_before, decoder_state), "LoRA must leave the decoder's own weights alone"
    lora_b = [v for k, v in decoder_state.items() if "lora_B" in k]
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b), "the adapters did not train"

    examples = train_examples[:4]
    wrapped = _full_logits(student, tokenizer, examples)
    merged = merge_lora(student)
    assert type(merged.decoder) is LlamaForCausalLM
    assert not any("lora" in k for k in merged.state_dict())
    torch.testing.assert_close(_full_logits(merged, tokenizer, examples), wrapped, rtol=0, atol=1e-5)

    folder = save_pretrained(merged, tmp_path / "model", tokenizer=tokenizer)
    loaded = load_pretrained(folder)
    torch.testing.assert_close(
        _full_logits(loaded, tokenizer, examples),
        _full_logits(merged, tokenizer, examples),
        rtol=0,
        atol=1e-6,
    )


def test_teacher_logits_are_cached_on_disk(world_teacher, train_examples, teacher_logits, tmp_path):
    teacher, tokenizer = world_teacher
    cache = teacher_cache_path(tmp_path, "teacher-a", train_examples)
    assert cache != teacher_cache_path(tmp_path, "teacher-b", train_examples)
    assert cache != teacher_cache_path(tmp_path, "teacher-a", train_examples[:8])
    first = teacher_letter_logits_cached(teacher, tokenizer, train_examples, cache)
    assert first.shape == (len(train_examples), 4) and cache.is_file()
    torch.testing.assert_close(first, teacher_logits, rtol=0, atol=1e-5)
    torch.save(first + 1, cache)  # a second call must read the file, not recompute
    assert torch.equal(teacher_letter_logits_cached(teacher, tokenizer, train_examples, cache), first + 1)


def test_a_fresh_resampler_is_matched_to_the_teacher_before_distillation(world_teacher, train_examples):
    teacher, tokenizer = world_teacher
    settings = dataclasses.replace(TRAIN, resampler_match_steps=3)
    states = []
    for _ in range(2):  # the same seed gives every process the same starting weights
        student = _student(teacher, RESAMPLER, settings)
        before = _state(student)
        loss = match_fresh_resampler(student, teacher, tokenizer, train_examples, settings, seed=0)
        assert math.isfinite(loss)
        changed = _changed(before, _state(student))
        assert changed and all(k.startswith("connector.") for k in changed)
        states.append(_state(student))
    assert not _changed(states[0], states[1])
    # Nothing to match: a pooled student, or no matching steps.
    pooled = _student(teacher, POOLED, settings)
    before = _state(pooled)
    assert match_fresh_resampler(pooled, teacher, tokenizer, train_examples, settings) is None
    assert not _changed(before, _state(pooled))
    assert (
        match_fresh_resampler(_student(teacher, RESAMPLER), teacher, tokenizer, train_examples, TRAIN) is None
    )


def test_a_fresh_scorer_learns_the_saliency_ranking_before_distillation(world_teacher, train_examples):
    teacher, tokenizer = world_teacher
    settings = dataclasses.replace(TRAIN, scorer_saliency_steps=3)
    scored = CompressionConfig(keep_tokens_by_score=4)
    states = []
    for _ in range(2):
        student = _student(teacher, scored, settings)
        before = _state(student)
        assert math.isfinite(rank_fresh_scorer(student, tokenizer, train_examples, settings, seed=0))
        changed = _changed(before, _state(student))
        assert changed and all(k.startswith("token_selector.scorer.") for k in changed)
        states.append(_state(student))
    assert not _changed(states[0], states[1])
    for compression, config in ((RESAMPLER, settings), (scored, TRAIN)):  # no scorer, or no steps
        student = _student(teacher, compression, config)
        before = _state(student)
        assert rank_fresh_scorer(student, tokenizer, train_examples, config) is None
        assert not _changed(before, _state(student))


@pytest.mark.parametrize(
    ("compression", "prefix", "first_phase"),
    [
        (RESAMPLER, "connector.", {"resampler_match_steps": 2}),
        (CompressionConfig(keep_tokens_by_score=4), "token_selector.scorer.", {"scorer_saliency_steps": 2}),
    ],
    ids=["matched resampler", "ranked scorer"],
)
def test_distillation_goes_on_training_the_weights_the_first_phase_trained(
    compression, prefix, first_phase, world_teacher, train_examples, teacher_logits, tmp_path
):
    teacher, tokenizer = world_teacher
    settings = dataclasses.replace(TRAIN, **first_phase)
    student = _student(teacher, compression, settings)
    match_fresh_resampler(student, teacher, tokenizer, train_examples, settings)
    rank_fresh_scorer(student, tokenizer, train_examples, settings)
    after_first_phase = _state(student)
    train_student(student, tokenizer, train_examples, teacher_logits, settings, tmp_path / "run")
    changed = _changed(after_first_phase, _state(student))
    assert any(k.startswith(prefix) for k in changed), sorted(changed)[:5]
