"""Training sequences for the demo teacher, built from freshly generated scenes.

Two kinds, each token ids plus labels that are -100 except on answer tokens and, for MCQs, on the
choice flags of `choice_flag_labels`:

- `letter_mapping_prompt`: a text-only multiple-choice question "Which option is red?" in nanoVLM's MCQ
  format. It teaches the one skill a from-scratch decoder found hardest: emitting the *letter* of the
  matching choice (see benchmarks/letter_mapping_probe.py).
- `vqa_session`: one image followed by several questions about it as consecutive chat turns, each answered
  either with the letter (MCQ) or with the word (direct answer). One image then pays for several
  supervised answers, which matters when every view costs 64 decoder tokens. Besides the dataset's five
  question kinds, sessions hold two training-only ones (`SessionMix`): a caption listing every object
  left to right, and one-hop "Where is the red circle?" turns.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable

from vlm.config import ImageSpec, VLMConfig
from vlm.demo.recipe import SessionMix
from vlm.demo.scenes import (
    ALL_DESCRIPTORS,
    COLORS,
    NUMBER_WORDS,
    Q_CAPTION,
    Q_LOCATION,
    RELATIONS,
    SHAPES,
    AnswerPlan,
    Question,
    Scene,
    counts_by,
    draw_plan,
    make_question,
    region_of,
    render_scene,
    sample_scene,
    spatial_pairs,
    unique_by,
)
from vlm.evaluate import letter_token_ids
from vlm.processing import (
    MCQ_INSTRUCTION,
    build_prompt,
    da_user_text,
    image_placeholder_for,
    mcq_user_text,
    split_image,
)
from vlm.supervised import TrainingSequence
from vlm.tokenizer import IM_END

# Every category a demo answer comes from: the letter-mapping drill draws its four choices from one.
ANSWER_CATEGORIES: tuple[tuple[str, ...], ...] = (
    tuple(COLORS),
    SHAPES,
    NUMBER_WORDS[:5],
    RELATIONS,
    ALL_DESCRIPTORS,
)


# Question kinds whose wording refers to the choices, so they are only ever asked as MCQs.
LIST_QUESTION_KINDS: frozenset[str] = frozenset({"presence", "size"})
# Training-only kinds, always asked as direct answers (they have no distractors).
CAPTION_KIND = "caption"
LOCATION_KIND = "location"

# Count answers a session picks among the ones its scene supports, weighted towards the rarely supported
# large counts (a random scene has some colour or shape with count 0 97% of the time, 4 only 12%).
# Measured over 20,000 scenes, the picked answers are 0-4 with 14 / 21 / 30 / 25 / 10%, close to the
# dataset's 12.5 / 25 / 25 / 25 / 12.5%; asking whatever the scene supports gave 22 / 32 / 29 / 15 / 3%.
COUNT_PICK_WEIGHTS: dict[int, float] = {0: 0.3, 1: 0.6, 2: 1.0, 3: 3.0, 4: 8.0}


# Relation weights for `balanced_relation_plan`, favouring the vertical relations that few scenes support
# (the image is twice as wide as tall). Measured over 3,000 sessions of 8 turns, the picked relations
# left / right / above / below are 29 / 27 / 22 / 22%; uniform weights gave 37 / 36 / 13 / 13%, weights 3 for the vertical
# ones 32 / 30 / 19 / 19%. Most scenes support no vertical relation, so 50% is out of reach this way.
RELATION_PICK_WEIGHTS: dict[str, float] = {"left": 1.0, "right": 1.0, "above": 10.0, "below": 10.0}


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def choice_flag_labels(tokenizer, prompt: list[int], correct: int, n_choices: int = 4) -> list[int]:
    """Labels for an MCQ prompt that mark, on each choice's last token, whether it is the answer.

    The correct choice's last token must predict its letter, the others "no"; every other prompt token
    gets -100 (labels are next-token targets, so the flag sits on the token after the option).

    This is intermediate supervision for the two hops a from-scratch decoder is slow to find on its own
    (is this choice the answer? then which letter is it?): with it the answer position only has to copy
    the letter from the one choice that predicts a letter. Nothing reads these positions at inference, so
    the MCQ format is unchanged.
    """
    letters = letter_token_ids(tokenizer, n_choices)
    dot = tokenizer.convert_tokens_to_ids(".")
    no = tokenizer.convert_tokens_to_ids("no")
    # Each option starts "<letter> ."; search backwards so a letter inside the question cannot match.
    starts: list[int] = []
    end = len(prompt)
    for letter in reversed(letters):
        pos = next(i for i in range(end - 2, -1, -1) if prompt[i] == letter and prompt[i + 1] == dot)
        starts.insert(0, pos)
        end = pos
    # The options block ends where the instruction starts: the first token after the last option's text.
    instruction = _ids(tokenizer, MCQ_INSTRUCTION)
    stop = next(i for i in range(starts[-1], len(prompt)) if prompt[i : i + len(instruction)] == instruction)
    labels = [-100] * len(prompt)
    ends = [*starts[1:], stop]  # one past each option's last token
    for k, end in enumerate(ends):
        # Labels are next-token targets: the label at `end` is what the option's last token predicts.
        labels[end] = letters[k] if k == correct else no
    return labels


def letter_mapping_prompt(rng: random.Random, tokenizer) -> TrainingSequence:
    """'Which option is X?' with four lettered choices from one category; the answer is X's letter."""
    category = rng.choice(ANSWER_CATEGORIES)
    choices = rng.sample(category, 4)
    answer = rng.randrange(4)
    prompt = _ids(
        tokenizer, build_prompt(tokenizer, "", mcq_user_text(f"Which option is {choices[answer]}?", choices))
    )
    target = [letter_token_ids(tokenizer)[answer], tokenizer.convert_tokens_to_ids(IM_END)]
    return TrainingSequence(prompt + target, choice_flag_labels(tokenizer, prompt, answer) + target, None)


def _direct_only(kind: str, question: str, answer: str) -> Question:
    return Question(question, [answer], 0, [answer] * 10, False, [], kind)


def caption_question(scene: Scene) -> Question:
    """'Which objects are in the image?' answered 'small red circle , large blue square , ...' left to right.

    Dense supervision of reading the image: every object's colour, shape and size in one answer, the
    way captioning teaches a VLM to put what it sees into words before it answers questions.
    """
    ordered = sorted(scene.objects, key=lambda o: (o.cx, o.cy))
    answer = " , ".join(f"{o.size_name} {o.descriptor}" for o in ordered)
    return _direct_only(CAPTION_KIND, Q_CAPTION, answer)


def location_question(scene: Scene, rng: random.Random) -> Question | None:
    """'Where is the red circle?' answered with its region ('top left', 'center', ...): the one-hop
    version of the spatial questions. None when no object's descriptor is unique in the scene."""
    unique = unique_by(scene.objects, lambda o: o.descriptor)
    if not unique:
        return None
    obj = unique[rng.choice(sorted(unique))]
    return _direct_only(LOCATION_KIND, Q_LOCATION.format(what=obj.descriptor), region_of(scene, obj))


def balanced_count_plan(scene: Scene, rng: random.Random, plan: AnswerPlan) -> AnswerPlan:
    """Re-target a count plan to an answer ``scene`` supports, drawn with `COUNT_PICK_WEIGHTS`.

    The dataset keeps a plan and redraws scenes until one fits; a session has one scene for all its turns,
    so it picks the answer among what the scene supports instead. The window of four number choices is
    drawn as in `draw_plan`: 0-3 or 1-4 with the answer inside.
    """
    supported = sorted(n for n in set(counts_by(scene, plan.by_color).values()) if n in COUNT_PICK_WEIGHTS)
    count = rng.choices(supported, weights=[COUNT_PICK_WEIGHTS[n] for n in supported])[0]
    start = 0 if count == 0 else 1 if count == 4 else rng.randint(0, 1)
    return dataclasses.replace(plan, count=count, window_start=start)


def balanced_relation_plan(scene: Scene, rng: random.Random, plan: AnswerPlan) -> AnswerPlan:
    """Re-target a spatial plan to a relation ``scene`` supports between two uniquely described objects,
    drawn with `RELATION_PICK_WEIGHTS` (unchanged when it supports none: the turn is then dropped)."""
    supported = sorted({relation for _, _, relation in spatial_pairs(scene)})
    if not supported:
        return plan
    weights = [RELATION_PICK_WEIGHTS[r] for r in supported]
    return dataclasses.replace(plan, relation=rng.choices(supported, weights=weights)[0])


def session_question(scene: Scene, rng: random.Random, mix: SessionMix, first: bool) -> Question | None:
    """One turn's question: the caption (first turns only), a location turn, or a dataset question."""
    if first and rng.random() < mix.caption_fraction:
        return caption_question(scene)
    if rng.random() < mix.location_fraction:
        return location_question(scene, rng)
    # Draw a kind only when the mix narrows them, so the default stream matches the shipped teacher's.
    plan = draw_plan(rng, rng.choice(mix.kinds) if mix.kinds else None)
    if plan.kind == "count":
        plan = balanced_count_plan(scene, rng, plan)
    elif plan.kind == "spatial" and mix.balance_relations:
        plan = balanced_relation_plan(scene, rng, plan)
    return make_question(scene, rng, plan=plan)


def vqa_session(
    rng: random.Random,
    tokenizer,
    cfg: VLMConfig,
    spec: ImageSpec,
    mix: SessionMix,
    ask: Callable[[Scene, random.Random, SessionMix, bool], Question | None] = session_question,
    list_kinds: frozenset[str] = LIST_QUESTION_KINDS,
) -> TrainingSequence:
    """A fresh scene and up to `mix.turns` questions about it; the image sits in the first turn only.

    ``ask(scene, rng, mix, first)`` picks each turn's question (None: the scene cannot support it);
    questions of ``list_kinds`` refer to their choices and are always asked as MCQs."""
    im_end = tokenizer.convert_tokens_to_ids(IM_END)
    letters = letter_token_ids(tokenizer)
    while True:
        scene = sample_scene(rng)
        ids: list[int] = []
        labels: list[int] = []
        answered = 0
        for _ in range(4 * mix.turns):  # a scene cannot support every question kind: retry a few times
            if answered == mix.turns:
                break
            question = ask(scene, rng, mix, first=not ids)
            if question is None:
                continue
            image_string = ""
            if not ids:  # the image goes with the first question only
                views, grid = split_image(render_scene(scene), spec)
                image_string = image_placeholder_for(grid, spec, cfg.vlm_extra_tokens)
            # "Which of these objects ..." needs its list of choices: without it the answer is ambiguous.
            is_mcq = question.kind in list_kinds or (
                question.kind not in (CAPTION_KIND, LOCATION_KIND) and rng.random() < mix.mcq_fraction
            )
            if is_mcq:
                user = mcq_user_text(question.question, question.choices)
                answer = [letters[question.correct_choice_idx], im_end]
            else:
                user = da_user_text(question.question)
                answer = [*_ids(tokenizer, question.answer), im_end]
            prompt = _ids(tokenizer, build_prompt(tokenizer, image_string, user))
            flags = (
                choice_flag_labels(tokenizer, prompt, question.correct_choice_idx)
                if is_mcq
                else [-100] * len(prompt)
            )
            ids += prompt + answer
            labels += flags + answer
            answered += 1
        if ids:
            return TrainingSequence(ids, labels, views)
