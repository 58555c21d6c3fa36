"""vlm.atomic: the one way files and folders are written atomically."""

from __future__ import annotations

import json
import os
import stat

import pytest

from vlm.atomic import atomic_dir, atomic_file, replace_dir, write_json, write_text


class _Boom(Exception):
    pass


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_write_replaces_the_file_readable_by_others_and_leaves_no_temporary(tmp_path, umask_022):
    path = tmp_path / "sub" / "result.json"
    write_text(path, "old")
    assert write_json(path, {"a": [1, 2]}) == path
    assert json.loads(path.read_text()) == {"a": [1, 2]}
    assert [p.name for p in path.parent.iterdir()] == ["result.json"]
    assert _mode(path) == 0o644  # not tempfile's private 0600


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    path = tmp_path / "weights.pt"
    write_text(path, "good")
    with pytest.raises(_Boom), atomic_file(path) as tmp:
        tmp.write_text("half")
        raise _Boom
    assert path.read_text() == "good"
    assert [p.name for p in tmp_path.iterdir()] == ["weights.pt"]


def test_two_writers_of_one_file_get_their_own_temporaries_keeping_the_extension(tmp_path):
    path = tmp_path / "pareto.png"
    with atomic_file(path) as first, atomic_file(path) as second:
        assert first != second and first.suffix == second.suffix == ".png"
        first.write_text("first")
        second.write_text("second")
    assert path.read_text() == "first"  # the last rename wins: the outer block ends last


def test_atomic_dir_swaps_a_complete_folder_in_and_removes_the_old_one(tmp_path, umask_022):
    path = tmp_path / "model"
    with atomic_dir(path) as tmp:
        (tmp / "config.json").write_text("1")
    with atomic_dir(path) as tmp:
        (tmp / "config.json").write_text("2")
        (tmp / "sub").mkdir()
        assert not (path / "sub").exists()  # readers still see the old folder while the new one is written
    assert (path / "config.json").read_text() == "2"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temporary or .old folder left
    assert (_mode(path), _mode(path / "sub"), _mode(path / "config.json")) == (0o755, 0o755, 0o644)


def test_a_failed_folder_keeps_the_old_one(tmp_path):
    path = tmp_path / "model"
    with atomic_dir(path) as tmp:
        (tmp / "config.json").write_text("good")
    with pytest.raises(_Boom), atomic_dir(path) as tmp:
        (tmp / "config.json").write_text("half")
        raise _Boom
    assert (path / "config.json").read_text() == "good"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_first_writer_wins_without_replace(tmp_path):
    path = tmp_path / "dataset"
    with atomic_dir(path, replace=False) as tmp:
        (tmp / "data").write_text("first")
    with pytest.raises(FileExistsError, match="already exists"), atomic_dir(path, replace=False) as tmp:
        (tmp / "data").write_text("second")
    assert (path / "data").read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["dataset"]


def test_replace_dir_moves_the_complete_folder_aside_to_the_given_name(tmp_path):
    (tmp_path / "checkpoint").mkdir()
    (tmp_path / "checkpoint.tmp").mkdir()
    (tmp_path / "checkpoint.tmp" / "step").write_text("2")
    replace_dir(tmp_path / "checkpoint.tmp", tmp_path / "checkpoint", old=tmp_path / "checkpoint.old")
    assert (tmp_path / "checkpoint" / "step").read_text() == "2"
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint"]
