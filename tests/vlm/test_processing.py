from __future__ import annotations

import dataclasses
import re

import pytest
import torch
from PIL import Image, ImageDraw

from vlm.config import ImageSpec, VLMConfig
from vlm.processing import (
    DA_INSTRUCTION,
    MCQ_INSTRUCTION,
    Encoded,
    build_prompt,
    collate,
    da_user_text,
    encode_example,
    image_placeholder,
    image_placeholder_for,
    mcq_user_text,
    pil_to_tensor,
    split_image,
)
from vlm.tokenizer import build_word_tokenizer, special_token_ids

CFG = VLMConfig()
NANOVLM = ImageSpec(view_size=512, max_grid_side=4, tokens_per_view=64)
SMALL = ImageSpec(view_size=16, max_grid_side=4, tokens_per_view=4)


def _words(*texts: str) -> list[str]:
    """Words as the word tokenizer splits them (whitespace, then each punctuation mark alone)."""
    return [w for t in texts for w in re.findall(r"\w+|[^\w\s]", t)]


@pytest.fixture(scope="module")
def tokenizer():
    words = _words(
        "user assistant", MCQ_INSTRUCTION, DA_INSTRUCTION, "What color is the ball? red blue green A B C D"
    )
    return build_word_tokenizer(words, CFG)


def _pattern_image(width: int, height: int) -> Image.Image:
    """An image whose regions differ, so a misplaced crop shows."""
    image = Image.new("RGB", (width, height), (20, 40, 60))
    draw = ImageDraw.Draw(image)
    for k in range(0, width, 7):
        draw.line([(k, 0), (width - k, height)], fill=(k * 3 % 256, 200 - k % 200, k % 256), width=2)
    draw.rectangle([0, 0, width // 3, height // 4], fill=(255, 0, 0))
    return image


def test_nanovlm_coco_image_gives_13_views():
    views, grid = split_image(Image.new("RGB", (640, 480), (0, 128, 255)), NANOVLM)
    assert grid == (3, 4)
    assert views.shape == (13, 3, 512, 512)
    assert views.dtype == torch.float32


def test_portrait_grid_and_values_in_unit_range():
    views, grid = split_image(_pattern_image(30, 40), SMALL)  # long side 40 -> 64, short 30 -> 48
    assert grid == (4, 3)
    assert views.shape == (13, 3, 16, 16)
    assert 0.0 <= views.min() and views.max() <= 1.0
    assert views.max() == 1.0  # the red rectangle: no mean/std normalisation


def test_crops_are_row_major_regions_of_the_resized_image():
    image = _pattern_image(50, 37)
    views, (rows, cols) = split_image(image, SMALL)
    assert (rows, cols) == (3, 4)  # 50x37 -> 64x48
    resized = pil_to_tensor(image.resize((64, 48), Image.BICUBIC))  # [3, 48, 64]
    for r in range(rows):
        for c in range(cols):
            crop = views[1 + r * cols + c]
            assert torch.equal(crop, resized[:, r * 16 : (r + 1) * 16, c * 16 : (c + 1) * 16])


def test_global_view_is_the_resized_image_squashed():
    image = _pattern_image(50, 37)
    views, _ = split_image(image, SMALL)
    expected = pil_to_tensor(image.resize((64, 48), Image.BICUBIC).resize((16, 16), Image.BILINEAR))
    assert torch.equal(views[0], expected)


def test_single_view_grid_has_no_global_view():
    spec = ImageSpec(view_size=16, max_grid_side=1, tokens_per_view=4)
    image = _pattern_image(40, 25)
    views, grid = split_image(image, spec)
    assert grid == (1, 1)
    assert views.shape == (1, 3, 16, 16)
    assert torch.equal(views[0], pil_to_tensor(image.resize((16, 16), Image.BICUBIC)))


def test_no_upscaling_to_max_side_when_disabled():
    spec = ImageSpec(view_size=16, max_grid_side=4, tokens_per_view=4, resize_to_max_side_len=False)
    views, grid = split_image(_pattern_image(20, 10), spec)  # long 20 -> 32, short 10 -> 16
    assert grid == (1, 2)
    assert views.shape == (3, 3, 16, 16)


def test_grayscale_and_rgba_inputs_become_rgb():
    for mode in ("L", "RGBA", "P"):
        views, _ = split_image(Image.new(mode, (20, 20)), SMALL)
        assert views.shape[1] == 3


def test_pil_to_tensor_matches_pixels():
    image = Image.new("RGB", (3, 2), (255, 0, 51))
    image.putpixel((2, 1), (0, 102, 255))
    t = pil_to_tensor(image)
    assert t.shape == (3, 2, 3)
    assert torch.allclose(t[:, 0, 0], torch.tensor([1.0, 0.0, 0.2]))
    assert torch.allclose(t[:, 1, 2], torch.tensor([0.0, 0.4, 1.0]))


def test_placeholder_layout_and_counts():
    text = image_placeholder_for((3, 4), NANOVLM, CFG.vlm_extra_tokens)
    assert text.count("<|image|>") == 13 * 64
    assert text.count("<|global_image|>") == 1
    assert len(re.findall(r"<row_\d_col_\d>", text)) == 12
    assert text.startswith("<|global_image|>" + "<|image|>" * 64 + "<row_1_col_1><|image|>")
    assert text.endswith("<row_3_col_4>" + "<|image|>" * 64)
    tags = re.findall(r"<row_(\d)_col_(\d)>", text)
    assert tags == [(str(r), str(c)) for r in range(1, 4) for c in range(1, 5)]  # row-major, 1-based


def test_placeholder_single_view():
    text = image_placeholder((1, 1), SMALL, "<i>", "<g>", {})
    assert text == "<g>" + "<i>" * 4


def test_placeholder_rejects_grids_beyond_tags():
    with pytest.raises(ValueError, match="exceeds"):
        image_placeholder_for((9, 2), SMALL, CFG.vlm_extra_tokens)
    with pytest.raises(ValueError, match="r1c2"):
        image_placeholder((1, 2), SMALL, "<i>", "<g>", {"r1c1": "<a>"})


def test_user_texts():
    assert mcq_user_text("What color?", ["red", "blue", "green", "pink"]) == (
        "What color?\nA. red\nB. blue\nC. green\nD. pink\nAnswer with the option's letter from the given choices directly."
    )
    assert da_user_text("What color?") == "What color?\nAnswer the question using a single word or phrase."
    with pytest.raises(ValueError):
        mcq_user_text("q", ["a", "b", "c", "d", "e"])


def test_build_prompt(tokenizer):
    prompt = build_prompt(tokenizer, "<|global_image|><|image|>", "What color?")
    assert (
        prompt == "<|im_start|>user\n<|global_image|><|image|>What color?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_encode_example(tokenizer):
    user = mcq_user_text("What color is the ball?", ["red", "blue", "green", "red"])
    enc = encode_example(tokenizer, CFG, SMALL, _pattern_image(50, 37), user)
    ids = special_token_ids(tokenizer, CFG)
    assert enc.grid == (3, 4)
    assert enc.images.shape == (13, 3, 16, 16)
    assert enc.input_ids.dtype == torch.long and enc.input_ids.ndim == 1
    assert int((enc.input_ids == ids["image_token"]).sum()) == 13 * 4
    assert tokenizer.unk_token_id not in enc.input_ids.tolist()
    tail = tokenizer.convert_ids_to_tokens(enc.input_ids[-3:].tolist())
    assert tail == ["<|im_end|>", "<|im_start|>", "assistant"]


def test_encode_example_detects_missing_image_tokens():
    bare = build_word_tokenizer(["user", "assistant"], dataclasses.replace(CFG, vlm_extra_tokens={}))
    with pytest.raises(ValueError, match="image tokens"):
        encode_example(bare, CFG, SMALL, _pattern_image(20, 20), "hi")


def test_collate_left_pads():
    a = Encoded(torch.tensor([5, 6, 7]), torch.zeros(2, 3, 4, 4), (1, 1))
    b = Encoded(torch.tensor([8]), torch.ones(3, 3, 4, 4), (1, 2))
    batch = collate([a, b], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert batch["images"].shape == (5, 3, 4, 4)
    assert batch["images"][:2].sum() == 0 and batch["images"][2:].min() == 1  # example 0's views first
    assert batch["n_views"] == [2, 3]
    with pytest.raises(ValueError):
        collate([], pad_id=0)
