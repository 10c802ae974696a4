"""Durable local files: the one way binome replaces a file on a node's disk.

Owns nothing but the write discipline. Power loss is the failure this product
exists for, so a state file (node.json, cluster.json, the task index, the
cluster-log backlog, keys, runtime records) is replaced the way that survives
it: write a temporary file in the same directory, fsync it, rename it over the
target, fsync the directory. A reader then sees either the old content or the
new one, never a torn or empty file, even after a crash at any instant.

The volume engine's metadata (its superblock and bitmap) keeps its own
in-place slot writes: it updates fixed offsets of a preallocated file, which
is a different discipline.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make a rename or a new entry in `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes(path: str | os.PathLike[str], data: bytes, *, mode: int = 0o644,
                sync: bool = True) -> None:
    """Replace `path` with `data` atomically and durably; the file gets `mode`.

    `sync=False` keeps the atomic rename but skips both fsyncs: for files that
    are only hints rebuilt at start (caches), where durability buys nothing.
    """
    target = Path(path)
    # A unique temporary name: two writers of the same file never share one.
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if sync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    if sync:
        fsync_dir(target.parent)


def write_text(path: str | os.PathLike[str], text: str, *, mode: int = 0o644,
               sync: bool = True) -> None:
    write_bytes(path, text.encode(), mode=mode, sync=sync)


def write_json(path: str | os.PathLike[str], data: Any, *, indent: int | None = 2,
               mode: int = 0o644, sync: bool = True) -> None:
    """Replace `path` with `data` as JSON (a trailing newline, like every state file)."""
    write_text(path, json.dumps(data, indent=indent) + "\n", mode=mode, sync=sync)
