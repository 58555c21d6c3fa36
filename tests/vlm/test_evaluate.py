"""The evaluator: Wilson interval, batch invariance of MCQ scoring, the A-OKVQA DA rule, leaderboard output."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import vlm.evaluate
from vlm.evaluate import (
    EvalConfig,
    MCQResult,
    direct_answer_score,
    disagreements,
    evaluate_direct_answer,
    evaluate_mcq,
    iter_mcq,
    leaderboard_predictions,
    paired_exact_p,
    wilson_interval,
)

QUIET = {"show_progress": False}


def test_paired_exact_p_by_hand():
    assert paired_exact_p(0, 5) == pytest.approx(2 / 2**5)  # all five disagreements one way
    assert paired_exact_p(9, 1) == pytest.approx(2 * (1 + 10) / 2**10)
    assert paired_exact_p(3, 3) == 1.0 and paired_exact_p(0, 0) == 1.0
    with pytest.raises(ValueError, match=">= 0"):
        paired_exact_p(-1, 2)


def test_disagreements_count_questions_only_one_model_got_right():
    correct = {"a": 0, "b": 1, "c": 2, "d": 3}
    first = MCQResult(n=4, correct=3, predictions={"a": 0, "b": 1, "c": 2, "d": 0})
    second = MCQResult(n=4, correct=2, predictions={"a": 0, "b": 0, "c": 1, "d": 3})
    assert disagreements(first, second, correct) == (2, 1)  # b and c for first, d for second


def test_wilson_interval_by_hand():
    z, n, p = 1.959964, 10, 0.8
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(centre - half) and high == pytest.approx(centre + half)
    assert (low, high) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    low, high = wilson_interval(10, 10)
    assert high == pytest.approx(1.0) and low == pytest.approx(0.7225, abs=1e-4)
    assert MCQResult(n=10, correct=8).interval == wilson_interval(8, 10)
    assert MCQResult(n=10, correct=8).summary()["ci_low"] == pytest.approx(0.4902, abs=1e-4)


def _all_logits(model, tokenizer, examples, batch_size, **kwargs) -> torch.Tensor:
    config = EvalConfig(batch_size=batch_size, **QUIET)
    return torch.cat([logits for _, logits in iter_mcq(model, tokenizer, examples, config, **kwargs)])


def test_mcq_is_batch_invariant(tiny_model, tiny_tokenizer, tiny_examples):
    # Different numbers of views and prompt lengths: batching left-pads, which must not change anything.
    one = _all_logits(tiny_model, tiny_tokenizer, tiny_examples, 1)
    full = _all_logits(tiny_model, tiny_tokenizer, tiny_examples, len(tiny_examples))
    assert one.shape == (len(tiny_examples), 4)
    torch.testing.assert_close(full, one, atol=1e-4, rtol=1e-4)
    by_one = evaluate_mcq(tiny_model, tiny_tokenizer, tiny_examples, EvalConfig(batch_size=1, **QUIET))
    batched = evaluate_mcq(tiny_model, tiny_tokenizer, tiny_examples, EvalConfig(batch_size=3, **QUIET))
    assert by_one.predictions == batched.predictions
    assert set(by_one.predictions) == {e.question_id for e in tiny_examples}
    assert by_one.n == len(tiny_examples)
    expected = sum(by_one.predictions[e.question_id] == e.correct_choice_idx for e in tiny_examples)
    assert by_one.correct == expected


def test_mcq_with_cached_vision_features(tiny_model, tiny_tokenizer, tiny_examples):
    seen = []

    def vision_fn(images, question_ids, n_views):
        seen.append((list(question_ids), list(n_views)))
        return tiny_model.encode_vision(images)

    cached = _all_logits(tiny_model, tiny_tokenizer, tiny_examples, 2, vision_fn=vision_fn)
    torch.testing.assert_close(cached, _all_logits(tiny_model, tiny_tokenizer, tiny_examples, 2))
    assert seen == [(["q0", "q1"], [3, 5]), (["q2", "q3"], [3, 5])]


def test_mcq_never_predicts_a_missing_choice(tiny_model, tiny_tokenizer, tiny_examples, monkeypatch):
    three = dataclasses.replace(tiny_examples[0], question_id="three", choices=["red", "blue", "green"])
    examples = [three, tiny_examples[1]]

    def prefers_d(model, batch, letter_ids, vision_features=None):
        return torch.tensor([[0.0, 1.0, 2.0, 9.0]]).repeat(batch["input_ids"].shape[0], 1)

    monkeypatch.setattr(vlm.evaluate, "mcq_letter_logits", prefers_d)
    result = evaluate_mcq(tiny_model, tiny_tokenizer, examples, EvalConfig(batch_size=2, **QUIET))
    assert result.predictions == {"three": 2, "q1": 3}
    ((_, logits),) = iter_mcq(tiny_model, tiny_tokenizer, examples, EvalConfig(batch_size=2, **QUIET))
    assert logits[0, 3] == float("-inf") and torch.isfinite(logits[1]).all()


def test_hidden_answers_are_predicted_not_scored(tiny_model, tiny_tokenizer, tiny_examples):
    hidden = [dataclasses.replace(e, correct_choice_idx=None) for e in tiny_examples[:2]]
    result = evaluate_mcq(tiny_model, tiny_tokenizer, hidden, EvalConfig(**QUIET))
    assert result.n == 0 and len(result.predictions) == 2 and result.accuracy == 0.0


@pytest.mark.parametrize(("matches", "score"), [(0, 0.0), (1, 1 / 3), (2, 2 / 3), (3, 1.0), (7, 1.0)])
def test_direct_answer_score_rule(matches, score):
    answers = ["red"] * matches + ["blue"] * (10 - matches)
    assert direct_answer_score("red", answers) == pytest.approx(score)


def test_direct_answer_score_normalises_case_and_whitespace():
    answers = ["fire hydrant"] * 2 + ["Fire  Hydrant "] + ["hydrant"] * 7
    assert direct_answer_score("  FIRE hydrant\n", answers) == 1.0
    assert direct_answer_score("firehydrant", answers) == 0.0


def test_evaluate_direct_answer_runs(tiny_model, tiny_tokenizer, tiny_examples):
    examples = [*tiny_examples[:2], dataclasses.replace(tiny_examples[2], difficult_direct_answer=True)]
    config = EvalConfig(batch_size=2, max_new_tokens=3, **QUIET)
    result = evaluate_direct_answer(tiny_model, tiny_tokenizer, examples, config)
    assert set(result.predictions) == {"q0", "q1", "q2"}
    assert result.n == 2  # the difficult question is answered but not scored
    assert all(1 <= n <= 4 for n in result.answer_tokens.values())
    assert 0.0 <= result.accuracy <= 1.0


def test_evaluate_direct_answer_cuts_at_eos(tiny_model, tiny_tokenizer, tiny_examples, monkeypatch):
    vocab = tiny_tokenizer.get_vocab()
    im_end, red, ball = vocab["<|im_end|>"], vocab["red"], vocab["ball"]
    calls = []

    def fake_generate(input_ids, images, attention_mask, max_new_tokens, eos_token_id):
        calls.append(eos_token_id)
        rows = [[red, im_end, ball, ball], [red, ball, im_end, im_end]]
        return torch.tensor(rows[: input_ids.shape[0]])

    monkeypatch.setattr(tiny_model, "generate_greedy", fake_generate)
    examples = [dataclasses.replace(e, direct_answers=["red"] * 3 + ["x"] * 7) for e in tiny_examples[:2]]
    result = evaluate_direct_answer(tiny_model, tiny_tokenizer, examples, EvalConfig(batch_size=2, **QUIET))
    assert calls == [im_end]
    assert result.predictions == {"q0": "red", "q1": "red ball"}
    assert result.answer_tokens == {"q0": 2, "q1": 3}
    assert result.n == 2 and result.accuracy == pytest.approx(0.5)


def test_leaderboard_predictions(tiny_examples):
    examples = tiny_examples[:2]
    mcq = MCQResult(predictions={"q0": 1, "q1": 3})
    da = vlm.evaluate.DAResult(predictions={"q0": "red", "q1": "blue sky"})
    out = leaderboard_predictions(examples, mcq, da)
    assert out == {
        "q0": {"multiple_choice": examples[0].choices[1], "direct_answer": "red"},
        "q1": {"multiple_choice": examples[1].choices[3], "direct_answer": "blue sky"},
    }
    assert leaderboard_predictions(examples, mcq)["q0"] == {"multiple_choice": examples[0].choices[1]}
