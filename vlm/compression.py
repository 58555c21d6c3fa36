"""Apply a `CompressionConfig` to a teacher and get a student, leaving the teacher untouched.

`plan_student` (in `vlm.plan`, torch-free) checks a config against the teacher's architecture and derives the student's effective
`VLMConfig` + connector without touching any weights, so an invalid config fails before any compute and
FLOPs can be counted from the plan alone. `compress` builds the student from the plan and copies the kept
weights over (position embeddings interpolated when the view size changes; a resampler starts fresh).
"""

from __future__ import annotations

import contextlib
import logging
import re

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel
from transformers.initialization import no_init_weights

from vlm.config import CompressionConfig, ConnectorConfig
from vlm.model import VisionLanguageModel

# The plan is torch-free (vlm.plan); re-exported here, where users of `compress` look for it.
from vlm.plan import CompressionError, plan_student

logger = logging.getLogger(__name__)


_ENC_LAYER = re.compile(r"^(vision_encoder\.encoder\.layers\.)(\d+)(\..*)$")
_DEC_LAYER = re.compile(r"^(decoder\.model\.layers\.)(\d+)(\..*)$")


def _interpolate_positions(table: torch.Tensor, new_side: int) -> torch.Tensor:
    """Bicubic resize of a square position-embedding table [P, D] to [new_side^2, D] (as SigLIP does)."""
    side = int(round(table.shape[0] ** 0.5))
    if side == new_side:
        return table
    grid = table.reshape(1, side, side, -1).permute(0, 3, 1, 2).float()  # [1, D, s, s]
    grid = F.interpolate(grid, size=(new_side, new_side), mode="bicubic", align_corners=False)
    return grid.permute(0, 2, 3, 1).reshape(new_side * new_side, -1).to(table.dtype)


def compress(teacher: VisionLanguageModel, compression: CompressionConfig) -> VisionLanguageModel:
    """Build the student described by `compression` from `teacher`'s weights. The teacher is not modified."""
    if teacher.connector_config != ConnectorConfig():
        raise CompressionError(
            "compress() needs an uncompressed teacher (pixel-shuffle projector, native grid)"
        )
    plan = plan_student(teacher.cfg, compression)
    param = next(teacher.parameters())
    # Without fresh weights every weight comes from the teacher: skip the random initialisation the copy
    # overwrites (at nanoVLM's widths most of a student's build). With them, initialise as always, so a
    # resampler or scorer draws the same random numbers from the same seed (a search replays exactly).
    skip_init = no_init_weights() if not compression.has_fresh_weights else contextlib.nullcontext()
    with torch.device(param.device), skip_init:
        student = VisionLanguageModel(plan.cfg, teacher.image_token_id, plan.connector)
    if not compression.has_fresh_weights:
        for module in student.modules():  # the tying `init_weights` does after initialising (skipped with it)
            if isinstance(module, PreTrainedModel):
                module.tie_weights()
    student.to(dtype=param.dtype)
    enc_map = {old: new for new, old in enumerate(plan.kept_encoder_layers)}
    dec_map = {old: new for new, old in enumerate(plan.kept_decoder_layers)}
    targets = student.state_dict()
    state = {}
    for key, tensor in teacher.state_dict().items():
        for pattern, mapping in ((_ENC_LAYER, enc_map), (_DEC_LAYER, dec_map)):
            match = pattern.match(key)
            if match:
                old = int(match.group(2))
                key = f"{match.group(1)}{mapping[old]}{match.group(3)}" if old in mapping else None
                break
        if key is None or key not in targets:
            continue  # a dropped layer, or the projector replaced by a resampler
        if key.endswith("embeddings.position_embedding.weight"):
            tensor = _interpolate_positions(tensor, plan.cfg.vit_img_size // plan.cfg.vit_patch_size)
        elif key.endswith("embeddings.position_ids"):
            continue
        state[key] = tensor  # load_state_dict copies it into the student's own tensor
    missing, unexpected = student.load_state_dict(state, strict=False)
    allowed_missing = {k for k in targets if k.startswith("connector.") and plan.connector.resampler_width}
    allowed_missing |= {k for k in targets if k.startswith("token_selector.")}  # a scorer starts fresh
    allowed_missing |= {k for k in targets if k.endswith("position_ids") or k == "decoder.lm_head.weight"}
    bad = [k for k in missing if k not in allowed_missing]
    if bad or unexpected:
        raise CompressionError(f"weight transfer incomplete: missing {bad[:5]}, unexpected {unexpected[:5]}")
    student.compression = compression
    student.eval()
    logger.debug(
        "compressed %s -> %.2fM parameters", compression, sum(p.numel() for p in student.parameters()) / 1e6
    )
    return student
