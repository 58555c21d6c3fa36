"""Faults around distillation: a checkpoint is resumed only by the run it belongs to, a finalized model is
readable by other accounts and its checkpoints are gone, and the teacher-output cache loads as data only."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import stat

import pytest
import torch

from distill.finalize import main as finalize_main
from distill.train import STATE_FILE, build_student, teacher_letter_logits_cached, train_student
from tests.distill.conftest import STUDY, TRAIN, study_toml
from vlm.checkpoint import WEIGHTS_FILE
from vlm.config import CompressionConfig

POOLED = CompressionConfig(token_grid=4)
SETTINGS = dataclasses.replace(TRAIN, steps=2, checkpoint_every=1)  # leaves the step-1 checkpoint behind


def _train(
    world_teacher,
    train_examples,
    teacher_logits,
    run_dir,
    settings=SETTINGS,
    compression=POOLED,
    first_phases=None,
):
    teacher, tokenizer = world_teacher
    torch.manual_seed(0)
    student = build_student(teacher, compression, settings)
    before = None if first_phases is None else lambda: first_phases.append(run_dir)
    return train_student(
        student, tokenizer, train_examples, teacher_logits, settings, run_dir, before_training=before
    )


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"settings": dataclasses.replace(SETTINGS, lr=1e-3)}, id="distill-settings"),
        pytest.param({"compression": CompressionConfig(token_grid=2)}, id="student-config"),
    ],
)
def test_a_checkpoint_is_resumed_only_by_the_run_it_was_written_for(
    change, world_teacher, train_examples, teacher_logits, tmp_path, caplog
):
    run_dir = tmp_path / "run"
    phases = []  # calls of the first phase (fresh weights), which only a run starting from step 0 makes
    assert (
        _train(world_teacher, train_examples, teacher_logits, run_dir, first_phases=phases).resumed_from == 0
    )
    assert json.loads((run_dir / "checkpoint" / STATE_FILE).read_text())["step"] == 1
    assert len(phases) == 1

    # The same run again resumes from the checkpoint, without the first phase ...
    caplog.set_level(logging.INFO, logger="distill.train")
    assert (
        _train(world_teacher, train_examples, teacher_logits, run_dir, first_phases=phases).resumed_from == 1
    )
    assert "resuming distillation from step 1" in caplog.text
    assert len(phases) == 1

    # ... a run with other settings or another student starts over (first phase included) and says why.
    caplog.clear()
    result = _train(world_teacher, train_examples, teacher_logits, run_dir, first_phases=phases, **change)
    assert result.resumed_from == 0 and len(phases) == 2
    assert "resuming distillation" not in caplog.text
    expected = "distill.lr" if "settings" in change else "compression.token_grid"
    (line,) = [r.getMessage() for r in caplog.records if "not resuming" in r.getMessage()]
    assert expected in line and "starting over" in line


def test_teacher_cache_is_loaded_as_data_only(world_teacher, train_examples, teacher_logits, tmp_path):
    """A cache file that holds code (a pickled object) is refused instead of run."""
    teacher, tokenizer = world_teacher
    cache = tmp_path / "teacher.pt"
    torch.save({"logits": teacher_logits, "hook": os.getcwd}, cache)  # a callable: not allowed as weights
    with pytest.raises(Exception, match="[Ww]eights only load failed|weights_only"):
        teacher_letter_logits_cached(teacher, tokenizer, train_examples, cache)


def test_finalized_model_is_readable_by_others_and_its_checkpoints_are_removed(searched, world):
    toml = study_toml(searched.root, world, steps=4, batch_size=4, checkpoint_every=1, train_size=16)
    args = ["--study", str(toml), "--storage", searched.url, "--trial", "best"]
    assert finalize_main(args) == 0
    (run_dir,) = (searched.root / "studies" / STUDY / "finalize").glob("trial-*")
    assert not [p.name for p in run_dir.iterdir() if p.name.startswith("checkpoint")]
    umask = os.umask(0)
    os.umask(umask)
    model_dir = run_dir / "model"
    assert stat.S_IMODE(model_dir.stat().st_mode) == 0o777 & ~umask
    assert stat.S_IMODE((model_dir / WEIGHTS_FILE).stat().st_mode) == 0o666 & ~umask
    for path in model_dir.rglob("*"):
        assert stat.S_IMODE(path.stat().st_mode) & 0o444 == 0o444 & ~umask, path
