"""A tiny offline world for integration tests: random nanoVLM-shaped teacher + a small synthetic dataset."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from vlm.checkpoint import save_pretrained
from vlm.demo.dataset import DemoDataConfig, generate_demo_dataset
from vlm.demo.teacher import build_demo_tokenizer, demo_vlm_config
from vlm.model import VisionLanguageModel
from vlm.tokenizer import special_token_ids


@dataclasses.dataclass(frozen=True)
class TinyWorld:
    """A built tiny world: its root folder, teacher checkpoint and dataset folder."""

    root: Path
    teacher: Path
    data: Path

    def toml(self, directory: Path, name: str = "tiny", teacher: str | None = None, **search) -> Path:
        """Write `directory/<name>.toml` for this world; `search` overrides [search] settings."""
        return tiny_study_toml(directory, name, teacher or self.teacher, self.data, **search)


def make_tiny_world(root: Path, seed: int = 0) -> TinyWorld:
    teacher, data = build_tiny_world(root, seed)
    return TinyWorld(root, teacher, data)


def build_tiny_world(root: Path, seed: int = 0) -> tuple[Path, Path]:
    """(teacher folder, dataset folder) under `root`; the teacher is random (demo shape, narrower)."""
    tokenizer = build_demo_tokenizer()
    cfg = dataclasses.replace(
        demo_vlm_config(len(tokenizer)),
        vit_hidden_dim=32,
        vit_inter_dim=64,
        lm_hidden_dim=48,
        lm_inter_dim=96,
    )
    torch.manual_seed(seed)
    model = VisionLanguageModel(cfg, special_token_ids(tokenizer, cfg)["image_token"]).eval()
    teacher = save_pretrained(model, root / "teacher", tokenizer=tokenizer)
    data = generate_demo_dataset(
        DemoDataConfig(seed=seed, train_size=64, validation_size=48, test_size=16), root / "data"
    )
    return teacher, data


def tiny_study_toml(root: Path, name: str, teacher: Path, data: Path, **search) -> Path:
    """Write `root/<name>.toml` for the tiny world; `search` overrides [search] settings."""
    settings = {
        "trials": 6,
        "batch_size": 16,
        "early_stop_min_samples": 16,
        "resampler_warmup_steps": 2,
        "heartbeat_interval": 1,
        "grace_period": 3,
        **search,
    }
    lines = [
        f'name = "{name}"',
        "[model]",
        f'teacher = "{teacher}"',
        'device = "cpu"',
        "[data]",
        f'source = "{data}"',
        "subset_size = 48",
        "calibration_size = 8",
        "warmup_size = 16",
        "[space]",
        "token_grid = [1, 8]",
        "view_sizes = [32, 48, 64]",
        "max_grid_side = [1, 2]",
        "max_drop_decoder = 2",
        "max_drop_encoder = 2",
        "resampler_widths = [0, 16]",
        "[search]",
        *(
            f"{k} = {str(v).lower() if isinstance(v, bool) else repr(v) if isinstance(v, str) else v}"
            for k, v in settings.items()
        ),
        "[distill]",
        "steps = 4",
        "batch_size = 8",
        "checkpoint_every = 2",
        "train_size = 32",
        'mixed_precision = "no"',
    ]
    path = root / f"{name}.toml"
    path.write_text("\n".join(lines).replace("'", '"') + "\n")
    return path
