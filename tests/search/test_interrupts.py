"""Ctrl-C (SIGINT) and SIGTERM of a search worker: a short message, and the trial it cut short runs again
first on the next run. Real `python -m search.run` subprocesses, real signals, one real SQLite storage.
(SIGKILL, which cannot be caught, is covered by test_robustness.py: the heartbeat retries that trial.)
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from ledger.rules import FINISHED
from search.run import main
from tests.search.conftest import STUDY, load, log_tail, run_args, spawn, sqlite_url
from tests.tiny_world import tiny_study_toml
from vlm.demo.dataset import DemoDataConfig, generate_demo_dataset


def _running_trial_once_sampled(db, worker, log, timeout: float = 120.0) -> optuna.trial.FrozenTrial:
    """The worker's RUNNING trial, once at least one trial has finished and it has sampled every param."""
    deadline = time.monotonic() + timeout
    while True:
        assert worker.poll() is None, log_tail(log)
        assert time.monotonic() < deadline, log_tail(log)
        if db.is_file():
            try:
                trials = optuna.load_study(study_name=STUDY, storage=sqlite_url(db)).get_trials(
                    deepcopy=False
                )
            except (KeyError, Exception):  # the study or its schema is not there yet
                trials = []
            complete = [t for t in trials if t.state == TrialState.COMPLETE]
            n_params = max((len(t.params) for t in complete), default=0)
            running = [t for t in trials if t.state == TrialState.RUNNING]
            if complete and running and len(running[0].params) == n_params > 0:
                return running[0]
        time.sleep(0.05)


@pytest.fixture(scope="module")
def slow_data(tmp_path_factory) -> Path:
    """240 validation questions (the tiny world has 48): a trial then takes seconds, not a fraction of one,
    so a signal sent while a trial runs lands inside it."""
    config = DemoDataConfig(seed=0, train_size=16, validation_size=240, test_size=4)
    return generate_demo_dataset(config, tmp_path_factory.mktemp("slow") / "data")


@pytest.mark.parametrize(
    "sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"]
)
def test_interrupted_trial_is_queued_again_and_runs_before_new_ones(sig, code, world, slow_data, tmp_path):
    # No references: the retry is then the only queued trial, and the next run need run just that one.
    toml = tiny_study_toml(
        tmp_path, STUDY, world.teacher, slow_data, batch_size=8, early_stop=False, references=False
    )
    toml.write_text(toml.read_text().replace("subset_size = 48", "subset_size = 240"))
    db = tmp_path / "tiny.db"
    log = tmp_path / "first.log"
    worker = spawn(toml, sqlite_url(db), 40, tmp_path, log)
    try:
        running = _running_trial_once_sampled(db, worker, log)
        os.kill(worker.pid, sig)
        assert worker.wait(timeout=60) == code, log_tail(log)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()

    text = log.read_text()
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, log_tail(log)
    # Normally the trial seen running; the next one if that one ended just before the signal.
    found = re.search(rf"interrupted \({sig.name}\): trial (\d+) was stopped and queued again", text)
    assert found, log_tail(log)
    cut = int(found.group(1))
    assert cut >= running.number
    trials = load(sqlite_url(db)).trials
    assert trials[cut].state == TrialState.FAIL
    assert not [t.number for t in trials if t.state == TrialState.RUNNING]
    (retry,) = [t for t in trials if t.system_attrs.get("failed_trial") == cut]
    assert retry.state == TrialState.WAITING and retry.params == trials[cut].params
    finished = sum(t.state in FINISHED for t in trials)
    queued = sum(t.state == TrialState.WAITING for t in trials)  # the retry, and references not run yet

    # The next run (in this process: the signal part is done) runs the queued retry before anything new.
    assert main(run_args(toml, sqlite_url(db), finished + queued)) == 0
    trials = load(sqlite_url(db)).trials
    assert trials[retry.number].state in FINISHED
    assert sum(t.state in FINISHED for t in trials) == finished + queued
    assert not [t.number for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
