"""Teacher-forced training sequences and their loss, shared by the demo teacher and distillation.

A sequence is token ids plus labels (-100 where nothing is supervised) and the image views its image
tokens stand for. `collate_sequences` right-pads a batch (the model's position ids skip padding, so the
side does not matter for training) and `sequence_loss` is next-token cross-entropy on the labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class TrainingSequence:
    """Token ids, labels (-100 where nothing is supervised) and the views of its image (or None)."""

    input_ids: list[int]
    labels: list[int]
    views: torch.Tensor | None


def collate_sequences(sequences: list[TrainingSequence], pad_id: int) -> dict:
    """Right-padded ids, attention mask and labels, plus the views of every sequence that has an image."""
    if not sequences:
        raise ValueError("cannot collate an empty batch")
    length = max(len(s.input_ids) for s in sequences)
    ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for row, seq in enumerate(sequences):
        n = len(seq.input_ids)
        ids[row, :n] = torch.tensor(seq.input_ids)
        mask[row, :n] = 1
        labels[row, :n] = torch.tensor(seq.labels)
    views = [s.views for s in sequences if s.views is not None]
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "labels": labels,
        "images": torch.cat(views) if views else None,
    }


def sequence_loss(model, batch: dict, device: torch.device | str | None = None) -> torch.Tensor:
    """Cross-entropy of each labelled token given the ones before it (position t predicts token t+1)."""
    ids, mask, labels = (batch[k].to(device) for k in ("input_ids", "attention_mask", "labels"))
    logits = model(ids, batch["images"], mask)  # [B, T, V]; the model moves images to its device
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
