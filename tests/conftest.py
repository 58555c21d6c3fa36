"""Shared fixtures: a tiny nanoVLM-shaped config, a word tokenizer, a random model and a few examples.

The tiny config (tests/nanovlm_reference.py) has 32 px views of 8x8 patches, pixel shuffle 2 -> 4x4 = 16
tokens per view, and max_img_size 64 -> at most 2 crops along the long side.
"""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch
from PIL import Image, ImageDraw

from tests.nanovlm_reference import tiny_nanovlm_config
from vlm.config import VLMConfig
from vlm.data import VQAExample
from vlm.model import VisionLanguageModel
from vlm.processing import DA_INSTRUCTION, MCQ_INSTRUCTION
from vlm.tokenizer import build_word_tokenizer, special_token_ids

COLOURS = ("red", "blue", "green", "yellow", "black", "white")
QUESTION_WORDS = ("what", "colour", "color", "is", "the", "ball", "box", "sky", "shape", "here")


def _words(*texts: str) -> list[str]:
    """Words as the word tokenizer splits them: whitespace, then each punctuation mark on its own."""
    return [w for t in texts for w in re.findall(r"\w+|[^\w\s]", t)]


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    """One intra-op thread: predictable timings and results on small CI machines."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_cfg() -> VLMConfig:
    """The tiny nanoVLM config (its own 166-token vocabulary: base 100 + 66 image tokens)."""
    return VLMConfig.from_dict(tiny_nanovlm_config())


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_cfg):
    """Word tokenizer holding the chat roles, the option letters, both instructions and some colours."""
    words = [
        "user",
        "assistant",
        "A",
        "B",
        "C",
        "D",
        ".",
        "?",
        "'",
        "s",
        *_words(MCQ_INSTRUCTION, DA_INSTRUCTION),
        *COLOURS,
        *QUESTION_WORDS,
    ]
    return build_word_tokenizer(words, tiny_cfg)


@pytest.fixture(scope="session")
def tiny_vocab_cfg(tiny_cfg, tiny_tokenizer) -> VLMConfig:
    """`tiny_cfg` with the vocabulary of `tiny_tokenizer` (its 66 image tokens counted as extras)."""
    size = len(tiny_tokenizer)
    return dataclasses.replace(tiny_cfg, lm_vocab_size=size, lm_base_vocab_size=size - 66)


@pytest.fixture(scope="session")
def image_token_id(tiny_tokenizer, tiny_vocab_cfg) -> int:
    return special_token_ids(tiny_tokenizer, tiny_vocab_cfg)["image_token"]


@pytest.fixture
def tiny_model(tiny_vocab_cfg, image_token_id) -> VisionLanguageModel:
    """A random tiny model in eval mode, the same weights every time."""
    torch.manual_seed(0)
    return VisionLanguageModel(tiny_vocab_cfg, image_token_id).eval()


def _pattern_image(width: int, height: int, seed: int) -> Image.Image:
    """An image with a few coloured shapes, so views of it differ."""
    gen = torch.Generator().manual_seed(seed)
    image = Image.new("RGB", (width, height), tuple(torch.randint(0, 256, (3,), generator=gen).tolist()))
    draw = ImageDraw.Draw(image)
    for _ in range(4):
        x0, y0 = (
            torch.randint(0, width, (1,), generator=gen).item(),
            torch.randint(0, height, (1,), generator=gen).item(),
        )
        colour = tuple(torch.randint(0, 256, (3,), generator=gen).tolist())
        draw.rectangle([x0, y0, x0 + width // 3, y0 + height // 3], fill=colour)
    return image


@pytest.fixture(scope="session")
def tiny_examples() -> list[VQAExample]:
    """Examples whose images give different numbers of views and prompt lengths.

    With the tiny config (32 px views, long side resized to 64): 64x32 -> 1x2 crops + global = 3 views,
    50x70 -> 2x2 + global = 5, 30x90 -> 2x1 + global = 3, 32x32 -> 2x2 + global = 5.
    """
    sizes = [(64, 32), (50, 70), (30, 90), (32, 32)]
    questions = [
        "what colour is the ball ?",
        "what is the colour of the sky here ?",
        "what shape is the box ?",
        "what colour is the box ?",
    ]
    examples = []
    for i, ((width, height), question) in enumerate(zip(sizes, questions)):
        choices = [COLOURS[(i + j) % len(COLOURS)] for j in range(4)]
        examples.append(
            VQAExample(
                question_id=f"q{i}",
                image=_pattern_image(width, height, seed=i),
                question=question,
                choices=choices,
                correct_choice_idx=i % 4,
                direct_answers=[choices[i % 4]] * 10,
            )
        )
    return examples


@pytest.fixture(scope="session")
def world_teacher(world):
    """(the tiny world's random teacher in eval mode on CPU, its tokenizer); `world` comes from the package's conftest."""
    from ledger.config import ModelSettings
    from ledger.world import load_teacher

    return load_teacher(ModelSettings(teacher=str(world.teacher), device="cpu"))
