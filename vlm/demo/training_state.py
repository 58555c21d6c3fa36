"""Crash-resume for the demo teacher's training: one state file, rewritten every few steps.

The teacher trains in stages (vision pre-training, the letter drill, VQA sessions), up to two hours on two
CPU cores. `TrainingState` keeps in one file what a stopped run needs to continue exactly where it was:
the model, the running stage's optimizer, schedule, extra modules (the vision stage's read-out heads), the
step, the scene generator's random state, and each finished stage's result. A resumed run draws the same
scenes and takes the same steps as an uninterrupted one, so it ends with the same weights.

The file records the recipe that wrote it; a run with another recipe refuses it rather than mix two
recipes in one model.
"""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path

import torch

from vlm.atomic import atomic_file
from vlm.cli import UsageError

logger = logging.getLogger(__name__)

STATE_FILE = "training_state.pt"


class RecipeMismatchError(UsageError):
    """The state file on disk was written by another recipe."""


def discard(folder: Path) -> bool:
    """Delete the saved run in ``folder``; True when there was one."""
    path = Path(folder) / STATE_FILE
    existed = path.is_file()
    path.unlink(missing_ok=True)
    return existed


def _rng_state(rng: random.Random) -> list:
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def _set_rng_state(rng: random.Random, state: list) -> None:
    version, internal, gauss = state
    rng.setstate((version, tuple(internal), gauss))


class TrainingState:
    """Save and restore a staged training run in ``folder`` (None: keep nothing, resume nothing).

    ``recipe`` is a JSON-like description of the run (the training config); ``every`` is how many steps
    pass between saves inside a stage (each stage's end is always saved).
    """

    def __init__(self, folder: Path | None, recipe: dict, every: int = 100, device: str = "cpu"):
        if every < 1:
            raise ValueError(f"checkpoint interval must be >= 1 step, got {every}")
        self.path = Path(folder) / STATE_FILE if folder is not None else None
        self.recipe = recipe
        self.every = every
        self.device = device
        self._saved: dict = {
            "recipe": recipe,
            "done": {},
            "rng_after": {},
            "model": None,
            "current": None,
            "seconds": 0.0,
            "records": {},
        }
        if self.path is not None and self.path.is_file():
            saved = torch.load(self.path, map_location=device, weights_only=True)
            if saved.get("recipe") != recipe:
                raise RecipeMismatchError(
                    f"{self.path} was written by another training recipe; pass --fresh to start over "
                    f"(it is then replaced) or another --work-dir to keep it"
                )
            self._saved = saved
            logger.info(
                "resuming from %s: finished %s%s",
                self.path,
                ", ".join(saved["done"]) or "no stage",
                f"; {saved['current']['stage']} at step {saved['current']['step']}"
                if saved["current"]
                else "",
            )

        self._resumed_at = time.monotonic()
        self._seconds_before = float(self._saved["seconds"])

    @property
    def seconds(self) -> float:
        """Training time in all runs of this recipe so far (saved runs included)."""
        return self._seconds_before + time.monotonic() - self._resumed_at

    def result(self, stage: str):
        """The result a finished ``stage`` returned, or None when it has not finished."""
        return self._saved["done"].get(stage)

    def record(self, key: str, entry: dict) -> None:
        """Append ``entry`` (JSON-like, e.g. one point of a learning curve) to the list ``key``; it is
        saved with the next step, so a resumed run neither loses nor repeats it."""
        self._saved["records"].setdefault(key, []).append(entry)

    def records(self, key: str) -> list[dict]:
        return list(self._saved["records"].get(key, []))

    def is_done(self, stage: str) -> bool:
        return stage in self._saved["done"]

    def skip(self, stage: str, rng: random.Random | None = None) -> object:
        """Stand in for a finished ``stage``: put ``rng`` (if given) where the stage left it; return the
        stage's result."""
        if rng is not None:
            _set_rng_state(rng, self._saved["rng_after"][stage])
        logger.info("%s: finished before, skipped", stage)
        return self._saved["done"][stage]

    def restore_model(self, model: torch.nn.Module) -> None:
        """Load the last saved model weights into ``model`` (nothing when no state was saved)."""
        if self._saved["model"] is not None:
            model.load_state_dict(self._saved["model"])

    def start(self, stage: str, modules: dict, rng: random.Random) -> int:
        """The step ``stage`` starts at: 0, or the saved step after loading ``modules`` (optimizer,
        schedule, heads: anything with ``load_state_dict``) and ``rng`` from the state file."""
        current = self._saved["current"]
        if current is None or current["stage"] != stage:
            return 0
        for name, module in modules.items():
            module.load_state_dict(current["modules"][name])
        _set_rng_state(rng, current["rng"])
        torch.set_rng_state(current["torch_rng"].cpu())
        logger.info("%s: resuming at step %d", stage, current["step"])
        return current["step"]

    def step_done(self, stage: str, step: int, model, modules: dict, rng: random.Random) -> None:
        """Record that ``step`` steps of ``stage`` are done; written to disk every ``every`` steps."""
        if self.path is None or step % self.every:
            return
        self._saved["model"] = model.state_dict()
        self._saved["current"] = {
            "stage": stage,
            "step": step,
            "modules": {name: module.state_dict() for name, module in modules.items()},
            "rng": _rng_state(rng),
            "torch_rng": torch.get_rng_state(),
        }
        self._write()

    def finish(self, stage: str, model, result, rng: random.Random) -> None:
        """Record ``stage`` as finished with ``result`` (JSON-like), the model after it and the state of
        ``rng``, which a later stage may go on drawing from (`skip`)."""
        self._saved["done"][stage] = result
        self._saved["rng_after"][stage] = _rng_state(rng)
        if self.path is None:
            return
        self._saved["model"] = model.state_dict()
        self._saved["current"] = None
        self._write()

    def _write(self) -> None:
        self._saved["seconds"] = self.seconds
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(self.path) as tmp:
            torch.save(self._saved, tmp)
