"""Look inside the model: one decoder head's attention from the question to the image, and a logit lens.

The library behind `python -m vlm.inspect` (the command line lives there, free of torch so --help is quick).

Attention: the full attention matrix [T, T] of one head of one decoder block, taken from the real forward
pass (the decoder runs with transformers' eager attention for that pass, which returns the softmax weights;
each full row sums to 1), then sliced to the question's tokens (rows) and the image tokens of the global view
(columns), laid out on the view's token grid. Logit lens: each image token's hidden state after L decoder
blocks, through the final RMSNorm and the LM head, as top-k tokens (nostalgebraist's "logit lens",
https://www.lesswrong.com/posts/AcKRB8wDpdaN6v6ru).

The prompt is the evaluator's own (`vlm.processing.encode_example` with `da_user_text`, or `mcq_user_text`
with --choices). Computing the data and drawing it are apart: `attention_map` and `logit_lens` return
tensors; `vlm.inspect_draw` turns them into a PNG (Pillow only, so it works offline without a browser) and an
interactive HTML page (plotly, with plotly.js inline).
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from vlm.model import VisionLanguageModel
from vlm.processing import build_prompt, da_user_text, encode_example, image_placeholder_for, mcq_user_text

logger = logging.getLogger(__name__)


# ----- the prompt ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class InspectPrompt:
    """One image + question as the model reads it, and where its parts sit in the sequence.

    input_ids: [T] long. images: the views [N, 3, S, S] in [0, 1] (global view first unless the grid is
    1x1). labels: one printable label per position (the prompt's own text for each token).
    question_positions: the positions of the question's tokens. image_positions: [N, tokens_per_view], the
    positions of each view's image tokens, in order.
    """

    input_ids: torch.Tensor
    images: torch.Tensor
    grid: tuple[int, int]
    labels: tuple[str, ...]
    question_positions: tuple[int, ...]
    image_positions: torch.Tensor

    @property
    def has_global_view(self) -> bool:
        return self.grid != (1, 1)

    def view_names(self) -> list[str]:
        """'global', then 'crop r,c' (1-based) row by row; a 1x1 grid has its single (global) view only."""
        if not self.has_global_view:
            return ["global"]
        rows, cols = self.grid
        return ["global"] + [f"crop {r},{c}" for r in range(1, rows + 1) for c in range(1, cols + 1)]


def token_label(tokenizer, token_id: int) -> str:
    """A printable token: its decoded text, or `#id` when the id lies outside the tokenizer's vocabulary
    (nanoVLM's real config with the offline demo tokenizer: the LM head has 49,218 outputs)."""
    if token_id >= len(tokenizer):
        return f"#{token_id}"
    text = tokenizer.decode([token_id], skip_special_tokens=False)
    return text.strip() or repr(text)


def prepare_prompt(
    model: VisionLanguageModel,
    tokenizer,
    image: Image.Image,
    question: str,
    choices: Sequence[str] | None = None,
) -> InspectPrompt:
    """The evaluator's prompt for `question` about `image` (MCQ when `choices` are given, else direct answer)."""
    if not question.strip():
        raise ValueError("the question is empty: pass the text to ask with --question")
    spec = model.image_spec
    user_text = mcq_user_text(question, choices) if choices else da_user_text(question)
    encoded = encode_example(tokenizer, model.cfg, spec, image, user_text)
    ids = encoded.input_ids
    # The same prompt string again, for character offsets: which tokens spell the question.
    image_string = image_placeholder_for(encoded.grid, spec, model.cfg.vlm_extra_tokens)
    prompt = build_prompt(tokenizer, image_string, user_text)
    enc = tokenizer(prompt, add_special_tokens=False, return_offsets_mapping=True)
    if enc["input_ids"] != ids.tolist():  # pragma: no cover - both tokenize the same string
        raise RuntimeError("the prompt tokenized differently twice")
    offsets = enc["offset_mapping"]
    labels = tuple(prompt[a:b] or token_label(tokenizer, int(t)) for (a, b), t in zip(offsets, ids.tolist()))
    start = prompt.index(image_string + user_text) + len(image_string)
    end = start + len(question)
    image_mask = ids == model.image_token_id
    question_positions = tuple(
        i for i, (a, b) in enumerate(offsets) if a < end and b > start and not bool(image_mask[i])
    )
    positions = torch.nonzero(image_mask).flatten()  # [N * tokens_per_view]
    n_views = encoded.images.shape[0]
    return InspectPrompt(
        input_ids=ids,
        images=encoded.images,
        grid=encoded.grid,
        labels=labels,
        question_positions=question_positions,
        image_positions=positions.view(n_views, -1),  # [N, tokens_per_view]
    )


# ----- running the model -------------------------------------------------------------------------------
@contextlib.contextmanager
def eager_attention(model: VisionLanguageModel) -> Iterator[None]:
    """Run the decoder with transformers' eager attention (which returns its softmax weights), then restore."""
    config = model.decoder.config
    previous = config._attn_implementation
    config._attn_implementation = "eager"
    try:
        yield
    finally:
        config._attn_implementation = previous


def _layers(model: VisionLanguageModel):
    return model.decoder.model.layers


@contextlib.contextmanager
def _kept_cells(model: VisionLanguageModel) -> Iterator[dict]:
    """Record which grid cell each image token of each view comes from (token selection keeps a subset).

    Yields a dict that holds, after the forward, "cells": [N, tokens_per_view] long. A student that keeps
    the k best tokens (`model.token_selector`) is hooked and its kept rows matched to its input rows;
    every other connector keeps the whole k x k grid in row-major order.
    """
    record: dict = {}
    selector = getattr(model, "token_selector", None)
    handle = None
    if selector is not None:

        def hook(module, inputs, output):
            full, kept = inputs[0].detach(), output.detach()  # [N, k*k, D], [N, keep, D]
            distance = torch.cdist(kept.float(), full.float())  # [N, keep, k*k]
            record["cells"] = distance.argmin(-1).cpu()

        handle = selector.register_forward_hook(hook)
    try:
        yield record
    finally:
        if handle is not None:
            handle.remove()


def token_grid_side(model: VisionLanguageModel) -> int:
    """Side of the square grid a view's image tokens are laid out on (a resampler's queries are no grid:
    its k*k queries are drawn as one anyway)."""
    return model.connector_config.token_grid or model.cfg.native_token_grid


def _forward(model: VisionLanguageModel, prompt: InspectPrompt) -> None:
    device = next(model.parameters()).device
    with torch.no_grad():
        model(prompt.input_ids.unsqueeze(0).to(device), prompt.images.to(device), logits_to_keep=1)


@dataclass(frozen=True)
class AttentionMap:
    """One head's full attention matrix over the prompt, and the grid cells of each view's image tokens.

    weights: [T, T] float32, row i = how position i attends to every position (rows sum to 1).
    cells: [N, tokens_per_view] long, the grid cell (row-major on a `grid_side` square) of each image token.
    """

    layer: int
    head: int
    weights: torch.Tensor
    cells: torch.Tensor
    grid_side: int

    def question_to_view(self, prompt: InspectPrompt, view: int) -> torch.Tensor:
        """[question tokens, tokens_per_view]: attention from each question token to the view's image tokens."""
        rows = torch.tensor(prompt.question_positions, dtype=torch.long)
        return self.weights[rows][:, prompt.image_positions[view]]

    def on_grid(self, values: torch.Tensor, view: int) -> torch.Tensor:
        """[..., tokens_per_view] -> [..., side, side], NaN where a cell has no token (dropped by selection)."""
        side = self.grid_side
        out = torch.full((*values.shape[:-1], side * side), float("nan"))
        out[..., self.cells[view]] = values.float()
        return out.view(*values.shape[:-1], side, side)


def attention_map(model: VisionLanguageModel, prompt: InspectPrompt, layer: int, head: int) -> AttentionMap:
    """The full attention matrix of `head` in decoder block `layer` (0-based) during the real forward pass."""
    n_layers, n_heads = len(_layers(model)), model.cfg.lm_n_heads
    if not 0 <= layer < n_layers:
        raise ValueError(f"--layer {layer} is out of range: this decoder has blocks 0..{n_layers - 1}")
    if not 0 <= head < n_heads:
        raise ValueError(f"--head {head} is out of range: each block has heads 0..{n_heads - 1}")
    captured: dict[str, torch.Tensor] = {}

    def hook(module, inputs, output):
        weights = output[1]  # [B, heads, T, T]: eager attention returns its softmax weights
        captured["weights"] = weights[0, head].detach().float().cpu()

    handle = _layers(model)[layer].self_attn.register_forward_hook(hook)
    try:
        with eager_attention(model), _kept_cells(model) as kept:
            _forward(model, prompt)
    finally:
        handle.remove()
    if captured.get("weights") is None:  # pragma: no cover - only if transformers changes its eager path
        raise RuntimeError("the attention layer returned no weights; is eager attention available?")
    return AttentionMap(layer, head, captured["weights"], _cells(kept, prompt), token_grid_side(model))


def _cells(kept: dict, prompt: InspectPrompt) -> torch.Tensor:
    """[N, tokens_per_view]: recorded cells of a token-selecting student, else the whole grid in order."""
    if "cells" in kept:
        return kept["cells"]
    n_views, per_view = prompt.image_positions.shape
    return torch.arange(per_view).expand(n_views, -1).clone()


@dataclass(frozen=True)
class LogitLens:
    """Top-k tokens of the LM head at `positions`, for each inspected depth.

    ids / probs: {layer: [P, k]}; layer L = the hidden state after L decoder blocks (0 = the embeddings,
    n_blocks = the model's own output), through the final norm and the LM head. cells: [N, tokens_per_view],
    the grid cell of each view's image tokens (as in `AttentionMap`).
    """

    positions: torch.Tensor
    ids: dict[int, torch.Tensor]
    probs: dict[int, torch.Tensor]
    n_blocks: int
    cells: torch.Tensor
    grid_side: int


def logit_lens(
    model: VisionLanguageModel,
    prompt: InspectPrompt,
    layers: Sequence[int],
    top_k: int = 5,
    positions: torch.Tensor | None = None,
) -> LogitLens:
    """Apply the final norm and LM head to the hidden states after each of `layers` blocks, at `positions`
    (default: every position of the prompt)."""
    blocks = _layers(model)
    n_blocks = len(blocks)
    bad = [layer for layer in layers if not 0 <= layer <= n_blocks]
    if bad:
        raise ValueError(
            f"--layers {bad} out of range: 0 (embeddings) .. {n_blocks} (the output of the last of the "
            f"{n_blocks} decoder blocks)"
        )
    if top_k < 1:
        raise ValueError(f"--top-k must be >= 1, got {top_k}")
    if positions is None:
        positions = torch.arange(prompt.input_ids.shape[0])
    captured: dict[int, torch.Tensor] = {}
    handles = []
    for layer in set(layers):
        if layer == 0:
            handles.append(
                blocks[0].register_forward_pre_hook(
                    lambda m, args, kwargs: captured.__setitem__(0, _first_arg(args, kwargs)),
                    with_kwargs=True,
                )
            )
        else:
            handles.append(
                blocks[layer - 1].register_forward_hook(
                    lambda m, i, o, layer=layer: captured.__setitem__(layer, o)
                )
            )
    try:
        with _kept_cells(model) as kept:
            _forward(model, prompt)
    finally:
        for handle in handles:
            handle.remove()
    norm, head = model.decoder.model.norm, model.decoder.lm_head
    ids, probs = {}, {}
    with torch.no_grad():
        for layer in layers:
            hidden = captured[layer][0, positions.to(captured[layer].device)]  # [P, D]
            p = torch.softmax(head(norm(hidden)).float(), dim=-1)  # [P, V]
            top = p.topk(min(top_k, p.shape[-1]), dim=-1)
            ids[layer], probs[layer] = top.indices.cpu(), top.values.cpu()
    return LogitLens(positions, ids, probs, n_blocks, _cells(kept, prompt), token_grid_side(model))


def _first_arg(args, kwargs) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


# ----- loading -----------------------------------------------------------------------------------------
def load_model(source: str, tokenizer_source: str | None = None, seed: int = 0):
    """(model in eval mode, tokenizer) for `demo`, `default` (nanoVLM's 460M config, random weights), a
    checkpoint folder or a hub id.

    `default` has no tokenizer offline: unless `tokenizer_source` names one (e.g. SmolLM2's folder), the
    demo word tokenizer is used, which carries nanoVLM's image tokens, and the model's image token id is set
    to its id; predicted ids beyond its vocabulary print as `#id`.
    """
    from vlm.checkpoint import TOKENIZER_DIR, load_pretrained
    from vlm.config import VLMConfig
    from vlm.tokenizer import load_tokenizer, special_token_ids

    if source == "default":
        cfg = VLMConfig()
        if tokenizer_source:
            tokenizer = load_tokenizer(tokenizer_source, cfg)
        else:
            from vlm.demo.teacher import build_demo_tokenizer

            tokenizer = build_demo_tokenizer()
        torch.manual_seed(seed)
        logger.info("building nanoVLM's default config with random weights (460M parameters, ~2 GB)")
        model = VisionLanguageModel(cfg, special_token_ids(tokenizer, cfg)["image_token"]).eval()
        return model, tokenizer
    if source == "demo":
        from vlm.demo.teacher import SHIPPED_TEACHER

        source = str(SHIPPED_TEACHER)
    elif not Path(source).exists():
        from vlm.hub import hub_reachable

        if not hub_reachable():
            raise FileNotFoundError(
                f"--model {source!r} is not a local folder and the Hugging Face hub cannot be reached; offline, "
                "use `--model demo` (the demo teacher) or `--model default` (nanoVLM's config, random weights)"
            )
    model = load_pretrained(source)
    local = Path(source) / TOKENIZER_DIR
    tokenizer = load_tokenizer(
        tokenizer_source or (str(local) if local.is_dir() else model.cfg.lm_tokenizer), model.cfg
    )
    return model, tokenizer


def load_image(source: str, seed: int = 0) -> Image.Image:
    """An image file, or `demo`: a scene of the demo world (seeded)."""
    if source == "demo":
        from vlm.demo.scenes import render_scene, sample_scene

        return render_scene(sample_scene(random.Random(seed)))
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"image {source!r} not found: pass an image file or `demo` for a demo scene")
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except OSError as exc:
        raise ValueError(f"cannot read {source!r} as an image ({exc}): pass a PNG or JPEG file") from exc


def default_out() -> Path:
    """Where the pictures go unless --out says otherwise: .cache/inspect under the project root."""
    from vlm.paths import cache_dir

    return cache_dir() / "inspect"
