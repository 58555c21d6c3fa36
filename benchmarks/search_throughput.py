"""Search throughput: trials per minute and cache hit rates of one `search.run` worker.

    python -m benchmarks.search_throughput [--study demo] [--trials 40] [--storage URL]
        [--out benchmarks/results/search_throughput.json]

Runs `search.run.main` on a fresh storage in a temporary folder (or on `--storage`, resuming what is there)
and times it. Two rates are reported: over the whole run (teacher loading and the baseline measurement
included, what a user waits for) and over the trials alone (first trial start to last trial end, from the
storage's timestamps). The cache hit rates are the worker's own counters, which `search.run` stores in the
study's user attribute "cache_stats" at the end of a run.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import tempfile
import time
from pathlib import Path

import optuna
import torch

from ledger.config import load_study_config
from ledger.rules import FINISHED
from search.run import main as run_search

logger = logging.getLogger("benchmarks.search_throughput")


def measure(study: str, trials: int, storage: str) -> dict:
    """Run the search to `trials` finished trials on `storage`; returns the measurements."""
    config = load_study_config(study)
    before = _finished_numbers(config.name, storage)
    start = time.perf_counter()
    code = run_search(["--study", study, "--trials", str(trials), "--storage", storage])
    seconds = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"search.run exited with {code}")
    loaded = optuna.load_study(study_name=config.name, storage=storage)
    new = [t for t in loaded.get_trials(deepcopy=False, states=FINISHED) if t.number not in before]
    trial_seconds = (
        (max(t.datetime_complete for t in new) - min(t.datetime_start for t in new)).total_seconds()
        if new
        else 0.0
    )
    cache = loaded.user_attrs.get("cache_stats", {})
    return {
        "study": config.name,
        "storage": storage,
        "trials_target": trials,
        "trials_run": len(new),
        "seconds": seconds,
        "trials_per_minute": 60 * len(new) / seconds if seconds else 0.0,
        "trial_seconds": trial_seconds,
        "trials_per_minute_in_trials": 60 * len(new) / trial_seconds if trial_seconds else 0.0,
        "mean_trial_seconds": sum(t.user_attrs.get("seconds", 0.0) for t in new) / len(new) if new else 0.0,
        "feature_hit_rate": cache.get("feature_hit_rate"),
        "encoding_hit_rate": cache.get("encoding_hit_rate"),
        "cache_stats": cache,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        },
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _finished_numbers(name: str, storage: str) -> set[int]:
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:  # a fresh storage: no study yet
        return set()
    return {t.number for t in study.get_trials(deepcopy=False, states=FINISHED)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Time the search: trials per minute and cache hit rates.")
    parser.add_argument("--study", default="demo", help="study name (studies/<name>.toml) or a .toml path")
    parser.add_argument("--trials", type=int, default=40, help="finished trials the study should hold")
    parser.add_argument(
        "--storage", default=None, help="Optuna storage URL (default: a fresh sqlite file in a temp folder)"
    )
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/search_throughput.json"), help="JSON result"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    with tempfile.TemporaryDirectory(prefix="search_throughput_") as scratch:
        storage = args.storage or f"sqlite:///{Path(scratch) / 'bench.db'}"
        result = measure(args.study, args.trials, storage)
    if args.storage is None:
        result["storage"] = "fresh sqlite (temporary)"

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"{result['study']}: {result['trials_run']} trials in {result['seconds']:.1f} s = "
        f"{result['trials_per_minute']:.1f} trials/min ({result['trials_per_minute_in_trials']:.1f} counting "
        f"trials only); feature cache hit rate {_pct(result['feature_hit_rate'])}, encoding cache hit rate "
        f"{_pct(result['encoding_hit_rate'])}; written to {args.out}"
    )
    return 0


def _pct(rate: float | None) -> str:
    return "n/a" if rate is None else f"{100 * rate:.1f}%"


if __name__ == "__main__":
    raise SystemExit(main())
