"""Stage seconds and peak memory (search.stages): with `exact` a large stage shows in its own peak, not in the
next one's; without it no stage forces a garbage collection (it cost the demo search ~1 s per trial); the
polled peak survives a reset of the kernel's high-water mark inside the block."""

from __future__ import annotations

import gc
import sys
import time
from pathlib import Path

import pytest
import torch

from search.stages import MemoryPoller, StageMeter

linux = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not Path("/proc/self/clear_refs").exists(),
    reason="needs /proc/self/status and clear_refs",
)
MB = 2**20


@linux
def test_a_stage_peak_is_its_own():
    meter = StageMeter(torch.device("cpu"), exact=True)
    with meter.stage("big"):
        block = torch.ones(100 * MB // 4)  # 100 MB
        del block
    with meter.stage("small"):
        torch.ones(1000)
    big, small = meter.as_dict()["big"], meter.as_dict()["small"]
    assert big["peak_bytes"] - big["before_bytes"] >= 90 * MB
    assert small["peak_bytes"] - small["before_bytes"] < 50 * MB  # the freed 100 MB were handed back
    assert big["seconds"] >= 0 and small["seconds"] >= 0


@linux
def test_only_an_exact_meter_collects_garbage_once():
    generations = []

    def on_gc(phase: str, info: dict) -> None:
        if phase == "start":
            generations.append(info["generation"])

    enabled = gc.isenabled()
    gc.disable()  # no automatic collection: any seen below was forced by a stage
    gc.callbacks.append(on_gc)
    try:
        cheap = StageMeter(torch.device("cpu"))
        for name in ("build", "score"):
            with cheap.stage(name):
                torch.ones(1000)
        after_cheap = list(generations)
        exact = StageMeter(torch.device("cpu"), exact=True)
        for name in ("build", "score"):
            with exact.stage(name):
                torch.ones(1000)
    finally:
        gc.callbacks.remove(on_gc)
        if enabled:
            gc.enable()
    assert after_cheap == []
    assert generations == [2]  # one full collection, before the exact meter's first stage
    for record in cheap.as_dict().values():  # a cheap stage still has its seconds and an upper-bound peak
        assert record["seconds"] >= 0 and record["peak_bytes"] >= record["before_bytes"] > 0


@linux
def test_the_polled_peak_survives_a_reset_inside_the_block():
    with MemoryPoller(torch.device("cpu"), interval=0.01) as poller:
        start = poller.peak_rss
        block = torch.ones(100 * MB // 4)
        block.add_(1)
        time.sleep(0.1)  # a few polls while the 100 MB are resident
        del block
        Path("/proc/self/clear_refs").write_text("5")  # what vlm.timing.measure_memory does
    assert poller.peak_rss - start >= 90 * MB
