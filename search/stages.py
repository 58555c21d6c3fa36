"""Seconds and peak memory of the named stages of one trial (build, cost, warm-up, score), recorded as the
trial's `stages` user attribute so a study (a dry run above all) says where a trial's time and memory go.

Peak memory: on CUDA `torch.cuda.max_memory_allocated` after resetting the peak; on the CPU the process's
peak resident set (`VmHWM` of /proc/self/status) after resetting it to the current RSS (`5` written to
/proc/self/clear_refs). Both include what was resident before the stage (the teacher's weights above all).
Where neither works the peak is None.

On the CPU the resident set also holds pages freed earlier but kept by the allocator (a warm-up's retained
pages made every later stage read its peak). `exact=True` (`[search] exact_stage_memory`, which the dry run
sets) hands those pages back (malloc_trim) before each stage, as `vlm.timing.measure_memory` does, so a
stage's peak is its own, after collecting garbage before a trial's first stage. A full `gc.collect()` takes
~0.3 s with torch and transformers loaded: one before every stage of every demo trial, with the trimmed
pages' faults after it, cost 1.6 s per trial (30 trials of `make demo`'s study on 1 thread: 8.2 s per trial
against 6.6 s), so by default a stage's CPU peak is only an upper bound (the seconds are exact either way).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from vlm.process_memory import reset_peak, status_bytes, trim_allocator


def _reset_peak(device: torch.device) -> bool:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return True
    return reset_peak()


def _peak(device: torch.device) -> int | None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device)
    return status_bytes("VmHWM")


class StageMeter:
    """`with meter.stage("score"): ...` records that stage's seconds and peak memory (bytes).

    `exact`: on the CPU, collect garbage and trim the allocator before each stage so its peak is its own
    (see the module docstring for the cost); otherwise the peak may include pages kept from earlier stages.
    """

    def __init__(self, device: torch.device, exact: bool = False):
        self.device = torch.device(device)
        self.exact = exact
        self.stages: dict[str, dict[str, Any]] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if self.exact and self.device.type != "cuda":
            # One full collection per meter (per trial): a stage frees its tensors by reference counting,
            # so the trim alone hands them back; the collection catches cycles left by earlier trials.
            trim_allocator(collect=not self.stages)
        before = (
            torch.cuda.memory_allocated(self.device) if self.device.type == "cuda" else status_bytes("VmRSS")
        )
        can_peak = _reset_peak(self.device)
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.stages[name] = {
                "seconds": time.perf_counter() - start,
                "peak_bytes": _peak(self.device) if can_peak else None,
                "before_bytes": before,  # resident when the stage began: peak - before = the stage's own
            }

    def as_dict(self) -> dict[str, dict[str, Any]]:
        return {name: dict(values) for name, values in self.stages.items()}


class MemoryPoller:
    """The largest resident set (and CUDA allocation) seen by a background thread polling every `interval`
    seconds while the `with` block runs. Unlike VmHWM it survives code inside the block resetting the peak
    (`vlm.timing.measure_memory` and `StageMeter` do), at the cost of missing peaks shorter than `interval`."""

    def __init__(self, device: torch.device, interval: float = 0.05):
        self.device = torch.device(device)
        self.interval = interval
        self.peak_rss: int | None = None
        self.peak_cuda: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        rss = status_bytes("VmRSS")
        if rss is not None:
            self.peak_rss = max(self.peak_rss or 0, rss)
        if self.device.type == "cuda":
            self.peak_cuda = max(self.peak_cuda or 0, torch.cuda.memory_allocated(self.device))

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> MemoryPoller:
        self._sample()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()
