"""The symbolic-scene probe writes the scene it claims to, in nanoVLM's prompt format, and trains on it."""

from __future__ import annotations

import itertools
import math

import pytest

from benchmarks.symbolic_scene_probe import (
    GRIDS,
    KINDS,
    ProbeSetting,
    World,
    held_out,
    run_setting,
    scene_text,
    training_stream,
)
from vlm.demo.scenes import Scene, SceneObject


@pytest.fixture(scope="module")
def world():
    return World()


def test_scene_text_lists_objects_left_to_right_with_their_cells():
    scene = Scene(
        [
            SceneObject("square", "blue", "large", 100, 45, 16, 16),
            SceneObject("circle", "red", "small", 4, 2, 6, 6),
        ]
    )
    assert scene_text(scene) == "small red circle x0 y0 , large blue square x13 y6 ."
    assert scene_text(scene, "region") == "small red circle top left , large blue square bottom right ."


def test_examples_use_the_mcq_format_and_label_only_answer_and_flags(world):
    setting = ProbeSetting(name="t")
    scene, question = next(training_stream(0, KINDS))
    ids, labels, oracle = world.example(scene, question, setting, word=False)
    text = world.tokenizer.decode(ids)
    assert text.startswith("<|im_start|> user " + scene_text(scene))
    assert "Answer with the option ' s letter" in text
    assert oracle is None
    letter = world.letters[question.correct_choice_idx]
    assert labels[-2:] == [letter, world.im_end] and ids[-2:] == labels[-2:]
    flags = [t for t in labels[:-2] if t != -100]
    assert len(flags) == 4 and flags.count(letter) == 1  # one option flagged with its letter, three "no"
    # The word form answers with the choice's words.
    ids, labels, _ = world.example(scene, question, setting, word=True)
    answer = [t for t in labels if t != -100]
    assert world.tokenizer.decode(answer[:-1]) == question.answer


def test_oracle_examples_carry_one_label_per_image_token(world):
    setting = ProbeSetting(name="o", scene_input="oracle")
    scene, question = next(training_stream(1, KINDS))
    ids, _, (classes, centres) = world.example(scene, question, setting, word=False)
    assert classes.shape == centres.shape == (3, 64)  # global view + two crops of the 128x64 scene
    assert sum(t == world.image_token for t in ids) == classes.numel()
    assert int(centres[0].sum()) == len(scene.objects)  # every object's centre is in the global view


def test_held_out_questions_are_the_validation_split_of_the_asked_kinds():
    pairs = held_out(20, ("presence", "size"))
    assert pairs and {q.kind for _, q in pairs} <= {"presence", "size"}


@pytest.mark.parametrize("index", [0, 1])
def test_tiny_variants_train_and_report_per_kind_curves(world, index):
    setting = GRIDS["tiny"][index]
    result = run_setting(setting, steps=2, eval_every=1, eval_questions=10, world=world)
    assert [p["step"] for p in result["curve"]] == [1, 2]
    last = result["curve"][-1]
    assert 0 <= last["mcq"] <= 1 and math.isfinite(last["answer_loss"])
    assert set(last["per_kind"]) <= set(KINDS)
    assert ("word" in last) == (setting.word_fraction > 0)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="scene_input"):
        ProbeSetting(name="x", scene_input="pixels")
    with pytest.raises(ValueError, match="kinds"):
        ProbeSetting(name="x", kinds=("colour",))
    assert list(itertools.islice(training_stream(0, ("count",)), 3))[0][1].kind == "count"


def test_drill_rows_without_image_mix_with_oracle_rows(world):
    import random

    from benchmarks.symbolic_scene_probe import _collate, _forward, build_model

    setting = GRIDS["tiny"][1]
    scene, question = next(training_stream(2, KINDS))
    rows = [world.drill(random.Random(0)), world.example(scene, question, setting, word=False)]
    assert rows[0][2] is None and world.image_token not in rows[0][0]
    ids, labels, mask, oracle = _collate(rows, world.tokenizer.pad_token_id)
    assert oracle[0].shape == (1, 3, 64)  # only the scene row's labels fill image slots
    model, oracle_module = build_model(setting, world)
    logits = _forward(model, oracle_module, world, ids, mask, oracle)
    assert logits.shape[:2] == ids.shape


def test_sessions_put_the_scene_in_the_first_turn_only(world):
    from benchmarks.symbolic_scene_probe import session_stream

    setting = ProbeSetting(name="s", scene_input="oracle", turns=3)
    scene, questions = next(session_stream(0, KINDS, 3))
    assert 1 <= len(questions) <= 3
    ids, labels, (classes, _) = world.session(scene, questions, setting, [False] * len(questions))
    assert sum(t == world.image_token for t in ids) == classes.numel()  # one image for all turns
    answers = [t for t in labels if t in world.letters]
    assert len(answers) == 2 * len(questions)  # each turn: one flagged option and the answer letter


def test_kind_weights_steer_which_questions_are_asked():
    weighted = itertools.islice(training_stream(0, ("presence", "size"), (1.0, 50.0)), 60)
    kinds = [question.kind for _, question in weighted]
    assert kinds.count("size") > 50  # ~98% expected; equal weights give ~30 of 60
    with pytest.raises(ValueError, match="kind_weights"):
        ProbeSetting(name="x", kinds=("presence", "size"), kind_weights=(1.0,))
    with pytest.raises(ValueError, match="eval_kinds"):
        ProbeSetting(name="x", eval_kinds=("colour",))


def test_a_saved_state_starts_the_next_variant(world, tmp_path):
    import dataclasses

    import torch

    from benchmarks.symbolic_scene_probe import build_model

    tiny = GRIDS["tiny"][0]
    state = tmp_path / "tiny.pt"
    run_setting(tiny, steps=1, eval_every=1, eval_questions=5, world=world, save_to=state)
    trained = torch.load(state, weights_only=True)["model"]
    fresh, _ = build_model(tiny, world)
    assert any(not torch.equal(trained[k], v) for k, v in fresh.state_dict().items())
    resumed, _ = build_model(dataclasses.replace(tiny, init_from=str(state)), world)
    assert all(torch.equal(trained[k], v) for k, v in resumed.state_dict().items())
    # A later variant scored on every kind while it trains on one.
    one_kind = dataclasses.replace(tiny, kinds=("size",), eval_kinds=KINDS, init_from=str(state))
    result = run_setting(one_kind, steps=1, eval_every=1, eval_questions=10, world=world)
    assert len(result["curve"][-1]["per_kind"]) > 1
    with pytest.raises(FileNotFoundError, match="--save"):
        build_model(dataclasses.replace(tiny, init_from=str(tmp_path / "missing.pt")), world)
