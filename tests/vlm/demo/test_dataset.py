from __future__ import annotations

import io
import json
from collections import Counter, defaultdict

import datasets
import pytest
from PIL import Image

from vlm.demo import dataset as demo_dataset
from vlm.demo.dataset import (
    FEATURES,
    GENERATOR_VERSION,
    DemoDataConfig,
    ensure_demo_dataset,
    generate_demo_dataset,
    generate_split,
    iter_examples,
)
from vlm.demo.scenes import QUESTION_KINDS, demo_vocabulary, split_words

COLUMNS = [
    "question_id",
    "image",
    "question",
    "choices",
    "correct_choice_idx",
    "direct_answers",
    "difficult_direct_answer",
    "rationales",
]
SMALL = DemoDataConfig(seed=7, train_size=50, validation_size=20, test_size=20)


def rows(ds: datasets.Dataset) -> list[dict]:
    """All rows with images as raw PNG bytes."""
    return ds.cast_column("image", datasets.Image(decode=False)).to_list()


def test_generation_is_deterministic_per_seed_and_split():
    first = rows(generate_split(3, "validation", 20))
    assert first == rows(generate_split(3, "validation", 20))
    assert first != rows(generate_split(4, "validation", 20))
    # Splits draw from their own seeds, and a smaller split is a prefix of a larger one.
    assert [r["question"] for r in first] != [r["question"] for r in rows(generate_split(3, "test", 20))]
    assert rows(generate_split(3, "validation", 10)) == first[:10]


def test_saved_dataset_has_aokvqa_schema(tmp_path):
    out = generate_demo_dataset(SMALL, tmp_path / "demo")
    assert out == tmp_path / "demo"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]  # no temporary folder left behind
    assert json.loads((out / "demo_config.json").read_text()) == {
        "seed": 7,
        "train_size": 50,
        "validation_size": 20,
        "test_size": 20,
        "generator_version": GENERATOR_VERSION,
    }
    dsd = datasets.load_from_disk(str(out))
    assert {name: len(ds) for name, ds in dsd.items()} == {"train": 50, "validation": 20, "test": 20}
    for split, prefix in (("train", "train"), ("validation", "val"), ("test", "test")):
        ds = dsd[split]
        assert ds.column_names == COLUMNS
        assert ds.features == FEATURES
        row = ds[3]
        assert row["question_id"] == f"demo_{prefix}_000003"
        assert isinstance(row["image"], Image.Image) and row["image"].size == (128, 64)
        assert row["image"].mode == "RGB"
        assert isinstance(row["question"], str) and row["question"].endswith("?")
        assert len(row["choices"]) == 4 and all(isinstance(c, str) for c in row["choices"])
        assert isinstance(row["correct_choice_idx"], int) and 0 <= row["correct_choice_idx"] < 4
        assert len(row["direct_answers"]) == 10 and all(isinstance(a, str) for a in row["direct_answers"])
        assert isinstance(row["difficult_direct_answer"], bool)
        assert len(row["rationales"]) == 3 and all(isinstance(r, str) for r in row["rationales"])
    png = rows(dsd["test"])[0]["image"]["bytes"]
    assert Image.open(io.BytesIO(png)).format == "PNG"


def test_generate_refuses_an_existing_folder(tmp_path):
    (tmp_path / "demo").mkdir()
    with pytest.raises(FileExistsError):
        generate_demo_dataset(SMALL, tmp_path / "demo")


def test_ensure_demo_dataset_generates_once(tmp_path, monkeypatch):
    out = ensure_demo_dataset(SMALL, tmp_path)
    assert out == tmp_path / "demo-vqa-seed7-50-20-20"
    assert len(datasets.load_from_disk(str(out))["train"]) == 50

    def fail(*args, **kwargs):
        raise AssertionError("regenerated a cached dataset")

    monkeypatch.setattr(demo_dataset, "generate_demo_dataset", fail)
    assert ensure_demo_dataset(SMALL, tmp_path) == out


def test_ensure_demo_dataset_rejects_other_generator_version(tmp_path):
    out = ensure_demo_dataset(SMALL, tmp_path)
    record = json.loads((out / "demo_config.json").read_text())
    (out / "demo_config.json").write_text(json.dumps({**record, "generator_version": -1}))
    with pytest.raises(ValueError, match="another version"):
        ensure_demo_dataset(SMALL, tmp_path)


def test_config_validates_sizes():
    with pytest.raises(ValueError):
        DemoDataConfig(train_size=-1)


def test_answers_are_balanced_and_in_vocabulary():
    examples = [q for _, q in iter_examples(11, "train", 2000)]
    kinds = Counter(q.kind for q in examples)
    assert set(kinds) == set(QUESTION_KINDS) and all(n == 400 for n in kinds.values())

    index_counts = Counter(q.correct_choice_idx for q in examples)
    assert all(0.21 < index_counts[i] / len(examples) < 0.29 for i in range(4)), index_counts

    # A text-only model's best constant guess per kind: the most frequent answer.
    answers: dict[str, Counter] = defaultdict(Counter)
    for q in examples:
        answers[q.kind][q.answer] += 1
    for kind, counts in answers.items():
        top_share = counts.most_common(1)[0][1] / kinds[kind]
        assert top_share < 0.32, (kind, counts.most_common(3))
    assert set(answers["spatial"]) == {"left", "right", "above", "below"}
    assert set(answers["count"]) == {"zero", "one", "two", "three", "four"}

    vocab = set(demo_vocabulary())
    for q in examples:
        for text in [q.question, *q.choices, *q.direct_answers, *q.rationales]:
            assert set(split_words(text)) <= vocab, text
