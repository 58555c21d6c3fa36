"""`accelerate launch --num_processes 2 -m distill.finalize` on CPU (torchrun + gloo): both processes train,
the main one alone saves, evaluates and records (one record, one summary), and the saved model is the one a
single-process finalize of the same trial saves."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from distill.finalize import main
from ledger.records import FINALIZED_PREFIX
from vlm.checkpoint import WEIGHTS_FILE

REPO = Path(__file__).resolve().parents[2]
LAUNCH_TIMEOUT = 300  # seconds; generous because the CI machine may be busy


def test_finalize_on_two_processes_records_once_and_matches_one_process(searched):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [
        *(sys.executable, "-m", "accelerate.commands.launch"),
        *("--multi_gpu", "--num_processes", "2", "--num_machines", "1"),
        *("--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0"),
        *("-m", "distill.finalize", *searched.args("best")),
    ]
    run = subprocess.run(
        command, cwd=searched.root, env=env, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-4000:]
    assert output.count(" distilled: MCQ ") == 1, "the summary should come from the main process only"

    study = searched.load()
    finalized = [k for k in study.user_attrs if k.startswith(FINALIZED_PREFIX)]
    assert len(finalized) == 1
    record = study.user_attrs[finalized[0]]
    assert record["train"]["steps"] == 4 and record["train"]["resumed_from"] == 0
    assert math.isfinite(record["train"]["final_loss"])
    run_dir = searched.root / Path(record["model_dir"]).parent
    assert not (run_dir / "checkpoint").exists(), "checkpoints are removed once the model is saved"
    two = load_file(run_dir / "model" / WEIGHTS_FILE)

    # The same trial in one process (this one): the same weights, up to float rounding.
    run_dir.rename(run_dir.with_name("two-processes"))
    assert main(searched.args(str(record["trial"]))) == 0
    one = load_file(run_dir / "model" / WEIGHTS_FILE)
    assert one.keys() == two.keys()
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-5, msg=key)
    again = searched.load().user_attrs[finalized[0]]
    assert again["train"]["final_loss"] == pytest.approx(record["train"]["final_loss"], abs=1e-5)
