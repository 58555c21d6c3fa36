"""Distilling students with token reducers: a score-pruning student's scorer trains at the fresh-weight
learning rate, a merging student trains through its merging forward, and both save and reload."""

from __future__ import annotations

import math

import torch

from distill.train import build_student, train_student
from tests.distill.conftest import TRAIN
from vlm.checkpoint import load_pretrained, save_pretrained
from vlm.config import CompressionConfig
from vlm.evaluate import encode_mcq
from vlm.processing import collate

SCORE = CompressionConfig(keep_tokens_by_score=24, scorer_width=8)
MERGE = CompressionConfig(merge_per_block=8, keep_tokens_by_norm=32)


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_score_pruning_student_trains_its_scorer(world_teacher, train_examples, teacher_logits, tmp_path):
    teacher, tokenizer = world_teacher
    torch.manual_seed(0)
    student = build_student(teacher, SCORE, TRAIN)
    before = _state(student)
    result = train_student(student, tokenizer, train_examples, teacher_logits, TRAIN, tmp_path / "run")
    assert math.isfinite(result.final_loss)
    changed = {k for k in before if not torch.equal(before[k], student.state_dict()[k])}
    assert any(k.startswith("token_selector.scorer.") for k in changed), "the scorer did not train"
    assert any(k.startswith("decoder.") for k in changed)


def test_merging_student_trains_saves_and_reloads(world_teacher, train_examples, teacher_logits, tmp_path):
    teacher, tokenizer = world_teacher
    student = build_student(teacher, MERGE, TRAIN)
    before = _state(student)
    train_student(student, tokenizer, train_examples, teacher_logits, TRAIN, tmp_path / "run")
    changed = {k for k in before if not torch.equal(before[k], student.state_dict()[k])}
    assert any(k.startswith("vision_encoder.") for k in changed), "no gradient through the merging encoder"
    save_pretrained(student, tmp_path / "model", tokenizer=tokenizer)
    loaded = load_pretrained(tmp_path / "model")
    assert loaded.connector_config.merge_schedule == (8, 8, 8, 8)
    batch = collate([encode_mcq(tokenizer, loaded, loaded.image_spec, e) for e in train_examples[:4]], 0)
    with torch.no_grad():
        args = (batch["input_ids"], batch["images"], batch["attention_mask"])
        assert torch.equal(loaded(*args), student(*args))
