"""The one evaluator: A-OKVQA multiple choice and direct answer, as search, distill and finalize all use it.

MCQ: lettered choices in the prompt; the prediction is the choice letter whose logit is highest at the last
prompt position after one prefill (no decoding). Direct answer: greedy decoding with the KV cache until EOS,
scored by A-OKVQA's rule min(1, matches / 3) over the 10 human answers, with `difficult_direct_answer`
questions excluded (https://github.com/allenai/aokvqa, evaluation/eval_predictions.py).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from vlm.config import ImageSpec
from vlm.data import VQAExample
from vlm.model import VisionLanguageModel
from vlm.processing import CHOICE_LETTERS, Encoded, collate, da_user_text, encode_example, mcq_user_text
from vlm.tokenizer import single_token_id

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalConfig:
    """How to run an evaluation (what to evaluate on is a `vlm.data.DataConfig`)."""

    batch_size: int = 16
    max_new_tokens: int = 10  # A-OKVQA direct answers are one to three words
    show_progress: bool = True

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.max_new_tokens < 1:
            raise ValueError("batch_size and max_new_tokens must be >= 1")


def wilson_interval(correct: float, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (better than the normal one near 0 and 1 and for small n)."""
    if n == 0:
        return 0.0, 1.0
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def paired_exact_p(only_first: int, only_second: int) -> float:
    """Two-sided exact McNemar p-value for two models scored on the same questions.

    ``only_first`` questions were right for the first model only, ``only_second`` for the second only;
    questions both got right or both got wrong carry no information about which is better. Pairing makes
    a drop of a few points on 1,000 questions detectable where the two Wilson intervals still overlap.
    """
    if only_first < 0 or only_second < 0:
        raise ValueError(f"counts must be >= 0, got {only_first} and {only_second}")
    n = only_first + only_second
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(only_first, only_second) + 1)) / 2**n
    return min(1.0, 2 * tail)


def disagreements(first: MCQResult, second: MCQResult, correct: dict[str, int]) -> tuple[int, int]:
    """(right for `first` only, right for `second` only) over the questions both answered."""
    shared = first.predictions.keys() & second.predictions.keys()
    only_first = sum(first.predictions[q] == correct[q] != second.predictions[q] for q in shared)
    only_second = sum(second.predictions[q] == correct[q] != first.predictions[q] for q in shared)
    return only_first, only_second


@dataclass
class MCQResult:
    """Accuracy with its interval and per-question predictions (choice index)."""

    n: int = 0
    correct: int = 0
    predictions: dict[str, int] = field(default_factory=dict)
    n_views: dict[str, int] = field(default_factory=dict)
    prompt_tokens: dict[str, int] = field(default_factory=dict)

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else 0.0

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.correct, self.n)

    def summary(self) -> dict:
        low, high = self.interval
        return {
            "n": self.n,
            "correct": self.correct,
            "accuracy": self.accuracy,
            "ci_low": low,
            "ci_high": high,
        }


def letter_token_ids(tokenizer, n_choices: int = 4) -> list[int]:
    if n_choices > len(CHOICE_LETTERS):
        raise ValueError(f"at most {len(CHOICE_LETTERS)} choices are supported, got {n_choices}")
    return [single_token_id(tokenizer, letter) for letter in CHOICE_LETTERS[:n_choices]]


def encode_mcq(tokenizer, model: VisionLanguageModel, spec: ImageSpec, example: VQAExample) -> Encoded:
    return encode_example(
        tokenizer, model.cfg, spec, example.image, mcq_user_text(example.question, example.choices)
    )


def batches(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# A function from (batched views [N, 3, S, S], question ids) to ViT features [N, P, D]; lets the search
# serve features from its cache instead of running the encoder again.
VisionFn = Callable[[torch.Tensor, Sequence[str], Sequence[int]], torch.Tensor]


def mcq_letter_logits(
    model: VisionLanguageModel,
    batch: dict,
    letter_ids: Sequence[int],
    vision_features: torch.Tensor | None = None,
) -> torch.Tensor:
    """Logits of the choice letters at the last prompt position: [B, n_choices] (differentiable: wrap in
    `torch.no_grad()` to evaluate)."""
    device = next(model.parameters()).device
    features = (
        vision_features if vision_features is not None else model.encode_vision(batch["images"].to(device))
    )
    image_embeds = model.project(features.to(device))
    logits = model.language_forward(
        batch["input_ids"].to(device), image_embeds, batch["attention_mask"].to(device), logits_to_keep=1
    )
    return logits[:, -1, list(letter_ids)].float()


def iter_mcq(
    model: VisionLanguageModel,
    tokenizer,
    examples: Sequence[VQAExample],
    config: EvalConfig = EvalConfig(),
    encoded: Sequence[Encoded] | None = None,
    vision_fn: VisionFn | None = None,
) -> Iterator[tuple[Sequence[VQAExample], torch.Tensor]]:
    """Yield (examples, letter logits [B, 4]) batch by batch, so callers can stop early."""
    spec = model.image_spec
    letter_ids = letter_token_ids(tokenizer, max(len(e.choices) for e in examples) if examples else 4)
    pad_id = tokenizer.pad_token_id
    for start in range(0, len(examples), config.batch_size):
        chunk = examples[start : start + config.batch_size]
        items = (
            encoded[start : start + config.batch_size]
            if encoded is not None
            else [encode_mcq(tokenizer, model, spec, e) for e in chunk]
        )
        batch = collate(items, pad_id)
        features = None
        if vision_fn is not None:
            features = vision_fn(batch["images"], [e.question_id for e in chunk], batch["n_views"])
        with torch.no_grad():
            logits = mcq_letter_logits(model, batch, letter_ids, features)
        # Questions with fewer than 4 choices must never pick a missing letter.
        for row, example in enumerate(chunk):
            logits[row, len(example.choices) :] = float("-inf")
        yield chunk, logits


def all_letter_logits(
    model: VisionLanguageModel,
    tokenizer,
    examples: Sequence[VQAExample],
    batch_size: int = 32,
    encoded: Sequence[Encoded] | None = None,
    progress: str | None = None,
) -> torch.Tensor:
    """[N, 4] letter logits for every example (e.g. a teacher's targets); missing choices at -1e4, not -inf,
    so KL terms stay finite. `progress`: a progress bar's label (None: no bar)."""
    config = EvalConfig(batch_size=batch_size, show_progress=False)
    bar = tqdm(total=len(examples), desc=progress, disable=progress is None, leave=False, unit="q")
    chunks = []
    for chunk, logits in iter_mcq(model, tokenizer, examples, config, encoded):
        chunks.append(logits.cpu())
        bar.update(len(chunk))
    bar.close()
    return torch.cat(chunks).clamp(min=-1e4) if chunks else torch.zeros(0, len(CHOICE_LETTERS))


def evaluate_mcq(
    model: VisionLanguageModel,
    tokenizer,
    examples: Sequence[VQAExample],
    config: EvalConfig = EvalConfig(),
) -> MCQResult:
    """MCQ accuracy (with Wilson interval) and per-question predictions over `examples`."""
    result = MCQResult()
    progress = tqdm(total=len(examples), desc="MCQ", disable=not config.show_progress, leave=False)
    for chunk, logits in iter_mcq(model, tokenizer, examples, config):
        predicted = logits.argmax(-1).tolist()
        for example, choice in zip(chunk, predicted):
            result.predictions[example.question_id] = int(choice)
            if example.correct_choice_idx is not None:
                result.n += 1
                result.correct += int(choice == example.correct_choice_idx)
        progress.update(len(chunk))
        progress.set_postfix(acc=f"{result.accuracy:.3f}")
    progress.close()
    return result


# ----- direct answer -------------------------------------------------------------------------------------
def normalize_answer(text: str) -> str:
    """Lower-case and collapse whitespace; A-OKVQA's answers are already normalised this way."""
    return " ".join(text.lower().strip().split())


def direct_answer_score(prediction: str, direct_answers: Sequence[str]) -> float:
    """A-OKVQA's DA rule: min(1, number of the 10 annotators who gave this exact answer / 3)."""
    pred = normalize_answer(prediction)
    matches = sum(normalize_answer(a) == pred for a in direct_answers)
    return min(1.0, matches / 3.0)


@dataclass
class DAResult:
    n: int = 0
    score_sum: float = 0.0
    predictions: dict[str, str] = field(default_factory=dict)
    answer_tokens: dict[str, int] = field(default_factory=dict)

    @property
    def accuracy(self) -> float:
        return self.score_sum / self.n if self.n else 0.0

    def summary(self) -> dict:
        return {"n": self.n, "accuracy": self.accuracy}


@torch.no_grad()
def evaluate_direct_answer(
    model: VisionLanguageModel,
    tokenizer,
    examples: Sequence[VQAExample],
    config: EvalConfig = EvalConfig(),
) -> DAResult:
    """Greedy answers with the KV cache; scored on questions not marked `difficult_direct_answer`."""
    spec = model.image_spec
    eos_ids = {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")} - {None}
    stop_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    stop_id = stop_id if stop_id is not None and stop_id != tokenizer.unk_token_id else tokenizer.eos_token_id
    device = next(model.parameters()).device
    result = DAResult()
    progress = tqdm(total=len(examples), desc="DA", disable=not config.show_progress, leave=False)
    for chunk in batches(examples, config.batch_size):
        items = [encode_example(tokenizer, model.cfg, spec, e.image, da_user_text(e.question)) for e in chunk]
        batch = collate(items, tokenizer.pad_token_id)
        new_tokens = model.generate_greedy(
            batch["input_ids"].to(device),
            batch["images"].to(device),
            batch["attention_mask"].to(device),
            max_new_tokens=config.max_new_tokens,
            eos_token_id=stop_id,
        )
        for example, row in zip(chunk, new_tokens.tolist()):
            kept = []
            for token in row:
                if token in eos_ids:
                    break
                kept.append(token)
            answer = normalize_answer(tokenizer.decode(kept, skip_special_tokens=True))
            result.predictions[example.question_id] = answer
            result.answer_tokens[example.question_id] = len(kept) + 1  # + the stop token
            if example.direct_answers and not example.difficult_direct_answer:
                result.n += 1
                result.score_sum += direct_answer_score(answer, example.direct_answers)
        progress.update(len(chunk))
    progress.close()
    return result


# ----- leaderboard file ------------------------------------------------------------------------------------
def leaderboard_predictions(
    examples: Sequence[VQAExample], mcq: MCQResult, da: DAResult | None = None
) -> dict[str, dict[str, str]]:
    """A-OKVQA's leaderboard format: {question_id: {"multiple_choice": choice string, "direct_answer": str}}."""
    out = {}
    for example in examples:
        entry = {"multiple_choice": example.choices[mcq.predictions[example.question_id]]}
        if da is not None:
            entry["direct_answer"] = da.predictions[example.question_id]
        out[example.question_id] = entry
    return out
