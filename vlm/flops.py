"""FLOPs per question, counted two ways: by hand (analytic) and automatically (fvcore).

Convention (stated in every report): 2 FLOPs per multiply-add; we count the matmuls and convolutions —
the patch convolution, every linear layer, and attention as two matmuls over the *full* score matrix
(q·kᵀ and attn·v: 2·T_q·T_k·head_dim multiply-adds per head, no causal halving) — and nothing elementwise
(norms, activations, softmax, RoPE, pooling, embedding lookups). The LM head is applied once at the end of
the prefill and once per decode step (an MCQ answer needs no decode step: its letter is read from the
prefill's last position). Every image view is counted.

fvcore counts one FLOP per multiply-add and does not know `scaled_dot_product_attention` or the
`padding="valid"` patch convolution; we give it handles for both and double its result. Both counts run on
models built on the meta device, so the real 460M nanoVLM needs no weights.

CLI: python -m vlm.flops --config CONFIG_JSON_OR_HUB_ID --image-size 640x480 --prompt-tokens 900
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlm.cli import UsageError, make_parser, run
from vlm.config import CompressionConfig, ConnectorConfig, ImageSpec, VLMConfig
from vlm.geometry import num_views
from vlm.plan import CompressionError, StudentPlan, merged_token_counts, plan_student

if TYPE_CHECKING:  # torch is imported where the fvcore count needs it: the analytic count and --help do not
    import torch
    from torch import nn

    from vlm.model import VisionLanguageModel

logger = logging.getLogger(__name__)

CONVENTION = (
    "2 FLOPs per multiply-add; matmuls, the patch convolution and attention (full score matrix) counted, "
    "elementwise ops not; every image view counted; LM head once after prefill and once per decode step; "
    "token reducers: a scorer's linear layers and token merging's similarity matmul counted, top-k, "
    "sorting, norms and gathers not."
)


@dataclass(frozen=True)
class FlopBreakdown:
    """FLOPs of one question, per component."""

    vision_per_view: int
    connector_per_view: int
    n_views: int
    prompt_tokens: int
    answer_tokens: int
    prefill: int
    decode: int

    @property
    def vision(self) -> int:
        return self.vision_per_view * self.n_views

    @property
    def connector(self) -> int:
        return self.connector_per_view * self.n_views

    @property
    def total(self) -> int:
        return self.vision + self.connector + self.prefill + self.decode

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.update(vision=self.vision, connector=self.connector, total=self.total)
        return data


# ----- analytic ------------------------------------------------------------------------------------------
def vision_flops_per_view(cfg: VLMConfig, connector: ConnectorConfig | None = None) -> int:
    """Patch conv + ViT blocks for one view of `cfg.vit_img_size` pixels.

    With token merging (`connector.merge_schedule`, r_i per block) block i sees N_i tokens (N_0 = patches,
    N_{i+1} = N_i - r_i): q/k/v/out and attention over N_i, the MLP over N_i - r_i (ToMe merges between
    attention and MLP), plus the matching's cosine similarities when r_i > 0: ceil(N_i/2)·floor(N_i/2)·
    head_dim multiply-adds (keys averaged over heads). Sorting, gathers, the size-weighted average and
    un-merging are elementwise or index work: not counted.
    """
    n = (cfg.vit_img_size // cfg.vit_patch_size) ** 2
    d, inter = cfg.vit_hidden_dim, cfg.vit_inter_dim
    conv = n * 3 * cfg.vit_patch_size**2 * d
    schedule = (connector.merge_schedule if connector else ()) or (0,) * cfg.vit_n_blocks
    counts = merged_token_counts(n, schedule)
    macs = conv
    for tokens, after in zip(counts, counts[1:]):
        macs += 4 * tokens * d * d + 2 * tokens * tokens * d  # qkv+out, q·kᵀ + attn·v
        if after < tokens:
            macs += ((tokens + 1) // 2) * (tokens // 2) * (d // cfg.vit_n_heads)  # ToMe matching
        macs += 2 * after * d * inter  # MLP
    return 2 * macs


def connector_flops_per_view(cfg: VLMConfig, connector: ConnectorConfig) -> int:
    """Pixel-shuffle projector (pooling is elementwise) or Perceiver resampler, for one view, plus a token
    scorer's two linear layers over the connector's outputs when tokens are kept by score (top-k, norms and
    gathers are not counted)."""
    scorer = 0
    if connector.keep_tokens is not None and connector.keep_by == "score":
        tokens = (connector.token_grid or cfg.native_token_grid) ** 2
        scorer = 2 * tokens * (cfg.lm_hidden_dim * connector.scorer_width + connector.scorer_width)
    return scorer + _connector_only_flops_per_view(cfg, connector)


def _connector_only_flops_per_view(cfg: VLMConfig, connector: ConnectorConfig) -> int:
    n = (cfg.vit_img_size // cfg.vit_patch_size) ** 2
    d, lm = cfg.vit_hidden_dim, cfg.lm_hidden_dim
    if connector.resampler_width is None:
        return 2 * n * d * lm  # (n/f²) rows of d·f² -> lm
    w = connector.resampler_width
    q = (connector.token_grid or cfg.native_token_grid) ** 2
    macs = n * d * w  # kv_in
    macs += 2 * q * w * w + 2 * n * w * w  # q, o on queries; k, v on patches
    macs += 2 * q * n * w  # q·kᵀ and attn·v
    macs += 4 * q * w * w  # MLP w -> 2w -> w
    macs += q * w * lm  # out
    return 2 * macs


def _decoder_layer_macs(cfg: VLMConfig, tokens: int, context: int) -> int:
    d, inter = cfg.lm_hidden_dim, cfg.lm_inter_dim
    kv_dim = cfg.lm_n_kv_heads * (d // cfg.lm_n_heads)
    proj = tokens * (2 * d * d + 2 * d * kv_dim)  # q, o and k, v
    attn = 2 * tokens * context * d  # q·kᵀ and attn·v over all heads
    mlp = 3 * tokens * d * inter
    return proj + attn + mlp


def prefill_flops(cfg: VLMConfig, prompt_tokens: int) -> int:
    """Decoder over the whole prompt, plus the LM head at its last position."""
    layers = cfg.lm_n_blocks * _decoder_layer_macs(cfg, prompt_tokens, prompt_tokens)
    return 2 * (layers + cfg.lm_hidden_dim * cfg.lm_vocab_size)


def decode_flops(cfg: VLMConfig, prompt_tokens: int, answer_tokens: int) -> int:
    """KV-cached decode: the step producing answer token i+1 feeds token i against prompt+i+1 keys."""
    return decode_steps_flops(cfg, prompt_tokens, max(answer_tokens - 1, 0))


def decode_steps_flops(cfg: VLMConfig, prompt_tokens: int, steps: int, warmup_steps: int = 0) -> int:
    """`steps` KV-cached decode steps after a prompt, with `warmup_steps` earlier steps' tokens in the cache.

    Decode step s (0-based; the first answer token comes from the prefill) feeds one token against
    prompt_tokens + s + 1 keys, so the counted steps are s = warmup_steps .. warmup_steps + steps - 1: each
    costs the same projections, MLP and LM head, and attention grows by 2·context·d per block.
    """
    if steps < 0 or warmup_steps < 0:
        raise ValueError(f"steps and warmup_steps must be >= 0, got {steps} and {warmup_steps}")
    total = 0
    for step in range(warmup_steps, warmup_steps + steps):
        context = prompt_tokens + step + 1
        total += (
            cfg.lm_n_blocks * _decoder_layer_macs(cfg, 1, context) + cfg.lm_hidden_dim * cfg.lm_vocab_size
        )
    return 2 * total


@dataclass(frozen=True)
class QuestionCost:
    """MCQ scoring's analytic cost per question (one prefill, no decode step), averaged over questions."""

    views: float
    image_tokens: float
    prompt_tokens: float
    flops: float


def mcq_question_cost(plan: StudentPlan, views: Sequence[int], prompt_tokens: Sequence[int]) -> QuestionCost:
    """The mean over questions with these view counts and prompt lengths (the prompts as the processor built
    them for `plan`'s image spec): what the search scores a trial with and finalize reports."""
    if len(views) != len(prompt_tokens) or not views:
        raise ValueError(f"need one view count per prompt, got {len(views)} and {len(prompt_tokens)}")
    connector = plan.connector  # its merge schedule shapes the ViT's cost, its scorer the connector's
    per_view = vision_flops_per_view(plan.cfg, connector) + connector_flops_per_view(plan.cfg, connector)
    n = len(views)
    flops = sum(v * per_view + prefill_flops(plan.cfg, t) for v, t in zip(views, prompt_tokens)) / n
    return QuestionCost(sum(views) / n, sum(views) * plan.tokens_per_view / n, sum(prompt_tokens) / n, flops)


def analytic_flops(
    cfg: VLMConfig, connector: ConnectorConfig, n_views: int, prompt_tokens: int, answer_tokens: int = 1
) -> FlopBreakdown:
    """By-hand count. `answer_tokens` = tokens the answer needs (1 for MCQ: read from the prefill)."""
    return FlopBreakdown(
        vision_per_view=vision_flops_per_view(cfg, connector),
        connector_per_view=connector_flops_per_view(cfg, connector),
        n_views=n_views,
        prompt_tokens=prompt_tokens,
        answer_tokens=answer_tokens,
        prefill=prefill_flops(cfg, prompt_tokens),
        decode=decode_flops(cfg, prompt_tokens, answer_tokens),
    )


# ----- fvcore ----------------------------------------------------------------------------------------------
def _shape(value) -> list[int]:
    return list(value.type().sizes())


def _sdpa_handle(inputs, outputs) -> int:
    """aten::scaled_dot_product_attention: q [.., Hq, Tq, E], k [.., Hk, Tk, E], v [.., Hk, Tk, Ev]."""
    q, k, v = (_shape(x) for x in inputs[:3])
    batch_heads = math.prod(q[:-2])
    return batch_heads * q[-2] * k[-2] * (q[-1] + v[-1])


def _conv_mode_handle(inputs, outputs) -> int:
    """aten::_convolution_mode (conv with string padding): MACs = output elements × Cin/groups × kh × kw."""
    weight = _shape(inputs[1])
    out = _shape(outputs[0])
    return math.prod(out) * math.prod(weight[1:])


_IGNORED_OPS = (
    "aten::layer_norm",
    "aten::group_norm",
    "aten::batch_norm",
    "aten::instance_norm",
    "aten::adaptive_avg_pool2d",
    "aten::upsample_nearest2d",
    "aten::upsample_bilinear2d",
    "aten::upsample_bicubic2d",
)


def _call_module(owner: nn.Module, fn) -> nn.Module:
    """Wrap a closure as a module so fvcore can trace it."""
    from torch import nn

    class _Call(nn.Module):
        def __init__(self):
            super().__init__()
            self.owner = owner

        def forward(self, *args):
            return fn(*args)

    return _Call()


def _fvcore_count(module: nn.Module, fn, inputs: tuple[torch.Tensor, ...]) -> int:
    from fvcore.nn import FlopCountAnalysis
    from fvcore.nn.flop_count import _DEFAULT_SUPPORTED_OPS

    # fvcore's defaults minus its elementwise handles (norms, pooling), plus the two ops it lacks.
    handles = {op: h for op, h in _DEFAULT_SUPPORTED_OPS.items() if op not in _IGNORED_OPS}
    handles["aten::scaled_dot_product_attention"] = _sdpa_handle
    handles["aten::_convolution_mode"] = _conv_mode_handle
    logging.getLogger("fvcore").setLevel(logging.ERROR)  # it logs every uncalled submodule otherwise
    analysis = FlopCountAnalysis(_call_module(module, fn), inputs).clear_op_handles().set_op_handle(**handles)
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    return 2 * int(analysis.total())  # fvcore: 1 per multiply-add


def fvcore_flops(
    model: VisionLanguageModel, n_views: int, prompt_tokens: int, answer_tokens: int = 1
) -> FlopBreakdown:
    """Automatic count on `model` (any device, meta included): one view, one prefill, each decode step."""
    import torch

    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    cfg = model.cfg
    size = cfg.vit_img_size
    n_patches = (size // cfg.vit_patch_size) ** 2
    with torch.no_grad():
        vision = _fvcore_count(
            model,
            model.encode_vision,  # the merging forward when the student merges tokens
            (torch.zeros(1, 3, size, size, device=device, dtype=dtype),),
        )
        connector = _fvcore_count(
            model, model.project, (torch.zeros(1, n_patches, cfg.vit_hidden_dim, device=device, dtype=dtype),)
        )
        embeds = torch.zeros(1, prompt_tokens, cfg.lm_hidden_dim, device=device, dtype=dtype)
        prefill = _fvcore_count(
            model,
            lambda e: model.decoder(inputs_embeds=e, use_cache=False, logits_to_keep=1).logits,
            (embeds,),
        )
    decode = fvcore_decode_steps_flops(model, prompt_tokens, max(answer_tokens - 1, 0))
    return FlopBreakdown(vision, connector, n_views, prompt_tokens, answer_tokens, prefill, decode)


def fvcore_decode_steps_flops(
    model: VisionLanguageModel, prompt_tokens: int, steps: int, warmup_steps: int = 0
) -> int:
    """fvcore's count of what `decode_steps_flops` counts by hand: each step traced over a filled KV cache."""
    import torch

    param = next(model.parameters())
    embed = torch.zeros(1, 1, model.cfg.lm_hidden_dim, device=param.device, dtype=param.dtype)
    total = 0
    with torch.no_grad():
        for step in range(warmup_steps, warmup_steps + steps):
            total += _fvcore_count(model, _decode_step(model, prompt_tokens + step + 1), (embed,))
    return total


def _decode_step(model: VisionLanguageModel, context: int):
    """One cached decode step: a new token attending to `context` keys (context-1 cached + itself)."""
    import torch
    from transformers import DynamicCache

    cfg = model.cfg
    head_dim = cfg.lm_hidden_dim // cfg.lm_n_heads
    param = next(model.parameters())

    def step(embed: torch.Tensor) -> torch.Tensor:
        cache = DynamicCache(config=model.decoder.config)
        for layer in range(cfg.lm_n_blocks):
            past = torch.zeros(
                1, cfg.lm_n_kv_heads, context - 1, head_dim, device=param.device, dtype=param.dtype
            )
            cache.update(past, past.clone(), layer)
        positions = torch.full((1, 1), context - 1, device=param.device)
        return model.decoder(
            inputs_embeds=embed, cache=cache, position_ids=positions, use_cache=True, logits_to_keep=1
        ).logits

    return step


# ----- per question ------------------------------------------------------------------------------------------
def image_tokens(spec: ImageSpec, image_size: tuple[int, int]) -> tuple[int, int]:
    """(views, image tokens) for an image of (width, height)."""
    views = num_views(image_size[0], image_size[1], spec)
    return views, views * spec.tokens_per_view


def plan_image_spec(plan: StudentPlan) -> ImageSpec:
    return ImageSpec(
        plan.cfg.vit_img_size, plan.cfg.max_grid_side, plan.tokens_per_view, plan.cfg.resize_to_max_side_len
    )


def build_on_meta(plan: StudentPlan) -> VisionLanguageModel:
    """The student's modules without memory or initialisation: enough for shape-level counting."""
    import torch

    from vlm.model import VisionLanguageModel

    with torch.device("meta"):
        return VisionLanguageModel(plan.cfg, image_token_id=0, connector=plan.connector)


def count_question(
    teacher_cfg: VLMConfig,
    compression: CompressionConfig,
    image_size: tuple[int, int],
    text_tokens: int,
    answer_tokens: int = 1,
    with_fvcore: bool = True,
) -> dict[str, Any]:
    """Analytic (and fvcore) FLOPs of one question for the student `compression` makes of `teacher_cfg`."""
    plan = plan_student(teacher_cfg, compression)
    views, n_image_tokens = image_tokens(plan_image_spec(plan), image_size)
    prompt = text_tokens + n_image_tokens
    result: dict[str, Any] = {
        "convention": CONVENTION,
        "views": views,
        "image_tokens": n_image_tokens,
        "text_tokens": text_tokens,
        "prompt_tokens": prompt,
        "analytic": analytic_flops(plan.cfg, plan.connector, views, prompt, answer_tokens).to_dict(),
    }
    if with_fvcore:
        auto = fvcore_flops(build_on_meta(plan), views, prompt, answer_tokens).to_dict()
        result["fvcore"] = auto
        result["relative_difference"] = (
            abs(auto["total"] - result["analytic"]["total"]) / result["analytic"]["total"]
        )
    return result


def count_decode_steps(
    teacher_cfg: VLMConfig,
    compression: CompressionConfig,
    prompt_tokens: int,
    steps: int,
    warmup_steps: int,
    with_fvcore: bool = True,
) -> dict[str, Any]:
    """FLOPs of `steps` decode steps after a `prompt_tokens` prompt, with no and with `warmup_steps` generated
    tokens already in the KV cache, for the student `compression` makes of `teacher_cfg`."""
    if steps < 1 or warmup_steps < 0:
        raise ValueError(f"need --decode-steps >= 1 and --warmup-steps >= 0, got {steps} and {warmup_steps}")
    plan = plan_student(teacher_cfg, compression)
    counts = {"without_warmup": 0, "with_warmup": warmup_steps}
    result: dict[str, Any] = {
        "steps": steps,
        "warmup_steps": warmup_steps,
        "prompt_tokens": prompt_tokens,
        "analytic": {k: decode_steps_flops(plan.cfg, prompt_tokens, steps, w) for k, w in counts.items()},
    }
    if with_fvcore:
        model = build_on_meta(plan)
        result["fvcore"] = {
            k: fvcore_decode_steps_flops(model, prompt_tokens, steps, w) for k, w in counts.items()
        }
    return result


def load_config(source: str) -> VLMConfig:
    """A config.json path, a checkpoint folder, a hub id (config only), or `default` (nanoVLM's 460M)."""
    if source == "default":
        return VLMConfig()
    path = Path(source)
    if path.is_dir():
        path = path / "config.json"
    if path.is_file():
        return VLMConfig.from_json(path)
    from huggingface_hub import hf_hub_download

    try:
        return VLMConfig.from_json(hf_hub_download(source, "config.json"))
    except Exception as exc:
        raise UsageError(
            f"could not read a config from {source!r} ({type(exc).__name__}): pass a config.json path, a checkpoint "
            "folder, or `default` for nanoVLM's built-in 460M config"
        ) from exc


def _parse_size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"image size must look like 640x480, got {text!r}") from exc
    if width < 1 or height < 1:
        raise argparse.ArgumentTypeError(f"image size must be positive, like 640x480, got {text!r}")
    return width, height


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(
        "vlm.flops",
        "FLOPs per question of nanoVLM or a compressed student, counted by hand (analytic) and by fvcore, per "
        "component;\nno weights needed (the model is built on the meta device).",
        epilog="Example: python -m vlm.flops --config default --compression '{\"token_grid\": 4}' "
        "--decode-steps 3 --warmup-steps 5",
    )
    parser.add_argument(
        "--config", default="default", help="config.json, checkpoint folder, hub id, or 'default'"
    )
    parser.add_argument(
        "--image-size", type=_parse_size, default=(640, 480), help="WIDTHxHEIGHT of the image"
    )
    parser.add_argument(
        "--prompt-tokens",
        type=int,
        default=900,
        help="prompt length of the UNCOMPRESSED model on this image (image + text tokens); the text part is "
        "kept when a compression changes the image tokens",
    )
    parser.add_argument("--answer-tokens", type=int, default=1, help="answer length (1 = MCQ letter)")
    parser.add_argument("--compression", default=None, help="CompressionConfig as JSON text or a JSON file")
    parser.add_argument("--no-fvcore", action="store_true", help="analytic count only")
    parser.add_argument(
        "--decode-steps",
        type=_non_negative,
        default=0,
        help="also count N KV-cached generation steps after the prompt, with and without --warmup-steps "
        "earlier generated tokens in the cache (the lab: --decode-steps 3 --warmup-steps 5)",
    )
    parser.add_argument(
        "--warmup-steps",
        type=_non_negative,
        default=0,
        help="generated tokens already in the KV cache (see above)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    return run(_run, build_parser(), argv, user_errors=(CompressionError, json.JSONDecodeError))


def _run(args: argparse.Namespace) -> int:
    logging.getLogger().setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    cfg = load_config(args.config)
    compression = CompressionConfig.from_json(args.compression) if args.compression else CompressionConfig()
    teacher_spec = ImageSpec(
        cfg.vit_img_size, cfg.max_grid_side, cfg.mp_image_token_length, cfg.resize_to_max_side_len
    )
    _, teacher_image_tokens = image_tokens(teacher_spec, args.image_size)
    text_tokens = args.prompt_tokens - teacher_image_tokens
    if text_tokens < 0:
        raise UsageError(
            f"--prompt-tokens {args.prompt_tokens} is shorter than the {teacher_image_tokens} image tokens this image "
            "needs: pass the uncompressed model's whole prompt length"
        )
    result = count_question(
        cfg, compression, args.image_size, text_tokens, args.answer_tokens, not args.no_fvcore
    )
    result["compression"] = compression.to_dict()
    if args.decode_steps:
        result["decode_steps"] = count_decode_steps(
            cfg,
            compression,
            result["prompt_tokens"],
            args.decode_steps,
            args.warmup_steps,
            not args.no_fvcore,
        )
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
