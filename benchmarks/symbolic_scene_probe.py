"""Find the demo teacher's wall: can its decoder shape learn the demo questions from a *perfect* scene?

`python -m benchmarks.symbolic_scene_probe [--grid first] [--steps 800] [--eval-every 100] [--threads 1]`

The demo teacher plateaus near 0.45 MCQ accuracy. This probe takes perception out of the question: each
training example is a demo scene from the real generators (`vlm.demo.scenes`, answers balanced as in
`vlm.demo.dataset.iter_examples`) written either

- as **text** before the question, objects sorted left to right ("small red circle x3 y1 , large blue
  square x12 y4 ."; ``scene_format="region"`` writes the region words "top left" instead of the 8-px cell
  coordinates), in the place the image string takes in nanoVLM's prompt, or
- as **oracle vision**: nanoVLM's image string (global view + crops, 64 image tokens per view) whose image
  tokens carry, instead of ViT features, a learned embedding of each patch's true label (the conjunction
  class and centre flag that `vlm.demo.vision_pretrain.patch_labels` computes) plus a learned embedding of
  the token's place (view, patch), or
- not at all (``scene_input="none"``: the text-only floor).

Then comes the question in nanoVLM's chat and MCQ format. A from-scratch `transformers.LlamaForCausalLM`
(the demo teacher's decoder shape by default: 4 blocks, 192 wide, 4 heads, 2 KV heads) learns to answer
with the letter (``word_fraction=0``), with the answer word (``1``; attribute, count and spatial in the
direct-answer form, presence and size with their options listed), or a mix; ``word_steps`` first trains
on words only (a curriculum). ``choice_flags`` adds `vlm.demo.sessions.choice_flag_labels`;
``drill_fraction`` mixes the teacher's text-only letter drill into every batch; ``first_kinds`` /
``first_steps`` ask only some kinds at first (a kind curriculum); ``turns`` asks several questions per scene
as consecutive chat turns (the teacher's session layout, so oracle image tokens are paid once per scene).

What it found (issue 14, 600 steps of 64 questions, 1 thread): the decoder learns direct answers within
200 steps but the MCQ letter stays at chance on the five-kind mix, with or without the letter drill; one
kind alone (presence) learns its letters after ~300 steps, and presence first, then all kinds, lifted MCQ
accuracy from 0.23 to 0.29 (attribute 0.28 -> 0.42). Oracle patch labels did no better than text.

Every ``eval_every`` steps the probe scores held-out questions (the first ``eval_questions`` of the demo
validation split, the same questions the shipped teacher is scored on) as MCQs the way `vlm.evaluate` does
(argmax over the four letter logits), per question kind, with the answer loss (cross-entropy of the right
letter over the whole vocabulary; chance is about ln 4 once the model puts its mass on letters); and, for
variants trained on words, the word accuracy (the choice whose tokens have the highest log-likelihood).
Results go to ``--out`` (JSON, rewritten after every variant).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

from vlm.cli import UsageError, make_parser, run

logger = logging.getLogger(__name__)

KINDS = ("attribute", "count", "spatial", "presence", "size")
# Kinds whose question refers to the list of choices: their word form keeps the options listed.
LIST_KINDS = ("presence", "size")
CELL = 8  # px per scene-text coordinate cell: the size of one ViT patch in the 128x64 scene


@dataclass(frozen=True)
class ProbeSetting:
    """One variant: what the decoder sees, what it must answer, its shape and its optimiser."""

    name: str
    scene_input: str = "text"  # "text", "oracle" (true patch labels as image tokens) or "none"
    scene_format: str = "grid"  # text scenes: "grid" (x/y cell of each object) or "region" ("top left")
    kinds: tuple[str, ...] = KINDS
    word_fraction: float = 0.0  # share of examples answered with the word instead of the letter
    word_steps: int = 0  # curriculum: the first word_steps steps answer with words only
    choice_flags: bool = True  # each option's last token predicts its letter if correct, else "no"
    first_kinds: tuple[str, ...] = ()  # curriculum: the first first_steps steps ask only these kinds
    first_steps: int = 0
    turns: int = 1  # questions per scene, as consecutive chat turns (the scene only in the first)
    drill_fraction: float = 0.0  # share of rows that are the text-only letter drill ("Which option is red?")
    layers: int = 4
    width: int = 192
    inter: int = 512
    heads: int = 4
    kv_heads: int = 2
    lr: float = 3e-4
    warmup: int = 100
    min_lr_ratio: float = 0.1  # cosine decay to lr * min_lr_ratio over the run's steps
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    batch_size: int = 64
    seed: int = 0
    kind_weights: tuple[float, ...] = ()  # sampling weight of each of ``kinds`` (default: equal)
    eval_kinds: tuple[str, ...] = ()  # kinds scored on the validation questions (default: ``kinds``)
    init_from: str = ""  # a state file written by ``--save`` to start from instead of random weights

    def __post_init__(self) -> None:
        if self.scene_input not in ("text", "oracle", "none"):
            raise ValueError(f"scene_input must be text, oracle or none, got {self.scene_input!r}")
        if self.scene_format not in ("grid", "region"):
            raise ValueError(f"scene_format must be grid or region, got {self.scene_format!r}")
        if not self.kinds or set(self.kinds) - set(KINDS):
            raise ValueError(f"kinds must be a non-empty subset of {KINDS}, got {self.kinds}")
        if set(self.first_kinds) - set(self.kinds) or (self.first_steps > 0) != bool(self.first_kinds):
            raise ValueError("first_kinds must be a non-empty subset of kinds exactly when first_steps > 0")
        for name in ("word_fraction", "drill_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.turns < 1:
            raise ValueError(f"turns must be >= 1, got {self.turns}")
        if self.kind_weights and (len(self.kind_weights) != len(self.kinds) or min(self.kind_weights) <= 0):
            raise ValueError(f"kind_weights must give one positive weight per kind of {self.kinds}")
        if set(self.eval_kinds) - set(KINDS):
            raise ValueError(f"eval_kinds must be a subset of {KINDS}, got {self.eval_kinds}")
        if self.width % self.heads or self.heads % self.kv_heads:
            raise ValueError(
                f"width {self.width}, heads {self.heads}, kv_heads {self.kv_heads} do not divide"
            )


_BASE = ProbeSetting(name="base")


def _v(name: str, **changes) -> ProbeSetting:
    return dataclasses.replace(_BASE, name=name, **changes)


_BASE_STATE = "out/probe/kinds_0.pt"  # `--grid kinds --only 0 --steps 1000 --save out/probe`

# Ordered by expected value per CPU second: a sanity check first, then the fixes most likely to matter.
GRIDS: dict[str, tuple[ProbeSetting, ...]] = {
    "first": (
        _v("presence only, letters, lr 3e-4 warm-up", kinds=("presence",)),
        _v("all kinds, words only", word_fraction=1.0),
        _v("all kinds, letters, lr 3e-4 warm-up"),
        _v("all kinds, half words half letters", word_fraction=0.5),
        _v("all kinds, letters, lr 1e-3 no warm-up (the wall)", lr=1e-3, warmup=0, min_lr_ratio=1.0),
    ),
    "kinds": (
        _v("presence 300 steps, then all kinds, letters", first_kinds=("presence",), first_steps=300),
        _v("size only, letters", kinds=("size",)),
        _v("count only, letters", kinds=("count",)),
        _v(
            "presence 300 steps, then all kinds, 6 blocks x 128",
            first_kinds=("presence",),
            first_steps=300,
            layers=6,
            width=128,
            inter=352,
        ),
    ),
    "shape": (
        _v(
            "8 blocks x 128, half words half letters + drill",
            layers=8,
            width=128,
            inter=352,
            word_fraction=0.5,
            drill_fraction=0.25,
        ),
        _v("6 blocks x 128", layers=6, width=128, inter=352),
        _v("2 blocks x 256", layers=2, width=256, inter=704),
        _v("lr 1e-3 with warm-up", lr=1e-3),
    ),
    "curriculum": (
        _v("words 300 steps, then half words half letters", word_fraction=0.5, word_steps=300),
        _v("region words instead of cells", scene_format="region", word_fraction=0.5),
        _v("no flags, half words half letters", choice_flags=False, word_fraction=0.5),
    ),
    "drill": (
        _v("half words half letters + 25% letter drill", word_fraction=0.5, drill_fraction=0.25),
        _v("letters + 25% letter drill", drill_fraction=0.25),
        _v(
            "words 300 steps, then half words half letters + drill",
            word_fraction=0.5,
            word_steps=300,
            drill_fraction=0.25,
        ),
    ),
    "oracle": (
        _v(
            "oracle vision, 8 turns, presence 300 steps, then all kinds, letters",
            scene_input="oracle",
            turns=8,
            first_kinds=("presence",),
            first_steps=300,
        ),
        _v(
            "oracle vision, 8 turns, half words half letters",
            scene_input="oracle",
            turns=8,  # drill rows would be padded to a session's ~530 tokens: none here
            word_fraction=0.5,
        ),
        _v("oracle vision, half words half letters", scene_input="oracle", word_fraction=0.5),
        _v("no scene (text-only floor)", scene_input="none", word_fraction=0.5),
        _v(
            "oracle vision, 8 turns, presence 300 steps, then all kinds, letters, lr 1e-3",
            scene_input="oracle",
            turns=8,
            first_kinds=("presence",),
            first_steps=300,
            lr=1e-3,
        ),
    ),
    # Does a kind that stayed at chance in the five-kind mix learn alone (from scratch), or once the
    # letter mapping exists (from the presence-first curriculum's state after 1,000 steps: run
    # `--grid kinds --only 0 --steps 1000 --save out/probe` first)?
    "wall": (
        _v("size only, letters, from scratch", kinds=("size",)),
        _v("spatial only, letters, from scratch", kinds=("spatial",)),
        _v(
            "size only, from the presence-first state",
            kinds=("size",),
            eval_kinds=KINDS,
            init_from=_BASE_STATE,
        ),
        _v(
            "spatial only, from the presence-first state",
            kinds=("spatial",),
            eval_kinds=KINDS,
            init_from=_BASE_STATE,
        ),
        _v(
            "count only, from the presence-first state",
            kinds=("count",),
            eval_kinds=KINDS,
            init_from=_BASE_STATE,
        ),
        _v(
            "all kinds, count/size/spatial weighted 2/3/3, from the presence-first state",
            kind_weights=(1, 2, 3, 1, 3),
            init_from=_BASE_STATE,
        ),
    ),
    # How fast can the decoder learn? The presence-first curriculum at other learning rates, batch sizes
    # and widths (compare at equal questions seen, not equal steps, for the batch variant).
    "speed": (
        _v("presence first, lr 1e-3 with warm-up", first_kinds=("presence",), first_steps=300, lr=1e-3),
        _v(
            "presence first, batch 32 (lr 3e-4)",
            first_kinds=("presence",),
            first_steps=600,
            batch_size=32,
        ),
        _v(
            "presence first, 4 blocks x 256",
            first_kinds=("presence",),
            first_steps=300,
            width=256,
            inter=704,
        ),
        _v(
            "presence first, lr 1e-3, count/size/spatial weighted 2/3/3",
            first_kinds=("presence",),
            first_steps=300,
            lr=1e-3,
            kind_weights=(1, 2, 3, 1, 3),
        ),
    ),
    "tiny": (  # for tests: a few steps of a tiny model
        _v("tiny text", layers=1, width=32, inter=64, heads=2, kv_heads=1, batch_size=4, warmup=1),
        _v(
            "tiny oracle",
            scene_input="oracle",
            word_fraction=0.5,
            drill_fraction=0.5,
            turns=2,
            layers=1,
            width=32,
            inter=64,
            heads=2,
            kv_heads=1,
            batch_size=2,
            warmup=1,
        ),
    ),
}


# --------------------------------------------------------------------------------------------- world


def scene_text(scene, scene_format: str = "grid") -> str:
    """The scene as one sentence, objects left to right: 'small red circle x3 y1 , large blue square x12 y4 .'"""
    from vlm.demo.scenes import region_of

    parts = []
    for obj in sorted(scene.objects, key=lambda o: (o.cx, o.cy)):
        where = (
            f"x{int(obj.cx // CELL)} y{int(obj.cy // CELL)}"
            if scene_format == "grid"
            else region_of(scene, obj)
        )
        parts.append(f"{obj.size_name} {obj.color} {obj.shape} {where}")
    return " , ".join(parts) + " ."


def probe_vocabulary() -> list[str]:
    """The demo vocabulary plus the scene text's cell coordinates x0..x15, y0..y7."""
    from vlm.demo.scenes import HEIGHT, WIDTH, demo_vocabulary

    cells = [f"x{i}" for i in range(WIDTH // CELL)] + [f"y{i}" for i in range(HEIGHT // CELL)]
    return [*demo_vocabulary(), *cells]


class World:
    """Tokenizer, image layout and example builder shared by every variant."""

    def __init__(self) -> None:
        from vlm.config import ImageSpec
        from vlm.demo.teacher import demo_vlm_config
        from vlm.evaluate import letter_token_ids
        from vlm.tokenizer import IM_END, build_word_tokenizer

        words = probe_vocabulary()
        self.cfg = demo_vlm_config(1000)
        self.tokenizer = build_word_tokenizer(words, self.cfg)
        self.cfg = demo_vlm_config(len(self.tokenizer))
        self.spec = ImageSpec(
            view_size=self.cfg.vit_img_size,
            max_grid_side=self.cfg.max_grid_side,
            tokens_per_view=self.cfg.mp_image_token_length,
            resize_to_max_side_len=self.cfg.resize_to_max_side_len,
        )
        self.letters = letter_token_ids(self.tokenizer)
        self.im_end = self.tokenizer.convert_tokens_to_ids(IM_END)
        self.image_token = self.tokenizer.convert_tokens_to_ids(self.cfg.vlm_extra_tokens["image_token"])

    def ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def prompt(self, scene, question, setting: ProbeSetting, word: bool, with_scene: bool = True):
        """Prompt ids, choice-flag labels (or None) and the oracle's patch labels (or None)."""
        from vlm.demo.sessions import choice_flag_labels
        from vlm.processing import DA_INSTRUCTION, MCQ_INSTRUCTION, build_prompt, mcq_user_text

        labels = None
        if not with_scene:
            prefix = ""
        elif setting.scene_input == "text":
            prefix = scene_text(scene, setting.scene_format) + "\n"
        elif setting.scene_input == "oracle":
            prefix, labels = self._oracle(scene)
        else:
            prefix = ""
        if not word:
            user = mcq_user_text(question.question, question.choices)
        elif question.kind in LIST_KINDS:
            user = mcq_user_text(question.question, question.choices).replace(MCQ_INSTRUCTION, DA_INSTRUCTION)
        else:
            user = f"{question.question}\n{DA_INSTRUCTION}"
        prompt = self.ids(build_prompt(self.tokenizer, prefix, user))
        flags = None
        if setting.choice_flags and not word:
            flags = choice_flag_labels(self.tokenizer, prompt, question.correct_choice_idx)
        return prompt, flags, labels

    def _oracle(self, scene):
        """nanoVLM's image string for the scene and the per-view patch labels [views, 64] (class, centre)."""
        from vlm.demo.scenes import render_scene
        from vlm.demo.vision_pretrain import patch_labels
        from vlm.geometry import resized_size
        from vlm.processing import image_placeholder_for

        image = render_scene(scene)
        width, height = resized_size(image.width, image.height, self.spec)
        grid = (height // self.spec.view_size, width // self.spec.view_size)
        classes, centres = patch_labels(scene, image, self.spec, self.cfg.vit_patch_size)
        return image_placeholder_for(grid, self.spec, self.cfg.vlm_extra_tokens), (classes, centres)

    def drill(self, rng: random.Random):
        """The demo teacher's stage-2 letter drill (`vlm.demo.sessions.letter_mapping_prompt`), no image."""
        from vlm.demo.sessions import letter_mapping_prompt

        sequence = letter_mapping_prompt(rng, self.tokenizer)
        return sequence.input_ids, sequence.labels, None

    def session(self, scene, questions, setting: ProbeSetting, words: list[bool]):
        """Several questions about one scene as consecutive turns, the scene in the first turn only (the
        demo teacher's `vqa_session` layout): one scene's tokens then pay for several answers."""
        ids: list[int] = []
        labels: list[int] = []
        oracle = None
        for turn, (question, word) in enumerate(zip(questions, words, strict=True)):
            seq, lab, orc = self.example(scene, question, setting, word, with_scene=turn == 0)
            ids += seq
            labels += lab
            oracle = oracle if turn else orc
        return ids, labels, oracle

    def example(self, scene, question, setting: ProbeSetting, word: bool, with_scene: bool = True):
        """(ids, labels, oracle labels): labels are -100 except the answer, its end and the flags."""
        prompt, flags, oracle = self.prompt(scene, question, setting, word, with_scene)
        if word:
            answer = [*self.ids(question.answer), self.im_end]
        else:
            answer = [self.letters[question.correct_choice_idx], self.im_end]
        labels = (flags if flags is not None else [-100] * len(prompt)) + answer
        return prompt + answer, labels, oracle


def training_stream(seed: int, kinds: tuple[str, ...], weights: tuple[float, ...] = ()):
    """Endless (scene, question) pairs with balanced answers, from a seed stream no split uses; the kind
    of each question is drawn with ``weights`` (equal by default)."""
    from vlm.demo.scenes import draw_plan, make_question, sample_scene

    rng = random.Random(f"symbolic-probe/{seed}")
    while True:
        kind = rng.choices(kinds, weights)[0] if weights else rng.choice(kinds)
        plan = draw_plan(rng, kind)
        while True:
            scene = sample_scene(rng)
            question = make_question(scene, rng, plan=plan)
            if question is not None:
                yield scene, question
                break


def session_stream(seed: int, kinds: tuple[str, ...], turns: int):
    """Endless (scene, questions): up to ``turns`` questions of the given kinds about each fresh scene,
    count answers re-targeted to what the scene supports (`vlm.demo.sessions.balanced_count_plan`)."""
    from vlm.demo.scenes import draw_plan, make_question, sample_scene
    from vlm.demo.sessions import balanced_count_plan

    rng = random.Random(f"symbolic-probe-sessions/{seed}")
    while True:
        scene = sample_scene(rng)
        questions = []
        for _ in range(4 * turns):  # a scene cannot support every question: retry a few times
            if len(questions) == turns:
                break
            plan = draw_plan(rng, rng.choice(kinds))
            if plan.kind == "count":
                plan = balanced_count_plan(scene, rng, plan)
            question = make_question(scene, rng, plan=plan)
            if question is not None:
                questions.append(question)
        if questions:
            yield scene, questions


def held_out(n: int, kinds: tuple[str, ...]):
    """The first questions of the demo validation split (DemoDataConfig's seed) of the given kinds."""
    from vlm.demo.dataset import DemoDataConfig, iter_examples

    pairs = [(s, q) for s, q in iter_examples(DemoDataConfig().seed, "validation", n) if q.kind in kinds]
    return pairs


# --------------------------------------------------------------------------------------------- model


def build_model(setting: ProbeSetting, world: World):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(setting.seed)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(world.tokenizer),
            hidden_size=setting.width,
            intermediate_size=setting.inter,
            num_hidden_layers=setting.layers,
            num_attention_heads=setting.heads,
            num_key_value_heads=setting.kv_heads,
            max_position_embeddings=1024,
            rope_theta=10000.0,
            tie_word_embeddings=True,
            pad_token_id=world.tokenizer.pad_token_id,
        )
    )
    oracle = None
    if setting.scene_input == "oracle":
        oracle = OracleVision(setting.width, world)
    if setting.init_from:
        path = Path(setting.init_from)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no probe state to start from; write one with --save first")
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        if oracle is not None:
            oracle.load_state_dict(state["oracle"])
    return model, oracle


def save_state(path: Path, model, oracle_module) -> None:
    """The probe model (and oracle embeddings) for a later variant's ``init_from``."""
    import torch

    state = {"model": model.state_dict()}
    if oracle_module is not None:
        state["oracle"] = oracle_module.state_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)


def _oracle_module(width: int, views: int, tokens: int):
    import torch
    from torch import nn

    from vlm.demo.vision_pretrain import N_CLASSES

    class _Oracle(nn.Module):
        """Image-token embeddings from true patch labels: class + centre flag + (view, patch) place."""

        def __init__(self) -> None:
            super().__init__()
            self.classes = nn.Embedding(N_CLASSES, width)
            self.centre = nn.Embedding(2, width)
            self.place = nn.Embedding(views * tokens, width)
            for emb in (self.classes, self.centre, self.place):
                nn.init.normal_(emb.weight, std=0.02)

        def forward(self, classes: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
            # classes, centres: [N, views, tokens] -> [N, views * tokens, width]
            n = classes.shape[0]
            place = self.place.weight[None].expand(n, -1, -1)
            return self.classes(classes.flatten(1)) + self.centre(centres.flatten(1)) + place

    return _Oracle()


def OracleVision(width: int, world: World):  # noqa: N802 - a factory standing in for a class
    views = 1 + world.cfg.max_img_size // world.spec.view_size  # global + crops of the 128x64 scenes
    return _oracle_module(width, views, world.spec.tokens_per_view)


def _collate(rows, pad_id: int):
    import torch

    length = max(len(ids) for ids, _, _ in rows)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), length), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, (seq, lab, _) in enumerate(rows):
        ids[i, : len(seq)] = torch.tensor(seq)
        labels[i, : len(lab)] = torch.tensor(lab)
        mask[i, : len(seq)] = 1
    # Rows without an image (letter drill) have no image tokens: only the others' labels fill the slots.
    with_image = [r[2] for r in rows if r[2] is not None]
    oracle = None
    if with_image:
        oracle = (torch.stack([o[0] for o in with_image]), torch.stack([o[1] for o in with_image]))
    return ids, labels, mask, oracle


def _forward(model, oracle_module, world: World, ids, mask, oracle):
    embeds = model.get_input_embeddings()(ids)  # [B, T, D]
    if oracle is not None:
        image = oracle_module(*oracle).to(embeds.dtype)  # [B, views*64, D]
        slots = (ids == world.image_token).unsqueeze(-1)
        embeds = embeds.masked_scatter(slots, image.reshape(-1, image.shape[-1]))
    # Right padding: positions 0..T-1 are the real ones for every row's tokens.
    return model(inputs_embeds=embeds, attention_mask=mask).logits


def lr_at(step: int, total: int, s: ProbeSetting) -> float:
    if step < s.warmup:
        return s.lr * (step + 1) / s.warmup
    progress = min(1.0, (step - s.warmup) / max(1, total - s.warmup))
    return s.lr * (s.min_lr_ratio + (1 - s.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


# --------------------------------------------------------------------------------------------- eval


def evaluate(model, oracle_module, world: World, setting: ProbeSetting, pairs, words: bool) -> dict:
    """MCQ letter accuracy and answer loss per kind; word accuracy per kind when ``words``."""
    import torch
    import torch.nn.functional as F

    model.eval()
    pad = world.tokenizer.pad_token_id
    per_kind: dict[str, dict[str, list[float]]] = {}
    with torch.no_grad():
        for start in range(0, len(pairs), 64):
            chunk = pairs[start : start + 64]
            rows = [world.example(s, q, setting, word=False) for s, q in chunk]
            prompts = [(ids[:-2], lab[:-2], orc) for ids, lab, orc in rows]  # drop letter and end
            ids, _, mask, oracle = _collate(prompts, pad)
            logits = _forward(model, oracle_module, world, ids, mask, oracle)
            last = logits[torch.arange(len(chunk)), mask.sum(1) - 1].float()  # [B, V]
            right = torch.tensor([world.letters[q.correct_choice_idx] for _, q in chunk])
            loss = F.cross_entropy(last, right, reduction="none")
            pred = last[:, world.letters].argmax(-1)
            for (_, q), p, lo in zip(chunk, pred.tolist(), loss.tolist(), strict=True):
                d = per_kind.setdefault(q.kind, {"mcq": [], "loss": [], "word": []})
                d["mcq"].append(float(p == q.correct_choice_idx))
                d["loss"].append(lo)
            if words:
                for (_s, q), hit in zip(
                    chunk, _word_hits(model, oracle_module, world, setting, chunk), strict=True
                ):
                    per_kind[q.kind]["word"].append(hit)
    model.train()
    out: dict = {"per_kind": {}}
    for kind, d in sorted(per_kind.items()):
        out["per_kind"][kind] = {
            "n": len(d["mcq"]),
            "mcq": round(sum(d["mcq"]) / len(d["mcq"]), 3),
            "loss": round(sum(d["loss"]) / len(d["loss"]), 3),
            **({"word": round(sum(d["word"]) / len(d["word"]), 3)} if d["word"] else {}),
        }
    everything = [d for d in per_kind.values()]
    n = sum(len(d["mcq"]) for d in everything)
    out["mcq"] = round(sum(sum(d["mcq"]) for d in everything) / n, 3)
    out["answer_loss"] = round(sum(sum(d["loss"]) for d in everything) / n, 3)
    if words:
        out["word"] = round(sum(sum(d["word"]) for d in everything) / n, 3)
    return out


def _word_hits(model, oracle_module, world: World, setting: ProbeSetting, chunk) -> list[float]:
    """1.0 where the right choice's tokens have the highest summed log-likelihood in the word form."""
    import torch

    rows, spans = [], []
    for scene, q in chunk:
        prompt, _, orc = world.prompt(scene, q, setting, word=True)
        for choice in q.choices:
            answer = world.ids(choice)
            rows.append((prompt + answer, [-100] * len(prompt) + answer, orc))
            spans.append(len(answer))
    ids, labels, mask, oracle = _collate(rows, world.tokenizer.pad_token_id)
    logits = _forward(model, oracle_module, world, ids, mask, oracle).float()
    logp = torch.log_softmax(logits[:, :-1], -1)
    target = labels[:, 1:]
    picked = logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1) * (target != -100)
    scores = picked.sum(1).view(len(chunk), 4)
    best = scores.argmax(-1).tolist()
    return [float(b == q.correct_choice_idx) for b, (_, q) in zip(best, chunk, strict=True)]


# --------------------------------------------------------------------------------------------- train


def run_setting(
    setting: ProbeSetting,
    steps: int,
    eval_every: int,
    eval_questions: int,
    world: World | None = None,
    save_to: Path | None = None,
) -> dict:
    """Train one variant (from scratch or ``init_from``) for ``steps``; evaluate every ``eval_every``
    steps (and at the end); write its final state to ``save_to`` when given."""
    import torch
    import torch.nn.functional as F

    world = world or World()
    model, oracle_module = build_model(setting, world)
    params = list(model.parameters()) + (list(oracle_module.parameters()) if oracle_module else [])
    named = list(model.named_parameters()) + (
        [(f"oracle.{n}", p) for n, p in oracle_module.named_parameters()] if oracle_module else []
    )
    decay = [p for n, p in named if p.ndim >= 2 and "embed" not in n and "oracle" not in n]
    no_decay = [p for n, p in named if not (p.ndim >= 2 and "embed" not in n and "oracle" not in n)]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": setting.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=setting.lr,
        betas=(0.9, 0.98),
    )
    pairs = held_out(eval_questions, setting.eval_kinds or setting.kinds)
    streams = {
        False: (
            training_stream(setting.seed, setting.kinds, setting.kind_weights),
            session_stream(setting.seed, setting.kinds, setting.turns),
        ),
        True: (
            training_stream(setting.seed, setting.first_kinds or setting.kinds),
            session_stream(setting.seed, setting.first_kinds or setting.kinds, setting.turns),
        ),
    }
    rng = random.Random(f"symbolic-probe-mix/{setting.seed}")
    trains_words = setting.word_fraction > 0 or setting.word_steps > 0
    pad = world.tokenizer.pad_token_id
    curve, running, start = [], float("nan"), time.time()
    model.train()
    for step in range(steps):
        p_word = 1.0 if step < setting.word_steps else setting.word_fraction
        stream, sessions = streams[step < setting.first_steps]
        n_drill = 0
        if setting.drill_fraction:
            n_drill = sum(rng.random() < setting.drill_fraction for _ in range(setting.batch_size))
        rows = [world.drill(rng) for _ in range(n_drill)]
        if setting.turns == 1:
            rows += [
                world.example(s, q, setting, word=rng.random() < p_word)
                for s, q in (next(stream) for _ in range(setting.batch_size - n_drill))
            ]
        else:  # batch_size counts questions: ceil((batch_size - drill rows) / turns) sessions
            for _ in range(-(-(setting.batch_size - n_drill) // setting.turns)):
                scene, questions = next(sessions)
                rows.append(
                    world.session(scene, questions, setting, [rng.random() < p_word for _ in questions])
                )
        ids, labels, mask, oracle = _collate(rows, pad)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, steps, setting)
        logits = _forward(model, oracle_module, world, ids, mask, oracle)
        loss = F.cross_entropy(
            logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100
        )
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{setting.name}: loss {loss.item()} at step {step}; lower the lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, setting.grad_clip)
        optimizer.step()
        running = loss.item() if step == 0 else 0.95 * running + 0.05 * loss.item()
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            point = {
                "step": step + 1,
                "train_loss": round(running, 4),
                "seconds": round(time.time() - start, 1),
                **evaluate(model, oracle_module, world, setting, pairs, words=trains_words),
            }
            curve.append(point)
            logger.info(
                "%s | step %d loss %.3f | mcq %.3f answer loss %.3f%s | %s | %.0f s",
                setting.name,
                point["step"],
                point["train_loss"],
                point["mcq"],
                point["answer_loss"],
                f" word {point['word']:.3f}" if "word" in point else "",
                " ".join(
                    f"{k[:4]} {v['mcq']:.2f}" + (f"/{v['word']:.2f}" if "word" in v else "")
                    for k, v in point["per_kind"].items()
                ),
                point["seconds"],
            )
    if save_to is not None:
        save_state(save_to, model, oracle_module)
        logger.info("saved %s", save_to)
    return {"setting": dataclasses.asdict(setting), "steps": steps, "curve": curve}


def summary_rows(results: list[dict], at_steps: tuple[int, ...]) -> list[str]:
    """Markdown table rows: each variant's per-kind MCQ accuracy (" / word accuracy" where it trains on
    words), overall, word accuracy and answer loss at each of ``at_steps`` it reached (equal steps)."""
    rows = [
        "| variant | step | attribute | count | presence | size | spatial | MCQ | word | answer loss |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        for point in result["curve"]:
            if point["step"] not in at_steps:
                continue
            kinds = [point["per_kind"].get(k) for k in sorted(KINDS)]
            cells = [
                "" if v is None else f"{v['mcq']:.2f}" + (f" / {v['word']:.2f}" if "word" in v else "")
                for v in kinds
            ]
            word = f"{point['word']:.2f}" if "word" in point else ""
            rows.append(
                f"| {result['setting']['name']} | {point['step']} | {' | '.join(cells)} | {point['mcq']:.3f} "
                f"| {word} | {point['answer_loss']:.2f} |"
            )
    return rows


# --------------------------------------------------------------------------------------------- CLI


def _parser():
    parser = make_parser(
        "benchmarks.symbolic_scene_probe", __doc__.split("\n\n")[0], epilog="Grids: " + ", ".join(GRIDS)
    )
    parser.add_argument("--grid", default="first", help="which variants: " + ", ".join(GRIDS))
    parser.add_argument(
        "--only", type=int, nargs="*", help="indices of the grid's variants to run (default all)"
    )
    parser.add_argument("--steps", type=int, default=800, help="training steps per variant")
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--eval-questions", type=int, default=500, help="validation questions (all kinds)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON results (default benchmarks/results/symbolic_probe_<grid>.json)",
    )
    parser.add_argument(
        "--save",
        type=Path,
        default=None,
        help="folder for each variant's final state (<grid>_<index>.pt), for a later variant's init_from",
    )
    parser.add_argument(
        "--summarize",
        type=Path,
        nargs="+",
        help="print a markdown table of these result files at the --at steps instead of training",
    )
    parser.add_argument("--at", type=int, nargs="+", default=[300, 600], help="steps for --summarize")
    return parser


def _main(args) -> None:
    import torch

    if args.summarize:
        for path in args.summarize:
            if not path.is_file():
                raise UsageError(f"{path} is not a file; pass result JSON files written by this probe")
        results = [r for path in args.summarize for r in json.loads(path.read_text())]
        print("\n".join(summary_rows(results, tuple(args.at))))  # noqa: T201 - the command's output
        return
    if args.grid not in GRIDS:
        raise UsageError(f"unknown grid {args.grid!r}; choose one of {', '.join(GRIDS)}")
    if args.steps < 1 or args.eval_every < 1 or args.eval_questions < 5:
        raise UsageError("--steps and --eval-every must be >= 1 and --eval-questions >= 5")
    grid = GRIDS[args.grid]
    indices = args.only if args.only else list(range(len(grid)))
    torch.set_num_threads(args.threads)
    out = args.out or Path(f"benchmarks/results/symbolic_probe_{args.grid}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    world = World()
    results = []
    for index in indices:
        save_to = args.save / f"{args.grid}_{index}.pt" if args.save else None
        results.append(
            run_setting(grid[index], args.steps, args.eval_every, args.eval_questions, world, save_to)
        )
        out.write_text(json.dumps(results, indent=2) + "\n")
        logger.info("wrote %s", out)


def main(argv: list[str] | None = None) -> None:
    raise SystemExit(run(_main, _parser(), argv))


if __name__ == "__main__":
    main()
