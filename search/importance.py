"""Which blocks matter least: block influence measured once per study on calibration questions.

A block's score is 1 - cos(input, output) of its hidden states, averaged over real tokens (ShortGPT's
"block influence", https://arxiv.org/abs/2403.03853): a block that barely changes its input can be dropped
with the least damage.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from vlm.data import VQAExample
from vlm.evaluate import encode_mcq
from vlm.model import VisionLanguageModel
from vlm.processing import collate

logger = logging.getLogger(__name__)


@torch.no_grad()
def block_influence(
    model: VisionLanguageModel, tokenizer, examples: Sequence[VQAExample], batch_size: int = 16
) -> tuple[list[float], list[float]]:
    """(decoder scores, encoder scores), one per block; higher = more important."""
    decoder_layers = list(model.decoder.model.layers)
    encoder_layers = list(model.vision_encoder.encoder.layers)
    sums = {"dec": [0.0] * len(decoder_layers), "enc": [0.0] * len(encoder_layers)}
    counts = {"dec": 0, "enc": 0}
    state = {"mask": None}

    def hook(kind: str, index: int):
        def fn(module, args, kwargs, output):
            # transformers 5 decoder and encoder layers take and return the hidden states [B, T, D]
            x = kwargs.get("hidden_states", args[0] if args else None)
            y = output
            cos = F.cosine_similarity(x.float(), y.float(), dim=-1)  # [B, T]
            if kind == "dec" and state["mask"] is not None:
                cos = cos[state["mask"].bool()]
            sums[kind][index] += float((1 - cos).sum())
            if index == 0:
                counts[kind] += cos.numel()

        return fn

    handles = [
        layer.register_forward_hook(hook("dec", i), with_kwargs=True)
        for i, layer in enumerate(decoder_layers)
    ]
    handles += [
        layer.register_forward_hook(hook("enc", i), with_kwargs=True)
        for i, layer in enumerate(encoder_layers)
    ]
    try:
        spec = model.image_spec
        device = next(model.parameters()).device
        for start in range(0, len(examples), batch_size):
            batch = collate(
                [encode_mcq(tokenizer, model, spec, e) for e in examples[start : start + batch_size]],
                tokenizer.pad_token_id,
            )
            state["mask"] = batch["attention_mask"].to(device)
            model(batch["input_ids"].to(device), batch["images"].to(device), state["mask"], logits_to_keep=1)
    finally:
        for handle in handles:
            handle.remove()
    decoder = [s / max(counts["dec"], 1) for s in sums["dec"]]
    encoder = [s / max(counts["enc"], 1) for s in sums["enc"]]
    logger.info("block influence: decoder %s encoder %s", _fmt(decoder), _fmt(encoder))
    return decoder, encoder


def drop_order(scores: Sequence[float]) -> list[int]:
    """Layer indices, least important first (ties broken by later layer first: deep layers are more redundant)."""
    return sorted(range(len(scores)), key=lambda i: (scores[i], -i))


def _fmt(values: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:.3f}" for v in values) + "]"
