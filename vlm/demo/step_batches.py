"""Training batches addressed by step number, so worker processes can draw them ahead of the training loop.

The demo teacher draws every batch from the scene generator: rendering, patch labels and tokenizing are
pure Python and take about as long as a training step on two CPU cores. On a GPU they would starve it.
Two streams exist:

- **shared** (the shipped teacher's): one `random.Random` drawn from in step order. Batch ``n`` depends on
  every batch before it, so only the training process itself can draw it.
- **per step**: batch ``n`` comes from its own ``random.Random(f"{prefix}/{n}")``. Any process can draw
  any step, so `iterate` hands the drawing to ``workers`` `torch.utils.data.DataLoader` processes, and a
  run gets the same batches whatever the number of workers (and after a resume).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset


class StepBatches(Dataset):
    """Batch ``n`` of a stage is ``self[n]`` = ``make(rng, n)``.

    ``prefix`` None: ``rng`` is the shared generator, drawn from in call order. Otherwise each step draws
    from ``random.Random(f"{prefix}/{step}")`` and ``rng`` is not used.
    """

    def __init__(self, make: Callable[[random.Random, int], object], rng: random.Random, prefix: str | None):
        self.make = make
        self.rng = rng
        self.prefix = prefix

    def __getitem__(self, step: int):
        rng = self.rng if self.prefix is None else random.Random(f"{self.prefix}/{step}")
        return self.make(rng, step)


class SharedStreamError(ValueError):
    """Workers were asked to draw from the shared stream, which only the training process can draw."""


def iterate(batches: StepBatches, first: int, stop: int, workers: int = 0) -> Iterator:
    """Batches of steps ``first`` to ``stop - 1`` in order, drawn here (``workers`` 0) or by worker
    processes."""
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    if workers == 0:
        for step in range(first, stop):
            yield batches[step]
        return
    if batches.prefix is None:
        raise SharedStreamError(
            "data workers need per-step seeds: the shared scene stream is drawn in step order by the "
            "training process"
        )
    # batch_size=None: each index is already a whole batch; workers hand them back in sampler order.
    # The loader's own generator: it would otherwise take a draw from torch's global RNG, which then
    # differs with and without workers. Two batches ahead per worker keeps shared memory small (a vision
    # batch is ~5 MB; containers often have 64 MB of /dev/shm).
    yield from DataLoader(
        batches,
        batch_size=None,
        sampler=range(first, stop),
        num_workers=workers,
        prefetch_factor=2,
        generator=torch.Generator().manual_seed(0),
    )
