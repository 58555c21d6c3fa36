"""Datasets in A-OKVQA's schema: loading a split from the hub or a local copy, and validating rows.

A-OKVQA (https://allenai.org/project/a-okvqa) rows hold `question_id`, `image`, `question`, `choices`
(4 strings), `correct_choice_idx`, `direct_answers` (10 strings; the hub copy HuggingFaceM4/A-OKVQA stores
them as a string holding a Python list), and optionally `difficult_direct_answer` and `rationales`.
The test split hides its answers: `correct_choice_idx` and `direct_answers` may be null there.

Rows are validated lazily, as they are read, so one bad image does not cost a pass over the whole split;
`on_error="skip"` drops bad rows and counts them instead of raising.
"""

from __future__ import annotations

import ast
import glob
import io
import logging
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
from PIL import Image

from vlm.cli import UsageError
from vlm.processing import CHOICE_LETTERS

logger = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("question_id", "image", "question", "choices", "correct_choice_idx", "direct_answers")
OPTIONAL_COLUMNS = ("difficult_direct_answer", "rationales")
ON_ERROR = ("raise", "skip")


class VQADataError(UsageError, ValueError):
    """A dataset or one of its rows does not follow A-OKVQA's schema."""


def _empty(source: str, split: str) -> VQADataError:
    return VQADataError(
        f"split {split!r} of {source!r} holds no rows; check that the export finished, or pick another split"
    )


def _read_local(source: str, split: str, read):
    """`read()`, with datasets' errors for a split without rows turned into one clear error.

    An empty `save_to_disk` folder fails inside datasets with `IndexError: list index out of range`, an
    empty parquet file with `Instruction "<split>" corresponds to no data!`.
    """
    try:
        ds = read()
    except IndexError as err:
        raise _empty(source, split) from err
    except ValueError as err:
        if "corresponds to no data" in str(err):
            raise _empty(source, split) from err
        raise
    if isinstance(ds, datasets.Dataset) and len(ds) == 0:
        raise _empty(source, split)
    return ds


@dataclass(frozen=True)
class DataConfig:
    """Which questions to read.

    Attributes:
        source: a hub dataset id, a `save_to_disk` folder (DatasetDict or single Dataset), a folder of
            parquet files (`<split>-*.parquet` or a `<split>/` subfolder, searched recursively), or a
            parquet file / glob.
        split: the split to read ("train", "validation", "test").
        max_samples: keep a fixed random subset of this many rows (None = all). The subset depends only on
            `seed` and the split's length; a smaller subset is contained in a larger one with the same seed.
        seed: seed of that subset.
        on_error: "raise" on the first bad row, or "skip" bad rows and count them.
    """

    source: str = "HuggingFaceM4/A-OKVQA"
    split: str = "validation"
    max_samples: int | None = None
    seed: int = 0
    on_error: str = "raise"

    def __post_init__(self) -> None:
        if self.on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {self.on_error!r}")
        if not self.split:
            raise ValueError("split must be a non-empty name such as 'validation'")
        if self.max_samples is not None and self.max_samples < 1:
            raise ValueError(f"max_samples must be >= 1 or None, got {self.max_samples}")


@dataclass
class VQAExample:
    """One validated question. `correct_choice_idx` is None and `direct_answers` empty where answers are hidden."""

    question_id: str
    image: Image.Image
    question: str
    choices: list[str]
    correct_choice_idx: int | None
    direct_answers: list[str]
    difficult_direct_answer: bool = False
    rationales: list[str] = field(default_factory=list)


@dataclass
class ReadStats:
    """Filled by `iter_examples` as it reads: rows kept, rows skipped and why."""

    n_read: int = 0
    n_skipped: int = 0
    errors: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------- loading


def _looks_like_path(source: str) -> bool:
    return (
        Path(source).expanduser().exists()
        or source.startswith((".", "/", "~"))
        or any(c in source for c in "*?[")
    )


def _parquet_splits(folder: Path) -> dict[str, list[str]]:
    """Parquet files under `folder` (recursively) by split.

    A file belongs to split S if its folder is named S (`validation/0000.parquet`, the hub's parquet
    conversion) or, in the top folder or a `data/` folder, if its name starts with S and a separator
    (`data/validation-00000-of-00001.parquet`, the hub's upload layout).
    """
    splits: dict[str, list[str]] = {}
    for path in sorted(folder.rglob("*.parquet")):
        parent = path.parent.relative_to(folder)
        if parent.parts and parent.name != "data":
            name = parent.name
        else:
            name = re.split(r"[-_.]", path.name, maxsplit=1)[0]
        splits.setdefault(name, []).append(str(path))
    return splits


def _load_local(source: str, split: str) -> datasets.Dataset:
    path = Path(source).expanduser()
    if any(c in source for c in "*?[") or path.is_file():
        files = sorted(glob.glob(str(path)))
        if not files:
            raise FileNotFoundError(f"no files match {source!r}")
        return _read_local(
            source, split, lambda: datasets.load_dataset("parquet", data_files={split: files}, split=split)
        )
    if not path.is_dir():
        raise FileNotFoundError(f"dataset source {source!r} does not exist")
    if (path / "dataset_dict.json").exists():
        dataset_dict = _read_local(source, split, lambda: datasets.load_from_disk(str(path)))
        if split not in dataset_dict:
            raise VQADataError(f"split {split!r} not in {source!r}; available splits: {sorted(dataset_dict)}")
        return _read_local(source, split, lambda: dataset_dict[split])
    if (path / "state.json").exists():
        # A single saved Dataset carries no split name we can check: trust the caller.
        logger.info("%s holds a single dataset; reading it as split %r", source, split)
        return _read_local(source, split, lambda: datasets.load_from_disk(str(path)))
    splits = _parquet_splits(path)
    if not splits:
        raise VQADataError(
            f"{source!r} is neither a save_to_disk folder (dataset_dict.json / state.json) nor a folder of parquet files"
        )
    if split not in splits:
        raise VQADataError(f"split {split!r} not in {source!r}; available splits: {sorted(splits)}")
    return _read_local(
        source,
        split,
        lambda: datasets.load_dataset("parquet", data_files={split: splits[split]}, split=split),
    )


def _load_hub(source: str, split: str) -> datasets.Dataset:
    try:
        return datasets.load_dataset(source, split=split)
    except ConnectionError as err:  # datasets raises ConnectionError (an OSError) when the hub is unreachable
        raise ConnectionError(
            f"could not reach the Hugging Face hub for dataset {source!r}: {err}\n"
            "Download it elsewhere and pass a local folder (save_to_disk output or parquet files), "
            "or run the offline study with `--study demo`."
        ) from err
    except OSError as err:  # e.g. DatasetNotFoundError (a FileNotFoundError): unknown or gated id
        raise OSError(
            f"could not load dataset {source!r} from the Hugging Face hub: {err}\n"
            "Pass a local folder (save_to_disk output or parquet files) or run the offline study with `--study demo`."
        ) from err
    except ValueError as err:
        if "split" in str(err).lower():
            raise VQADataError(f"split {split!r} not in dataset {source!r}: {err}") from err
        raise


def check_columns(ds: datasets.Dataset, split: str) -> None:
    """Raise if any of A-OKVQA's required columns is missing."""
    missing = [c for c in REQUIRED_COLUMNS if c not in ds.column_names]
    if missing:
        raise VQADataError(
            f"split {split!r} lacks column(s) {missing}; columns present: {ds.column_names}; "
            f"required: {list(REQUIRED_COLUMNS)}"
        )


def subset_indices(n_rows: int, max_samples: int | None, seed: int) -> list[int]:
    """Rows kept by `max_samples`: a seeded random subset, in the dataset's order.

    The first `max_samples` positions of one seeded permutation, so subsets with the same seed are nested.
    """
    if max_samples is None or max_samples >= n_rows:
        return list(range(n_rows))
    order = list(range(n_rows))
    random.Random(seed).shuffle(order)
    return sorted(order[:max_samples])


def load_vqa_split(config: DataConfig) -> datasets.Dataset:
    """Load `config.split` from `config.source`, check its columns and apply `max_samples`."""
    source, split = config.source, config.split
    ds = _load_local(source, split) if _looks_like_path(source) else _load_hub(source, split)
    check_columns(ds, split)
    if config.max_samples is not None and config.max_samples < len(ds):
        ds = ds.select(subset_indices(len(ds), config.max_samples, config.seed))
    return ds


# ---------------------------------------------------------------------------------------------- rows


def _error(split: str, index: int, question_id: Any, column: str, message: str) -> VQADataError:
    return VQADataError(
        f"split {split!r}, row {index} (question_id {question_id!r}), column {column!r}: {message}"
    )


def _decode_image(value: Any) -> Image.Image:
    """A PIL image from what a datasets Image column holds undecoded: {"bytes", "path"}, bytes, a path or an image."""
    if isinstance(value, Image.Image):
        image = value
    else:
        if isinstance(value, dict):
            data, path = value.get("bytes"), value.get("path")
        elif isinstance(value, (bytes, bytearray)):
            data, path = value, None
        elif isinstance(value, str):
            data, path = None, value
        else:
            raise ValueError(
                f"expected image bytes, a path or a dict with 'bytes'/'path', got {type(value).__name__}"
            )
        if data:
            image = Image.open(io.BytesIO(data))
        elif path:
            image = Image.open(path)
        else:
            raise ValueError("image has neither bytes nor a path")
    image.load()  # decode now so a truncated or corrupt file fails here, naming its row
    return image.convert("RGB")


def _as_list(value: Any, what: str) -> list:
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)  # the hub copy stores direct_answers as "['a', 'b', ...]"
        except (ValueError, SyntaxError) as err:
            raise ValueError(f"{what} string is not a Python list literal: {value[:80]!r}") from err
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{what} must be a list, got {type(value).__name__}")
    return list(value)


def validate_row(row: dict[str, Any], split: str, index: int) -> VQAExample:
    """Check one row against A-OKVQA's schema and turn it into a `VQAExample`.

    Raises `VQADataError` naming the split, row index, question_id and offending column.
    """
    question_id = row.get("question_id")
    if question_id is None or str(question_id) == "":
        raise _error(split, index, question_id, "question_id", "missing")
    question = row.get("question")
    if not isinstance(question, str) or not question.strip():
        raise _error(split, index, question_id, "question", f"must be a non-empty string, got {question!r}")

    try:
        choices = _as_list(row.get("choices"), "choices")
    except ValueError as err:
        raise _error(split, index, question_id, "choices", str(err)) from err
    if not 2 <= len(choices) <= len(CHOICE_LETTERS) or not all(isinstance(c, str) for c in choices):
        raise _error(
            split, index, question_id, "choices", f"must be 2..{len(CHOICE_LETTERS)} strings, got {choices!r}"
        )

    correct = row.get("correct_choice_idx")
    if correct is not None:  # None: answers hidden (test split)
        if isinstance(correct, bool) or not isinstance(correct, int) or not 0 <= correct < len(choices):
            raise _error(
                split,
                index,
                question_id,
                "correct_choice_idx",
                f"{correct!r} is not an index into {len(choices)} choices",
            )

    raw_answers = row.get("direct_answers")
    try:
        answers = [] if raw_answers is None else [str(a) for a in _as_list(raw_answers, "direct_answers")]
    except ValueError as err:
        raise _error(split, index, question_id, "direct_answers", str(err)) from err

    try:
        image = _decode_image(row.get("image"))
    except Exception as err:  # PIL raises several types (UnidentifiedImageError, OSError, ...)
        raise _error(
            split, index, question_id, "image", f"unreadable image ({type(err).__name__}: {err})"
        ) from err

    rationales = row.get("rationales") or []
    return VQAExample(
        question_id=str(question_id),
        image=image,
        question=question,
        choices=list(choices),
        correct_choice_idx=correct,
        direct_answers=answers,
        difficult_direct_answer=bool(row.get("difficult_direct_answer") or False),
        rationales=[str(r) for r in rationales]
        if isinstance(rationales, (list, tuple))
        else [str(rationales)],
    )


def iter_examples(
    ds: datasets.Dataset, split: str, on_error: str = "raise", stats: ReadStats | None = None
) -> Iterator[VQAExample]:
    """Validated examples, read lazily. With on_error="skip" bad rows are dropped and counted in `stats`."""
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    check_columns(ds, split)
    stats = stats if stats is not None else ReadStats()
    image_feature = ds.features.get("image")
    if isinstance(image_feature, datasets.Image) and image_feature.decode:
        # Decode images ourselves, so an unreadable one is a row error rather than a crash inside datasets.
        ds = ds.cast_column("image", datasets.Image(decode=False))
    for index, row in enumerate(ds):
        try:
            example = validate_row(row, split, index)
        except VQADataError as err:
            if on_error == "raise":
                raise
            stats.n_skipped += 1
            stats.errors.append(str(err))
            logger.debug("skipping: %s", err)
            continue
        stats.n_read += 1
        yield example
    if stats.n_skipped:
        logger.warning(
            "skipped %d bad row(s) of %d in split %r; first: %s",
            stats.n_skipped,
            stats.n_skipped + stats.n_read,
            split,
            stats.errors[0],
        )


def load_examples(config: DataConfig) -> tuple[list[VQAExample], int]:
    """All validated examples of `config`'s split (images decoded, held in memory) and the number skipped.

    For large splits prefer `iter_examples(load_vqa_split(config), ...)`, which holds one image at a time.
    """
    ds = load_vqa_split(config)
    stats = ReadStats()
    examples = list(iter_examples(ds, config.split, config.on_error, stats))
    if not examples:
        # Scoring zero questions would report accuracy 0.0 on n = 0 as if it were a result.
        raise VQADataError(
            f"no usable rows in split {config.split!r} of {config.source!r}: all {stats.n_skipped} were bad; "
            f"first: {stats.errors[0] if stats.errors else 'none'}"
        )
    return examples, stats.n_skipped
