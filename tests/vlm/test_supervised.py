"""Teacher-forced sequences: padding, label placement and a loss that only counts labelled tokens."""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from vlm.demo.teacher import build_demo_tokenizer, demo_vlm_config
from vlm.model import VisionLanguageModel
from vlm.supervised import TrainingSequence, collate_sequences, sequence_loss
from vlm.tokenizer import special_token_ids


def test_sequence_loss_is_cross_entropy_on_the_labelled_next_tokens_only():
    tokenizer = build_demo_tokenizer()
    cfg = dataclasses.replace(demo_vlm_config(len(tokenizer)), lm_hidden_dim=32, lm_inter_dim=64)
    torch.manual_seed(0)
    model = VisionLanguageModel(cfg, special_token_ids(tokenizer, cfg)["image_token"]).eval()
    long = TrainingSequence([5, 6, 7, 8, 9], [-100, -100, -100, 8, 9], None)
    short = TrainingSequence([5, 6, 7], [-100, -100, 7], None)
    batch = collate_sequences([long, short], pad_id=tokenizer.pad_token_id)
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    assert batch["labels"][1].tolist() == [-100, -100, 7, -100, -100] and batch["images"] is None
    with torch.no_grad():
        loss = sequence_loss(model, batch)
        # By hand, one sequence at a time: tokens 8 and 9 of the first, token 7 of the second.
        first = model(torch.tensor([long.input_ids]), None)[0]
        second = model(torch.tensor([short.input_ids]), None)[0]
        by_hand = F.cross_entropy(
            torch.stack([first[2], first[3], second[1]]), torch.tensor([8, 9, 7]), reduction="mean"
        )
    torch.testing.assert_close(loss, by_hand, rtol=1e-4, atol=1e-5)
