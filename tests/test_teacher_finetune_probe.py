"""The fine-tune probe's new question forms: right by construction, balanced, and refused where unclear."""

from __future__ import annotations

import collections
import random

from benchmarks.teacher_finetune_probe import (
    QUADRANTS,
    SIDES,
    TOTAL_ANSWERS,
    held_out,
    quadrant_of,
    quadrant_question,
    region_caption,
    side_question,
    total_question,
)
from vlm.demo.scenes import Scene, SceneObject, sample_scene


def _scene(*objects: SceneObject) -> Scene:
    return Scene(objects=list(objects))


def test_quadrants_follow_the_centre_and_skip_objects_near_a_mid_line():
    top_left = SceneObject("circle", "red", "small", 10, 5, 6, 6)
    bottom_right = SceneObject("square", "blue", "large", 90, 40, 16, 16)
    near_middle = SceneObject("cross", "green", "small", 64 - 3, 5, 6, 6)  # centre on the vertical mid-line
    scene = _scene(top_left, bottom_right, near_middle)
    assert quadrant_of(scene, top_left) == "top left"
    assert quadrant_of(scene, bottom_right) == "bottom right"
    assert quadrant_of(scene, near_middle) is None
    rng = random.Random(0)
    for _ in range(20):
        question = quadrant_question(scene, rng)
        assert "green cross" not in question.question  # never asked about an object on a mid-line
        assert sorted(question.choices) == sorted(QUADRANTS)


def test_the_quadrant_margin_is_measured_from_the_centre():
    scene = _scene()
    # Centre x + 0.5 = x + 3.5 for a 6-px box: 6 px left of the mid-line (64) is kept, 5 px is not.
    assert quadrant_of(scene, SceneObject("circle", "red", "small", 64 - 6 - 3, 5, 6, 6)) == "top left"
    assert quadrant_of(scene, SceneObject("circle", "red", "small", 64 - 5 - 3, 5, 6, 6)) is None


def test_held_out_questions_are_answered_right_and_balanced():
    rng = random.Random(2)
    for _ in range(50):  # the answer is the quadrant of the object the question names
        scene = sample_scene(rng)
        question = quadrant_question(scene, rng)
        if question is not None:
            named = question.question.removeprefix("Where is the ").removesuffix("?")
            (obj,) = [o for o in scene.objects if o.descriptor == named]
            assert quadrant_of(scene, obj) == question.answer
    examples = held_out("quadrant", 200)
    answers = collections.Counter(e.choices[e.correct_choice_idx] for e in examples)
    assert set(answers) == set(QUADRANTS) and min(answers.values()) >= 30  # uniform would be 50 each
    totals = held_out("total", 40)
    assert {e.choices[e.correct_choice_idx] for e in totals} <= set(TOTAL_ANSWERS)


def test_total_counts_every_object():
    rng = random.Random(1)
    for _ in range(20):
        scene = sample_scene(rng)
        question = total_question(scene, rng)
        assert question.answer == TOTAL_ANSWERS[len(scene.objects) - 3]


def test_the_region_caption_names_every_object_with_its_region_left_to_right():
    scene = _scene(
        SceneObject("square", "blue", "large", 90, 40, 16, 16),
        SceneObject("circle", "red", "small", 10, 5, 6, 6),
    )
    assert region_caption(scene).answer == "small red circle top left , large blue square bottom right"


def test_the_side_form_names_one_object_towards_the_side_and_three_in_the_other_half():
    scene = _scene(
        SceneObject("circle", "red", "small", 5, 30, 6, 6),  # centre x 8.5: the left third
        SceneObject("square", "blue", "small", 80, 5, 6, 6),
        SceneObject("cross", "green", "small", 100, 50, 6, 6),
        SceneObject("triangle", "black", "large", 70, 20, 16, 16),
    )
    question = side_question(scene, random.Random(0), answer="left")
    assert question.question == "Which of these objects is near the left of the image?"
    assert question.answer == "red circle"
    assert sorted(question.choices) == ["black triangle", "blue square", "green cross", "red circle"]
    # No object lies in the top third with three in the bottom half: the scene cannot ask "top".
    assert side_question(scene, random.Random(0), answer="top") is None
    examples = held_out("side", 80)
    sides = collections.Counter(e.question.split("near the ")[1].split()[0] for e in examples)
    assert set(sides) == set(SIDES) and min(sides.values()) >= 10
    assert collections.Counter(e.correct_choice_idx for e in examples).most_common(1)[0][1] <= 35
