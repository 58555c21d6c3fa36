"""The demo teacher's training recipe as data: what each VQA session asks and how each stage trains.

Kept apart from the training code (and its torch import) so `python -m vlm.demo.train_teacher --help` can
show the defaults at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

VIT_HEADS = 4  # the demo ViT's attention heads; its width must divide by them


def _check_kinds(name: str, kinds: tuple[str, ...]) -> None:
    from vlm.demo.scenes import QUESTION_KINDS

    unknown = set(kinds) - set(QUESTION_KINDS)
    if unknown:
        raise ValueError(f"{name}: unknown question kinds {sorted(unknown)}; choose from {QUESTION_KINDS}")


@dataclass(frozen=True)
class SessionMix:
    """What one VQA training session asks about its image."""

    turns: int = 8  # questions per session
    mcq_fraction: float = 0.6  # dataset questions asked as MCQs; the rest as direct answers
    caption_fraction: float = 0.5  # sessions whose first turn is the caption (`caption_question`)
    location_fraction: float = 0.15  # turns asking "Where is the X?" (`location_question`)
    kinds: tuple[str, ...] = ()  # dataset question kinds to ask (empty: all, drawn as the dataset does)
    # Spatial turns pick a relation their scene supports, weighted by `sessions.RELATION_PICK_WEIGHTS`
    # (vertical ones favoured). Off, a session keeps the drawn relation and drops the turn when its scene
    # lacks it: above/below are then 31% of spatial answers (the image is twice as wide as tall) and spatial
    # 11% of turns. The shipped teacher trained with it off.
    balance_relations: bool = False

    def __post_init__(self) -> None:
        if self.turns < 1:
            raise ValueError(f"turns must be >= 1, got {self.turns}")
        _check_kinds("kinds", self.kinds)
        for name in ("mcq_fraction", "caption_fraction", "location_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")


@dataclass(frozen=True)
class TeacherTrainConfig:
    """Training of the demo teacher: three stages on freshly generated scenes (see `train_teacher`)."""

    vision_steps: int = 2000  # stage 1: dense per-patch pre-training of the ViT (vision_pretrain.py)
    vision_lr: float = 2e-3
    # The ViT's width (nanoVLM's is 768), its MLP 4x that, VIT_HEADS heads. 96 read small objects better
    # than 64 but the VQA stage then learned more slowly (docs/symbolic_scene_probe.md, session 15).
    vit_width: int = 64
    letter_steps: int = 400  # stage 2: text-only "Which option is X?" drill (sessions.letter_mapping_prompt)
    letter_batch_size: int = 32
    # Stage 3: multi-turn VQA sessions, MCQ and direct answers mixed. The defaults are the shipped teacher's
    # recipe (95 min on 2 CPU cores, 0.784; seed 0 of it scored 0.747); 700 steps without the curriculum made
    # the 0.393 teacher, 5,000 steps the 0.731 one (benchmarks/candidate_teachers/).
    vqa_steps: int = 7000
    batch_size: int = 16  # sessions (images) per VQA step
    session: SessionMix = field(default_factory=SessionMix)  # turns, MCQ share, captions, locations
    # Kind curriculum: the first `first_steps` VQA steps ask dataset questions of `first_kinds` only
    # (presence first taught the text-scene probe's decoder the MCQ letter: docs/symbolic_scene_probe.md).
    first_kinds: tuple[str, ...] = ("presence",)
    first_steps: int = 300
    # Each step's scenes from their own seed (per stage and step, `vlm.demo.step_batches`) instead of one
    # stream drawn in order: lets `--data-workers` draw batches in parallel (a GPU waits on them otherwise),
    # but the scenes differ from the shipped teacher's stream.
    step_seeds: bool = False
    lr: float = 4e-4  # decoder stages; 1.5e-3 kept a 96-wide decoder from ever learning the letter mapping
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    seed: int = 1  # seed 0 of the same recipe: 0.747 (benchmarks/candidate_teachers/vqa7000)
    log_every: int = 100

    def __post_init__(self) -> None:
        _check_kinds("first_kinds", self.first_kinds)
        if self.vit_width <= 0 or self.vit_width % VIT_HEADS:
            raise ValueError(
                f"vit_width must be a positive multiple of {VIT_HEADS} (the ViT's heads), got {self.vit_width}"
            )
        if (self.first_steps > 0) != bool(self.first_kinds):
            raise ValueError("give first_kinds exactly when first_steps > 0 (the kind curriculum)")
        if not 0 <= self.first_steps <= self.vqa_steps:
            raise ValueError(
                f"first_steps must be in [0, vqa_steps={self.vqa_steps}], got {self.first_steps}"
            )
