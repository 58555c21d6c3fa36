from __future__ import annotations

import dataclasses

import pytest

from vlm import tokenizer as tok_mod
from vlm.config import VLMConfig
from vlm.tokenizer import (
    BASE_SPECIAL_TOKENS,
    build_word_tokenizer,
    load_tokenizer,
    single_token_id,
    special_token_ids,
)

WORDS = ["user", "assistant", "what", "color", "is", "the", "ball", "?", "red", "blue", "A", "B", "."]


@pytest.fixture(scope="module")
def cfg() -> VLMConfig:
    return VLMConfig()


@pytest.fixture(scope="module")
def tokenizer(cfg):
    return build_word_tokenizer(WORDS, cfg)


def test_vocabulary_order(tokenizer, cfg):
    vocab = tokenizer.get_vocab()
    extras = list(cfg.vlm_extra_tokens.values())
    assert [vocab[t] for t in BASE_SPECIAL_TOKENS] == [0, 1, 2, 3]
    assert [vocab[t] for t in extras] == list(range(4, 4 + len(extras)))
    assert [vocab[w] for w in WORDS] == list(range(4 + len(extras), 4 + len(extras) + len(WORDS)))
    assert len(tokenizer) == 4 + 66 + len(WORDS)


def test_duplicate_words_are_dropped(cfg):
    tok = build_word_tokenizer(["red", "blue", "red"], cfg)
    assert len(tok) == 4 + 66 + 2


def test_special_tokens_set(tokenizer, cfg):
    assert tokenizer.eos_token == tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.pad_token_id == 0
    assert tokenizer.unk_token == "<unk>"
    assert tokenizer.chat_template == cfg.lm_chat_template


def test_chat_template_encodes_without_unk(tokenizer):
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "what color ?"}], add_generation_prompt=True, tokenize=False
    )
    assert text == "<|im_start|>user\nwhat color ?<|im_end|>\n<|im_start|>assistant\n"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.convert_ids_to_tokens(ids) == [
        "<|im_start|>",
        "user",
        "what",
        "color",
        "?",
        "<|im_end|>",
        "<|im_start|>",
        "assistant",
    ]


def test_image_tokens_are_never_split(tokenizer, cfg):
    ids = tokenizer("<|global_image|><|image|><|image|><row_2_col_3><|image|>what", add_special_tokens=False)[
        "input_ids"
    ]
    sp = special_token_ids(tokenizer, cfg)
    assert ids == [
        sp["global_image_token"],
        sp["image_token"],
        sp["image_token"],
        sp["r2c3"],
        sp["image_token"],
        tokenizer.get_vocab()["what"],
    ]


def test_punctuation_split_and_decode(tokenizer):
    ids = tokenizer("what color is the ball?", add_special_tokens=False)["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids) == ["what", "color", "is", "the", "ball", "?"]
    assert tokenizer.decode(ids) == "what color is the ball ?"
    assert tokenizer.decode(tokenizer("red  blue", add_special_tokens=False)["input_ids"]) == "red blue"


def test_unknown_word_maps_to_unk(tokenizer):
    assert tokenizer("green", add_special_tokens=False)["input_ids"] == [tokenizer.unk_token_id]


def test_save_and_load_round_trip(tmp_path, cfg):
    original = build_word_tokenizer(WORDS, cfg, out_dir=tmp_path / "tok")
    loaded = load_tokenizer(str(tmp_path / "tok"), cfg)
    text = original.apply_chat_template(
        [{"role": "user", "content": "<|global_image|><|image|>what color is the ball?"}],
        add_generation_prompt=True,
        tokenize=False,
    )
    assert loaded.get_vocab() == original.get_vocab()
    assert loaded(text)["input_ids"] == original(text)["input_ids"]
    assert loaded.chat_template == original.chat_template
    assert (loaded.eos_token, loaded.pad_token, loaded.unk_token) == (
        "<|endoftext|>",
        "<|endoftext|>",
        "<unk>",
    )
    assert special_token_ids(loaded, cfg) == special_token_ids(original, cfg)


def test_load_adds_missing_extras_after_base_vocab(tmp_path, cfg):
    base = build_word_tokenizer(
        WORDS, dataclasses.replace(cfg, vlm_extra_tokens={}), out_dir=tmp_path / "base"
    )
    n_base = len(base)
    loaded = load_tokenizer(str(tmp_path / "base"), cfg)
    assert len(loaded) == n_base + 66
    ids = special_token_ids(loaded, cfg)
    assert list(ids) == list(cfg.vlm_extra_tokens)  # keys in the config's order
    assert list(ids.values()) == list(range(n_base, n_base + 66))  # contiguous, as nanoVLM's 49152..49217
    assert loaded("<|image|><|image|>", add_special_tokens=False)["input_ids"] == [n_base, n_base]
    # The tokenizer's own specials stay special after the extras are added.
    assert "<|im_start|>" in loaded.all_special_tokens


def test_load_fills_chat_template_and_pad(tmp_path, cfg):
    tok = build_word_tokenizer(WORDS, cfg)
    tok.chat_template = None
    tok.pad_token = None
    tok.save_pretrained(str(tmp_path / "bare"))
    loaded = load_tokenizer(str(tmp_path / "bare"), cfg)
    assert loaded.chat_template == cfg.lm_chat_template
    assert loaded.pad_token == loaded.eos_token


def test_load_missing_folder(tmp_path, cfg):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_tokenizer(str(tmp_path / "nope"), cfg)


def test_load_hub_failure_is_explained(monkeypatch, cfg):
    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(tok_mod.AutoTokenizer, "from_pretrained", offline)
    with pytest.raises(OSError, match="HuggingFaceTB/SmolLM2-360M-Instruct.*\n.*local folder"):
        load_tokenizer("HuggingFaceTB/SmolLM2-360M-Instruct", cfg)


def test_special_token_ids_missing(cfg):
    tok = build_word_tokenizer(WORDS, dataclasses.replace(cfg, vlm_extra_tokens={}))
    with pytest.raises(ValueError, match="lacks 66 of the image tokens"):
        special_token_ids(tok, cfg)


def test_single_token_id(tokenizer):
    assert single_token_id(tokenizer, "A") == tokenizer.get_vocab()["A"]
    with pytest.raises(ValueError, match="2 tokens"):
        single_token_id(tokenizer, "red blue")
    with pytest.raises(ValueError, match="not in the tokenizer's vocabulary"):
        single_token_id(tokenizer, "C")
