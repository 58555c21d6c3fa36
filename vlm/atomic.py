"""Files and folders written atomically: a reader, or a run restarted after a kill, sees the old version or
the new one, never half of one.

Everything is written under a temporary name beside its target (same folder, so the same file system) and
then renamed into place with `os.replace`, which POSIX makes atomic. Temporary names are unique per writer
(`tempfile`), so two processes writing the same target never write into each other's file; the last rename
wins. Temporary files and folders get the modes a plain `open` / `mkdir` would give them (umask applied):
`tempfile` creates them private (0600 / 0700), and other accounts must be able to read a report or a model.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def make_readable(folder: Path) -> None:
    """Give a written folder and everything in it the modes a plain `mkdir`/`open` would (0755 / 0644 under
    the usual umask)."""
    umask = _umask()
    os.chmod(folder, 0o777 & ~umask)
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o777 & ~umask)
        for name in files:
            os.chmod(os.path.join(root, name), 0o666 & ~umask)


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path` for a library to write (`torch.save`, safetensors, a screenshot); when
    the block ends without error it replaces `path`, otherwise it is removed. The temporary name keeps
    `path`'s extension, for writers that pick the format from it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` atomically; returns `path`."""
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically; returns `path`."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, data, indent: int | None = 1) -> Path:
    """Write `data` as JSON to `path` atomically; returns `path`."""
    return write_text(path, json.dumps(data, indent=indent))


def replace_dir(src: Path, dst: Path, old: Path | None = None) -> None:
    """Swap the complete folder `src` in place of `dst` (which may not exist).

    An existing `dst` is first moved aside to `old` (default: the hidden sibling `.<name>.old`), so at every
    moment `dst` or `old` holds a complete folder; `old` is deleted once `src` is in place. A reader that
    finds `dst` missing after a kill can fall back on `old`.
    """
    old = old if old is not None else dst.with_name(f".{dst.name}.old")
    if dst.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dst, old)
    os.replace(src, dst)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(path: str | Path, replace: bool = True) -> Iterator[Path]:
    """A fresh temporary folder beside `path` to fill; when the block ends without error it becomes `path`
    (made readable, see `make_readable`), otherwise it is deleted.

    `replace=True` swaps it in place of an existing `path` (`replace_dir`). `replace=False` keeps the first
    writer's folder: when `path` exists (or appears meanwhile, written by another process) the new folder is
    deleted and FileExistsError raised.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        make_readable(tmp)
        if replace:
            replace_dir(tmp, path)
        else:
            try:
                os.rename(tmp, path)  # fails when `path` exists and is not empty
            except OSError as err:
                raise FileExistsError(f"{path} already exists") from err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
