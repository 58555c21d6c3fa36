"""nanoVLM-compatible model, data, evaluation, FLOP counting and compression knobs."""

from vlm.checkpoint import load_pretrained, save_pretrained
from vlm.compression import compress, plan_student
from vlm.config import CompressionConfig, ImageSpec, VLMConfig
from vlm.model import VisionLanguageModel

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
