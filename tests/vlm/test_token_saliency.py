"""Token saliency: which visual tokens the gold letter depends on, and the scorer's listwise loss."""

from __future__ import annotations

import torch

from vlm.evaluate import encode_mcq, letter_token_ids
from vlm.processing import collate
from vlm.token_saliency import scorer_ranking_loss, token_saliency


def _batch(model, tokenizer, examples):
    spec = model.image_spec
    batch = collate([encode_mcq(tokenizer, model, spec, e) for e in examples], tokenizer.pad_token_id)
    with torch.no_grad():
        tokens = model.project(model.encode_vision(batch["images"]))
    labels = torch.tensor([e.correct_choice_idx for e in examples])
    return batch, tokens, labels


def test_saliency_is_per_token_nonnegative_and_leaves_the_weights(tiny_model, tiny_tokenizer, tiny_examples):
    batch, tokens, labels = _batch(tiny_model, tiny_tokenizer, tiny_examples[:3])
    letters = letter_token_ids(tiny_tokenizer)
    saliency = token_saliency(
        tiny_model, batch["input_ids"], batch["attention_mask"], tokens, letters, labels
    )
    assert saliency.shape == tokens.shape[:2]
    assert (saliency >= 0).all() and saliency.sum() > 0
    assert all(p.grad is None for p in tiny_model.parameters())


def test_a_zeroed_token_has_no_saliency(tiny_model, tiny_tokenizer, tiny_examples):
    batch, tokens, labels = _batch(tiny_model, tiny_tokenizer, tiny_examples[:2])
    tokens = tokens.clone()
    tokens[0, 3] = 0  # gradient times input: a token of zeros contributes nothing to first order
    letters = letter_token_ids(tiny_tokenizer)
    saliency = token_saliency(
        tiny_model, batch["input_ids"], batch["attention_mask"], tokens, letters, labels
    )
    assert saliency[0, 3] == 0 and saliency[0].sum() > 0


def test_ranking_loss_is_lowest_when_scores_follow_the_saliency():
    saliency = torch.tensor([[4.0, 1.0, 0.0, 3.0]])
    matching = torch.log(saliency / saliency.sum() + 1e-9)
    assert scorer_ranking_loss(matching, saliency) < scorer_ranking_loss(torch.zeros(1, 4), saliency)
    assert scorer_ranking_loss(torch.zeros(1, 4), saliency) < scorer_ranking_loss(-matching, saliency)
    # Only the ranking matters, not the saliency's scale.
    torch.testing.assert_close(
        scorer_ranking_loss(matching, saliency), scorer_ranking_loss(matching, 5 * saliency)
    )
