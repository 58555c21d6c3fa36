"""Measured speed and memory of a model, beside the analytic FLOPs of the same config (the library behind
`python -m vlm.bench --model MODEL [--compression JSON] [--device cpu|cuda] [--threads N] [--dtype float32]`).

MODEL is a checkpoint folder, a hub id, `demo` (the shipped demo teacher, with the demo's own questions),
`default` (nanoVLM's 460M `VLMConfig()` with seeded random weights) or a `config.json` path (random
weights). Latency does not depend on the weights, so the random-weight models answer "how fast would
nanoVLM run here" offline.

What is measured, each after `warmup` untimed passes (the memory pass is the first of them), as the median
and spread (min, max, quartiles) of `repeats` timed passes over the questions, inputs already on the
device (image processing and tokenization are not timed):
- `latency.mcq`: one multiple-choice question end to end at batch 1: every view through the ViT, the
  connector, the decoder prefill over the whole prompt, the letter read from the last position
  (`VisionLanguageModel.forward`, as `vlm.evaluate` scores MCQs).
- `latency.direct_answer`: the direct-answer prompt plus `new_tokens` greedy tokens with the KV cache
  (`VisionLanguageModel.generate_greedy`, no early stop). It runs one decode step per new token, the last
  one's logits unused; the FLOP convention counts `new_tokens - 1` steps.
- `throughput`: MCQ questions per second at `batch_size` (left-padded batch, as the evaluator batches).
- `components`: the ViT over the question's views (also per view), the connector, the prefill given the
  image embeddings, and one KV-cached decode step at the prompt's length, each with its analytic FLOPs
  and the achieved FLOP/s (`warmup` untimed, then `component_repeats` timed passes each).
- `memory`: CUDA: `torch.cuda.max_memory_allocated` during one pass, and its rise over the memory
  allocated before. CPU: the process's peak resident set (`VmHWM` of /proc/self/status) during one pass,
  after writing 5 to /proc/self/clear_refs (which resets VmHWM to the current RSS) and trimming the
  allocator's free memory (glibc `malloc_trim`), and its rise over the RSS before; so the peak holds the
  weights, the Python/torch runtime and the pass's activations.

Inputs: the demo's validation questions (demo teacher; 128x64 images); otherwise one synthetic A-OKVQA-like
question on a 640x480 noise image (COCO's usual size). Prompts come from `vlm.processing` (the project's
only prompt code) through the model's tokenizer; when none is available (a random-weight config offline:
SmolLM2's 49k tokenizer is not shipped) a word-level tokenizer (`vlm.tokenizer.build_word_tokenizer`)
stands in: the image-token positions are exact (views x tokens per view, tags included) and the text is
counted in words and punctuation marks, which for English is within a few tokens of SmolLM2's BPE.
Such a random model takes the word tokenizer's image-token id.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import platform
import re
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from vlm.config import BenchSettings, CompressionConfig, VLMConfig
from vlm.data import VQAExample
from vlm.flops import CONVENTION, analytic_flops, count_question
from vlm.model import ConnectorConfig, VisionLanguageModel
from vlm.process_memory import reset_peak, status_bytes, trim_allocator
from vlm.processing import Encoded, collate, da_user_text, encode_example, mcq_user_text

logger = logging.getLogger(__name__)

COMPONENTS = ("vision", "connector", "prefill", "decode_step")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
COCO_SIZE = (640, 480)  # width x height of most COCO (hence A-OKVQA) images
# A synthetic A-OKVQA-style question (the wording only sets the text length; the image is noise).
SYNTHETIC_QUESTION = (
    "What is the man in the picture most likely going to do next with the object in his hand?"
)
SYNTHETIC_CHOICES = ("throw it to the dog", "put it in the bag", "eat it", "wash it in the sink")
DEFAULT_OUT_DIR = Path("benchmarks/results")


@dataclass
class BenchQuestion:
    """One question's MCQ and direct-answer prompts (ids [T] and views [N, 3, S, S]) and its image size."""

    mcq: Encoded
    da: Encoded
    image_size: tuple[int, int]


@dataclass
class BenchPrompts:
    questions: list[BenchQuestion]
    pad_id: int
    source: str  # "tokenizer" or "word tokenizer (synthetic ids)"


# ----- inputs -------------------------------------------------------------------------------------------------
def encode_questions(model: VisionLanguageModel, tokenizer, examples: Sequence[VQAExample]) -> BenchPrompts:
    """MCQ and direct-answer prompts of `examples` for `model` (its image spec), with the project's prompt code."""
    if not examples:
        raise ValueError("benchmarking needs at least one question")
    spec = model.image_spec
    questions = [
        BenchQuestion(
            mcq=encode_example(tokenizer, model.cfg, spec, e.image, mcq_user_text(e.question, e.choices)),
            da=encode_example(tokenizer, model.cfg, spec, e.image, da_user_text(e.question)),
            image_size=e.image.size,
        )
        for e in examples
    ]
    return BenchPrompts(questions, int(tokenizer.pad_token_id), "tokenizer")


def synthetic_example(image_size: tuple[int, int] = COCO_SIZE, seed: int = 0) -> VQAExample:
    """An A-OKVQA-like question on a seeded noise image of `image_size` (width, height)."""
    gen = torch.Generator().manual_seed(seed)
    width, height = image_size
    pixels = torch.randint(0, 256, (height, width, 3), generator=gen, dtype=torch.uint8)
    return VQAExample(
        question_id=f"synthetic-{seed}",
        image=Image.fromarray(pixels.numpy(), "RGB"),
        question=SYNTHETIC_QUESTION,
        choices=list(SYNTHETIC_CHOICES),
        correct_choice_idx=0,
        direct_answers=["throw"] * 10,
    )


def word_tokenizer_for(cfg: VLMConfig, examples: Sequence[VQAExample]):
    """A word-level tokenizer (nanoVLM's special tokens, the chat roles and the examples' words) for prompts
    whose length, not content, matters."""
    from vlm.processing import CHOICE_LETTERS, DA_INSTRUCTION, MCQ_INSTRUCTION
    from vlm.tokenizer import build_word_tokenizer

    texts = [MCQ_INSTRUCTION, DA_INSTRUCTION, "user assistant", " ".join(CHOICE_LETTERS)]
    texts += [t for e in examples for t in (e.question, *e.choices)]
    words = [w for text in texts for w in re.findall(r"\w+|[^\w\s]", text)]
    tokenizer = build_word_tokenizer(words, cfg)
    if len(tokenizer) > cfg.lm_vocab_size:
        raise ValueError(
            f"the stand-in word tokenizer needs {len(tokenizer)} ids but the model's vocabulary has "
            f"{cfg.lm_vocab_size}: pass the model's tokenizer (--tokenizer)"
        )
    return tokenizer


# ----- models ------------------------------------------------------------------------------------------------
@dataclass
class BenchModel:
    """What `load_bench_model` returns: the model to time, its tokenizer (None: use a word tokenizer), the
    config FLOPs are counted from and the compression applied to it (None for a model as loaded)."""

    model: VisionLanguageModel
    tokenizer: Any
    base_cfg: VLMConfig
    compression: CompressionConfig | None
    examples: list[VQAExample]
    description: str


def random_model(cfg: VLMConfig, image_token_id: int, seed: int = 0) -> VisionLanguageModel:
    """`cfg` with seeded random weights, leaving the global RNG as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return VisionLanguageModel(cfg, image_token_id).eval()


def load_bench_model(
    source: str,
    compression: CompressionConfig | None = None,
    tokenizer_source: str | None = None,
    seed: int = 0,
    questions: int = 1,
) -> BenchModel:
    """Resolve MODEL (see the module docstring) into a model on the CPU, its tokenizer and its questions."""
    from vlm.checkpoint import TOKENIZER_DIR, load_pretrained
    from vlm.compression import compress
    from vlm.tokenizer import load_tokenizer, special_token_ids

    path = Path(source)
    if source == "demo":
        from vlm.data import iter_examples
        from vlm.demo.dataset import generate_split
        from vlm.demo.teacher import SHIPPED_TEACHER

        model = load_pretrained(SHIPPED_TEACHER)
        tokenizer = load_tokenizer(str(SHIPPED_TEACHER / TOKENIZER_DIR), model.cfg)
        # The demo's own validation questions (generated, no cache needed): their 128x64 images and words.
        examples = list(iter_examples(generate_split(seed, "validation", questions), "validation"))
        description = "demo teacher (shipped weights)"
    else:
        examples = [synthetic_example(COCO_SIZE, seed + i) for i in range(questions)]
        if source == "default" or path.suffix == ".json":
            cfg = VLMConfig() if source == "default" else VLMConfig.from_json(path)
            tokenizer = load_tokenizer(tokenizer_source, cfg) if tokenizer_source else None
            words = tokenizer or word_tokenizer_for(cfg, examples)
            model = random_model(cfg, special_token_ids(words, cfg)["image_token"], seed)
            description = (
                f"{'nanoVLM default config' if source == 'default' else source}, random weights (seed {seed})"
            )
        else:
            model = load_pretrained(source)
            local = path / TOKENIZER_DIR
            tokenizer_source = tokenizer_source or (str(local) if local.is_dir() else None)
            if tokenizer_source is None:
                raise FileNotFoundError(
                    f"{source!r} has no tokenizer/ folder: pass --tokenizer FOLDER (e.g. a local copy of "
                    f"{model.cfg.lm_tokenizer})"
                )
            tokenizer = load_tokenizer(tokenizer_source, model.cfg)
            description = f"{source} (checkpoint weights)"
    base_cfg = model.cfg
    if compression is not None and not compression.is_identity:
        model = compress(model, compression)
        description += f", compressed {compression.to_dict()}"
    else:
        compression = None
    return BenchModel(model, tokenizer, base_cfg, compression, examples, description)


# ----- timing and memory ------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def summarize(samples: Sequence[float]) -> dict[str, Any]:
    """Median and spread of timed samples (seconds)."""
    values = sorted(samples)
    q1, q3 = (statistics.quantiles(values, n=4)[0::2]) if len(values) > 1 else (values[0], values[0])
    return {
        "median_s": statistics.median(values),
        "min_s": values[0],
        "max_s": values[-1],
        "q1_s": q1,
        "q3_s": q3,
        "n": len(values),
        "samples_s": list(samples),
    }


def time_calls(
    fns: Sequence[Callable[[], Any]], warmup: int, repeats: int, device: torch.device
) -> list[float]:
    """Run every fn `warmup` times untimed, then `repeats` rounds, each fn timed on its own."""
    with torch.inference_mode():
        for _ in range(warmup):
            for fn in fns:
                fn()
        _sync(device)
        samples = []
        for _ in range(repeats):
            for fn in fns:
                _sync(device)
                start = time.perf_counter()
                fn()
                _sync(device)
                samples.append(time.perf_counter() - start)
    return samples


CPU_MEMORY_METHOD = (
    "peak RSS (VmHWM) during one pass after resetting it with /proc/self/clear_refs = 5 and malloc_trim; "
    "includes weights and runtime"
)
CUDA_MEMORY_METHOD = "torch.cuda.max_memory_allocated during one pass (allocator peak, weights included)"


def measure_memory(fn: Callable[[], Any], device: torch.device) -> dict[str, Any]:
    """Peak memory of one call of `fn` and its rise over the memory in use before it."""
    with torch.inference_mode():
        if device.type == "cuda":
            _sync(device)
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
            fn()
            _sync(device)
            peak = torch.cuda.max_memory_allocated(device)
            return {
                "method": CUDA_MEMORY_METHOD,
                "peak_bytes": peak,
                "before_bytes": before,
                "rise_bytes": peak - before,
            }
        trim_allocator()
        before = status_bytes("VmRSS")
        if not reset_peak():
            return {"method": "unavailable (no writable /proc/self/clear_refs)", "peak_bytes": None}
        fn()
        peak = status_bytes("VmHWM")
    return {
        "method": CPU_MEMORY_METHOD,
        "peak_bytes": peak,
        "before_bytes": before,
        "rise_bytes": None if peak is None or before is None else peak - before,
    }


# ----- FLOPs ---------------------------------------------------------------------------------------------------
def question_flops(
    model: VisionLanguageModel,
    encoded: Encoded,
    image_size: tuple[int, int],
    answer_tokens: int,
    base_cfg: VLMConfig | None = None,
    compression: CompressionConfig | None = None,
) -> dict[str, Any]:
    """Analytic FLOPs of one question from `vlm.flops`: `count_question(base_cfg, compression)` when the
    model was built from a teacher config (compressed or not), else the loaded model's own config."""
    image_tokens = int((encoded.input_ids == model.image_token_id).sum())
    prompt = int(encoded.input_ids.shape[0])
    if base_cfg is not None and (compression is not None or model.connector_config == ConnectorConfig()):
        counted = count_question(
            base_cfg,
            compression or CompressionConfig(),
            image_size,
            prompt - image_tokens,
            answer_tokens,
            False,
        )
        if counted["prompt_tokens"] != prompt:
            raise ValueError(
                f"vlm.flops counts {counted['prompt_tokens']} prompt tokens for this image, the prompt holds {prompt}"
            )
        return counted["analytic"]
    views = int(encoded.images.shape[0])
    return analytic_flops(model.cfg, model.connector_config, views, prompt, answer_tokens).to_dict()


def _mean_breakdown(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    return {key: sum(r[key] for r in rows) / len(rows) for key in rows[0]}


# ----- the benchmark -----------------------------------------------------------------------------------------
def _to(encoded: Encoded, pad_id: int, device: torch.device, dtype: torch.dtype, copies: int = 1) -> dict:
    batch = collate([encoded] * copies, pad_id)
    return {
        "input_ids": batch["input_ids"].to(device),
        "attention_mask": batch["attention_mask"].to(device),
        "images": batch["images"].to(device=device, dtype=dtype),
    }


def _component_fns(model: VisionLanguageModel, batch: dict) -> dict[str, Callable[[], Any]]:
    """Closures timing each stage of one question on precomputed inputs."""
    from transformers import DynamicCache

    ids, mask = batch["input_ids"], batch["attention_mask"]
    length = ids.shape[1]
    cache = DynamicCache(config=model.decoder.config)
    with torch.inference_mode():
        features = model.encode_vision(batch["images"])  # [N, P, D_vit]
        embeds = model.project(features)  # [N, k*k, D_lm]
        out = model.decoder(
            inputs_embeds=model.embed(ids, embeds),
            attention_mask=mask,
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        token = out.logits[:, -1].argmax(-1, keepdim=True)  # [1, 1]
    step_mask = torch.cat([mask, mask.new_ones(1, 1)], dim=1)  # [1, T + 1]
    step_pos = torch.full((1, 1), length, device=ids.device)

    def decode_step():
        extra = cache.get_seq_length() - length
        if extra:
            cache.crop(-extra)  # back to the prompt: every timed step sees the same context
        return model.decoder(
            input_ids=token,
            attention_mask=step_mask,
            position_ids=step_pos,
            cache=cache,
            use_cache=True,
        ).logits

    return {
        "vision": lambda: model.encode_vision(batch["images"]),
        "connector": lambda: model.project(features),
        "prefill": lambda: model.language_forward(ids, embeds, mask, logits_to_keep=1),
        "decode_step": decode_step,
    }


def benchmark(
    model: VisionLanguageModel,
    prompts: BenchPrompts,
    settings: BenchSettings = BenchSettings(),  # noqa: B008 (frozen, so sharing it is safe)
    base_cfg: VLMConfig | None = None,
    compression: CompressionConfig | None = None,
) -> dict[str, Any]:
    """Time, measure and count `model` on `prompts`; see the module docstring for what each entry means."""
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    model.eval()
    questions = prompts.questions
    pad = prompts.pad_id
    mcq = [_to(q.mcq, pad, device, dtype) for q in questions]
    da = [_to(q.da, pad, device, dtype) for q in questions]
    start = time.time()
    load_before = _loadavg()

    flops_mcq = [question_flops(model, q.mcq, q.image_size, 1, base_cfg, compression) for q in questions]
    result: dict[str, Any] = {
        "environment": environment(device, dtype),
        "settings": dataclasses.asdict(settings),
        "input": {
            "questions": len(questions),
            "prompt_ids": prompts.source,
            "image_sizes": sorted({f"{w}x{h}" for w, h in (q.image_size for q in questions)}),
            "views": statistics.mean(int(q.mcq.images.shape[0]) for q in questions),
            "image_tokens": statistics.mean(
                int((q.mcq.input_ids == model.image_token_id).sum()) for q in questions
            ),
            "mcq_prompt_tokens": statistics.mean(int(q.mcq.input_ids.shape[0]) for q in questions),
            "da_prompt_tokens": statistics.mean(int(q.da.input_ids.shape[0]) for q in questions),
        },
        "parameters": sum(p.numel() for p in model.parameters()),
        "weights_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
        "flops": {"convention": CONVENTION, "mcq": _mean_breakdown(flops_mcq)},
        "latency": {},
        "memory": {},
    }

    def mcq_fn(batch):
        return lambda: model(batch["input_ids"], batch["images"], batch["attention_mask"], logits_to_keep=1)

    def memory_then_time(key: str, fns: list[Callable[[], Any]]) -> list[float]:
        """The memory pass (first question) doubles as the first warm-up pass: on nanoVLM's real config on a
        CPU one pass takes a minute."""
        warmup = settings.warmup
        if settings.memory:
            result["memory"][key] = measure_memory(fns[0], device)
            warmup = max(warmup - 1, 0)
        return time_calls(fns, warmup, settings.repeats, device)

    result["latency"]["mcq"] = summarize(memory_then_time("mcq", [mcq_fn(b) for b in mcq]))

    if settings.new_tokens:

        def da_fn(batch):
            return lambda: model.generate_greedy(
                batch["input_ids"],
                batch["images"],
                batch["attention_mask"],
                max_new_tokens=settings.new_tokens,
            )

        result["latency"]["direct_answer"] = summarize(
            memory_then_time("direct_answer", [da_fn(b) for b in da])
        )
        result["flops"]["direct_answer"] = _mean_breakdown(
            [
                question_flops(model, q.da, q.image_size, settings.new_tokens, base_cfg, compression)
                for q in questions
            ]
        )

    if settings.batch_size:
        items = [questions[i % len(questions)].mcq for i in range(settings.batch_size)]
        batch = collate(items, pad)
        batch = {
            "input_ids": batch["input_ids"].to(device),
            "attention_mask": batch["attention_mask"].to(device),
            "images": batch["images"].to(device=device, dtype=dtype),
        }
        stats = summarize(memory_then_time("throughput_batch", [mcq_fn(batch)]))
        result["throughput"] = {
            "batch_size": settings.batch_size,
            "questions_per_s": settings.batch_size / stats["median_s"],
            "batch": stats,
        }

    if settings.components:
        result["components"] = _time_components(
            model, mcq, flops_mcq, questions, settings, device, base_cfg, compression
        )

    result["seconds"] = time.time() - start
    result["environment"]["loadavg_before"] = load_before
    result["environment"]["loadavg_after"] = _loadavg()
    return result


def _time_components(
    model, mcq, flops_mcq, questions, settings, device, base_cfg, compression
) -> dict[str, Any]:
    """Each stage timed on its own over the questions; FLOPs of the decode step from a two-token answer."""
    fns = [_component_fns(model, b) for b in mcq]
    step_flops = [
        question_flops(model, q.mcq, q.image_size, 2, base_cfg, compression)["decode"] for q in questions
    ]
    per_stage_flops = {
        "vision": [f["vision"] for f in flops_mcq],
        "connector": [f["connector"] for f in flops_mcq],
        "prefill": [f["prefill"] for f in flops_mcq],
        "decode_step": step_flops,
    }
    out = {}
    repeats = settings.component_repeats or settings.repeats
    for name in COMPONENTS:
        stats = summarize(time_calls([f[name] for f in fns], settings.warmup, repeats, device))
        flops = statistics.mean(per_stage_flops[name])
        entry = {
            **stats,
            "flops": flops,
            "flop_per_s": flops / stats["median_s"] if stats["median_s"] else None,
        }
        if name == "vision":
            views = statistics.mean(int(q.mcq.images.shape[0]) for q in questions)
            entry["views"] = views
            entry["median_s_per_view"] = stats["median_s"] / views
        out[name] = entry
    return out


# ----- teacher vs student ---------------------------------------------------------------------------------------
# Short enough to run inside `distill.finalize` (a few seconds on the demo, about a minute for nanoVLM on a GPU).
SHORT = BenchSettings(warmup=1, repeats=3, batch_size=8, new_tokens=4, components=False, memory=True)


def model_memory(result: dict[str, Any], key: str = "mcq") -> int | None:
    """Memory one model needs for a pass: its weights plus the pass's peak rise over what was in use before.

    A process holding several models (finalize holds teacher and student) has one peak RSS for all of them;
    this attributes to each model its own weights and activations."""
    rise = result["memory"].get(key, {}).get("rise_bytes")
    return None if rise is None else result["weights_bytes"] + max(rise, 0)


def compare_speed(
    student: VisionLanguageModel,
    teacher: VisionLanguageModel,
    tokenizer,
    examples: Sequence[VQAExample],
    compression: CompressionConfig,
    settings: BenchSettings = SHORT,
) -> dict[str, Any]:
    """Time the teacher, then the student, on the same questions and device in this process.

    Returns flat numbers for a study record: medians and spreads of MCQ latency, direct-answer latency,
    throughput, memory (`model_memory`), the analytic GFLOPs of both on these questions, and the ratios
    `speedup` (teacher latency / student latency) and `flop_reduction` (teacher FLOPs / student FLOPs).
    """
    runs = {}
    for name, model, cfg, comp in (
        ("teacher", teacher, teacher.cfg, None),
        ("student", student, teacher.cfg, compression),
    ):
        prompts = encode_questions(model, tokenizer, examples)
        own = comp is not None or model.connector_config == ConnectorConfig()
        runs[name] = benchmark(model, prompts, settings, cfg if own else None, comp)
    out: dict[str, Any] = {
        **{k: runs["student"]["environment"][k] for k in ("device", "device_name", "dtype", "threads")},
        "questions": len(examples),
        "repeats": settings.repeats,
        "loadavg": runs["student"]["environment"]["loadavg_after"],
        "memory_method": "weights + peak rise during one MCQ pass; "
        + runs["student"]["memory"].get("mcq", {}).get("method", "not measured"),
    }
    for name, run in runs.items():
        prefix = "" if name == "student" else "teacher_"
        lat = run["latency"]["mcq"]
        out[f"{prefix}latency_s"] = lat["median_s"]
        out[f"{prefix}latency_spread_s"] = [lat["min_s"], lat["max_s"]]
        if "direct_answer" in run["latency"]:
            out[f"{prefix}da_latency_s"] = run["latency"]["direct_answer"]["median_s"]
        if "throughput" in run:
            out[f"{prefix}throughput_qps"] = run["throughput"]["questions_per_s"]
        out[f"{prefix}memory_bytes"] = model_memory(run)
        out[f"{prefix}gflops"] = run["flops"]["mcq"]["total"] / 1e9
    out["speedup"] = out["teacher_latency_s"] / out["latency_s"]
    out["flop_reduction"] = out["teacher_gflops"] / out["gflops"]
    if "throughput_qps" in out:
        out["throughput_ratio"] = out["throughput_qps"] / out["teacher_throughput_qps"]
    return out


# ----- latency as a search objective -------------------------------------------------------------------------------
def relative_latency(
    model: VisionLanguageModel,
    reference: VisionLanguageModel,
    model_prompts: Sequence[Encoded],
    reference_prompts: Sequence[Encoded],
    pad_id: int,
    warmup: int = 1,
    repeats: int = 5,
) -> dict[str, Any]:
    """MCQ latency of `model` relative to `reference` (e.g. the teacher), both timed now in this process.

    Each round times one pass of each model over its prompts (one question at a time, batch 1, as a user
    asks them), the two in alternating order, and takes the ratio of the pair; the result is the median
    of the rounds' ratios. Pairing makes the ratio robust to a machine whose speed drifts (other jobs,
    clocks): both passes of a round see about the same machine.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats} and {warmup}")
    if len(model_prompts) != len(reference_prompts) or not model_prompts:
        raise ValueError("time both models on the same, non-empty list of questions")
    runs = []
    for net, prompts in ((model, model_prompts), (reference, reference_prompts)):
        param = next(net.parameters())
        batches = [_to(e, pad_id, param.device, param.dtype) for e in prompts]
        net.eval()
        runs.append(
            (
                [
                    (
                        lambda net=net, b=b: net(
                            b["input_ids"], b["images"], b["attention_mask"], logits_to_keep=1
                        )
                    )
                    for b in batches
                ],
                param.device,
            )
        )

    def one_pass(fns, device) -> float:
        return sum(time_calls(fns, 0, 1, device))

    with torch.inference_mode():
        for _ in range(warmup):
            for fns, device in runs:
                one_pass(fns, device)
        pairs = []
        for round_ in range(repeats):
            order = (0, 1) if round_ % 2 == 0 else (1, 0)
            seconds = {i: one_pass(*runs[i]) for i in order}
            pairs.append((seconds[0], seconds[1]))
    n = len(model_prompts)
    ratios = [m / r for m, r in pairs]
    spread = summarize(ratios)
    return {
        "ratio": spread["median_s"],
        "ratio_min": spread["min_s"],
        "ratio_max": spread["max_s"],
        "ratio_iqr": [spread["q1_s"], spread["q3_s"]],
        "latency_s": statistics.median(m for m, _ in pairs) / n,
        "reference_latency_s": statistics.median(r for _, r in pairs) / n,
        "questions": n,
        "rounds": repeats,
    }


# ----- context --------------------------------------------------------------------------------------------------
def _loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    import transformers

    return {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model(),
        "dtype": str(dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def summary_line(name: str, result: dict[str, Any]) -> str:
    """One line: MCQ latency (median [min, max]), direct answer, throughput, peak memory, GFLOPs and FLOP/s."""
    lat = result["latency"]["mcq"]
    gflops = result["flops"]["mcq"]["total"] / 1e9
    parts = [
        f"{name}: MCQ {lat['median_s'] * 1e3:.4g} ms [{lat['min_s'] * 1e3:.4g}, {lat['max_s'] * 1e3:.4g}]",
        f"{gflops:.4g} GFLOPs ({gflops / lat['median_s']:.4g} GFLOP/s)",
    ]
    if "direct_answer" in result["latency"]:
        da = result["latency"]["direct_answer"]
        parts.append(f"DA {result['settings']['new_tokens']} tokens {da['median_s'] * 1e3:.4g} ms")
    if "throughput" in result:
        tp = result["throughput"]
        parts.append(f"{tp['questions_per_s']:.4g} q/s at batch {tp['batch_size']}")
    peak = result["memory"].get("mcq", {}).get("peak_bytes")
    if peak is not None:
        parts.append(f"peak memory {peak / 2**20:.0f} MiB")
    env = result["environment"]
    parts.append(f"{env['device']} {env['dtype']} {env['threads']} threads")
    return "; ".join(parts)


# ----- CLI -------------------------------------------------------------------------------------------------------
