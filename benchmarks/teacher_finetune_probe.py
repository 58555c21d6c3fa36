"""From a trained demo teacher, which form of a skill does its decoder learn? (issue 14)

`python -m benchmarks.teacher_finetune_probe --init out/teacher --target quadrant --steps 300 --threads 2`

Spatial questions stay at chance in every teacher so far, and counting near 0.3. Retraining a teacher
with a changed world costs an hour of CPU per try; this probe costs minutes. It starts from a trained
teacher, whose ViT already sees and whose decoder already answers MCQs with letters, and trains VQA
sessions (`vlm.demo.sessions.vqa_session`) in which each turn asks the target form with probability
``share`` (where the scene supports it; the share actually asked is in the results); the other turns are
the default `SessionMix` without its location turns ("Where is the X?" answered by thirds, which would
contradict the quadrant form), as rehearsal. Before training and every
``eval_every`` steps it scores the target form on held-out MCQs (answers balanced, so text alone scores
25%), and the first 500 demo validation MCQs (to see forgetting). Targets compared at equal steps from
the same teacher say which form this decoder can learn, before the world changes.

Targets:

- ``spatial``: the dataset's "Where is the A relative to the B?" (two objects; left/right/above/below);
- ``quadrant``: "Where is the A?" with the choices top left / top right / bottom left / bottom right (one
  object, asked only when its centre is at least `QUADRANT_MARGIN` px from both mid-lines; a large object
  may still cross one). The vertical mid-line is the border between the two 64-px crops, so left / right
  can also be read from which crop holds the object: an easier cue than the spatial kind has;
- ``count``: the dataset's "How many red objects are there?" (0-4, windows of four numbers);
- ``side``: "Which of these objects is near the left of the image?" (or right / top / bottom) with four
  present objects as choices: one in the outer third towards the side, three in the other half, so each
  choice is checked on its own, as the size kind asks (few scenes support it: about 8% of turns at
  ``--share 0.35``);
- ``total``: "How many objects are there?" with the choices three to six (no binding to a colour or shape;
  training answers follow the scenes, where six objects are rarer; held-out answers are balanced).

Results go to ``benchmarks/results/teacher_finetune_<target>.json`` (or ``--out``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import time
from functools import partial
from pathlib import Path

from vlm.cli import UsageError, make_parser, run

logger = logging.getLogger(__name__)

QUADRANTS = ("top left", "top right", "bottom left", "bottom right")
QUADRANT_MARGIN = 6  # px between an object's centre and the mid-lines, so its quadrant is clear
Q_TOTAL = "How many objects are there?"
TOTAL_ANSWERS = ("three", "four", "five", "six")
SIDES = ("left", "right", "top", "bottom")
Q_SIDE = "Which of these objects is near the {side} of the image?"
TARGETS = ("spatial", "quadrant", "count", "total", "side")


def quadrant_of(scene, obj) -> str | None:
    """The object's quadrant, or None when its centre lies within `QUADRANT_MARGIN` px of a mid-line."""
    dx, dy = obj.cx + 0.5 - scene.width / 2, obj.cy + 0.5 - scene.height / 2
    if min(abs(dx), abs(dy)) < QUADRANT_MARGIN:
        return None
    return f"{'top' if dy < 0 else 'bottom'} {'left' if dx < 0 else 'right'}"


def _four_choices(rng: random.Random, kind: str, question: str, answer: str, choices: tuple[str, ...]):
    from vlm.demo.scenes import Question

    shuffled = list(choices)
    rng.shuffle(shuffled)
    return Question(question, shuffled, shuffled.index(answer), [answer] * 10, False, [], kind)


def quadrant_question(scene, rng: random.Random, answer: str | None = None):
    """'Where is the red circle?' about a uniquely described object (in quadrant ``answer`` if given)."""
    from vlm.demo.scenes import Q_LOCATION, unique_by

    unique = unique_by(scene.objects, lambda o: o.descriptor)
    fits = [(d, q) for d, o in sorted(unique.items()) if (q := quadrant_of(scene, o)) is not None]
    fits = [(d, q) for d, q in fits if answer is None or q == answer]
    if not fits:
        return None
    descriptor, quadrant = rng.choice(fits)
    return _four_choices(rng, "quadrant", Q_LOCATION.format(what=descriptor), quadrant, QUADRANTS)


def total_question(scene, rng: random.Random, answer: str | None = None):
    """'How many objects are there?' with the choices three to six."""
    from vlm.demo.scenes import NUMBER_WORDS

    total = NUMBER_WORDS[len(scene.objects)]
    if answer is not None and total != answer:
        return None
    return _four_choices(rng, "total", Q_TOTAL, total, TOTAL_ANSWERS)


def _side_position(scene, obj, side: str) -> float:
    """How far towards ``side`` the object's centre lies, 0 (the opposite edge) to 1 (that edge)."""
    x, y = (obj.cx + 0.5) / scene.width, (obj.cy + 0.5) / scene.height
    return {"left": 1 - x, "right": x, "top": 1 - y, "bottom": y}[side]


def side_question(scene, rng: random.Random, answer: str | None = None):
    """'Which of these objects is near the left of the image?' with four present objects as choices.

    The spatial kind's skill asked the way the size kind asks its own (which the teacher answers at 0.975):
    each choice is checked on its own. The answer's centre lies in the outer third towards ``side`` (drawn
    when None); the three other choices lie in the opposite half, so exactly one choice fits.
    """
    from vlm.demo.scenes import unique_by

    unique = unique_by(scene.objects, lambda o: o.descriptor)
    sides = [answer] if answer is not None else rng.sample(SIDES, len(SIDES))
    for side in sides:
        near = sorted(d for d, o in unique.items() if _side_position(scene, o, side) > 2 / 3)
        far = sorted(d for d, o in unique.items() if _side_position(scene, o, side) < 1 / 2)
        if len(near) == 1 and len(far) >= 3:
            distractors = rng.sample(far, 3)
            choices = [near[0], *distractors]
            rng.shuffle(choices)
            from vlm.demo.scenes import Question

            question = Q_SIDE.format(side=side)
            return Question(question, choices, choices.index(near[0]), [near[0]] * 10, False, [], "side")
    return None


# The probe's own forms: question maker (scene, rng, answer=None) and the answers it balances over (for
# `side`, the side asked about: its choices are objects).
NEW_FORMS = {
    "quadrant": (quadrant_question, QUADRANTS),
    "total": (total_question, TOTAL_ANSWERS),
    "side": (side_question, SIDES),
}


def held_out(target: str, n: int, seed: int = 99):
    """``n`` MCQs of ``target`` on fresh scenes, as `vlm.data.VQAExample`s. Answers of the new forms are
    drawn first (uniform over the four choices) and scenes redrawn until one supports them; the dataset's
    kinds come balanced from `draw_plan`."""
    from vlm.data import VQAExample
    from vlm.demo.scenes import draw_plan, make_question, render_scene, sample_scene

    rng = random.Random(f"finetune-probe/{target}/{seed}")
    examples = []
    while len(examples) < n:
        if target in NEW_FORMS:
            make, answers = NEW_FORMS[target]
            ask = partial(make, answer=rng.choice(answers))
        else:
            plan = draw_plan(rng, target)
            ask = partial(make_question, plan=plan)
        for _ in range(500):
            scene = sample_scene(rng)
            question = ask(scene, rng)
            if question is not None:
                break
        else:
            raise RuntimeError(f"no scene supported a {target} question in 500 draws")
        examples.append(
            VQAExample(
                f"{target}_{len(examples)}",
                render_scene(scene),
                question.question,
                question.choices,
                question.correct_choice_idx,
                question.direct_answers,
            )
        )
    return examples


def region_caption(scene):
    """The caption turn with each object's region: 'small red circle top left , large blue square right'."""
    from vlm.demo.scenes import Q_CAPTION, Question, region_of
    from vlm.demo.sessions import CAPTION_KIND

    ordered = sorted(scene.objects, key=lambda o: (o.cx, o.cy))
    answer = " , ".join(f"{o.size_name} {o.descriptor} {region_of(scene, o)}" for o in ordered)
    return Question(Q_CAPTION, [answer], 0, [answer] * 10, False, [], CAPTION_KIND)


def _ask(
    scene,
    rng: random.Random,
    mix,
    first: bool,
    *,
    target: str,
    share: float,
    asked: list[int],
    caption_regions: bool = False,
):
    """A turn's question: the target with probability ``share`` if the scene supports it, else the mix's
    (captions with regions if ``caption_regions``). ``asked`` counts [target turns, all turns]."""
    from vlm.demo.sessions import CAPTION_KIND, session_question

    question = _target_turn(scene, rng, mix, target) if rng.random() < share else None
    if question is not None:
        asked[0] += 1
    else:
        question = session_question(scene, rng, mix, first)
        if caption_regions and question is not None and question.kind == CAPTION_KIND:
            question = region_caption(scene)
    asked[1] += question is not None
    return question


def _target_turn(scene, rng: random.Random, mix, target: str):
    from vlm.demo.sessions import session_question

    if target in NEW_FORMS:
        return NEW_FORMS[target][0](scene, rng)
    # The dataset's kinds as the teacher's sessions ask them (count answers balanced).
    only = dataclasses.replace(mix, kinds=(target,), caption_fraction=0.0, location_fraction=0.0)
    return session_question(scene, rng, only, first=False)


def _batch(rng: random.Random, step: int, *, tokenizer, cfg, spec, mix, size: int, ask) -> dict:
    from vlm.demo.sessions import LIST_QUESTION_KINDS, vqa_session
    from vlm.supervised import collate_sequences

    # The side form's choices are objects, like size's: without them its question has no single answer.
    list_kinds = LIST_QUESTION_KINDS | {"side"}
    sessions = [
        vqa_session(rng, tokenizer, cfg, spec, mix, ask=ask, list_kinds=list_kinds) for _ in range(size)
    ]
    return collate_sequences(sessions, tokenizer.pad_token_id)


def _parser():
    parser = make_parser("benchmarks.teacher_finetune_probe", __doc__.split("\n\n")[0])
    parser.add_argument("--init", type=Path, required=True, help="trained teacher checkpoint to start from")
    parser.add_argument("--target", choices=TARGETS, required=True)
    parser.add_argument("--share", type=float, default=0.5, help="chance that a turn asks the target form")
    parser.add_argument(
        "--caption-regions",
        action="store_true",
        help="caption turns also say where each object is (dense supervision of position)",
    )
    parser.add_argument(
        "--caption-fraction", type=float, default=0.5, help="sessions whose first turn is the caption"
    )
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=2e-4, help="peak lr (20 warm-up steps, cosine to 0.1x)")
    parser.add_argument("--batch-size", type=int, default=16, help="sessions (images) per step")
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--eval-questions", type=int, default=200, help="held-out target questions")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    return parser


def _main(args) -> int:
    import torch

    from vlm.checkpoint import load_pretrained
    from vlm.data import DataConfig, load_examples
    from vlm.demo.dataset import DemoDataConfig, ensure_demo_dataset, question_kinds
    from vlm.demo.recipe import SessionMix, TeacherTrainConfig
    from vlm.demo.step_batches import StepBatches
    from vlm.demo.teacher import build_demo_tokenizer, train_decoder_stage
    from vlm.demo.train_teacher import accuracy_by_kind
    from vlm.demo.training_state import TrainingState
    from vlm.evaluate import EvalConfig, evaluate_mcq
    from vlm.paths import cache_dir

    if not 0 < args.share <= 1 or args.steps < 1 or args.eval_every < 1:
        raise UsageError("--share must be in (0, 1], --steps and --eval-every >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_pretrained(args.init)
    tokenizer = build_demo_tokenizer()
    data_config = DemoDataConfig()
    val, _ = load_examples(
        DataConfig(source=str(ensure_demo_dataset(data_config, cache_dir())), split="validation")
    )
    val = val[:500]
    kinds = question_kinds(data_config, "validation")
    correct = {e.question_id: e.correct_choice_idx for e in val}
    target_set = held_out(args.target, args.eval_questions)
    eval_config = EvalConfig(batch_size=64, show_progress=False)
    curve = []

    def score(done: int) -> None:
        if done % args.eval_every and done != args.steps:
            return
        model.eval()
        target = evaluate_mcq(model, tokenizer, target_set, eval_config)
        validation = evaluate_mcq(model, tokenizer, val, eval_config)
        model.train()
        point = {
            "step": done,
            "target": round(target.accuracy, 4),
            "validation": round(validation.accuracy, 4),
            "validation_by_kind": accuracy_by_kind(validation, kinds, correct),
        }
        curve.append(point)
        logger.info("%s", point)

    config = dataclasses.replace(
        TeacherTrainConfig(), lr=args.lr, warmup_steps=20, batch_size=args.batch_size, seed=args.seed
    )
    mix = SessionMix(location_fraction=0.0, caption_fraction=args.caption_fraction)
    asked = [0, 0]
    ask = partial(
        _ask, target=args.target, share=args.share, asked=asked, caption_regions=args.caption_regions
    )
    make = partial(
        _batch,
        tokenizer=tokenizer,
        cfg=model.cfg,
        spec=model.image_spec,
        mix=mix,
        size=args.batch_size,
        ask=ask,
    )
    start = time.time()
    score(0)
    batches = StepBatches(make, random.Random(f"finetune-probe/train/{args.seed}"), None)
    train_decoder_stage(
        model, "finetune", args.steps, batches, config, TrainingState(None, {}), after_step=score
    )
    result = {
        "init": str(args.init),
        "target": args.target,
        "share": args.share,
        "caption_regions": args.caption_regions,
        "caption_fraction": args.caption_fraction,
        "steps": args.steps,
        "lr": args.lr,
        "batch_size": args.batch_size,
        "eval_questions": args.eval_questions,
        "eval_every": args.eval_every,
        "seed": args.seed,
        "target_turn_share": round(asked[0] / max(asked[1], 1), 4),
        "seconds": round(time.time() - start, 1),
        "threads": torch.get_num_threads(),
        "curve": curve,
    }
    out = args.out or Path("benchmarks/results") / f"teacher_finetune_{args.target}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(_main, _parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
