"""Why the demo teacher stays at chance: can a tiny Llama learn the MCQ letter mapping at all?

`python -m benchmarks.letter_mapping_probe [--steps 1500] [--threads 1] [--out benchmarks/results/letter_mapping.json]`

Answering an MCQ by its letter needs, besides seeing the image, a text-only skill: find the choice that
equals the answer and emit the letter in front of it. This probe isolates that skill on a plain
`transformers.LlamaForCausalLM` with no image and no tokenizer:

    <bos> TARGET  A . w1  B . w2  C . w3  D . w4  [F filler tokens]  <end>  ->  letter of the wi == TARGET

The filler stands in for nanoVLM's fixed instruction ("Answer with the option's letter from the given
choices directly.", 13 tokens in the demo tokenizer) that sits between the choices and the answer.
Each setting reports the loss every `--log-every` steps and the first step at which the running loss
falls below half of chance (ln 4 / 2), or None. The grid covers the widths and learning rates the demo
teacher used and wider ones, and the same settings with *choice flags*: each choice word must also
predict its letter if it is the target and NO otherwise (what `vlm.demo.sessions.choice_flag_labels`
adds to the demo teacher's MCQ training). Only the answer position's loss decides "solved".
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import LlamaConfig, LlamaForCausalLM

logger = logging.getLogger(__name__)

N_LETTERS = 4
DOT, BOS, END, NO = 4, 5, 6, 7  # token ids 0..3 are the letters A..D
WORDS = range(10, 30)  # candidate answer words
FILLER_START = 30


@dataclass(frozen=True)
class ProbeSetting:
    width: int
    lr: float
    filler: int  # tokens between the last choice and the answer position
    layers: int = 4
    heads: int = 4
    choice_flags: bool = False  # also supervise each choice word: its letter if it is the target, else NO


DEFAULT_GRID: tuple[ProbeSetting, ...] = (
    ProbeSetting(width=96, lr=1.5e-3, filler=13),  # the demo teacher's decoder and learning rate
    ProbeSetting(width=128, lr=3e-4, filler=0),
    ProbeSetting(width=128, lr=3e-4, filler=13),
    ProbeSetting(width=192, lr=3e-4, filler=0),
    ProbeSetting(width=256, lr=2e-4, filler=13),
)
FLAG_GRID: tuple[ProbeSetting, ...] = (
    ProbeSetting(width=96, lr=1.5e-3, filler=13, choice_flags=True),
    ProbeSetting(width=128, lr=3e-4, filler=13, choice_flags=True),
    ProbeSetting(width=192, lr=4e-4, filler=13),
    ProbeSetting(width=192, lr=4e-4, filler=13, choice_flags=True),
)


def make_batch(rng: random.Random, batch_size: int, filler: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids [B, T] and the correct letter index [B]; every row has the same length."""
    rows, targets = [], []
    for _ in range(batch_size):
        choices = rng.sample(WORDS, N_LETTERS)
        answer = rng.randrange(N_LETTERS)
        seq = [BOS, choices[answer]]
        for letter, word in enumerate(choices):
            seq += [letter, DOT, word]
        seq += list(range(FILLER_START, FILLER_START + filler)) + [END]
        rows.append(seq)
        targets.append(answer)
    return torch.tensor(rows), torch.tensor(targets)


def choice_word_positions() -> list[int]:
    """Index of each choice word in a `make_batch` row: BOS, target, then (letter, DOT, word) x 4."""
    return [2 + 3 * k + 2 for k in range(N_LETTERS)]


def flag_targets(ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """[B, 4]: the letter at the target's choice word, NO at the others."""
    flags = torch.full((ids.shape[0], N_LETTERS), NO, dtype=torch.long)
    flags[torch.arange(ids.shape[0]), targets] = targets
    return flags


def run_probe(setting: ProbeSetting, steps: int, batch_size: int, log_every: int, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    rng = random.Random(seed)
    vocab = FILLER_START + max(setting.filler, 1)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=vocab,
            hidden_size=setting.width,
            intermediate_size=4 * setting.width,
            num_hidden_layers=setting.layers,
            num_attention_heads=setting.heads,
            num_key_value_heads=setting.heads,
            max_position_embeddings=128,
            tie_word_embeddings=True,
        )
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=setting.lr, weight_decay=0.0)
    solved_threshold = math.log(N_LETTERS) / 2
    running, solved_at, curve = None, None, []
    start = time.time()
    for step in tqdm(range(steps), desc=f"w{setting.width} lr{setting.lr:g} f{setting.filler}", leave=False):
        ids, targets = make_batch(rng, batch_size, setting.filler)
        logits = model(ids).logits
        loss = F.cross_entropy(logits[:, -1], targets)
        total = loss
        if setting.choice_flags:
            flag_logits = logits[:, choice_word_positions()]  # [B, 4, V]
            total = loss + F.cross_entropy(flag_logits.flatten(0, 1), flag_targets(ids, targets).flatten())
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        running = loss.item() if running is None else 0.9 * running + 0.1 * loss.item()
        if solved_at is None and running < solved_threshold:
            solved_at = step + 1
        if (step + 1) % log_every == 0:
            curve.append((step + 1, round(running, 4)))
    return {
        **asdict(setting),
        "steps": steps,
        "final_loss": round(running, 4),
        "solved_at_step": solved_at,
        "seconds": round(time.time() - start, 1),
        "curve": curve,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--log-every", type=int, default=250)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/letter_mapping.json"))
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument(
        "--grid",
        choices=("all", "plain", "flags"),
        default="all",
        help="plain settings, choice-flag ones, or both",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    results = []
    grid = {"plain": DEFAULT_GRID, "flags": FLAG_GRID, "all": DEFAULT_GRID + FLAG_GRID}[args.grid]
    for setting in grid:
        result = run_probe(setting, args.steps, args.batch_size, args.log_every)
        results.append(result)
        logger.info(
            "width %3d  lr %-7g filler %2d  flags %-5s  final loss %.3f (chance %.3f)  solved at step %s  (%.0f s)",
            setting.width,
            setting.lr,
            setting.filler,
            setting.choice_flags,
            result["final_loss"],
            math.log(N_LETTERS),
            result["solved_at_step"],
            result["seconds"],
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    logger.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
