"""A study's world (teacher weights, search-subset questions) is recorded and a different one refused."""

from __future__ import annotations

import dataclasses
import shutil

import optuna
import pytest
from safetensors.torch import load_file, save_file

from ledger.config import DataSettings, ModelSettings
from ledger.records import WORLD, WorldMismatchError, check_world
from ledger.world import load_split, questions_digest, teacher_digest
from tests.tiny_world import make_tiny_world
from vlm.checkpoint import WEIGHTS_FILE


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_tiny_world(tmp_path_factory.mktemp("world_identity"))


def perturbed_copy(teacher, folder):
    """The teacher's folder with one weight changed by a tiny amount, in a real safetensors file."""
    shutil.copytree(teacher, folder)
    weights = load_file(folder / WEIGHTS_FILE)
    name = sorted(weights)[0]
    weights[name] = weights[name].clone()
    weights[name].view(-1)[0] += 1e-3
    save_file(weights, folder / WEIGHTS_FILE)
    return folder


def test_teacher_digest_follows_the_weights_not_the_path(world, tmp_path):
    same = shutil.copytree(world.teacher, tmp_path / "copy")
    changed = perturbed_copy(world.teacher, tmp_path / "changed")
    digest = teacher_digest(ModelSettings(teacher=str(world.teacher)))
    assert teacher_digest(ModelSettings(teacher=str(same))) == digest
    assert teacher_digest(ModelSettings(teacher=str(changed))) != digest


def test_questions_digest_follows_the_content_not_the_ids(world):
    examples = load_split(DataSettings(source=str(world.data)), "validation", 8)
    digest = questions_digest(examples)
    assert questions_digest(list(examples)) == digest
    reworded = [dataclasses.replace(examples[0], question=examples[0].question + " really"), *examples[1:]]
    assert reworded[0].question_id == examples[0].question_id and questions_digest(reworded) != digest
    assert questions_digest(examples[:7]) != digest


def test_check_world_records_a_new_study_and_refuses_another_world():
    study = optuna.create_study(study_name="w", directions=["minimize", "maximize"])
    check_world(study, {"teacher": "t1"}, record=False)  # finalize's check records nothing
    assert WORLD not in study.user_attrs
    check_world(study, {"teacher": "t1", "subset": "s1"})
    assert study.user_attrs[WORLD] == {"teacher": "t1", "subset": "s1"}
    check_world(study, {"teacher": "t1", "subset": "s1"})  # the same world goes on
    check_world(study, {"teacher": "t1"}, record=False)
    with pytest.raises(WorldMismatchError, match=r"another teacher \(its weights\) \(teacher t1 -> t2\)"):
        check_world(study, {"teacher": "t2", "subset": "s1"})
    with pytest.raises(WorldMismatchError, match=r"another search subset .*delete the study's database"):
        check_world(study, {"teacher": "t1", "subset": "s2"})
    assert study.user_attrs[WORLD] == {"teacher": "t1", "subset": "s1"}  # a refusal changes nothing
