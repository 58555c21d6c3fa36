"""Training sequences for the demo teacher, built from freshly generated scenes.

Two kinds, each token ids plus labels that are -100 except on answer tokens and, for MCQs, on the
choice flags of `choice_flag_labels`:

- `letter_mapping_prompt`: a text-only multiple-choice question "Which option is red?" in nanoVLM's MCQ
  format. It teaches the one skill a from-scratch decoder found hardest: emitting the *letter* of the
  matching choice (see benchmarks/letter_mapping_probe.py).
- `vqa_session`: one image followed by several questions about it as consecutive chat turns, each answered
  either with the letter (MCQ) or with the word (direct answer). One image then pays for several
  supervised answers, which matters when every view costs 64 decoder tokens.
"""

from __future__ import annotations

import random

from vlm.config import ImageSpec, VLMConfig
from vlm.demo.scenes import (
    ALL_DESCRIPTORS,
    COLORS,
    NUMBER_WORDS,
    RELATIONS,
    SHAPES,
    make_question,
    render_scene,
    sample_scene,
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


def vqa_session(
    rng: random.Random,
    tokenizer,
    cfg: VLMConfig,
    spec: ImageSpec,
    turns: int,
    mcq_fraction: float,
) -> TrainingSequence:
    """A fresh scene and up to `turns` questions about it; the image sits in the first turn only."""
    im_end = tokenizer.convert_tokens_to_ids(IM_END)
    letters = letter_token_ids(tokenizer)
    while True:
        scene = sample_scene(rng)
        ids: list[int] = []
        labels: list[int] = []
        answered = 0
        for _ in range(4 * turns):  # a scene cannot support every question kind: retry a few times
            if answered == turns:
                break
            question = make_question(scene, rng)
            if question is None:
                continue
            image_string = ""
            if not ids:  # the image goes with the first question only
                views, grid = split_image(render_scene(scene), spec)
                image_string = image_placeholder_for(grid, spec, cfg.vlm_extra_tokens)
            # "Which of these objects ..." needs its list of choices: without it the answer is ambiguous.
            is_mcq = question.kind in LIST_QUESTION_KINDS or rng.random() < mcq_fraction
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
