"""This process's memory as the kernel reports it, and handing freed pages back (Linux; elsewhere a no-op).

Shared by `vlm.timing` (memory of one pass) and `search.stages` (peak memory by trial stage).
"""

from __future__ import annotations

import ctypes
import gc
import re
from pathlib import Path


def status_bytes(field: str) -> int | None:
    """A memory field of /proc/self/status (VmRSS, VmHWM, ...) in bytes, or None off Linux."""
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    match = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) * 1024 if match else None


def trim_allocator(collect: bool = True) -> None:
    """Hand glibc's free pages back, so the RSS starts low: without it the RSS after one large step stays at
    that step's peak. `collect`: free unreachable reference cycles first (a full `gc.collect()`, ~0.3 s with
    torch loaded)."""
    if collect:
        gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def reset_peak() -> bool:
    """Reset the kernel's peak resident set (VmHWM) to the current one; False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True
