"""Fixtures for the search tests: the tiny offline world (a random nanoVLM-shaped teacher saved as a checkpoint
and a small synthetic dataset, tests/tiny_world.py), built once per session, plus helpers to run a study on it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from ledger.config import DataSettings
from ledger.world import load_split
from tests.tiny_world import TinyWorld, make_tiny_world

STUDY = "tiny"


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> TinyWorld:
    return make_tiny_world(tmp_path_factory.mktemp("tiny_world"))


@pytest.fixture(scope="session")
def world_validation(world):
    """The 48 validation questions of the tiny world."""
    return load_split(DataSettings(source=str(world.data)), "validation", 48)


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def load(url: str, name: str = STUDY) -> optuna.Study:
    """The study as any reader sees it (a plain storage: no heartbeat, no sampler state)."""
    return optuna.load_study(study_name=name, storage=url)


def run_args(toml: Path, url: str, trials: int) -> list[str]:
    return ["--study", str(toml), "--storage", url, "--trials", str(trials)]


def spawn(toml: Path, url: str, trials: int, cwd: Path, log: Path) -> subprocess.Popen:
    """`python -m search.run` as a separate worker process (one intra-op thread: the CI machine is small)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with log.open("w") as handle:  # the child keeps its own copy of the file descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "search.run", *run_args(toml, url, trials)],
            cwd=cwd,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )


def log_tail(log: Path, chars: int = 3000) -> str:
    return log.read_text(errors="replace")[-chars:] if log.is_file() else "(no log)"


WORKER_TIMEOUT = 240  # seconds; generous because the CI machine may be busy


def run_workers(toml: Path, url: str, trials: int, cwd: Path, n: int) -> list[Path]:
    """Start `n` search.run workers on one study together, wait for all, assert each exited 0; their logs."""
    logs = [cwd / f"worker{i}.log" for i in range(n)]
    workers = [spawn(toml, url, trials, cwd, log) for log in logs]
    try:
        codes = [w.wait(timeout=WORKER_TIMEOUT) for w in workers]
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait()
    assert codes == [0] * n, "\n".join(log_tail(log) for log in logs)
    return logs
