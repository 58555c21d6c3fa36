"""nanoVLM's image pipeline and the prompts, in one place.

Images: resize so the long side fills the crop grid and both sides are multiples of the view size
(bicubic), scale to [0, 1] with no mean/std normalisation, cut into row-major view x view crops and
prepend a global view (the whole image squashed to one view) unless the grid is 1x1. This follows
nanoVLM's `data/custom_transforms.py` (DynamicResize, GlobalAndSplitImages) and `data/processors.py`
(get_image_string): https://github.com/huggingface/nanoVLM

Prompts: evaluation, search and distillation all build their prompts with `mcq_user_text` /
`da_user_text` and `build_prompt`; nothing else should format a question.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from vlm.config import MAX_CROP_GRID, ImageSpec, VLMConfig
from vlm.geometry import resized_size

MCQ_INSTRUCTION = "Answer with the option's letter from the given choices directly."
DA_INSTRUCTION = "Answer the question using a single word or phrase."
CHOICE_LETTERS = ("A", "B", "C", "D")


# ---------------------------------------------------------------------------------------------- images


def _pil_to_uint8(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> uint8 tensor [3, H, W]."""
    image = image.convert("RGB")
    width, height = image.size
    data = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)  # [H*W*3]
    return data.view(height, width, 3).permute(2, 0, 1)  # [3, H, W]


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float32 tensor [3, H, W] in [0, 1] (torchvision's ToTensor, without torchvision)."""
    return _pil_to_uint8(image).float().div_(255.0)


def split_image(image: Image.Image, spec: ImageSpec) -> tuple[torch.Tensor, tuple[int, int]]:
    """Views of one image, as the model consumes them.

    Returns:
        views: float32 [N, 3, S, S] in [0, 1]: the global view first (absent for a 1x1 grid), then the
            crops row by row.
        grid: (n_rows, n_cols) of crops.
    """
    image = image.convert("RGB")
    size = spec.view_size
    new_w, new_h = resized_size(*image.size, spec)
    resized = image.resize((new_w, new_h), Image.BICUBIC)
    n_rows, n_cols = new_h // size, new_w // size

    # Cut and stack in uint8, convert to float once at the end: a quarter of the memory traffic.
    pixels = _pil_to_uint8(resized)  # [3, H, W]
    views = [
        pixels.view(3, n_rows, size, n_cols, size)
        .permute(1, 3, 0, 2, 4)  # [rows, cols, 3, S, S]: row-major order
        .reshape(n_rows * n_cols, 3, size, size)
    ]
    if (n_rows, n_cols) != (1, 1):  # nanoVLM drops the global view of a 1x1 grid: it would repeat the crop
        # Bilinear with PIL's antialiasing stands in for torchvision's resize(antialias=True) in nanoVLM.
        global_view = _pil_to_uint8(resized.resize((size, size), Image.BILINEAR)).unsqueeze(0)  # [1, 3, S, S]
        views.insert(0, global_view)
    return torch.cat(views, dim=0).float().div_(255.0), (n_rows, n_cols)  # [N, 3, S, S]


def image_placeholder(
    grid: tuple[int, int],
    spec: ImageSpec,
    image_token: str,
    global_token: str,
    crop_tokens: Mapping[str, str],
) -> str:
    """nanoVLM's image string: the global tag and its tokens, then each crop's `<row_i_col_j>` tag and tokens.

    A 1x1 grid yields only the global tag and one view's tokens (its single view is the whole image).
    `crop_tokens` maps "r{i}c{j}" (1-based) to the tag.
    """
    rows, cols = grid
    if rows < 1 or cols < 1:
        raise ValueError(f"grid {grid} must have at least one row and one column")
    if rows > MAX_CROP_GRID or cols > MAX_CROP_GRID:
        raise ValueError(
            f"grid {rows}x{cols} exceeds nanoVLM's {MAX_CROP_GRID}x{MAX_CROP_GRID} crop tags; lower max_grid_side"
        )
    view_tokens = image_token * spec.tokens_per_view
    parts = [global_token, view_tokens]
    if (rows, cols) != (1, 1):
        for i in range(1, rows + 1):
            for j in range(1, cols + 1):
                key = f"r{i}c{j}"
                if key not in crop_tokens:
                    raise ValueError(f"no crop tag {key!r} for a {rows}x{cols} grid")
                parts += [crop_tokens[key], view_tokens]
    return "".join(parts)


def image_placeholder_for(grid: tuple[int, int], spec: ImageSpec, extra_tokens: Mapping[str, str]) -> str:
    """`image_placeholder` with the tokens taken from a `VLMConfig.vlm_extra_tokens` dict."""
    return image_placeholder(
        grid, spec, extra_tokens["image_token"], extra_tokens["global_image_token"], extra_tokens
    )


# --------------------------------------------------------------------------------------------- prompts


def mcq_user_text(question: str, choices: Sequence[str]) -> str:
    """Multiple-choice question: the question, lettered options one per line, then the instruction."""
    if not 2 <= len(choices) <= len(CHOICE_LETTERS):
        raise ValueError(f"expected 2..{len(CHOICE_LETTERS)} choices, got {len(choices)}")
    options = "\n".join(
        f"{letter}. {choice}" for letter, choice in zip(CHOICE_LETTERS[: len(choices)], choices, strict=True)
    )
    return f"{question}\n{options}\n{MCQ_INSTRUCTION}"


def da_user_text(question: str) -> str:
    """Direct-answer question: the question, then the short-answer instruction."""
    return f"{question}\n{DA_INSTRUCTION}"


def build_prompt(tokenizer, image_string: str, user_text: str) -> str:
    """Chat-formatted prompt: one user turn (image string, then text), ending with the assistant header."""
    messages = [{"role": "user", "content": image_string + user_text}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


# ------------------------------------------------------------------------------------------- encoding


@dataclass
class Encoded:
    """One tokenized example: prompt ids [T] (long), its image views [N, 3, S, S] and crop grid."""

    input_ids: torch.Tensor
    images: torch.Tensor
    grid: tuple[int, int]


def encode_example(tokenizer, cfg: VLMConfig, spec: ImageSpec, image: Image.Image, user_text: str) -> Encoded:
    """Process the image, build the prompt and tokenize it; the image tokens must match the views."""
    views, grid = split_image(image, spec)
    prompt = build_prompt(tokenizer, image_placeholder_for(grid, spec, cfg.vlm_extra_tokens), user_text)
    # The chat template already holds every special token the model expects; add no BOS/EOS.
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    input_ids = torch.tensor(ids, dtype=torch.long)  # [T]
    image_token_id = tokenizer.convert_tokens_to_ids(cfg.vlm_extra_tokens["image_token"])
    n_image_tokens = int((input_ids == image_token_id).sum())
    expected = views.shape[0] * spec.tokens_per_view
    if n_image_tokens != expected:
        raise ValueError(
            f"prompt holds {n_image_tokens} image tokens but {views.shape[0]} views x {spec.tokens_per_view} "
            f"tokens need {expected}; is {cfg.vlm_extra_tokens['image_token']!r} a special token of the tokenizer?"
        )
    return Encoded(input_ids=input_ids, images=views, grid=grid)


def collate(batch: Sequence[Encoded], pad_id: int) -> dict:
    """Left-pad a batch (the evaluator reads the last position's logits, so every prompt must end there).

    Returns input_ids [B, T] long, attention_mask [B, T] long (1 = real token), images [sum N, 3, S, S]
    (all views of example 0, then example 1, ...) and n_views (views per example).
    """
    if not batch:
        raise ValueError("cannot collate an empty batch")
    length = max(int(item.input_ids.shape[0]) for item in batch)
    input_ids = torch.full((len(batch), length), pad_id, dtype=torch.long)  # [B, T]
    attention_mask = torch.zeros((len(batch), length), dtype=torch.long)  # [B, T]
    for row, item in enumerate(batch):
        n = int(item.input_ids.shape[0])
        input_ids[row, length - n :] = item.input_ids
        attention_mask[row, length - n :] = 1
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "images": torch.cat([item.images for item in batch], dim=0),  # [sum N, 3, S, S]
        "n_views": [int(item.images.shape[0]) for item in batch],
    }
