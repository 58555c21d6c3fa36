from __future__ import annotations

import random
import re
from collections import Counter

import pytest

from vlm.demo.scenes import (
    COLORS,
    HEIGHT,
    MARGIN,
    PROMPT_STRINGS,
    QUESTION_KINDS,
    RELATIONS,
    WIDTH,
    AnswerPlan,
    Scene,
    SceneObject,
    boxes_overlap,
    demo_vocabulary,
    draw_plan,
    make_question,
    render_scene,
    sample_scene,
    spatial_pairs,
    spatial_relation,
    split_words,
)


def obj(shape: str, color: str, size_name: str, x: int, y: int, side: int) -> SceneObject:
    return SceneObject(shape, color, size_name, x, y, side, side)


# Five objects; centres in brackets. Small: red circle (12.5, 12.5), green triangle (102.5, 42.5),
# yellow cross (47, 8). Large: blue square (47.5, 37.5), blue circle (77, 12).
MIXED = Scene(
    objects=[
        obj("circle", "red", "small", 10, 10, 6),
        obj("square", "blue", "large", 40, 30, 16),
        obj("triangle", "green", "small", 100, 40, 6),
        obj("circle", "blue", "large", 70, 5, 15),
        obj("cross", "yellow", "small", 44, 5, 7),
    ]
)

# Three objects for spatial questions. Centres: red circle (12.5, 30.5), blue square (63.5, 31.5),
# green triangle (63.5, 4.5).
SPATIAL = Scene(
    objects=[
        obj("circle", "red", "small", 10, 28, 6),
        obj("square", "blue", "large", 56, 24, 16),
        obj("triangle", "green", "small", 61, 2, 6),
    ]
)


def questions(scene: Scene, plan: AnswerPlan, n: int = 40):
    """The questions `plan` gives on `scene` over n seeds (None where the scene cannot support it)."""
    return [make_question(scene, random.Random(seed), plan=plan) for seed in range(n)]


def test_sample_scene_respects_layout_rules():
    rng = random.Random(0)
    scenes = [sample_scene(rng) for _ in range(300)]
    for scene in scenes:
        assert 3 <= len(scene.objects) <= 6
        for i, a in enumerate(scene.objects):
            assert 1 <= a.x and a.x + a.w <= WIDTH - 1 and 1 <= a.y and a.y + a.h <= HEIGHT - 1
            lo, hi = (5, 7) if a.size_name == "small" else (14, 20)
            assert lo <= a.w == a.h <= hi
            for b in scene.objects[i + 1 :]:
                assert not boxes_overlap(a, b, MARGIN)
    with_small = sum(any(o.size_name == "small" for o in s.objects) for s in scenes)
    assert with_small >= 0.85 * len(scenes)
    colors = Counter(o.color for s in scenes for o in s.objects)
    assert set(colors) == set(COLORS)


def test_sample_scene_is_deterministic():
    assert sample_scene(random.Random(5)) == sample_scene(random.Random(5))
    assert sample_scene(random.Random(5)) != sample_scene(random.Random(6))


def test_render_scene_draws_each_object_in_its_colour():
    image = render_scene(MIXED)
    assert image.mode == "RGB" and image.size == (128, 64)
    assert image.getpixel((0, 0)) == MIXED.background
    for o in MIXED.objects:
        assert image.getpixel((round(o.cx), round(o.cy))) == COLORS[o.color], o
    # A circle leaves its bounding-box corners empty; a square fills them.
    red_circle, blue_square = MIXED.objects[0], MIXED.objects[1]
    assert image.getpixel((red_circle.x, red_circle.y)) == MIXED.background
    assert image.getpixel((blue_square.x, blue_square.y)) == COLORS["blue"]


def test_scene_rejects_objects_outside_the_image():
    with pytest.raises(ValueError):
        Scene(objects=[obj("circle", "red", "small", 125, 10, 6)])
    with pytest.raises(ValueError):
        SceneObject("hexagon", "red", "small", 0, 0, 5, 5)


def test_attribute_questions_on_hand_built_scene():
    small_color_by_shape = {"circle": "red", "triangle": "green", "cross": "yellow"}
    asked = set()
    for q in questions(MIXED, AnswerPlan("attribute", by_color=True)):
        shape = re.fullmatch(r"What color is the small (\w+)\?", q.question).group(1)
        assert q.answer == small_color_by_shape[shape]
        asked.add(shape)
    assert asked == set(small_color_by_shape)

    small_shape_by_color = {"red": "circle", "green": "triangle", "yellow": "cross"}
    for q in questions(MIXED, AnswerPlan("attribute", by_color=False)):
        color = re.fullmatch(r"What shape is the small (\w+) object\?", q.question).group(1)
        assert q.answer == small_shape_by_color[color]
        assert sorted(q.choices) == ["circle", "cross", "square", "triangle"]


def test_attribute_question_needs_a_unique_small_object():
    # Two small circles, both red: neither "the small circle" nor "the small red object" is unique.
    scene = Scene(
        objects=[obj("circle", "red", "small", 10, 10, 6), obj("circle", "red", "small", 30, 10, 6)]
    )
    assert make_question(scene, random.Random(0), plan=AnswerPlan("attribute", by_color=True)) is None
    assert make_question(scene, random.Random(0), plan=AnswerPlan("attribute", by_color=False)) is None


def test_count_questions_on_hand_built_scene():
    plan = AnswerPlan("count", by_color=True, window_start=1, count=2)
    for q in questions(MIXED, plan):
        assert q.question == "How many blue objects are there?"  # the only colour with two objects
        assert q.answer == "two"
        assert sorted(q.choices) == sorted(["one", "two", "three", "four"])
    plan = AnswerPlan("count", by_color=False, window_start=0, count=2)
    for q in questions(MIXED, plan):
        assert q.question == "How many circles are there?"
        assert sorted(q.choices) == sorted(["zero", "one", "two", "three"])
    zero = {q.question for q in questions(MIXED, AnswerPlan("count", by_color=True, window_start=0, count=0))}
    assert zero == {f"How many {c} objects are there?" for c in ("purple", "orange", "black")}
    # No colour and no shape appears three times.
    for by_color in (True, False):
        plan = AnswerPlan("count", by_color=by_color, window_start=0, count=3)
        assert make_question(MIXED, random.Random(0), plan=plan) is None


def test_spatial_relation_by_hand():
    red, blue, green = SPATIAL.objects
    assert spatial_relation(red, blue) == "left"  # dx = -51, dy = -1
    assert spatial_relation(blue, red) == "right"
    assert spatial_relation(green, blue) == "above"  # dx = 0, dy = -27
    assert spatial_relation(blue, green) == "below"
    assert spatial_relation(red, green) is None  # dx = -51, dy = 26: neither axis dominates twice over


def test_spatial_questions_on_hand_built_scene():
    expected = {
        ("red circle", "blue square"): "left",
        ("blue square", "red circle"): "right",
        ("green triangle", "blue square"): "above",
        ("blue square", "green triangle"): "below",
    }
    for relation in RELATIONS:
        for q in questions(SPATIAL, AnswerPlan("spatial", relation=relation), n=10):
            a, b = re.fullmatch(r"Where is the (\w+ \w+) relative to the (\w+ \w+)\?", q.question).groups()
            assert expected[(a, b)] == relation == q.answer
            assert sorted(q.choices) == sorted(RELATIONS)


def test_spatial_pairs_are_the_clear_relations_between_unique_objects():
    red, blue, green = SPATIAL.objects
    found = {(a.descriptor, b.descriptor, r) for a, b, r in spatial_pairs(SPATIAL)}
    assert found == {
        ("red circle", "blue square", "left"),
        ("blue square", "red circle", "right"),
        ("green triangle", "blue square", "above"),
        ("blue square", "green triangle", "below"),
    }  # red circle / green triangle is ambiguous, so it is absent


def test_spatial_question_skips_ambiguous_descriptors():
    # Two red circles: "the red circle" is ambiguous, so only the square's relations could be asked,
    # and with one other unique object there is no pair.
    scene = Scene(
        objects=[
            obj("circle", "red", "small", 10, 28, 6),
            obj("circle", "red", "small", 100, 28, 6),
            obj("square", "blue", "large", 56, 24, 16),
        ]
    )
    for relation in RELATIONS:
        assert make_question(scene, random.Random(0), plan=AnswerPlan("spatial", relation=relation)) is None


def test_presence_questions_on_hand_built_scene():
    present = {o.descriptor for o in MIXED.objects}
    for q in questions(MIXED, AnswerPlan("presence")):
        assert q.question == "Which of these objects is in the image?"
        assert q.answer in present
        assert [c in present for c in q.choices].count(True) == 1


def test_size_questions_on_hand_built_scene():
    for q in questions(MIXED, AnswerPlan("size")):
        assert q.question == "Which of these objects is the largest?"
        assert q.answer in {"blue square", "blue circle"}
        assert set(q.choices) - {q.answer} == {"red circle", "green triangle", "yellow cross"}
    assert make_question(SPATIAL, random.Random(0), plan=AnswerPlan("size")) is None  # two small only


def test_question_fields_and_vocabulary_coverage():
    vocab = set(demo_vocabulary())
    rng = random.Random(1)
    seen_kinds = Counter()
    for _ in range(1500):
        q = make_question(sample_scene(rng), rng)
        if q is None:
            continue
        seen_kinds[q.kind] += 1
        assert len(q.choices) == 4 and len(set(q.choices)) == 4
        assert 0 <= q.correct_choice_idx < 4
        assert len(q.direct_answers) == 10 and q.direct_answers.count(q.answer) >= 3
        assert len(q.rationales) == 3
        assert isinstance(q.difficult_direct_answer, bool)
        for text in [q.question, *q.choices, *q.direct_answers, *q.rationales]:
            assert set(split_words(text)) <= vocab, text
    assert set(seen_kinds) == set(QUESTION_KINDS)


def test_vocabulary_holds_prompt_words_letters_and_roles():
    vocab = demo_vocabulary()
    assert vocab == sorted(set(vocab))
    for text in PROMPT_STRINGS:
        assert set(split_words(text)) <= set(vocab)
    assert {"option", "'", "s", "A", "B", "C", "D", "user", "assistant", "?", ",", "."} <= set(vocab)
    assert split_words("Answer with the option's letter.") == [
        "Answer",
        "with",
        "the",
        "option",
        "'",
        "s",
        "letter",
        ".",
    ]
    assert len(vocab) < 150


def test_draw_plan_and_make_question_validate_kind():
    with pytest.raises(ValueError):
        draw_plan(random.Random(0), "colour")
    with pytest.raises(ValueError):
        make_question(MIXED, random.Random(0), kind="count", plan=AnswerPlan("size"))
    assert draw_plan(random.Random(0), "spatial").relation in RELATIONS
