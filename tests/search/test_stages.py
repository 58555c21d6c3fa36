"""Stage seconds and peak memory (search.stages): a large stage shows in its own peak, not in the next one's,
and the polled peak survives a reset of the kernel's high-water mark inside the block."""

from __future__ import annotations

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
    meter = StageMeter(torch.device("cpu"))
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
def test_the_polled_peak_survives_a_reset_inside_the_block():
    with MemoryPoller(torch.device("cpu"), interval=0.01) as poller:
        start = poller.peak_rss
        block = torch.ones(100 * MB // 4)
        block.add_(1)
        time.sleep(0.1)  # a few polls while the 100 MB are resident
        del block
        Path("/proc/self/clear_refs").write_text("5")  # what vlm.timing.measure_memory does
    assert poller.peak_rss - start >= 90 * MB
