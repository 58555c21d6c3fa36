"""Image geometry of nanoVLM's pipeline: the resized size and the crop grid, as pure functions.

Shared by the image processor (which does the resizing) and the FLOP counter (which only needs the counts).
Source: nanoVLM's `DynamicResize` and `GlobalAndSplitImages` (data/custom_transforms.py).
"""

from __future__ import annotations

import math

from vlm.config import ImageSpec


def resized_size(width: int, height: int, spec: ImageSpec) -> tuple[int, int]:
    """(width, height) after resizing: long side -> max_grid_side * view_size, short side rounded up to views."""
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    view = spec.view_size
    max_side = spec.max_grid_side * view
    long_side, short_side = max(width, height), min(width, height)
    if spec.resize_to_max_side_len:
        target_long = max_side
    else:
        target_long = min(max_side, math.ceil(long_side / view) * view)
    scale = target_long / long_side
    target_short = max(view, math.ceil(short_side * scale / view) * view)
    return (target_long, target_short) if width >= height else (target_short, target_long)


def view_grid(width: int, height: int, spec: ImageSpec) -> tuple[int, int]:
    """(rows, cols) of crops for an image of this size."""
    new_w, new_h = resized_size(width, height, spec)
    return new_h // spec.view_size, new_w // spec.view_size


def num_views(width: int, height: int, spec: ImageSpec) -> int:
    """Crops plus the global view; a 1x1 grid is the global view alone (nanoVLM drops the duplicate)."""
    rows, cols = view_grid(width, height, spec)
    return 1 if rows * cols == 1 else rows * cols + 1
