"""`python -m vlm.bench --model MODEL [--compression JSON] [--device cpu|cuda] [--threads N] [--dtype ...]`

Measures a model's latency, throughput and peak memory beside its counted FLOPs (`vlm.timing` does the
work; its docstring says what is measured and how). Imports nothing heavy before parsing, so `--help`
answers at once.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from pathlib import Path

from vlm.atomic import write_json
from vlm.cli import UsageError, make_parser, parse_device, run
from vlm.config import BenchSettings, CompressionConfig

logger = logging.getLogger("vlm.bench")

DTYPE_NAMES = ("bfloat16", "float16", "float32")
DEFAULT_OUT_DIR = Path("benchmarks/results")


def default_out(model: str, compression: CompressionConfig | None) -> Path:
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(model).name if Path(model).exists() else model)
    if compression is not None:
        stem += "-" + re.sub(r"[^A-Za-z0-9]+", "_", json.dumps(compression.to_dict(), sort_keys=True))[:60]
    return DEFAULT_OUT_DIR / f"bench-{stem}.json"


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(
        "vlm.bench",
        "Measure latency, throughput and peak memory of a model beside its counted FLOPs.",
        "examples:\n  python -m vlm.bench --model demo --questions 4\n"
        "  python -m vlm.bench --model default --threads 2 --repeats 3 --compression '{\"max_grid_side\": 1}'",
    )
    parser.add_argument(
        "--model",
        default="demo",
        help="checkpoint folder, hub id, 'demo', 'default' (nanoVLM's 460M config, random weights) or a "
        "config.json (random weights)",
    )
    parser.add_argument("--compression", default=None, help="CompressionConfig as JSON text or a JSON file")
    parser.add_argument(
        "--tokenizer", default=None, help="tokenizer folder (default: the checkpoint's tokenizer/)"
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--dtype", default="float32", choices=DTYPE_NAMES, help="weights and activations")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    parser.add_argument("--warmup", type=int, default=BenchSettings.warmup, help="untimed passes first")
    parser.add_argument(
        "--repeats", type=int, default=BenchSettings.repeats, help="timed passes (median reported)"
    )
    parser.add_argument("--questions", type=int, default=1, help="questions per pass")
    parser.add_argument(
        "--batch-size", type=int, default=BenchSettings.batch_size, help="throughput batch (0: skip)"
    )
    parser.add_argument(
        "--new-tokens", type=int, default=BenchSettings.new_tokens, help="direct-answer tokens (0: skip)"
    )
    parser.add_argument("--no-components", action="store_true", help="skip the per-component timings")
    parser.add_argument(
        "--component-repeats", type=int, default=None, help="timed passes per component (default: --repeats)"
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory passes")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the random weights and the synthetic image"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help=f"JSON result (default: {DEFAULT_OUT_DIR}/bench-<model>.json)"
    )
    return parser


def _run(args: argparse.Namespace) -> int:
    import torch

    from vlm.model import ConnectorConfig
    from vlm.timing import (
        DTYPES,
        benchmark,
        encode_questions,
        load_bench_model,
        summary_line,
        word_tokenizer_for,
    )

    if args.questions < 1:
        raise UsageError(f"--questions must be >= 1, got {args.questions}")
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads must be >= 1, got {args.threads}")
    try:
        settings = BenchSettings(
            args.warmup,
            args.repeats,
            args.batch_size,
            args.new_tokens,
            not args.no_components,
            not args.no_memory,
            args.component_repeats,
        )
        compression = CompressionConfig.from_json(args.compression) if args.compression else None
    except (ValueError, OSError) as err:
        raise UsageError(f"{err}") from err
    device = parse_device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    loaded = load_bench_model(args.model, compression, args.tokenizer, args.seed, args.questions)
    model = loaded.model.to(device=device, dtype=DTYPES[args.dtype])
    tokenizer = loaded.tokenizer or word_tokenizer_for(loaded.base_cfg, loaded.examples)
    prompts = encode_questions(model, tokenizer, loaded.examples)
    if loaded.tokenizer is None:
        prompts.source = "word tokenizer (synthetic ids; exact image-token positions)"
    own_cfg = loaded.compression is not None or model.connector_config == ConnectorConfig()
    result = benchmark(model, prompts, settings, loaded.base_cfg if own_cfg else None, loaded.compression)
    result = {
        "model": args.model,
        "description": loaded.description,
        "compression": loaded.compression.to_dict() if loaded.compression else None,
        **result,
    }
    result["summary"] = summary_line(args.model, result)
    out = args.out or default_out(args.model, loaded.compression)
    write_json(out, result)
    print(result["summary"])
    logger.info("wrote %s", out)
    return 0


def main(argv: list[str] | None = None) -> int:
    from vlm.plan import CompressionError

    return run(_run, build_parser(), argv, user_errors=(CompressionError, FileNotFoundError))


if __name__ == "__main__":
    sys.exit(main())
