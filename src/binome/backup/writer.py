"""Back up one raw image (a file or block device) into a datastore snapshot as a fixed index.

Full mode reads every chunk. Incremental mode takes the dirty extents of a QEMU dirty
bitmap: only chunks that overlap a dirty extent are read; every other digest is copied
from the previous backup's index (and its chunk touched so a concurrent GC keeps it).
If the previous index cannot be trusted for this image (other size or chunk size, or
chunks missing), the backup falls back to full and says why.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from binome.backup.chunkstore import (
    DEFAULT_CHUNK_SIZE,
    CryptConfig,
    chunk_digest,
    encode_blob,
)
from binome.backup.datastore import SnapshotWriter
from binome.backup.index import FixedIndex


@dataclass
class BackupStats:
    size: int = 0
    bytes_read: int = 0
    chunks_read: int = 0
    chunks_new: int = 0
    chunks_reused: int = 0
    bytes_stored: int = 0
    seconds: float = 0.0
    bytes_done: int = 0  # image bytes handled so far (read or reused)
    full_reason: str | None = None  # why an incremental request became a full backup
    incremental: bool = False       # only the chunks under dirty extents were read
    bytes_dirty: int = 0            # image bytes in those chunks (incremental only)


def dirty_chunks(extents: Iterable[tuple[int, int]], chunk_size: int, size: int) -> set[int]:
    """Chunk positions touched by (offset, length) byte extents, clipped to the image."""
    positions: set[int] = set()
    for offset, length in extents:
        if offset < 0 or length < 0:
            raise ValueError(f"bad dirty extent ({offset}, {length})")
        if length == 0 or offset >= size:
            continue
        end = min(offset + length, size)
        positions.update(range(offset // chunk_size, (end - 1) // chunk_size + 1))
    return positions


def image_size(path: Path) -> int:
    with open(path, "rb") as handle:
        return handle.seek(0, os.SEEK_END)  # works for block devices too


class BlockSource(Protocol):
    """What a backup reads: a size and positioned reads (a file, or an NBD export)."""

    size: int

    def pread(self, offset: int, length: int) -> bytes: ...


class FileSource:
    """A raw image file or block device as a BlockSource."""

    def __init__(self, path: Path) -> None:
        self.size = image_size(path)
        self._fd = os.open(path, os.O_RDONLY)

    def pread(self, offset: int, length: int) -> bytes:
        return os.pread(self._fd, length, offset)

    def close(self) -> None:
        os.close(self._fd)


class Throttle:
    """At most `rate` bytes per second on average (vzdump's `bwlimit`, in bytes)."""

    def __init__(self, rate: float | None) -> None:
        self.rate = rate
        self.started = time.monotonic()
        self.done = 0

    def account(self, count: int) -> None:
        if not self.rate:
            return
        self.done += count
        ahead = self.done / self.rate - (time.monotonic() - self.started)
        if ahead > 0:
            time.sleep(ahead)


def backup_image(writer: SnapshotWriter, name: str, source: Path | BlockSource, *,
                 chunk_size: int = DEFAULT_CHUNK_SIZE, previous: FixedIndex | None = None,
                 dirty: Iterable[tuple[int, int]] | None = None,
                 progress: Callable[[BackupStats], None] | None = None,
                 bwlimit: float | None = None) -> BackupStats:
    """Read `source` in fixed chunks into the writer's snapshot as `<name>` (a .fidx).

    `progress` is called after every chunk (the caller decides how often to log);
    `bwlimit` caps the read rate in bytes per second.
    """
    if isinstance(source, Path):
        opened = FileSource(source)
        try:
            return backup_image(writer, name, opened, chunk_size=chunk_size,
                                previous=previous, dirty=dirty, progress=progress,
                                bwlimit=bwlimit)
        finally:
            opened.close()
    started = time.monotonic()
    throttle = Throttle(bwlimit)
    crypt: CryptConfig | None = writer.crypt
    chunks = writer.store.chunks
    size = source.size
    stats = BackupStats(size=size)
    count = -(-size // chunk_size)
    to_read: set[int] | None = None
    if dirty is not None:
        if previous is None:
            stats.full_reason = "no previous backup"
        elif previous.size != size or previous.chunk_size != chunk_size:
            stats.full_reason = "image size or chunk size changed since the previous backup"
        elif not all(chunks.contains(d) for d in set(previous.digests)):
            stats.full_reason = "chunks of the previous backup are missing"
        else:
            to_read = dirty_chunks(dirty, chunk_size, size)
            stats.incremental = True
            stats.bytes_dirty = sum(min(chunk_size, size - p * chunk_size) for p in to_read)
    digests: list[bytes] = []
    zero = bytes(chunk_size)
    zero_digests: dict[int, bytes] = {}
    for position in range(count):
        if to_read is not None and previous is not None and position not in to_read:
            digest = previous.digests[position]
            chunks.touch(digest)
            digests.append(digest)
            stats.chunks_reused += 1
        else:
            length = min(chunk_size, size - position * chunk_size)
            data = source.pread(position * chunk_size, length)
            if len(data) != length:
                raise OSError(f"short read at {position * chunk_size}: {len(data)} of "
                              f"{length} bytes")
            throttle.account(len(data))
            stats.bytes_read += len(data)
            stats.chunks_read += 1
            if data == zero[:length]:
                # unallocated areas of a disk: hash the zero chunk once per length
                if length not in zero_digests:
                    zero_digests[length] = chunk_digest(data, crypt)
                digest = zero_digests[length]
            else:
                digest = chunk_digest(data, crypt)
            if chunks.contains(digest):
                chunks.touch(digest)
                stats.chunks_reused += 1
            else:
                blob = encode_blob(data, crypt)
                if chunks.insert(digest, blob):
                    stats.chunks_new += 1
                    stats.bytes_stored += len(blob)
            digests.append(digest)
        stats.bytes_done = min(size, (position + 1) * chunk_size)
        if progress is not None:
            stats.seconds = time.monotonic() - started
            progress(stats)
    writer.add_index(name, FixedIndex(size=size, chunk_size=chunk_size, digests=digests))
    stats.seconds = time.monotonic() - started
    return stats
