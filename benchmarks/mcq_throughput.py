"""MCQ evaluation throughput: batched vs one question at a time, on a small random model.

Builds the demo teacher's architecture (`vlm.demo.teacher.demo_vlm_config`) with random weights and N
synthetic demo questions, encodes them once (image processing and tokenization are not timed), then times
`vlm.evaluate.iter_mcq` (one prefill per question, letter logits at the last position) at batch 32 and at
batch 1, on the CPU and on CUDA when available. Each timing follows a warm-up pass and is the median of
`--repeats` passes.

    python -m benchmarks.mcq_throughput [--n 64] [--out benchmarks/results/mcq_throughput.json]
"""

from __future__ import annotations

import argparse
import logging
import platform
import statistics
import time
from pathlib import Path

import torch

from vlm.atomic import write_json
from vlm.data import iter_examples
from vlm.demo.dataset import generate_split
from vlm.demo.teacher import build_demo_tokenizer, demo_vlm_config
from vlm.evaluate import EvalConfig, encode_mcq, iter_mcq
from vlm.model import VisionLanguageModel
from vlm.tokenizer import special_token_ids

logger = logging.getLogger(__name__)

BATCH_SIZES = (32, 1)


def build_model(tokenizer, seed: int) -> VisionLanguageModel:
    """The demo teacher's shape with random weights (throughput does not depend on the weights)."""
    cfg = demo_vlm_config(len(tokenizer))
    torch.manual_seed(seed)
    return VisionLanguageModel(cfg, special_token_ids(tokenizer, cfg)["image_token"]).eval()


def _one_pass(model, tokenizer, examples, encoded, batch_size: int, device: torch.device) -> float:
    """Seconds for one MCQ pass over all examples."""
    config = EvalConfig(batch_size=batch_size, show_progress=False)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _, logits in iter_mcq(model, tokenizer, examples, config, encoded=encoded):
        logits.argmax(-1).tolist()  # what evaluate_mcq does; also syncs a GPU
    return time.perf_counter() - start


def time_mcq(
    model, tokenizer, examples, encoded, batch_size: int, device: torch.device, repeats: int
) -> dict:
    """Questions per second at `batch_size` on `device`: a warm-up pass, then the median of `repeats` passes."""
    _one_pass(model, tokenizer, examples, encoded, batch_size, device)  # warm-up: allocator, kernels
    seconds = [_one_pass(model, tokenizer, examples, encoded, batch_size, device) for _ in range(repeats)]
    median = statistics.median(seconds)
    return {
        "device": str(device),
        "batch_size": batch_size,
        "questions": len(examples),
        "seconds": median,
        "questions_per_s": len(examples) / median,
        "all_seconds": seconds,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="MCQ evaluation throughput, batched vs unbatched.")
    parser.add_argument("--n", type=int, default=64, help="number of synthetic demo questions")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per setting (median reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the questions and the random weights")
    parser.add_argument("--cpu-only", action="store_true", help="skip CUDA even when it is available")
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/mcq_throughput.json"), help="JSON result file"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.n < 1 or args.repeats < 1:
        parser.error("--n and --repeats must be >= 1")
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    tokenizer = build_demo_tokenizer()
    model = build_model(tokenizer, args.seed)
    examples = list(iter_examples(generate_split(args.seed, "validation", args.n), "validation"))
    encoded = [encode_mcq(tokenizer, model, model.image_spec, e) for e in examples]
    views = sum(e.images.shape[0] for e in encoded) / len(encoded)
    tokens = sum(e.input_ids.shape[0] for e in encoded) / len(encoded)
    logger.info(
        "%d questions, %.1f views and %.0f prompt tokens each; model %.2fM parameters",
        len(examples),
        views,
        tokens,
        sum(p.numel() for p in model.parameters()) / 1e6,
    )

    devices = [torch.device("cpu")]
    if torch.cuda.is_available() and not args.cpu_only:
        devices.append(torch.device("cuda"))
    rows = []
    for device in devices:
        model.to(device)
        for batch_size in BATCH_SIZES:
            row = time_mcq(model, tokenizer, examples, encoded, batch_size, device, args.repeats)
            logger.info("%s batch %d: %.1f questions/s", device, batch_size, row["questions_per_s"])
            rows.append(row)

    print(f"\n{'device':<8} {'batch':>5} {'questions/s':>12} {'speed-up':>9}")
    for row in rows:
        single = next(r for r in rows if r["device"] == row["device"] and r["batch_size"] == 1)
        speedup = row["questions_per_s"] / single["questions_per_s"]
        print(f"{row['device']:<8} {row['batch_size']:>5} {row['questions_per_s']:>12.1f} {speedup:>8.2f}x")

    result = {
        "benchmark": "mcq_throughput",
        "model": "demo teacher architecture, random weights",
        "mean_views_per_question": views,
        "mean_prompt_tokens": tokens,
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
        "machine": platform.platform(),
        "cuda_device": torch.cuda.get_device_name(0) if len(devices) > 1 else None,
        "results": rows,
    }
    write_json(args.out, result)
    logger.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
