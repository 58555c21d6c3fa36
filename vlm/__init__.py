"""nanoVLM-compatible model, data, evaluation, FLOP counting and compression knobs.

The public names load lazily (PEP 562), so `python -m vlm.<command> --help` does not pay for importing
torch and transformers before it has parsed its arguments.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_EXPORTS = {
    "CompressionConfig": "vlm.config",
    "ImageSpec": "vlm.config",
    "VLMConfig": "vlm.config",
    "VisionLanguageModel": "vlm.model",
    "compress": "vlm.compression",
    "load_pretrained": "vlm.checkpoint",
    "plan_student": "vlm.compression",
    "save_pretrained": "vlm.checkpoint",
}

__all__ = [
    "CompressionConfig",
    "ImageSpec",
    "VLMConfig",
    "VisionLanguageModel",
    "compress",
    "load_pretrained",
    "plan_student",
    "save_pretrained",
]

if TYPE_CHECKING:
    from vlm.checkpoint import load_pretrained, save_pretrained
    from vlm.compression import compress, plan_student
    from vlm.config import CompressionConfig, ImageSpec, VLMConfig
    from vlm.model import VisionLanguageModel


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'vlm' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
