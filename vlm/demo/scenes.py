"""Synthetic scenes and VQA questions for the offline demo world.

A scene is a 128x64 RGB image (non-square on purpose: nanoVLM's image pipeline turns it into two 64x64
crops plus a squashed 64x64 global view) holding 3 to 6 non-overlapping coloured shapes, each "small"
(5-7 px) or "large" (14-20 px). Questions are computed from the exact scene description, never from
pixels, so every answer is correct by construction.

Five question kinds, each a 4-way multiple choice whose choices all come from one category, built so
that a model reading only the text scores about 25%:

- ``attribute``: colour or shape of a unique small object (needs resolution: crops, view size, tokens).
- ``count``: how many objects of a colour or shape; the four number choices are a window ``s..s+3``
  with ``s`` uniform in {0, 1} and the answer uniform inside it, so the window says nothing about the
  answer.
- ``spatial``: left / right / above / below, asked only when one axis of the centre offset clearly
  dominates.
- ``presence``: which of four colour-shape descriptors is in the image (exactly one is).
- ``size``: which of four present objects is the largest (one large, three small). The form "Which is
  larger, the A or the B?" would name the answer's two candidates in the question (text-only 50%);
  listing four present objects keeps the text-only floor at 25%.

Answers are balanced by rejection: `draw_plan` first draws what to ask (a count, a relation, ...),
``make_question`` returns None when a scene cannot support that plan, and the dataset generator keeps
the plan and draws new scenes until one does. Scenes are cheap (no pixels until a question is accepted).
"""

from __future__ import annotations

import random
import re
import string
from dataclasses import dataclass

from PIL import Image, ImageDraw

WIDTH = 128
HEIGHT = 64

# Shapes that stay distinguishable at 5-7 px: a diamond would look like a circle there.
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
SHAPE_PLURALS: dict[str, str] = {
    "circle": "circles",
    "square": "squares",
    "triangle": "triangles",
    "cross": "crosses",
}
# Saturated colours far apart in RGB and from the light backgrounds (no white: backgrounds are light).
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 225),
    "yellow": (240, 205, 0),
    "purple": (135, 40, 170),
    "orange": (250, 130, 0),
    "black": (20, 20, 20),
}
SIZE_RANGES: dict[str, tuple[int, int]] = {"small": (5, 7), "large": (14, 20)}
NUMBER_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six")
RELATIONS: tuple[str, ...] = ("left", "right", "above", "below")

QUESTION_KINDS: tuple[str, ...] = ("attribute", "count", "spatial", "presence", "size")

MIN_OBJECTS = 3
MAX_OBJECTS = 6
MARGIN = 2  # free px kept between any two objects, so shapes never touch
P_SMALL = 0.55
P_FORCE_SMALL = 0.9  # "at least one small object per scene most of the time"
P_DIFFICULT = 0.05
P_HARD_DISTRACTOR = 0.5  # chance to take each distractor from the scene (forces colour-shape binding)
# A relation is asked only when the dominant axis offset is at least this many px and this many times
# the other axis: "left of" for a pair that is mostly one above the other would be ambiguous.
SPATIAL_MIN_OFFSET = 8
SPATIAL_DOMINANCE = 2.0

# Question and rationale templates: demo_vocabulary() reads their literal words, so every word a
# generated example can hold is covered as long as new text goes through these constants.
Q_COLOR = "What color is the small {shape}?"
Q_SHAPE = "What shape is the small {color} object?"
Q_COUNT_COLOR = "How many {color} objects are there?"
Q_COUNT_SHAPE = "How many {shapes} are there?"
Q_SPATIAL = "Where is the {a} relative to the {b}?"
Q_PRESENCE = "Which of these objects is in the image?"
Q_SIZE = "Which of these objects is the largest?"
# Training-only questions (vlm.demo.sessions): never in the dataset, but their words are in the vocabulary.
Q_CAPTION = "Which objects are in the image?"
Q_LOCATION = "Where is the {what}?"

R_ATTRIBUTE = "The small {what} is {value}."
R_UNIQUE = "There is only one small {what} in the image."
R_LOCATION = "The {what} is near the {region} of the image."
R_COUNT_ONE = "There is one {what} in the image."
R_COUNT_MANY = "There are {number} {what} in the image."
R_TOTAL = "The image shows {number} objects in all."
R_SPATIAL = "The {a} is {relation} the {b}."
R_PRESENT = "The image contains {article} {what}."
R_ABSENT = "There is no {a}, {b} or {c} in the image."
R_LARGE = "The {what} is large."
R_SMALL = "The {a}, {b} and {c} are small."
R_LARGEST = "So the {what} is the largest of these objects."
R_COUNTING = "Counting the {what} gives {number}."
_TEMPLATES: tuple[str, ...] = (
    *(Q_COLOR, Q_SHAPE, Q_COUNT_COLOR, Q_COUNT_SHAPE, Q_SPATIAL, Q_PRESENCE, Q_SIZE, Q_CAPTION, Q_LOCATION),
    *(R_ATTRIBUTE, R_UNIQUE, R_LOCATION, R_COUNT_ONE, R_COUNT_MANY, R_TOTAL, R_SPATIAL, R_PRESENT),
    *(R_ABSENT, R_LARGE, R_SMALL, R_LARGEST, R_COUNTING),
)

RELATION_PHRASES: dict[str, str] = {
    "left": "to the left of",
    "right": "to the right of",
    "above": "above",
    "below": "below",
}
REGION_WORDS: tuple[str, ...] = ("top", "bottom", "left", "right", "center")

# Direct-answer variants: a couple of the 10 human answers may use one of these.
SYNONYMS: dict[str, tuple[str, ...]] = {
    "zero": ("0", "none"),
    "one": ("1",),
    "two": ("2",),
    "three": ("3",),
    "four": ("4",),
    "five": ("5",),
    "six": ("6",),
    "purple": ("violet",),
    "left": ("to the left",),
    "right": ("to the right",),
    "above": ("on top",),
    "below": ("under",),
}

# The fixed prompt strings of vlm.processing and the chat roles: part of the demo tokenizer's vocabulary.
PROMPT_STRINGS: tuple[str, ...] = (
    "Answer with the option's letter from the given choices directly.",
    "Answer the question using a single word or phrase.",
    "A B C D",
    "user assistant",
)

_WORD_RE = re.compile(r"\w+|[^\w\s]")


@dataclass(frozen=True)
class SceneObject:
    """One shape; (x, y) is the top-left pixel of its w x h bounding box."""

    shape: str
    color: str
    size_name: str
    x: int
    y: int
    w: int
    h: int

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"unknown shape {self.shape!r}; expected one of {SHAPES}")
        if self.color not in COLORS:
            raise ValueError(f"unknown color {self.color!r}; expected one of {tuple(COLORS)}")
        if self.size_name not in SIZE_RANGES:
            raise ValueError(f"unknown size {self.size_name!r}; expected one of {tuple(SIZE_RANGES)}")
        if self.w < 1 or self.h < 1:
            raise ValueError(f"object box must be at least 1x1, got {self.w}x{self.h}")

    @property
    def cx(self) -> float:
        return self.x + (self.w - 1) / 2

    @property
    def cy(self) -> float:
        return self.y + (self.h - 1) / 2

    @property
    def descriptor(self) -> str:
        """'red circle': the colour-shape name questions use to refer to the object."""
        return f"{self.color} {self.shape}"


@dataclass
class Scene:
    """A full scene description: the image is rendered from it and every answer is computed from it."""

    objects: list[SceneObject]
    background: tuple[int, int, int] = (220, 220, 220)
    width: int = WIDTH
    height: int = HEIGHT

    def __post_init__(self) -> None:
        for obj in self.objects:
            if obj.x < 0 or obj.y < 0 or obj.x + obj.w > self.width or obj.y + obj.h > self.height:
                raise ValueError(f"{obj} does not fit in a {self.width}x{self.height} image")


@dataclass(frozen=True)
class Question:
    """One VQA example's text in A-OKVQA's fields, plus the kind that produced it."""

    question: str
    choices: list[str]
    correct_choice_idx: int
    direct_answers: list[str]
    difficult_direct_answer: bool
    rationales: list[str]
    kind: str

    @property
    def answer(self) -> str:
        return self.choices[self.correct_choice_idx]


def boxes_overlap(a: SceneObject, b: SceneObject, gap: int = 0) -> bool:
    """Whether the bounding boxes intersect or are less than ``gap`` free px apart."""
    return not (
        a.x + a.w + gap <= b.x or b.x + b.w + gap <= a.x or a.y + a.h + gap <= b.y or b.y + b.h + gap <= a.y
    )


def _sample_background(rng: random.Random) -> tuple[int, int, int]:
    if rng.random() < 0.5:
        grey = rng.randint(200, 235)
        return (grey, grey, grey)
    # Light, low-saturation colours: every channel >= 185 keeps all object colours far away.
    return (rng.randint(185, 240), rng.randint(185, 240), rng.randint(185, 240))


def _place(
    rng: random.Random, placed: list[SceneObject], shape: str, color: str, size_name: str
) -> SceneObject | None:
    lo, hi = SIZE_RANGES[size_name]
    side = rng.randint(lo, hi)
    for _ in range(50):
        # Keep 1 px free at the image border too.
        x = rng.randint(1, WIDTH - 1 - side)
        y = rng.randint(1, HEIGHT - 1 - side)
        obj = SceneObject(shape, color, size_name, x, y, side, side)
        if not any(boxes_overlap(obj, other, MARGIN) for other in placed):
            return obj
    return None


def sample_scene(rng: random.Random) -> Scene:
    """Draw a random scene: 3-6 non-overlapping objects on a light background.

    Each scene draws colours from a palette of 2-5 of the 7 colours and shapes from 2-4 of the 4 shapes,
    so repeated colours and shapes (needed for count answers up to four) are common while every colour
    and shape stays equally likely overall.
    """
    background = _sample_background(rng)
    while True:
        n = rng.randint(MIN_OBJECTS, MAX_OBJECTS)
        palette = rng.sample(list(COLORS), rng.randint(2, 5))
        shapes = rng.sample(SHAPES, rng.randint(2, len(SHAPES)))
        sizes = ["small" if rng.random() < P_SMALL else "large" for _ in range(n)]
        if "small" not in sizes and rng.random() < P_FORCE_SMALL:
            sizes[rng.randrange(n)] = "small"
        # Large objects first: they are the hard ones to fit.
        sizes.sort(key=lambda s: s != "large")
        placed: list[SceneObject] = []
        for size_name in sizes:
            obj = _place(rng, placed, rng.choice(shapes), rng.choice(palette), size_name)
            if obj is not None:
                placed.append(obj)
        if len(placed) >= MIN_OBJECTS:
            # Shuffle so list order carries no size information.
            rng.shuffle(placed)
            return Scene(objects=placed, background=background)


def _draw_object(draw: ImageDraw.ImageDraw, obj: SceneObject) -> None:
    fill = COLORS[obj.color]
    x0, y0, x1, y1 = obj.x, obj.y, obj.x + obj.w - 1, obj.y + obj.h - 1
    if obj.shape == "square":
        draw.rectangle([x0, y0, x1, y1], fill=fill)
    elif obj.shape == "circle":
        draw.ellipse([x0, y0, x1, y1], fill=fill)
    elif obj.shape == "triangle":
        draw.polygon([((x0 + x1) / 2, y0), (x0, y1), (x1, y1)], fill=fill)
    elif obj.shape == "cross":
        # Thin arms, about a fifth of the side: a thick plus at 6-7 px would look like a circle with its
        # corners cut. Large crosses get the side's parity so they are symmetric; small ones stay 1 px.
        t = max(1, obj.w // 5)
        if obj.w >= 10 and (obj.w - t) % 2:
            t += 1
        off = (obj.w - t) // 2
        draw.rectangle([x0, y0 + off, x1, y0 + off + t - 1], fill=fill)
        draw.rectangle([x0 + off, y0, x0 + off + t - 1, y1], fill=fill)
    else:  # pragma: no cover - SceneObject validates shapes
        raise ValueError(obj.shape)


def render_scene(scene: Scene) -> Image.Image:
    """Draw the scene as an RGB image of ``scene.width`` x ``scene.height`` px (no anti-aliasing)."""
    image = Image.new("RGB", (scene.width, scene.height), scene.background)
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        _draw_object(draw, obj)
    return image


# --- questions -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AnswerPlan:
    """What a question will ask, drawn before any scene so answers stay balanced.

    Drawing the answer per scene and rejecting unsupported ones would skew answers towards what scenes
    support easily (left/right over above/below: the image is twice as wide as tall; count one over
    count four). Keeping the plan fixed while scenes are redrawn makes the answer exactly as balanced as
    the plan. Fields a kind does not use are None.
    """

    kind: str
    by_color: bool | None = None  # attribute: ask the colour (else the shape); count: count a colour
    window_start: int | None = None  # count: the choices are the numbers window_start..window_start+3
    count: int | None = None  # count: the answer
    relation: str | None = None  # spatial: the answer


def draw_plan(rng: random.Random, kind: str | None = None) -> AnswerPlan:
    """A random plan for ``kind`` (uniformly random when None); every plan's answer is uniform over its
    choices, so neither the wording nor the choice set tells a text-only model the answer.
    """
    if kind is None:
        kind = rng.choice(QUESTION_KINDS)
    if kind not in QUESTION_KINDS:
        raise ValueError(f"unknown question kind {kind!r}; expected one of {QUESTION_KINDS}")
    if kind == "attribute":
        return AnswerPlan(kind, by_color=rng.random() < 0.5)
    if kind == "count":
        # Windows 0-3 or 1-4 with the answer uniform inside: P(answer | window) is uniform, and the
        # most frequent answer (one, two or three) has 25%.
        start = rng.randint(0, 1)
        return AnswerPlan(
            kind, by_color=rng.random() < 0.5, window_start=start, count=rng.randint(start, start + 3)
        )
    if kind == "spatial":
        return AnswerPlan(kind, relation=rng.choice(RELATIONS))
    return AnswerPlan(kind)


def region_of(scene: Scene, obj: SceneObject) -> str:
    """'top left', 'right', 'center', ... from the object's centre, by thirds of the image."""
    col = int(3 * (obj.cx + 0.5) / scene.width)
    row = int(3 * (obj.cy + 0.5) / scene.height)
    horizontal = ("left", "", "right")[min(col, 2)]
    vertical = ("top", "", "bottom")[min(row, 2)]
    return " ".join(w for w in (vertical, horizontal) if w) or "center"


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _direct_answers(rng: random.Random, answer: str) -> list[str]:
    """Ten annotator answers: mostly the choice string, at most two synonyms (>= 8 exact matches)."""
    variants = SYNONYMS.get(answer, ())
    n_variants = rng.choice((0, 0, 1, 2)) if variants else 0
    answers = [answer] * (10 - n_variants) + [rng.choice(variants) for _ in range(n_variants)]
    rng.shuffle(answers)
    return answers


def _pick_distractors(
    rng: random.Random, correct: str, pool: list[str], preferred: list[str], k: int = 3
) -> list[str]:
    """k distinct distractors from ``pool``; each of ``preferred`` (things in the scene) is taken with
    probability P_HARD_DISTRACTOR first, so a model must bind attributes instead of spotting absent ones.
    """
    chosen: list[str] = []
    preferred = sorted(set(preferred) - {correct})
    rng.shuffle(preferred)
    for item in preferred:
        if len(chosen) < k and rng.random() < P_HARD_DISTRACTOR:
            chosen.append(item)
    rest = [item for item in pool if item != correct and item not in chosen]
    chosen += rng.sample(rest, k - len(chosen))
    return chosen


def _finish(
    rng: random.Random, kind: str, question: str, answer: str, distractors: list[str], rationales: list[str]
) -> Question:
    choices = [answer, *distractors]
    if len(set(choices)) != 4:
        raise AssertionError(f"choices must be 4 distinct strings, got {choices}")
    rng.shuffle(choices)
    return Question(
        question=question,
        choices=choices,
        correct_choice_idx=choices.index(answer),
        direct_answers=_direct_answers(rng, answer),
        difficult_direct_answer=rng.random() < P_DIFFICULT,
        rationales=rationales,
        kind=kind,
    )


def unique_by(objects: list[SceneObject], key) -> dict:
    """key -> object, for the keys that exactly one object has."""
    groups: dict = {}
    for obj in objects:
        groups.setdefault(key(obj), []).append(obj)
    return {k: objs[0] for k, objs in groups.items() if len(objs) == 1}


def _attribute_question(scene: Scene, rng: random.Random, plan: AnswerPlan) -> Question | None:
    small = [o for o in scene.objects if o.size_name == "small"]
    ask_color = plan.by_color
    unique = unique_by(small, (lambda o: o.shape) if ask_color else (lambda o: o.color))
    if not unique:
        return None
    key = rng.choice(sorted(unique))
    obj = unique[key]
    others = [o for o in scene.objects if o is not obj]
    if ask_color:
        distractors = _pick_distractors(rng, obj.color, list(COLORS), [o.color for o in others])
        return _finish(
            rng,
            "attribute",
            Q_COLOR.format(shape=obj.shape),
            obj.color,
            distractors,
            [
                R_ATTRIBUTE.format(what=obj.shape, value=obj.color),
                R_UNIQUE.format(what=obj.shape),
                R_LOCATION.format(what=f"small {obj.shape}", region=region_of(scene, obj)),
            ],
        )
    distractors = [s for s in SHAPES if s != obj.shape]
    return _finish(
        rng,
        "attribute",
        Q_SHAPE.format(color=obj.color),
        obj.shape,
        distractors,
        [
            R_ATTRIBUTE.format(what=f"{obj.color} object", value=f"{_article(obj.shape)} {obj.shape}"),
            R_UNIQUE.format(what=f"{obj.color} object"),
            R_LOCATION.format(what=f"small {obj.color} {obj.shape}", region=region_of(scene, obj)),
        ],
    )


def counts_by(scene: Scene, by_color: bool) -> dict[str, int]:
    """How many objects of each colour (``by_color``) or of each shape, zero counts included."""
    if by_color:
        return {c: sum(o.color == c for o in scene.objects) for c in COLORS}
    return {s: sum(o.shape == s for o in scene.objects) for s in SHAPES}


def _count_question(scene: Scene, rng: random.Random, plan: AnswerPlan) -> Question | None:
    by_color, start, target = plan.by_color, plan.window_start, plan.count
    counts = counts_by(scene, by_color)
    candidates = sorted(k for k, n in counts.items() if n == target)
    if not candidates:
        return None
    key = rng.choice(candidates)
    if by_color:
        question = Q_COUNT_COLOR.format(color=key)
        what_one, what_many = f"{key} object", f"{key} objects"
    else:
        question = Q_COUNT_SHAPE.format(shapes=SHAPE_PLURALS[key])
        what_one, what_many = key, SHAPE_PLURALS[key]
    answer = NUMBER_WORDS[target]
    distractors = [NUMBER_WORDS[n] for n in range(start, start + 4) if n != target]
    if target == 1:
        first = R_COUNT_ONE.format(what=what_one)
    else:
        first = R_COUNT_MANY.format(number="no" if target == 0 else answer, what=what_many)
    rationales = [
        first,
        R_TOTAL.format(number=NUMBER_WORDS[len(scene.objects)]),
        R_COUNTING.format(what=what_many, number=answer),
    ]
    return _finish(rng, "count", question, answer, distractors, rationales)


def spatial_relation(a: SceneObject, b: SceneObject) -> str | None:
    """Where ``a`` is relative to ``b`` ('left', 'right', 'above', 'below'), or None when ambiguous."""
    dx, dy = a.cx - b.cx, a.cy - b.cy
    if abs(dx) >= SPATIAL_MIN_OFFSET and abs(dx) >= SPATIAL_DOMINANCE * abs(dy):
        return "left" if dx < 0 else "right"
    if abs(dy) >= SPATIAL_MIN_OFFSET and abs(dy) >= SPATIAL_DOMINANCE * abs(dx):
        return "above" if dy < 0 else "below"  # image y grows downwards
    return None


def spatial_pairs(scene: Scene) -> list[tuple[SceneObject, SceneObject, str]]:
    """Every ordered pair of uniquely described objects that stand in a clear relation, with the relation
    (the pairs a spatial question may ask about)."""
    unique = list(unique_by(scene.objects, lambda o: o.descriptor).values())
    pairs = [(a, b, spatial_relation(a, b)) for a in unique for b in unique if a is not b]
    return [(a, b, relation) for a, b, relation in pairs if relation is not None]


def _spatial_question(scene: Scene, rng: random.Random, plan: AnswerPlan) -> Question | None:
    relation = plan.relation
    pairs = [(a, b) for a, b, r in spatial_pairs(scene) if r == relation]
    if not pairs:
        return None
    a, b = rng.choice(pairs)
    distractors = [r for r in RELATIONS if r != relation]
    rationales = [
        R_SPATIAL.format(a=a.descriptor, relation=RELATION_PHRASES[relation], b=b.descriptor),
        R_LOCATION.format(what=a.descriptor, region=region_of(scene, a)),
        R_LOCATION.format(what=b.descriptor, region=region_of(scene, b)),
    ]
    return _finish(
        rng, "spatial", Q_SPATIAL.format(a=a.descriptor, b=b.descriptor), relation, distractors, rationales
    )


ALL_DESCRIPTORS: tuple[str, ...] = tuple(f"{c} {s}" for c in COLORS for s in SHAPES)


def _presence_question(scene: Scene, rng: random.Random, plan: AnswerPlan) -> Question | None:
    present = {o.descriptor: o for o in scene.objects}
    absent = [d for d in ALL_DESCRIPTORS if d not in present]
    if len(absent) < 3:
        return None
    answer = rng.choice(sorted(present))
    colors = {o.color for o in scene.objects}
    shapes = {o.shape for o in scene.objects}
    # Hard negatives: absent combinations of a present colour and a present shape.
    confusable = [d for d in absent if d.split()[0] in colors and d.split()[1] in shapes]
    distractors = _pick_distractors(rng, answer, absent, confusable)
    rationales = [
        R_PRESENT.format(article=_article(answer), what=answer),
        R_ABSENT.format(a=distractors[0], b=distractors[1], c=distractors[2]),
        R_LOCATION.format(what=answer, region=region_of(scene, present[answer])),
    ]
    return _finish(rng, "presence", Q_PRESENCE, answer, distractors, rationales)


def _size_question(scene: Scene, rng: random.Random, plan: AnswerPlan) -> Question | None:
    unique = unique_by(scene.objects, lambda o: o.descriptor)
    large = sorted(d for d, o in unique.items() if o.size_name == "large")
    small = sorted(d for d, o in unique.items() if o.size_name == "small")
    if not large or len(small) < 3:
        return None
    answer = rng.choice(large)
    distractors = rng.sample(small, 3)
    rationales = [
        R_LARGE.format(what=answer),
        R_SMALL.format(a=distractors[0], b=distractors[1], c=distractors[2]),
        R_LARGEST.format(what=answer),
    ]
    return _finish(rng, "size", Q_SIZE, answer, distractors, rationales)


_MAKERS = {
    "attribute": _attribute_question,
    "count": _count_question,
    "spatial": _spatial_question,
    "presence": _presence_question,
    "size": _size_question,
}


def make_question(
    scene: Scene, rng: random.Random, kind: str | None = None, plan: AnswerPlan | None = None
) -> Question | None:
    """A question about ``scene``, or None when the scene cannot support it.

    With ``plan`` (from `draw_plan`) the question follows it, and answers are balanced when the caller
    keeps the plan and redraws scenes until one fits (as `vlm.demo.dataset` does). Without it a plan for
    ``kind`` (random kind when None) is drawn here: handy for one-off questions, but answers accepted
    this way lean towards what scenes support easily.
    """
    if plan is None:
        plan = draw_plan(rng, kind)
    elif kind is not None and kind != plan.kind:
        raise ValueError(f"kind {kind!r} disagrees with plan.kind {plan.kind!r}")
    return _MAKERS[plan.kind](scene, rng, plan)


# --- vocabulary ------------------------------------------------------------------------------------


def split_words(text: str) -> list[str]:
    """Whitespace and punctuation pre-tokenization: "option's letter?" -> option ' s letter ?"""
    return _WORD_RE.findall(text)


def _template_literals(template: str) -> str:
    return " ".join(literal for literal, *_ in string.Formatter().parse(template))


def demo_vocabulary() -> list[str]:
    """Every word and punctuation mark that a demo question, choice, answer or rationale can hold, plus
    the evaluator's prompt words, letters A-D and the chat roles; sorted, without duplicates.
    """
    texts = [
        *(_template_literals(template) for template in _TEMPLATES),
        " ".join(SHAPES),
        " ".join(SHAPE_PLURALS.values()),
        " ".join(COLORS),
        " ".join(NUMBER_WORDS),
        " ".join(RELATIONS),
        " ".join(RELATION_PHRASES.values()),
        " ".join(REGION_WORDS),
        " ".join(" ".join(v) for v in SYNONYMS.values()),
        "a an no small large object objects",
        *PROMPT_STRINGS,
    ]
    return sorted({word for text in texts for word in split_words(text)})
