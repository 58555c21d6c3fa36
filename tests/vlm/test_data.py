from __future__ import annotations

import io
import logging

import datasets
import pytest
from PIL import Image

from vlm import data as data_mod
from vlm.data import (
    DataConfig,
    ReadStats,
    VQADataError,
    iter_examples,
    load_examples,
    load_vqa_split,
    subset_indices,
    validate_row,
)

FEATURES = datasets.Features(
    {
        "question_id": datasets.Value("string"),
        "image": datasets.Image(),
        "question": datasets.Value("string"),
        "choices": datasets.List(datasets.Value("string")),
        "correct_choice_idx": datasets.Value("int64"),
        "direct_answers": datasets.Value("string"),  # a string holding a list, as in the hub copy
        "difficult_direct_answer": datasets.Value("bool"),
    }
)


def _png(color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (12, 8), color).save(buffer, format="PNG")
    return buffer.getvalue()


def _rows(n: int) -> dict[str, list]:
    return {
        "question_id": [f"q{i}" for i in range(n)],
        "image": [{"bytes": _png((10 * i, 0, 0)), "path": None} for i in range(n)],
        "question": [f"What is {i}?" for i in range(n)],
        "choices": [["red", "blue", "green", "pink"] for _ in range(n)],
        "correct_choice_idx": [i % 4 for i in range(n)],
        "direct_answers": [str(["red"] * 7 + ["blue"] * 3) for _ in range(n)],
        "difficult_direct_answer": [i == 1 for i in range(n)],
    }


def _dataset(n: int = 5, **overrides) -> datasets.Dataset:
    rows = _rows(n)
    for column, (index, value) in overrides.items():
        rows[column][index] = value
    return datasets.Dataset.from_dict(rows, features=FEATURES)


# ------------------------------------------------------------------------------------------- config


def test_data_config_validation():
    with pytest.raises(ValueError, match="on_error"):
        DataConfig(on_error="ignore")
    with pytest.raises(ValueError, match="max_samples"):
        DataConfig(max_samples=0)


# ------------------------------------------------------------------------------------------- loading


def test_load_from_dataset_dict_folder(tmp_path):
    datasets.DatasetDict({"validation": _dataset(5), "train": _dataset(3)}).save_to_disk(str(tmp_path / "dd"))
    ds = load_vqa_split(DataConfig(source=str(tmp_path / "dd"), split="validation"))
    assert len(ds) == 5
    with pytest.raises(VQADataError, match=r"'test'.*available splits: \['train', 'validation'\]"):
        load_vqa_split(DataConfig(source=str(tmp_path / "dd"), split="test"))


def test_load_from_single_dataset_folder(tmp_path):
    _dataset(4).save_to_disk(str(tmp_path / "single"))
    assert len(load_vqa_split(DataConfig(source=str(tmp_path / "single")))) == 4


def test_load_from_parquet_folder_file_and_glob(tmp_path):
    folder = tmp_path / "pq"
    (folder / "data").mkdir(parents=True)
    _dataset(5).to_parquet(str(folder / "data" / "validation-00000-of-00001.parquet"))
    (folder / "train").mkdir()
    _dataset(3).to_parquet(str(folder / "train" / "0000.parquet"))
    assert len(load_vqa_split(DataConfig(source=str(folder), split="validation"))) == 5
    assert len(load_vqa_split(DataConfig(source=str(folder), split="train"))) == 3
    with pytest.raises(VQADataError, match=r"available splits: \['train', 'validation'\]"):
        load_vqa_split(DataConfig(source=str(folder), split="test"))
    single = str(folder / "data" / "validation-00000-of-00001.parquet")
    assert len(load_vqa_split(DataConfig(source=single))) == 5
    assert len(load_vqa_split(DataConfig(source=str(folder / "*" / "*.parquet"), split="train"))) == 8


def test_parquet_round_trip_keeps_examples(tmp_path):
    _dataset(3).to_parquet(str(tmp_path / "validation.parquet"))
    examples, skipped = load_examples(DataConfig(source=str(tmp_path)))
    assert skipped == 0
    assert [e.question_id for e in examples] == ["q0", "q1", "q2"]
    assert examples[0].image.size == (12, 8) and examples[0].image.mode == "RGB"


def test_missing_source_folder(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_vqa_split(DataConfig(source=str(tmp_path / "absent")))


def test_hub_unreachable_is_explained(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'HuggingFaceM4/A-OKVQA' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(data_mod.datasets, "load_dataset", offline)
    with pytest.raises(ConnectionError, match=r"HuggingFaceM4/A-OKVQA(.|\n)*--study demo"):
        load_vqa_split(DataConfig())


def test_missing_column_is_named(tmp_path):
    _dataset(3).remove_columns("direct_answers").save_to_disk(str(tmp_path / "d"))
    with pytest.raises(
        VQADataError, match=r"'validation'.*\['direct_answers'\].*columns present: \['question_id'"
    ):
        load_vqa_split(DataConfig(source=str(tmp_path / "d")))


def test_max_samples_is_a_fixed_nested_subset(tmp_path):
    _dataset(30).save_to_disk(str(tmp_path / "d"))

    def ids(n, seed):
        ds = load_vqa_split(DataConfig(source=str(tmp_path / "d"), max_samples=n, seed=seed))
        return ds["question_id"]

    assert len(ids(10, 0)) == 10
    assert ids(10, 0) == ids(10, 0)
    assert set(ids(10, 0)) <= set(ids(20, 0))
    assert ids(10, 0) != ids(10, 1)
    assert len(ids(100, 0)) == 30
    assert subset_indices(30, 10, 0) == sorted(subset_indices(30, 10, 0))


# ---------------------------------------------------------------------------------------------- rows


def test_valid_row_parses_string_answers():
    example = next(iter_examples(_dataset(3), "validation"))
    assert example.question_id == "q0"
    assert example.choices == ["red", "blue", "green", "pink"]
    assert example.direct_answers == ["red"] * 7 + ["blue"] * 3
    assert example.correct_choice_idx == 0
    assert isinstance(example.image, Image.Image)
    assert example.difficult_direct_answer is False


def test_list_answers_and_optional_columns_absent():
    row = {k: v[0] for k, v in _rows(1).items() if k != "difficult_direct_answer"}
    row["direct_answers"] = ["a", "b"]
    example = validate_row(row, "validation", 0)
    assert example.direct_answers == ["a", "b"]
    assert example.difficult_direct_answer is False and example.rationales == []


def test_hidden_answers_allowed():
    row = {k: v[0] for k, v in _rows(1).items()}
    row["correct_choice_idx"] = None
    row["direct_answers"] = None
    example = validate_row(row, "test", 0)
    assert example.correct_choice_idx is None and example.direct_answers == []


def test_unreadable_image_names_the_row():
    ds = _dataset(4, image=(2, {"bytes": b"not an image", "path": None}))
    examples = iter_examples(ds, "validation")
    next(examples), next(examples)
    with pytest.raises(VQADataError, match=r"'validation', row 2 \(question_id 'q2'\), column 'image'"):
        next(examples)


def test_out_of_range_choice_index_names_the_row():
    ds = _dataset(3, correct_choice_idx=(1, 4))
    with pytest.raises(VQADataError, match=r"row 1 \(question_id 'q1'\), column 'correct_choice_idx'"):
        list(iter_examples(ds, "validation"))


def test_unparsable_direct_answers():
    ds = _dataset(3, direct_answers=(0, "['red', 'blue'"))
    with pytest.raises(VQADataError, match=r"row 0 .*column 'direct_answers'"):
        list(iter_examples(ds, "validation"))


def test_bad_choices():
    row = {k: v[0] for k, v in _rows(1).items()}
    row["choices"] = ["only one"]
    with pytest.raises(VQADataError, match="column 'choices'"):
        validate_row(row, "validation", 0)


def test_skip_and_count(tmp_path, caplog):
    ds = _dataset(6, image=(2, {"bytes": b"\x89PNG broken", "path": None}), correct_choice_idx=(4, -1))
    stats = ReadStats()
    with caplog.at_level(logging.WARNING, logger="vlm.data"):
        examples = list(iter_examples(ds, "validation", on_error="skip", stats=stats))
    assert [e.question_id for e in examples] == ["q0", "q1", "q3", "q5"]
    assert (stats.n_read, stats.n_skipped) == (4, 2)
    assert "skipped 2 bad row(s) of 6" in caplog.text

    ds.save_to_disk(str(tmp_path / "d"))
    examples, skipped = load_examples(DataConfig(source=str(tmp_path / "d"), on_error="skip"))
    assert (len(examples), skipped) == (4, 2)
    with pytest.raises(VQADataError):
        load_examples(DataConfig(source=str(tmp_path / "d")))
