"""Fixtures for the search tests: the tiny offline world (a random nanoVLM-shaped teacher saved as a checkpoint
and a small synthetic dataset, tests/tiny_world.py), built once per session, plus helpers to run a study on it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest

from search.study_config import DataSettings, ModelSettings
from search.world import load_split, load_teacher
from tests.tiny_world import build_tiny_world, tiny_study_toml

STUDY = "tiny"


@dataclass(frozen=True)
class TinyWorld:
    root: Path
    teacher: Path
    data: Path

    def toml(self, directory: Path, name: str = STUDY, teacher: str | None = None, **search) -> Path:
        """Write `directory/<name>.toml` for this world; `search` overrides [search] settings."""
        return tiny_study_toml(directory, name, teacher or self.teacher, self.data, **search)


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> TinyWorld:
    root = tmp_path_factory.mktemp("tiny_world")
    teacher, data = build_tiny_world(root)
    return TinyWorld(root, teacher, data)


@pytest.fixture(scope="session")
def world_teacher(world):
    """(random teacher in eval mode on CPU, its tokenizer)."""
    return load_teacher(ModelSettings(teacher=str(world.teacher), device="cpu"))


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
