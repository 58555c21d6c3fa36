"""Loading what a study works on: the teacher, its tokenizer and the dataset splits.

`demo` means the offline demo world (the shipped tiny teacher, the generated synthetic dataset). Anything
else is a hub id or a local path; when the hub is unreachable we fail fast, naming `--study demo`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch

from ledger.config import DEMO, DataSettings, ModelSettings
from vlm.checkpoint import TOKENIZER_DIR, load_pretrained, weights_digest
from vlm.data import DataConfig, VQAExample, load_examples
from vlm.hub import hub_reachable
from vlm.model import VisionLanguageModel
from vlm.paths import cache_dir
from vlm.tokenizer import load_tokenizer

logger = logging.getLogger(__name__)

OFFLINE_HINT = "run the offline demo study instead: `python -m search.run --study demo`"


class WorldUnavailable(RuntimeError):
    """The study's model or data cannot be reached from here."""


def _require_hub(what: str) -> None:
    if not hub_reachable():
        raise WorldUnavailable(
            f"{what} is not a local path and the Hugging Face hub cannot be reached; {OFFLINE_HINT}"
        )


def teacher_path(settings: ModelSettings) -> str:
    if settings.teacher == DEMO:
        from vlm.demo.teacher import SHIPPED_TEACHER

        if not (SHIPPED_TEACHER / "model.safetensors").is_file():
            raise WorldUnavailable(
                f"the demo teacher is missing at {SHIPPED_TEACHER}; train it with `python -m vlm.demo.train_teacher`"
            )
        return str(SHIPPED_TEACHER)
    if not Path(settings.teacher).exists():
        _require_hub(f"teacher {settings.teacher!r}")
    return settings.teacher


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def teacher_digest(settings: ModelSettings) -> str:
    """Which teacher weights a study describes: `vlm.checkpoint.weights_digest` of the configured teacher."""
    return weights_digest(teacher_path(settings))


def questions_digest(examples: list[VQAExample]) -> str:
    """SHA-256 (first 16 hex digits) of what the questions ask: ids, text, choices, answer, image size.

    The ids alone would not do: another version of the demo generator writes other questions under the
    same ids."""
    content = [
        [e.question_id, e.question, list(e.choices), e.correct_choice_idx, list(e.image.size)]
        for e in examples
    ]
    return hashlib.sha256(json.dumps(content).encode()).hexdigest()[:16]


def load_teacher(settings: ModelSettings) -> tuple[VisionLanguageModel, object]:
    """The teacher in eval mode on the configured device, and its tokenizer."""
    path = teacher_path(settings)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[settings.dtype]
    device = resolve_device(settings.device)
    if device.type == "cpu" and dtype != torch.float32:
        dtype = torch.float32  # bf16 matmuls are not faster on most CPUs and change predictions
    model = load_pretrained(path, device=device, dtype=dtype)
    if settings.tokenizer:
        tokenizer_source = settings.tokenizer
    elif (Path(path) / TOKENIZER_DIR).is_dir():
        tokenizer_source = str(Path(path) / TOKENIZER_DIR)
    else:
        tokenizer_source = model.cfg.lm_tokenizer
        if not Path(tokenizer_source).exists():
            _require_hub(f"tokenizer {tokenizer_source!r}")
    tokenizer = load_tokenizer(tokenizer_source, model.cfg)
    return model, tokenizer


def data_source(settings: DataSettings) -> str:
    if settings.source == DEMO:
        from vlm.demo.dataset import DemoDataConfig, ensure_demo_dataset

        return str(ensure_demo_dataset(DemoDataConfig(), cache_dir()))
    if not Path(settings.source).exists():
        _require_hub(f"dataset {settings.source!r}")
    return settings.source


def load_split(
    settings: DataSettings, split: str, max_samples: int | None, seed: int | None = None
) -> list[VQAExample]:
    config = DataConfig(
        source=data_source(settings),
        split=split,
        max_samples=max_samples,
        seed=settings.subset_seed if seed is None else seed,
        on_error=settings.on_error,
    )
    examples, skipped = load_examples(config)
    if skipped:
        logger.warning("%d bad rows skipped in %s/%s", skipped, settings.source, split)
    return examples
