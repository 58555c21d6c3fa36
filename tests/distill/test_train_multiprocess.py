"""Distillation on two real processes (`accelerate launch --multi_gpu --num_processes 2` on CPU: torchrun
with gloo): each process trains on its shard of every global batch through the DDP-wrapped student, and the
result is the one-process run over the same global batches. Also: a two-process run killed after a checkpoint
resumes, in a new launch, to the same weights.

The two launches take ~30 s together (process start-up and imports dominate), so they run once per module.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from distill.train import STATE_FILE, build_student, train_student
from tests.distill.ddp_worker import CASES

REPO = Path(__file__).resolve().parents[2]
LAUNCH_TIMEOUT = 300  # seconds; generous because the CI machine may be busy


def _launch(world, logits: Path, out: Path, cases: str, *extra: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "CUDA_VISIBLE_DEVICES": "",  # CPU processes (gloo) even on a machine with GPUs
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(REPO),
    }
    command = [
        *(sys.executable, "-m", "accelerate.commands.launch"),
        *("--multi_gpu", "--num_processes", "2", "--num_machines", "1"),
        *("--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0"),
        *("-m", "tests.distill.ddp_worker"),
        *("--teacher", str(world.teacher), "--data", str(world.data), "--logits", str(logits)),
        *("--out", str(out), "--cases", cases, *extra),
    ]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT)


@pytest.fixture(scope="module")
def launched(world, teacher_logits, tmp_path_factory) -> Path:
    """Both launches: every case on two processes, the `resume` case killed after its step-2 checkpoint;
    then a new launch that resumes it."""
    out = tmp_path_factory.mktemp("ddp")
    logits = world.root / "cache" / "teacher.pt"  # written by the teacher_logits fixture
    assert logits.is_file()
    first = _launch(world, logits, out, ",".join(CASES), "--too-small", "--crash-after-checkpoint")
    assert first.returncode != 0, "the `resume` case should have been killed"
    assert (out / "resume" / "run" / "checkpoint" / STATE_FILE).is_file(), first.stderr[-3000:]
    assert json.loads((out / "resume" / "run" / "checkpoint" / STATE_FILE).read_text())["step"] == 2
    assert not (out / "resume" / "rank0.pt").exists()
    second = _launch(world, logits, out, "resume")
    assert second.returncode == 0, second.stderr[-3000:]
    return out


def _one_process(name, world_teacher, train_examples, teacher_logits, run_dir) -> dict[str, torch.Tensor]:
    """The same case in this (single) process, the fresh weights drawn as the main process drew them."""
    teacher, tokenizer = world_teacher
    case = CASES[name]
    torch.manual_seed(100)  # the main process's seed in ddp_worker
    student = build_student(teacher, case.compression, case.settings)
    train_student(
        student,
        tokenizer,
        train_examples,
        teacher_logits,
        case.settings,
        run_dir,
        da_fraction=case.da_fraction,
    )
    return {k: v.detach().clone() for k, v in student.state_dict().items()}


@pytest.mark.parametrize("name", list(CASES))
def test_two_processes_match_one_process_on_the_global_batches(
    name, launched, world_teacher, train_examples, teacher_logits, tmp_path
):
    ranks = [torch.load(launched / name / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0].keys() == ranks[1].keys()
    for key in ranks[0]:  # all-reduced gradients, the same optimizer steps: the very same numbers
        assert torch.equal(ranks[0][key], ranks[1][key]), f"the processes disagree on {key}"

    want = _one_process(name, world_teacher, train_examples, teacher_logits, tmp_path / "run")
    assert want.keys() == ranks[0].keys()
    for key in want:
        torch.testing.assert_close(ranks[0][key], want[key], rtol=1e-4, atol=1e-5, msg=key)

    if name == "resume":  # the resumed launch ran steps 3 and 4 only
        return
    case = CASES[name]
    batch = min(case.settings.batch_size, len(train_examples))
    for rank in (0, 1):
        forwards = json.loads((launched / name / f"rank{rank}.json").read_text())["forwards"]
        assert len(forwards) == case.settings.steps
        for kind, questions, model_class in forwards:
            assert model_class == "DistributedDataParallel", "trained around the DDP wrapper"
            # This process's shard only (every 2nd question from its rank on): the other shard's gradient
            # reached it through the all-reduce, or it could not match the one-process run.
            assert questions == len(range(rank, batch, 2)), (kind, questions)


def test_a_global_batch_smaller_than_the_processes_is_refused_on_every_process(launched):
    for rank in (0, 1):
        message = (launched / "too-small" / f"rank{rank}.txt").read_text()
        assert message.startswith("[distill] batch_size 1 (the global batch"), message
        assert "smaller than the 2 processes" in message
