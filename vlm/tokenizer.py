"""Tokenizers: nanoVLM's (SmolLM2 plus 66 image tokens) and a tiny word-level one for offline worlds.

nanoVLM loads its language model's tokenizer and registers `VLMConfig.vlm_extra_tokens` as extra special
tokens, in the dict's order, so the ids match its checkpoints: SmolLM2 has 49152 tokens and the 66 extras
get ids 49152..49217. `load_tokenizer` reproduces that; `build_word_tokenizer` makes a small tokenizer with
the same special tokens and chat template for tests and the offline demo.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from vlm.config import VLMConfig

logger = logging.getLogger(__name__)

EOS_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
UNK_TOKEN = "<unk>"
# SmolLM2's own special tokens (ids 0, 1, 2 there); the word tokenizer adds <unk> because WordLevel needs one.
BASE_SPECIAL_TOKENS = (EOS_TOKEN, IM_START, IM_END, UNK_TOKEN)


def load_tokenizer(name_or_path: str, cfg: VLMConfig) -> PreTrainedTokenizerFast:
    """Load a tokenizer (hub id or local folder) and make it nanoVLM-ready.

    Missing `cfg.vlm_extra_tokens` are added as extra special tokens in the dict's order (so a base
    tokenizer gets them right after its vocabulary, as nanoVLM does); a missing chat template becomes
    `cfg.lm_chat_template`; a missing pad token becomes the eos token (nanoVLM pads with eos).
    """
    source = name_or_path
    path = Path(name_or_path).expanduser()
    if path.exists() or name_or_path.startswith((".", "/", "~")):
        if not path.is_dir():
            raise FileNotFoundError(f"tokenizer folder {name_or_path!r} does not exist or is not a folder")
        source = str(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except OSError as err:  # transformers turns hub/network failures and missing files into OSError
        raise OSError(
            f"could not load tokenizer {name_or_path!r}: {err}\n"
            "If the Hugging Face hub cannot be reached, download the tokenizer elsewhere and pass its local "
            "folder (one holding tokenizer.json / tokenizer_config.json) instead of the hub id."
        ) from err

    # Tokens the tokenizer lacks get new ids in the dict's order; ones it has but does not treat as special
    # keep their ids and become unsplittable. replace_extra_special_tokens=False keeps the tokenizer's own
    # extra specials (SmolLM2's <|im_start|>, <|im_end|>) flagged.
    not_special = [
        tok for tok in cfg.vlm_extra_tokens.values() if tok not in set(tokenizer.all_special_tokens)
    ]
    if not_special:
        tokenizer.add_special_tokens(
            {"extra_special_tokens": not_special}, replace_extra_special_tokens=False
        )
    if not tokenizer.chat_template:
        tokenizer.chat_template = cfg.lm_chat_template
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    special_token_ids(tokenizer, cfg)  # fail here, not mid-evaluation, if anything is still missing
    return tokenizer


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def build_word_tokenizer(
    words: list[str], cfg: VLMConfig, out_dir: Path | None = None
) -> PreTrainedTokenizerFast:
    """A word-level tokenizer for tiny offline models.

    Vocabulary, in id order: `<|endoftext|>` (eos and pad), `<|im_start|>`, `<|im_end|>`, `<unk>`, then
    `cfg.vlm_extra_tokens.values()`, then `words` (deduplicated, order kept). Text is split on whitespace
    and punctuation, so a word list should hold punctuation marks ("?", ".") as words of their own, and
    "user" / "assistant" for the chat template. Decoding joins tokens with single spaces.
    If `out_dir` is given the tokenizer is saved there, and `load_tokenizer(str(out_dir), cfg)` reloads it.
    """
    specials = _unique([*BASE_SPECIAL_TOKENS, *cfg.vlm_extra_tokens.values()])
    vocab_list = _unique([*specials, *words])
    vocab = {tok: i for i, tok in enumerate(vocab_list)}

    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK_TOKEN))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    # WordPiece's decoder joins tokens with spaces; with no "##" tokens and cleanup off it is a plain join.
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    backend.add_special_tokens(specials)  # already in the vocabulary: keeps their ids, never split

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        unk_token=UNK_TOKEN,
        extra_special_tokens=[tok for tok in specials if tok not in (EOS_TOKEN, UNK_TOKEN)],
        chat_template=cfg.lm_chat_template,
        clean_up_tokenization_spaces=False,
    )
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        tokenizer.save_pretrained(str(out_dir))
    return tokenizer


def special_token_ids(tokenizer: PreTrainedTokenizerFast, cfg: VLMConfig) -> dict[str, int]:
    """Ids of `cfg.vlm_extra_tokens` by key ("image_token", "global_image_token", "r1c1", ...)."""
    vocab = tokenizer.get_vocab()
    missing = {key: tok for key, tok in cfg.vlm_extra_tokens.items() if tok not in vocab}
    if missing:
        raise ValueError(
            f"tokenizer {tokenizer.name_or_path!r} lacks {len(missing)} of the image tokens, e.g. "
            f"{list(missing.items())[:3]}; load it with vlm.tokenizer.load_tokenizer"
        )
    return {key: vocab[tok] for key, tok in cfg.vlm_extra_tokens.items()}


def single_token_id(tokenizer: PreTrainedTokenizerFast, text: str) -> int:
    """The id of `text` (e.g. an option letter "A"), which must encode to exactly one token."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ValueError(f"{text!r} encodes to {len(ids)} tokens {ids}, expected exactly one")
    if (
        tokenizer.unk_token_id is not None
        and ids[0] == tokenizer.unk_token_id
        and text != tokenizer.unk_token
    ):
        raise ValueError(f"{text!r} is not in the tokenizer's vocabulary (it encodes to the unknown token)")
    return ids[0]
