"""A study's settings: one TOML file per study in `studies/` (`aokvqa.toml` is the real one, `demo.toml`
runs offline). Everything a run needs is here, passed explicitly as frozen dataclasses.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlm.cli import UsageError
from vlm.paths import studies_dir

DEMO = "demo"  # the source/teacher value that means "the offline demo world"
# A study named <name>-dryrun is a dry run (`python -m dryrun.run`): random teacher, generated data.
DRY_RUN_SUFFIX = "-dryrun"
TOKEN_REDUCERS = ("none", "norm_drop", "score_prune", "merge")  # choices of [space] reducers


class StudyConfigError(UsageError, ValueError):
    """A study config that cannot be used: the message names the file, the [section] and the key."""


class StudyNotFound(UsageError, FileNotFoundError):
    """No `studies/<name>.toml` (the message lists the available studies)."""


@dataclass(frozen=True)
class ModelSettings:
    teacher: str = "lusxvr/nanoVLM"  # hub id, checkpoint folder, or "demo"
    tokenizer: str | None = None  # None: the checkpoint's tokenizer/ folder, else cfg.lm_tokenizer
    device: str = "auto"  # "auto" = cuda when available
    dtype: str = "float32"  # float32 | bfloat16


@dataclass(frozen=True)
class DataSettings:
    source: str = "HuggingFaceM4/A-OKVQA"  # hub id, local folder / parquet, or "demo"
    split: str = "validation"
    subset_size: int = 500  # validation questions each trial is scored on
    subset_seed: int = 0
    train_split: str = "train"
    calibration_size: int = 64  # questions for layer importance
    warmup_size: int = 512  # training questions for resampler warm-up
    on_error: str = "raise"


@dataclass(frozen=True)
class SpaceSettings:
    """Search-space bounds. Choices that are invalid for a combination are pruned with their reason."""

    token_grid: tuple[int, int] = (1, 8)
    view_sizes: tuple[int, ...] = (256, 320, 384, 448, 512)
    max_grid_side: tuple[int, int] = (1, 4)
    max_drop_decoder: int = 16
    max_drop_encoder: int = 6
    resampler_widths: tuple[int, ...] = (0, 256, 512, 768)  # 0 = keep pixel shuffle + projector
    # Token reducers (`vlm.reducers`), chosen by the categorical `token_reducer`: "none", "norm_drop" and
    # "score_prune" (keep a fraction of each view's tokens), "merge" (ToMe, r tokens per encoder block).
    # Only ("none",) (the default) samples none of their parameters: older studies replay unchanged.
    reducers: tuple[str, ...] = ("none",)
    keep_fractions: tuple[float, ...] = (0.25, 0.375, 0.5, 0.625, 0.75)  # of the tokens after pooling
    merge_r: tuple[int, int] = (1, 16)  # tokens merged per encoder block
    scorer_width: int = 64  # hidden width of the score-pruning scorer

    def __post_init__(self) -> None:
        unknown = [r for r in self.reducers if r not in TOKEN_REDUCERS]
        if unknown or "none" not in self.reducers:
            raise ValueError(
                f"reducers {list(self.reducers)} must include 'none' and name only {list(TOKEN_REDUCERS)}"
            )
        if not self.keep_fractions or not all(0 < f <= 1 for f in self.keep_fractions):
            raise ValueError(f"keep_fractions {list(self.keep_fractions)} must be fractions in (0, 1]")
        if self.merge_r[0] < 1 or self.merge_r[0] > self.merge_r[1]:
            raise ValueError(f"merge_r bounds {self.merge_r} must be 1 <= low <= high (tokens per block)")
        if self.scorer_width < 1:
            raise ValueError(f"scorer_width must be >= 1, got {self.scorer_width}")
        if self.token_grid[0] < 1 or self.token_grid[0] > self.token_grid[1]:
            raise ValueError(f"token_grid bounds {self.token_grid} must be 1 <= low <= high")
        if self.max_grid_side[0] < 1 or self.max_grid_side[0] > self.max_grid_side[1]:
            raise ValueError(f"max_grid_side bounds {self.max_grid_side} must be 1 <= low <= high")
        if not self.view_sizes or not self.resampler_widths:
            raise ValueError("view_sizes and resampler_widths need at least one value")
        if min(self.max_drop_decoder, self.max_drop_encoder) < 0:
            raise ValueError("max_drop_decoder / max_drop_encoder must be >= 0")


@dataclass(frozen=True)
class FreshWeightsSettings:
    """First phases for the weights a compressed student adds from scratch, before any letter steps: the
    search's warm-up (`[search]`) and finalize (`[distill]`) each have their own. 0 steps: the phase is off
    (the default, so a study recorded before these phases existed still reads truthfully)."""

    # A fresh resampler learns to reproduce the teacher's projector tokens pooled to its grid
    # (`vlm.connector_match`): a dense target, where the letters give four numbers per question.
    resampler_match_steps: int = 0
    resampler_match_lr: float = 3e-3
    # A fresh token scorer learns to rank tokens as the student's gradient saliency does, with every token in
    # the prompt (`vlm.token_saliency`): the letters only tell it about tokens it keeps.
    scorer_saliency_steps: int = 0
    scorer_saliency_lr: float = 3e-3

    def __post_init__(self) -> None:
        for name in ("resampler_match_steps", "scorer_saliency_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("resampler_match_lr", "scorer_saliency_lr"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class SearchSettings(FreshWeightsSettings):
    constraint_ratio: float = 0.85  # keep accuracy >= ratio * X
    sampler: str = "tpe"  # tpe | nsga2 | random
    tpe_startup_trials: int = 20  # random trials (after the references) before TPE models the results
    seed: int = 0
    trials: int = 200
    batch_size: int = 32
    early_stop: bool = True
    early_stop_min_samples: int = 64  # never stop on fewer questions than this
    promotion_margin: float = (
        0.03  # infeasible trials within this (absolute accuracy) below the line may be promoted
    )
    # Letter steps of the warm-up of fresh weights, after its first phases (`FreshWeightsSettings`).
    resampler_warmup_steps: int = 40
    resampler_warmup_lr: float = 3e-3
    # The warm-up's loss: mostly the teacher's letter distribution (KL at this temperature), the rest the gold
    # letter's cross-entropy; fresh weights (a resampler, a token scorer) start far from the teacher's.
    resampler_warmup_kd_weight: float = 0.8
    resampler_warmup_temperature: float = 1.0
    # Warm-up backpropagates through the whole decoder: at the evaluation batch size it cost a resampler
    # trial 10x its evaluation.
    resampler_warmup_batch_size: int = 16
    feature_cache_mb: int = 2048  # ViT features kept per process
    heartbeat_interval: int = 10  # seconds; a worker silent for grace_period is declared dead
    grace_period: int = 30
    references: bool = True  # enqueue the teacher and the hand-picked configs first
    # The cost objective: "flops" (counted GFLOPs per question) or "latency" (MCQ latency at batch 1 measured
    # on the search machine, relative to the teacher timed alongside in the same process; FLOPs are still
    # recorded as a user attribute). A study keeps the cost it was created with.
    cost: str = "flops"
    latency_questions: int = 8  # subset questions each trial's latency is timed on
    latency_warmup: int = 1  # untimed passes of student and teacher first
    latency_repeats: int = 5  # timed rounds (teacher and student alternately); the median ratio is kept
    # Each trial stage's own peak memory on the CPU: collect garbage and trim the allocator before every stage
    # (search.stages). ~0.4 s per stage with torch loaded, so off by default (then a stage's peak may include
    # pages kept from earlier stages); the dry run turns it on.
    exact_stage_memory: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.cost not in ("flops", "latency"):
            raise ValueError(f"cost must be 'flops' or 'latency', got {self.cost!r}")
        if self.latency_questions < 1 or self.latency_repeats < 1 or self.latency_warmup < 0:
            raise ValueError("latency_questions and latency_repeats must be >= 1, latency_warmup >= 0")
        if not 0 < self.constraint_ratio <= 1:
            raise ValueError(f"constraint_ratio must be in (0, 1], got {self.constraint_ratio}")
        if self.tpe_startup_trials < 0:
            raise ValueError(f"tpe_startup_trials must be >= 0, got {self.tpe_startup_trials}")
        if not 0 <= self.resampler_warmup_kd_weight <= 1 or self.resampler_warmup_temperature <= 0:
            raise ValueError(
                "resampler_warmup_kd_weight must be in [0, 1] and resampler_warmup_temperature > 0"
            )
        if self.sampler not in ("tpe", "nsga2", "random"):
            raise ValueError(f"sampler must be tpe, nsga2 or random, got {self.sampler!r}")
        if self.resampler_warmup_steps < 0:
            raise ValueError(f"resampler_warmup_steps must be >= 0, got {self.resampler_warmup_steps}")
        if min(self.batch_size, self.resampler_warmup_batch_size) < 1:
            raise ValueError("batch_size and resampler_warmup_batch_size must be >= 1")


@dataclass(frozen=True)
class DistillSettings(FreshWeightsSettings):
    # Before distillation starts, the first phases (`FreshWeightsSettings`) run on training images; the scorer
    # learns from up to 512 training questions.
    steps: int = 300
    batch_size: int = 16  # the global batch: under `accelerate launch` each process trains on its share
    lr: float = 5e-4
    resampler_lr: float = 3e-3
    kd_weight: float = 0.7  # share of the KL term; the rest is cross-entropy on the gold answer
    temperature: float = 2.0
    lora_rank: int = 0  # 0 = full fine-tuning of the decoder, >0 = LoRA adapters (merged on save)
    checkpoint_every: int = 50
    train_size: int | None = None  # None = the whole train split
    train_seed: int = 0  # which `train_size` questions of the train split are drawn
    da_fraction: float = 0.25  # share of steps trained on the gold direct answer (the student keeps words)
    grad_clip: float = 1.0  # max gradient norm per step
    mixed_precision: str = "auto"  # auto (bf16 on CUDA when supported) | no | bf16 | fp16

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.da_fraction <= 1 or not 0 <= self.kd_weight <= 1:
            raise ValueError(
                f"da_fraction and kd_weight must be in [0, 1], got {self.da_fraction}, {self.kd_weight}"
            )
        if self.grad_clip <= 0 or self.temperature <= 0:
            raise ValueError(
                f"grad_clip and temperature must be > 0, got {self.grad_clip}, {self.temperature}"
            )


@dataclass(frozen=True)
class StudyConfig:
    name: str
    model: ModelSettings = field(default_factory=ModelSettings)
    data: DataSettings = field(default_factory=DataSettings)
    space: SpaceSettings = field(default_factory=SpaceSettings)
    search: SearchSettings = field(default_factory=SearchSettings)
    distill: DistillSettings = field(default_factory=DistillSettings)

    @property
    def default_storage(self) -> str:
        return f"sqlite:///{studies_dir() / (self.name + '.db')}"

    @property
    def artifacts_dir(self) -> Path:
        return studies_dir() / self.name

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_SECTIONS = {
    "model": ModelSettings,
    "data": DataSettings,
    "space": SpaceSettings,
    "search": SearchSettings,
    "distill": DistillSettings,
}


def _type_error(value: Any, hint: Any) -> str | None:
    """Why `value` (as TOML gave it) does not fit the annotation `hint`, or None when it does."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        reasons = [_type_error(value, h) for h in typing.get_args(hint)]
        return None if None in reasons else " or ".join(r for r in reasons if r)
    if hint is type(None):
        return None if value is None else "nothing (leave the key out)"
    if typing.get_origin(hint) is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            return "a list"
        item = args[0]
        if len(args) == 2 and args[1] is Ellipsis:
            if not value:
                return "a list of at least one value"
        elif len(value) != len(args):
            return f"a list of {len(args)} values"
        bad = [v for v in value if _type_error(v, item)]
        return f"a list of {item.__name__}s" if bad else None
    if hint is bool:
        return None if isinstance(value, bool) else "true or false"
    if hint is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else "a whole number"
    if hint is float:
        return None if isinstance(value, (int, float)) and not isinstance(value, bool) else "a number"
    if hint is str:
        return None if isinstance(value, str) else "a quoted string"
    return None


def _build(cls, values: dict[str, Any], where: str):
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise StudyConfigError(f"{where}: unknown setting(s) {unknown}; known: {sorted(known)}")
    hints = typing.get_type_hints(cls)
    for key, value in values.items():
        # Checked here, at load time: a wrong type used to surface only when the value was first used
        # (`subset_size = "many"` after the teacher had loaded).
        expected = _type_error(value, hints[key])
        if expected:
            raise StudyConfigError(f"{where} {key} = {value!r}: must be {expected}")
    converted = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    try:
        return cls(**converted)
    except ValueError as err:
        raise StudyConfigError(f"{where}: {err}") from err


def study_config_from_dict(data: dict[str, Any], where: str = "study config") -> StudyConfig:
    data = dict(data)
    unknown = sorted(set(data) - set(_SECTIONS) - {"name"})
    if unknown:
        raise StudyConfigError(
            f"{where}: unknown section(s) {unknown}; known: {sorted(_SECTIONS)} and 'name'"
        )
    if "name" not in data:
        raise StudyConfigError(f"{where}: missing 'name'")
    if not isinstance(data["name"], str) or not data["name"]:
        raise StudyConfigError(f"{where}: name = {data['name']!r} must be a non-empty quoted string")
    for key in _SECTIONS:
        if not isinstance(data.get(key, {}), dict):
            raise StudyConfigError(f"{where}: {key} must be a [{key}] section, got {data[key]!r}")
    sections = {key: _build(cls, data.get(key, {}), f"{where} [{key}]") for key, cls in _SECTIONS.items()}
    return StudyConfig(name=data["name"], **sections)


# The study configs this checkout ships (studies/*.toml beside the packages): found from any folder, so a
# run with $VLMC_HOME or the current folder elsewhere still knows `--study demo`.
SHIPPED_STUDIES = Path(__file__).resolve().parents[1] / "studies"


def study_config_path(name_or_path: str) -> Path:
    """A .toml path as given; a name: `<root>/studies/<name>.toml`, else the shipped `studies/<name>.toml`."""
    path = Path(name_or_path)
    if path.suffix == ".toml":
        return path
    local = studies_dir() / f"{name_or_path}.toml"
    shipped = SHIPPED_STUDIES / f"{name_or_path}.toml"
    return shipped if not local.is_file() and shipped.is_file() else local


def load_study_config(name_or_path: str) -> StudyConfig:
    """Load `studies/<name>.toml` (or a .toml path)."""
    path = study_config_path(name_or_path)
    if not path.is_file():
        names = {p.stem for folder in (studies_dir(), SHIPPED_STUDIES) for p in folder.glob("*.toml")}
        raise StudyNotFound(f"no study config {path}; available studies: {sorted(names)}")
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except tomllib.TOMLDecodeError as err:
        raise StudyConfigError(f"{path}: not valid TOML ({err}); fix the line it names") from err
    return study_config_from_dict(data, str(path))
