"""The demo world's VQA dataset: synthetic scenes and questions in A-OKVQA's schema, saved to disk.

Every split is drawn from its own seed derived from (config seed, split name), so changing one split's
size leaves the other splits unchanged. Unlike A-OKVQA, the test split keeps its answers.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import datasets
from tqdm.auto import tqdm

from vlm.atomic import atomic_dir
from vlm.demo.scenes import (
    QUESTION_KINDS,
    Question,
    Scene,
    draw_plan,
    make_question,
    render_scene,
    sample_scene,
)

logger = logging.getLogger(__name__)

# Bump when the generator's output changes, so a stale cached folder is detected instead of reused.
GENERATOR_VERSION = 1
CONFIG_FILE = "demo_config.json"
SPLITS: dict[str, str] = {"train": "train", "validation": "val", "test": "test"}  # split -> id prefix
MAX_SCENES_PER_QUESTION = 10_000  # far above the hardest plan's need (a few dozen scenes)

# A-OKVQA's columns and types. `Sequence` (not `List`) so datasets 3.x reads it too.
FEATURES = datasets.Features(
    {
        "question_id": datasets.Value("string"),
        "image": datasets.Image(),
        "question": datasets.Value("string"),
        "choices": datasets.Sequence(datasets.Value("string")),
        "correct_choice_idx": datasets.Value("int64"),
        "direct_answers": datasets.Sequence(datasets.Value("string")),
        "difficult_direct_answer": datasets.Value("bool"),
        "rationales": datasets.Sequence(datasets.Value("string")),
    }
)


@dataclass(frozen=True)
class DemoDataConfig:
    """Seed and split sizes of the demo dataset; everything else is fixed by `vlm.demo.scenes`."""

    seed: int = 1234
    train_size: int = 20000
    validation_size: int = 1000
    test_size: int = 1000

    def __post_init__(self) -> None:
        for name in ("train_size", "validation_size", "test_size"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    def split_sizes(self) -> dict[str, int]:
        return {"train": self.train_size, "validation": self.validation_size, "test": self.test_size}

    def folder_name(self) -> str:
        return f"demo-vqa-seed{self.seed}-{self.train_size}-{self.validation_size}-{self.test_size}"


def _png_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def iter_examples(seed: int, split: str, size: int) -> Iterator[tuple[Scene, Question]]:
    """The (scene, question) pairs of one split, without pixels.

    Kinds come in shuffled blocks of all five, so any prefix (e.g. a proxy-evaluation subset) holds them
    in nearly equal numbers.
    """
    # Seeding random.Random with a str hashes it with SHA-512: stable across runs and PYTHONHASHSEED.
    rng = random.Random(f"demo-vqa/{seed}/{split}")
    kinds: list[str] = []
    for _ in range(size):
        if not kinds:
            kinds = list(QUESTION_KINDS)
            rng.shuffle(kinds)
        # The plan (the answer to ask for) stays fixed while scenes are redrawn: that keeps answers balanced.
        plan = draw_plan(rng, kinds.pop())
        for _ in range(MAX_SCENES_PER_QUESTION):
            scene = sample_scene(rng)
            question = make_question(scene, rng, plan=plan)
            if question is not None:
                yield scene, question
                break
        else:  # pragma: no cover - would mean a broken generator
            raise RuntimeError(f"no scene supported {plan} in {MAX_SCENES_PER_QUESTION} draws")


def question_kinds(config: DemoDataConfig, split: str) -> dict[str, str]:
    """Each question id of a generated split -> its kind ('attribute', 'count', ...)."""
    size = config.split_sizes()[split]
    return {
        f"demo_{SPLITS[split]}_{index:06d}": question.kind
        for index, (_, question) in enumerate(iter_examples(config.seed, split, size))
    }


def add_row(columns: dict[str, list], question_id: str, image, question) -> None:
    """Append one question in A-OKVQA's schema (the image as PNG bytes) to `columns` (one list per feature)."""
    columns["question_id"].append(question_id)
    columns["image"].append({"bytes": _png_bytes(image), "path": None})
    columns["question"].append(question.question)
    columns["choices"].append(question.choices)
    columns["correct_choice_idx"].append(question.correct_choice_idx)
    columns["direct_answers"].append(question.direct_answers)
    columns["difficult_direct_answer"].append(question.difficult_direct_answer)
    columns["rationales"].append(question.rationales)


def generate_split(seed: int, split: str, size: int) -> datasets.Dataset:
    """One split of ``size`` examples in A-OKVQA's schema, images stored as PNG bytes."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {tuple(SPLITS)}")
    columns: dict[str, list] = {name: [] for name in FEATURES}
    examples = iter_examples(seed, split, size)
    for index, (scene, question) in enumerate(tqdm(examples, total=size, desc=f"demo {split}", leave=False)):
        add_row(columns, f"demo_{SPLITS[split]}_{index:06d}", render_scene(scene), question)
    return datasets.Dataset.from_dict(columns, features=FEATURES, split=split)


def _config_record(config: DemoDataConfig) -> dict:
    return {**dataclasses.asdict(config), "generator_version": GENERATOR_VERSION}


def generate_demo_dataset(config: DemoDataConfig, out_dir: Path) -> Path:
    """Generate all splits and save them as a `datasets.DatasetDict` at ``out_dir``, with
    ``demo_config.json`` beside them. The folder appears atomically (written to a temporary sibling, then
    renamed); raises FileExistsError if ``out_dir`` already exists or appears meanwhile.
    """
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} already exists")
    logger.info("generating demo VQA dataset %s at %s", config, out_dir)
    # replace=False: when another process finishes first, its folder stays and this raises FileExistsError.
    with atomic_dir(out_dir, replace=False) as tmp_dir:
        splits = {
            split: generate_split(config.seed, split, size) for split, size in config.split_sizes().items()
        }
        datasets.DatasetDict(splits).save_to_disk(str(tmp_dir))
        (tmp_dir / CONFIG_FILE).write_text(json.dumps(_config_record(config), indent=2) + "\n")
    logger.info("demo VQA dataset written to %s", out_dir)
    return out_dir


def ensure_demo_dataset(config: DemoDataConfig, cache_dir: Path) -> Path:
    """The cached dataset folder ``cache_dir / config.folder_name()``, generated first if absent.

    Safe with several processes: each generates into its own temporary folder and the first rename wins.
    Raises ValueError when the cached folder was written by another generator version (delete it).
    """
    out_dir = Path(cache_dir) / config.folder_name()
    if not out_dir.exists():
        try:
            generate_demo_dataset(config, out_dir)
        except FileExistsError:
            logger.info("demo VQA dataset %s was generated by another process", out_dir)
    record = json.loads((out_dir / CONFIG_FILE).read_text())
    if record != _config_record(config):
        raise ValueError(
            f"{out_dir} holds {record}, not {_config_record(config)}: it comes from another version of the "
            "demo generator; delete the folder to regenerate it"
        )
    return out_dir
