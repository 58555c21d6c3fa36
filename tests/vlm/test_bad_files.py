"""Broken files and full disks give one clear error naming the file, split or folder: empty datasets
(save_to_disk and parquet), a split whose every row is bad, a truncated model.safetensors, a full disk while
a model or checkpoint is written. Real files, a real (small, full) file system where one can be mounted.
"""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import datasets
import pytest
import torch
from PIL import Image

from tests.tiny_world import build_tiny_world
from vlm.checkpoint import (
    WEIGHTS_FILE,
    CheckpointError,
    DiskFullError,
    disk_full_as_error,
    load_pretrained,
    require_free_space,
    save_pretrained,
)
from vlm.data import DataConfig, VQADataError, load_examples
from vlm.score import main as score_main

FEATURES = datasets.Features(
    {
        "question_id": datasets.Value("string"),
        "image": datasets.Image(),
        "question": datasets.Value("string"),
        "choices": datasets.Sequence(datasets.Value("string")),
        "correct_choice_idx": datasets.Value("int64"),
        "direct_answers": datasets.Sequence(datasets.Value("string")),
    }
)


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buffer, format="PNG")
    return buffer.getvalue()


def _rows(n: int, correct: int = 0) -> dict:
    return {
        "question_id": [f"q{i}" for i in range(n)],
        "image": [{"bytes": _png(), "path": None} for _ in range(n)],
        "question": ["What colour?"] * n,
        "choices": [["red", "blue", "green", "black"]] * n,
        "correct_choice_idx": [correct] * n,
        "direct_answers": [["red"] * 10] * n,
    }


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory) -> tuple[Path, Path]:
    return build_tiny_world(tmp_path_factory.mktemp("bad_files_world"))


# ----- datasets ---------------------------------------------------------------------------------------------
def test_an_empty_save_to_disk_split_is_named(tmp_path):
    empty = datasets.Dataset.from_dict(_rows(0), features=FEATURES)
    datasets.DatasetDict({"validation": empty}).save_to_disk(str(tmp_path / "disk"))
    with pytest.raises(VQADataError, match=r"split 'validation' of '.*disk' holds no rows"):
        load_examples(DataConfig(str(tmp_path / "disk"), "validation"))


@pytest.mark.parametrize("as_file", [False, True], ids=["parquet-folder", "parquet-file"])
def test_an_empty_parquet_split_is_named(as_file, tmp_path):
    folder = tmp_path / "pq"
    folder.mkdir()
    datasets.Dataset.from_dict(_rows(0), features=FEATURES).to_parquet(str(folder / "validation-0.parquet"))
    source = str(folder / "validation-0.parquet") if as_file else str(folder)
    with pytest.raises(VQADataError, match="holds no rows"):
        load_examples(DataConfig(source, "validation"))


def test_score_with_every_row_bad_is_an_error_not_accuracy_zero(tiny_world, tmp_path, capsys):
    teacher, _ = tiny_world
    bad = datasets.Dataset.from_dict(_rows(3, correct=7), features=FEATURES)  # index 7 of 4 choices
    datasets.DatasetDict({"validation": bad}).save_to_disk(str(tmp_path / "bad"))
    out = tmp_path / "preds.json"
    args = ["--model", str(teacher), "--data", str(tmp_path / "bad"), "--skip-bad-rows", "--out", str(out)]
    capsys.readouterr()  # (datasets' progress bars above)
    assert score_main(args) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(err) == 1 and "correct_choice_idx" in err[0] and "row 0" in err[0], err
    assert not out.exists()


# ----- checkpoints ------------------------------------------------------------------------------------------
def test_a_truncated_weights_file_is_named(tiny_world, tmp_path, capsys):
    teacher, data = tiny_world
    copy = tmp_path / "teacher"
    subprocess.run(["cp", "-r", str(teacher), str(copy)], check=True)
    weights = copy / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=f"cannot read {weights}.*truncated or corrupt"):
        load_pretrained(copy)
    # Through a command: one line, naming the file.
    capsys.readouterr()
    assert score_main(["--model", str(copy), "--data", str(data), "--out", str(tmp_path / "p.json")]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and str(weights) in err[0], err


def test_too_little_free_space_is_refused_before_writing(tmp_path):
    with pytest.raises(DiskFullError, match=f"not enough disk space for the weights in {tmp_path}"):
        require_free_space(tmp_path, 1 << 60, "the weights")


@pytest.fixture
def full_disk(tmp_path):
    """A 1 MB tmpfs, filled to the last bytes (needs the right to mount: root; skipped elsewhere)."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.decode().strip()}")
    try:
        with (mount / "filler").open("wb") as handle:
            try:
                handle.write(b"\0" * (2 << 20))
            except OSError:
                pass  # full, as wanted
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_a_full_disk_is_named_when_saving_a_model(tiny_world, full_disk, tmp_path):
    teacher, _ = tiny_world
    model = load_pretrained(teacher)
    with pytest.raises(DiskFullError, match=f"not enough disk space for the model model/ in {full_disk}"):
        save_pretrained(model, full_disk / "model")
    assert sorted(p.name for p in full_disk.iterdir()) == ["filler"]  # nothing half-written


def test_a_writer_failing_on_a_full_disk_says_so(full_disk):
    """torch's own message on a full disk is `unexpected pos N vs M`; the error names the disk and folder."""
    with pytest.raises(DiskFullError, match=f"the disk is full: writing a checkpoint in {full_disk}"):
        with disk_full_as_error(full_disk, "a checkpoint"):
            torch.save({"weights": torch.zeros(1 << 18)}, full_disk / "checkpoint.pt")
