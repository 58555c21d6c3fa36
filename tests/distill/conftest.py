"""Fixtures for the distill tests: the tiny offline world (tests/tiny_world.py), its teacher and training
questions, and a searched study on it that each finalize test gets its own copy of.
"""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from distill.train import teacher_letter_logits_cached
from ledger.config import DataSettings, DistillSettings
from ledger.world import load_split
from search.run import main as search_main
from tests.tiny_world import TinyWorld, make_tiny_world, tiny_study_toml

STUDY = "tiny"
# Settings for direct `train_student` calls: no bf16 on CPU, and a batch small enough to stay fast.
TRAIN = DistillSettings(steps=2, batch_size=4, checkpoint_every=1, mixed_precision="no")


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> TinyWorld:
    return make_tiny_world(tmp_path_factory.mktemp("distill_world"))


@pytest.fixture(scope="session")
def train_examples(world):
    """16 training questions of the tiny world."""
    return load_split(DataSettings(source=str(world.data)), "train", 16, seed=0)


@pytest.fixture(scope="session")
def teacher_logits(world, world_teacher, train_examples) -> torch.Tensor:
    """[16, 4] teacher letter logits for `train_examples`, through the on-disk cache finalize uses."""
    teacher, tokenizer = world_teacher
    return teacher_letter_logits_cached(
        teacher, tokenizer, train_examples, world.root / "cache" / "teacher.pt", batch_size=16
    )


# ----- a searched study ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SearchedStudy:
    """A study on the tiny world: the 6 references, one PRUNED (invalid) trial and one FAILED trial."""

    root: Path
    toml: Path
    url: str
    pruned: int
    failed: int

    def load(self) -> optuna.Study:
        return optuna.load_study(study_name=STUDY, storage=self.url)

    def args(self, trial: str) -> list[str]:
        return ["--study", str(self.toml), "--storage", self.url, "--trial", trial]


INVALID_PARAMS = {  # 32 px views give a 4x4 patch grid: an 8x8 token grid cannot be pooled from it
    "token_grid": 8,
    "view_size": 32,
    "max_grid_side": 1,
    "n_drop_decoder": 0,
    "n_drop_encoder": 0,
    "resampler_width": 0,
}


def study_toml(root: Path, world: TinyWorld, name: str = STUDY, **distill) -> Path:
    """`tiny_study_toml` with its [distill] settings overridden by `distill` (the last section of the file)."""
    path = tiny_study_toml(root, name, world.teacher, world.data, trials=6)
    if distill:
        head, _, _ = path.read_text().partition("[distill]\n")
        settings = {**dataclasses.asdict(DistillSettings(train_size=32, mixed_precision="no")), **distill}
        lines = [f"{k} = {v!r}".replace("'", '"') for k, v in settings.items() if v is not None]
        path.write_text(head + "[distill]\n" + "\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="session")
def searched_template(world, tmp_path_factory) -> SearchedStudy:
    """Runs the search once per session (6 reference trials, then an invalid enqueued config that the
    objective prunes) and adds a FAILED trial, all in `template/`; tests take copies (`searched`)."""
    root = tmp_path_factory.mktemp("searched")
    toml = study_toml(root, world)
    url = f"sqlite:///{root / 'tiny.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        assert search_main(["--study", str(toml), "--storage", url, "--trials", "6"]) == 0
        study = optuna.load_study(study_name=STUDY, storage=url)
        study.enqueue_trial(INVALID_PARAMS)
        assert search_main(["--study", str(toml), "--storage", url, "--trials", "7"]) == 0
    study = optuna.load_study(study_name=STUDY, storage=url)
    pruned = [t.number for t in study.trials if t.state == TrialState.PRUNED]
    assert len(pruned) == 1, [(t.number, t.state) for t in study.trials]
    study.add_trial(
        optuna.trial.create_trial(
            state=TrialState.FAIL,
            params={},
            distributions={},
            user_attrs={"fail_reason": "RuntimeError: out of memory"},
        )
    )
    failed = study.trials[-1].number
    return SearchedStudy(root, toml, url, pruned[0], failed)


@pytest.fixture
def searched(searched_template, world, tmp_path, monkeypatch) -> SearchedStudy:
    """A private copy of the searched study in `tmp_path`, which is also the cwd (artifacts go there)."""
    shutil.copy(searched_template.root / "tiny.db", tmp_path / "tiny.db")
    toml = study_toml(tmp_path, world)
    monkeypatch.chdir(tmp_path)
    return dataclasses.replace(
        searched_template, root=tmp_path, toml=toml, url=f"sqlite:///{tmp_path / 'tiny.db'}"
    )
