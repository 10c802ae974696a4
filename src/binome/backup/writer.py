"""Back up one raw image (a file or block device) into a datastore snapshot as a fixed index.

Full mode reads every chunk. Incremental mode takes the dirty extents of a QEMU dirty
bitmap: only chunks that overlap a dirty extent are read; every other digest is copied
from the previous backup's index (and its chunk touched so a concurrent GC keeps it).
If the previous index cannot be trusted for this image (other size or chunk size, or
chunks missing), the backup falls back to full and says why.

Throughput: reading, hashing/compressing and writing overlap (see `backup_image`); new
chunks are written without fsync and made durable together (`ChunkBatch`: one syncfs,
the renames, a second syncfs) before the index that references them.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from binome.backup.chunkstore import (
    DEFAULT_CHUNK_SIZE,
    ChunkBatch,
    ChunkStore,
    CryptConfig,
    chunk_digest,
    encode_blob_parts,
)
from binome.backup.datastore import SnapshotWriter
from binome.backup.index import FixedIndex
from binome.backup.nbd import DEFAULT_READ_DEPTH

if TYPE_CHECKING:
    from binome.backup.remote import RemoteWriter


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


# Chunk threads: hashlib, zstandard and the O_DIRECT writes release the GIL, and each
# write waits on the disk, so more threads than cores keep both the CPU and the disk busy.
# Memory: about (workers + 2) x 2 x chunk size in flight, plus one aligned write buffer
# (a chunk) per thread.
DEFAULT_WORKERS = 8


class _ChunkSaver:
    """Hashes, encodes and stores chunks; called from several worker threads at once.

    A digest is claimed once per backup, so two equal chunks in flight are encoded and
    written once. Into a local chunk store, new chunks go into a `ChunkBatch` (written
    without fsync); `durable()` makes them all durable at once (data, then names) and
    must run before an index references them. A remote store gets each chunk uploaded
    (`durable()` is then the server's business: it syncs before taking the index).
    """

    def __init__(self, writer: SnapshotWriter | RemoteWriter, chunk_size: int) -> None:
        self.crypt: CryptConfig | None = writer.crypt
        self.chunks = writer.store.chunks
        self.batch: ChunkBatch | None = (self.chunks.batch()
                                         if isinstance(self.chunks, ChunkStore) else None)
        self.zero = bytes(chunk_size)
        self._lock = threading.Lock()
        self._claimed: set[bytes] = set()
        self._zero_digests: dict[int, bytes] = {}
        self._new_dirs: set[Path] = set()

    def save(self, data: bytes | bytearray) -> tuple[bytes, int]:
        """The chunk's digest and its stored blob size (0 when it was already there)."""
        length = len(data)
        if data == self.zero[:length]:
            # unallocated areas of a disk: hash the zero chunk once per length
            digest = self._zero_digests.get(length)
            if digest is None:
                digest = self._zero_digests.setdefault(length, chunk_digest(data, self.crypt))
        else:
            digest = chunk_digest(data, self.crypt)
        with self._lock:
            claimed = digest in self._claimed
            self._claimed.add(digest)
        if claimed:
            return digest, 0
        if self.chunks.contains(digest):
            self.chunks.touch(digest)
            return digest, 0
        header, body = encode_blob_parts(data, self.crypt)
        if self.batch is not None:
            if not self.batch.add(digest, (header, body)):
                return digest, 0
        else:
            if not self.chunks.insert(digest, header + body, sync_dir=False):
                return digest, 0
            with self._lock:
                self._new_dirs.add(self.chunks.path(digest).parent)
        return digest, len(header) + len(body)

    def durable(self) -> None:
        if self.batch is not None:
            self.batch.commit()
        else:
            self.chunks.sync_dirs(self._new_dirs)

    def abort(self) -> None:
        if self.batch is not None:
            self.batch.abort()


def _read_chunks(source: BlockSource, ranges: list[tuple[int, int]],
                 depth: int) -> Iterator[bytes | bytearray]:
    """The data of each range in order; several NBD reads in flight when the source can."""
    read_ahead = getattr(source, "read_ahead", None)
    if read_ahead is not None:
        yield from read_ahead(ranges, depth)
        return
    for offset, length in ranges:
        yield source.pread(offset, length)


def backup_image(writer: SnapshotWriter | RemoteWriter, name: str, source: Path | BlockSource, *,
                 chunk_size: int = DEFAULT_CHUNK_SIZE, previous: FixedIndex | None = None,
                 dirty: Iterable[tuple[int, int]] | None = None,
                 progress: Callable[[BackupStats], None] | None = None,
                 bwlimit: float | None = None, workers: int = DEFAULT_WORKERS,
                 read_depth: int = DEFAULT_READ_DEPTH) -> BackupStats:
    """Read `source` in fixed chunks into the writer's snapshot as `<name>` (a .fidx).

    A pipeline: this thread reads (`read_depth` NBD requests in flight), `workers`
    threads hash, compress and write the chunks, results are taken back in chunk
    order. Every new chunk is durable (data and name) before the index is written.
    `progress` is called after every chunk, in order (the caller decides how often to
    log); `bwlimit` caps the read rate in bytes per second.
    """
    if isinstance(source, Path):
        opened = FileSource(source)
        try:
            return backup_image(writer, name, opened, chunk_size=chunk_size,
                                previous=previous, dirty=dirty, progress=progress,
                                bwlimit=bwlimit, workers=workers, read_depth=read_depth)
        finally:
            opened.close()
    started = time.monotonic()
    throttle = Throttle(bwlimit)
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
        elif chunks.missing(previous.digests):   # (and touches them all: GC keeps them)
            stats.full_reason = "chunks of the previous backup are missing"
        else:
            to_read = dirty_chunks(dirty, chunk_size, size)
            stats.incremental = True
            stats.bytes_dirty = sum(min(chunk_size, size - p * chunk_size) for p in to_read)

    def reused(position: int) -> bool:
        return to_read is not None and position not in to_read

    def length_of(position: int) -> int:
        return min(chunk_size, size - position * chunk_size)

    saver = _ChunkSaver(writer, chunk_size)
    reads = _read_chunks(source, [(p * chunk_size, length_of(p)) for p in range(count)
                                  if not reused(p)], read_depth)
    digests: list[bytes] = []
    # (position, digest of a reused chunk, or the future of a read one), in chunk order
    in_order: deque[tuple[int, bytes | Future[tuple[bytes, int]]]] = deque()
    window = max(1, workers) + 2

    def finish_oldest() -> None:
        position, outcome = in_order.popleft()
        if isinstance(outcome, bytes):
            digests.append(outcome)
        else:
            digest, stored = outcome.result()
            digests.append(digest)
            if stored:
                stats.chunks_new += 1
                stats.bytes_stored += stored
            else:
                stats.chunks_reused += 1
        stats.bytes_done = min(size, (position + 1) * chunk_size)
        if progress is not None:
            stats.seconds = time.monotonic() - started
            progress(stats)

    with ThreadPoolExecutor(max_workers=max(1, workers),
                            thread_name_prefix="backup-chunk") as pool:
        try:
            for position in range(count):
                if reused(position) and previous is not None:
                    digest = previous.digests[position]
                    chunks.touch(digest)
                    stats.chunks_reused += 1
                    in_order.append((position, digest))
                else:
                    length = length_of(position)
                    data = next(reads)
                    if len(data) != length:
                        raise OSError(f"short read at {position * chunk_size}: "
                                      f"{len(data)} of {length} bytes")
                    throttle.account(len(data))
                    stats.bytes_read += len(data)
                    stats.chunks_read += 1
                    in_order.append((position, pool.submit(saver.save, data)))
                while len(in_order) > window or (in_order and _ready(in_order[0][1])):
                    finish_oldest()
            while in_order:
                finish_oldest()
        except BaseException:
            for _position, outcome in in_order:
                if not isinstance(outcome, bytes):
                    outcome.cancel()
            pool.shutdown(wait=True)   # no chunk is being staged while the batch is dropped
            saver.abort()
            raise
    # the crash-safety rule: an index never references a chunk whose data or name is not
    # durable
    saver.durable()
    writer.add_index(name, FixedIndex(size=size, chunk_size=chunk_size, digests=digests))
    stats.seconds = time.monotonic() - started
    return stats


def _ready(outcome: bytes | Future[tuple[bytes, int]]) -> bool:
    return isinstance(outcome, bytes) or outcome.done()
