"""`python -m distill.finalize` on a searched tiny study: the record, the saved model, the leaderboard file,
idempotence, bad input, and a killed run that resumes from its checkpoint."""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import subprocess
import sys
import time

import pytest
from optuna.trial import TrialState

from distill.finalize import main
from distill.train import STATE_FILE
from ledger.config import DataSettings, load_study_config
from ledger.records import FINALIZED_PREFIX
from ledger.rules import promoted_trials
from ledger.world import load_split
from tests.distill.conftest import STUDY, study_toml
from vlm.checkpoint import CONFIG_FILE, EXTRAS_FILE, TOKENIZER_DIR, WEIGHTS_FILE, load_pretrained
from vlm.evaluate import EvalConfig, evaluate_mcq
from vlm.tokenizer import load_tokenizer

RECORD_KEYS = {
    "mcq_accuracy",
    "ci_low",
    "ci_high",
    "n",
    "da_accuracy",
    "gflops",
    "reduction_pct",
    "teacher_gflops",
    "model_dir",
    "predictions_test",
    "config",
    "train",
}
KILL_TIMEOUT = 120  # seconds for the finalize subprocess to reach its first checkpoint on a busy machine


def _snapshot(study) -> tuple:
    """Everything finalize could touch: the trials (state, values, attributes) and the study's attributes."""
    trials = [(t.number, t.state, t.values, t.user_attrs) for t in study.get_trials(deepcopy=False)]
    return trials, study.user_attrs


def _best_number(study) -> int:
    return min(study.user_attrs["promoted"], key=lambda r: (r["gflops"], -r["accuracy"]))["trial"]


def _model_is_complete_or_absent(model_dir) -> bool:
    if not model_dir.exists():
        return True
    files = {CONFIG_FILE, WEIGHTS_FILE, EXTRAS_FILE}
    return all((model_dir / f).is_file() for f in files) and (model_dir / TOKENIZER_DIR).is_dir()


def test_finalize_best_records_saves_and_is_idempotent(searched, world, caplog):
    caplog.set_level(logging.INFO)
    assert main(searched.args("best")) == 0

    study = searched.load()
    number = _best_number(study)
    trial = study.trials[number]
    record = study.user_attrs[f"{FINALIZED_PREFIX}{number}"]
    assert RECORD_KEYS <= record.keys()
    assert record["trial"] == number and record["config"] == trial.user_attrs["config"]
    assert 0 <= record["ci_low"] <= record["mcq_accuracy"] <= record["ci_high"] <= 1
    assert 0 <= record["da_accuracy"] <= 1
    assert (record["train"]["steps"], record["train"]["resumed_from"]) == (4, 0)
    assert math.isfinite(record["train"]["final_loss"])
    baseline = study.user_attrs["baseline"]
    assert record["reduction_pct"] == pytest.approx(100 * (1 - record["gflops"] / record["teacher_gflops"]))
    # The search scored the whole validation split here, so the teacher's FLOPs match the study's baseline.
    assert record["teacher_gflops"] == pytest.approx(baseline["gflops"], rel=1e-9)
    # The search scored the whole 48-question validation split, so the FLOPs per question agree with it.
    assert record["gflops"] == pytest.approx(trial.values[0], rel=1e-9)
    if record["config"]["resampler_width"] is None and not trial.user_attrs["stopped_early"]:
        assert record["posthoc_full_accuracy"] == pytest.approx(trial.values[1])  # one evaluator

    # The saved model: complete, its compression recorded, and it reloads to the recorded accuracy.
    model_dir = searched.root / "studies" / STUDY / "finalize" / f"trial-{number}" / "model"
    assert record["model_dir"] == str(model_dir)
    assert _model_is_complete_or_absent(model_dir) and model_dir.is_dir()
    assert json.loads((model_dir / EXTRAS_FILE).read_text())["compression"] == record["config"]
    first, second = load_pretrained(model_dir), load_pretrained(model_dir)
    tokenizer = load_tokenizer(str(model_dir / TOKENIZER_DIR), first.cfg)
    validation = load_split(DataSettings(source=str(world.data)), "validation", None)
    quiet = EvalConfig(batch_size=16, show_progress=False)
    mcq_first = evaluate_mcq(first, tokenizer, validation, quiet)
    mcq_second = evaluate_mcq(second, tokenizer, validation, quiet)
    assert mcq_first.predictions == mcq_second.predictions
    assert len(mcq_first.predictions) == len(validation) == record["n"]
    assert mcq_first.accuracy == record["mcq_accuracy"]

    # The leaderboard file: every test question, a choice of that question, and a direct answer.
    test = load_split(DataSettings(source=str(world.data)), "test", None)
    predictions = json.loads((searched.root / record["predictions_test"]).read_text())
    assert set(predictions) == {e.question_id for e in test}
    for example in test:
        entry = predictions[example.question_id]
        assert set(entry) == {"multiple_choice", "direct_answer"}
        assert entry["multiple_choice"] in example.choices
        assert isinstance(entry["direct_answer"], str)

    # Again: no training, the same record (up to what is timed: wall time, the speed measurement), the model
    # files untouched.
    weights_mtime = (model_dir / WEIGHTS_FILE).stat().st_mtime_ns
    caplog.clear()
    assert main(searched.args(str(number))) == 0
    assert f"trial {number} already distilled" in caplog.text
    assert "distill.train" not in {r.name for r in caplog.records}
    again = searched.load().user_attrs[f"{FINALIZED_PREFIX}{number}"]
    timed = {"seconds", "speed"}
    assert {k: v for k, v in again.items() if k not in timed} == {
        k: v for k, v in record.items() if k not in timed
    }
    assert again["speed"].keys() == record["speed"].keys()  # re-measured, the same fields
    assert (model_dir / WEIGHTS_FILE).stat().st_mtime_ns == weights_mtime


def _unpromoted_complete(study, toml) -> int:
    promoted = {row.trial for row in promoted_trials(study, load_study_config(toml).search.promotion_margin)}
    return next(
        t.number
        for t in study.trials
        if t.state.name == "COMPLETE" and t.number not in promoted and t.user_attrs.get("config")
    )


@pytest.mark.parametrize("which", ["missing", "pruned", "failed", "not-a-number", "unpromoted"])
def test_bad_trial_exits_2_and_leaves_the_study_alone(which, searched, capsys):
    study = searched.load()
    last = max(t.number for t in study.trials)
    trial, message = {
        "missing": (str(last + 5), f"no trial {last + 5} (trials: 0..{last})"),
        "pruned": (str(searched.pruned), f"trial {searched.pruned} is PRUNED, not COMPLETE (token_grid"),
        "failed": (
            str(searched.failed),
            f"trial {searched.failed} is FAIL, not COMPLETE (RuntimeError: out of",
        ),
        "not-a-number": ("abc", "--trial must be a trial number or 'best', got 'abc'"),
        "unpromoted": (str(_unpromoted_complete(study, searched.toml)), "was not promoted"),
    }[which]
    before = _snapshot(study)

    assert main(searched.args(trial)) == 2

    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("distill.finalize: error: ") and message in errors[0]
    if which == "unpromoted":
        assert "--allow-unpromoted" in errors[0]
    assert _snapshot(searched.load()) == before
    assert not (searched.root / "studies" / STUDY / "finalize").exists()


def test_killed_finalize_resumes_from_its_checkpoint(searched, world, caplog):
    toml = study_toml(searched.root, world, steps=40, batch_size=4, checkpoint_every=5, train_size=32)
    finalize_dir = searched.root / "studies" / STUDY / "finalize"
    log = searched.root / "finalize.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    args = ["--study", str(toml), "--storage", searched.url, "--trial", "best"]
    with log.open("w") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "distill.finalize", *args],
            cwd=searched.root,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + KILL_TIMEOUT
        while not list(finalize_dir.glob(f"trial-*/checkpoint/{STATE_FILE}")):
            assert process.poll() is None, f"finalize ended before its first checkpoint:\n{log.read_text()}"
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.02)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()

    (run_dir,) = finalize_dir.glob("trial-*")
    number = int(run_dir.name.removeprefix("trial-"))
    assert _model_is_complete_or_absent(run_dir / "model"), "the kill left a half-written model folder"
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".model.")], "a stale temporary model"
    assert f"{FINALIZED_PREFIX}{number}" not in searched.load().user_attrs
    # The kill may fall while the next checkpoint is swapped in; then checkpoint.old/ is the complete one.
    (state_file,) = [
        d / STATE_FILE
        for d in (run_dir / "checkpoint", run_dir / "checkpoint.old")
        if (d / STATE_FILE).is_file()
    ][:1]
    checkpoint_step = json.loads(state_file.read_text())["step"]
    assert checkpoint_step % 5 == 0 and 5 <= checkpoint_step < 40

    caplog.set_level(logging.INFO)
    assert main(args) == 0
    assert "resuming distillation from step" in caplog.text
    record = searched.load().user_attrs[f"{FINALIZED_PREFIX}{number}"]
    assert record["train"]["steps"] == 40
    assert record["train"]["resumed_from"] == checkpoint_step
    assert _model_is_complete_or_absent(run_dir / "model") and (run_dir / "model").is_dir()


def test_finalize_warms_up_a_fresh_resampler_before_distilling_it(searched, world, caplog):
    """The study's first phase (`resampler_match_steps`) runs in finalize, on the 50% resampler reference."""
    study = searched.load()
    number = next(
        t.number
        for t in study.trials
        if t.state == TrialState.COMPLETE and t.user_attrs["config"].get("resampler_width")
    )
    toml = study_toml(searched.root, world, steps=2, batch_size=4, train_size=16, resampler_match_steps=3)
    caplog.set_level(logging.INFO, logger="distill.train")
    args = ["--study", str(toml), "--storage", searched.url, "--trial", str(number), "--allow-unpromoted"]
    assert main(args) == 0
    assert "resampler matched to the teacher's pooled tokens" in caplog.text
