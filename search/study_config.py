"""A study's settings: one TOML file per study in `studies/` (`aokvqa.toml` is the real one, `demo.toml`
runs offline). Everything a run needs is here, passed explicitly as frozen dataclasses.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlm.paths import studies_dir

DEMO = "demo"  # the source/teacher value that means "the offline demo world"


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

    def __post_init__(self) -> None:
        if self.token_grid[0] < 1 or self.token_grid[0] > self.token_grid[1]:
            raise ValueError(f"token_grid bounds {self.token_grid} must be 1 <= low <= high")
        if self.max_grid_side[0] < 1 or self.max_grid_side[0] > self.max_grid_side[1]:
            raise ValueError(f"max_grid_side bounds {self.max_grid_side} must be 1 <= low <= high")
        if not self.view_sizes or not self.resampler_widths:
            raise ValueError("view_sizes and resampler_widths need at least one value")
        if min(self.max_drop_decoder, self.max_drop_encoder) < 0:
            raise ValueError("max_drop_decoder / max_drop_encoder must be >= 0")


@dataclass(frozen=True)
class SearchSettings:
    constraint_ratio: float = 0.85  # keep accuracy >= ratio * X
    sampler: str = "tpe"  # tpe | nsga2 | random
    seed: int = 0
    trials: int = 200
    batch_size: int = 32
    early_stop: bool = True
    early_stop_min_samples: int = 64  # never stop on fewer questions than this
    promotion_margin: float = (
        0.03  # infeasible trials within this (absolute accuracy) below the line may be promoted
    )
    resampler_warmup_steps: int = 40
    resampler_warmup_lr: float = 3e-3
    # Warm-up backpropagates through the whole decoder: at the evaluation batch size it cost a resampler
    # trial 10x its evaluation.
    resampler_warmup_batch_size: int = 16
    feature_cache_mb: int = 2048  # ViT features kept per process
    heartbeat_interval: int = 10  # seconds; a worker silent for grace_period is declared dead
    grace_period: int = 30
    references: bool = True  # enqueue the teacher and the hand-picked configs first

    def __post_init__(self) -> None:
        if not 0 < self.constraint_ratio <= 1:
            raise ValueError(f"constraint_ratio must be in (0, 1], got {self.constraint_ratio}")
        if self.sampler not in ("tpe", "nsga2", "random"):
            raise ValueError(f"sampler must be tpe, nsga2 or random, got {self.sampler!r}")
        if min(self.batch_size, self.resampler_warmup_batch_size) < 1:
            raise ValueError("batch_size and resampler_warmup_batch_size must be >= 1")


@dataclass(frozen=True)
class DistillSettings:
    steps: int = 300
    batch_size: int = 16
    lr: float = 5e-4
    resampler_lr: float = 3e-3
    kd_weight: float = 0.7  # share of the KL term; the rest is cross-entropy on the gold answer
    temperature: float = 2.0
    lora_rank: int = 0  # 0 = full fine-tuning of the decoder, >0 = LoRA adapters (merged on save)
    checkpoint_every: int = 50
    train_size: int | None = None  # None = the whole train split
    mixed_precision: str = "auto"  # auto (bf16 on CUDA when supported) | no | bf16 | fp16


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


def _build(cls, values: dict[str, Any], where: str):
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"{where}: unknown setting(s) {unknown}; known: {sorted(known)}")
    converted = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return cls(**converted)


def study_config_from_dict(data: dict[str, Any], where: str = "study config") -> StudyConfig:
    data = dict(data)
    unknown = sorted(set(data) - set(_SECTIONS) - {"name"})
    if unknown:
        raise ValueError(f"{where}: unknown section(s) {unknown}; known: {sorted(_SECTIONS)} and 'name'")
    if "name" not in data:
        raise ValueError(f"{where}: missing 'name'")
    sections = {key: _build(cls, data.get(key, {}), f"{where} [{key}]") for key, cls in _SECTIONS.items()}
    return StudyConfig(name=data["name"], **sections)


def study_config_path(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix == ".toml":
        return path
    return studies_dir() / f"{name_or_path}.toml"


def load_study_config(name_or_path: str) -> StudyConfig:
    """Load `studies/<name>.toml` (or a .toml path)."""
    path = study_config_path(name_or_path)
    if not path.is_file():
        available = sorted(p.stem for p in studies_dir().glob("*.toml"))
        raise FileNotFoundError(f"no study config {path}; available studies: {available}")
    with path.open("rb") as handle:
        return study_config_from_dict(tomllib.load(handle), str(path))
