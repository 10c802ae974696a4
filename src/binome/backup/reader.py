"""Restore a backed-up image from its fixed index to a raw file or block device.

Every chunk is checked against its digest (and its GCM tag when encrypted) before it is
written; a bad chunk stops the restore with its position. All-zero chunks are skipped on
a fresh sparse file target, so a mostly empty disk restores fast and stays sparse. Whole
chunks go to a file or block device with O_DIRECT where it takes it (no page-cache copy),
the rest through the page cache; one fsync at the end makes both durable.
"""

from __future__ import annotations

import errno
import hashlib
import mmap
import os
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from binome.backup.chunkstore import ChunkError, CryptConfig
from binome.backup.datastore import Datastore, SnapshotRef

if TYPE_CHECKING:
    from binome.backup.remote import RemoteDumpStore


class RestoreError(Exception):
    """The restore could not complete; the message says which chunk or why."""


@dataclass
class RestoreStats:
    size: int
    sha256: str
    bytes_written: int


def restore_image(store: Datastore | RemoteDumpStore, ref: SnapshotRef, name: str, target: Path, *,
                  crypt: CryptConfig | None = None, sparse: bool = True) -> RestoreStats:
    """Write the image `<name>` of snapshot `ref` to `target`; return its size and SHA-256.

    A regular-file target is created or truncated to the image size; a block device
    target must be at least that large.
    """
    index = store.read_index(ref, name)
    is_block = target.exists() and target.is_block_device()
    if is_block:
        with open(target, "rb") as probe:
            if probe.seek(0, os.SEEK_END) < index.size:
                raise RestoreError(f"{target} is smaller than the image ({index.size} bytes)")
    flags = os.O_WRONLY | (0 if is_block else os.O_CREAT | os.O_TRUNC)
    fd = os.open(target, flags, 0o600)
    try:
        if not is_block:
            os.ftruncate(fd, index.size)
        with _DirectWriter(target, fd) as writer:
            stats = restore_to(store, ref, name, writer.write, crypt=crypt,
                               skip_zero=sparse and not is_block)
        os.fsync(fd)
    finally:
        os.close(fd)
    return stats


_ALIGN = 4096   # O_DIRECT: buffer address, file offset and length (covers 512 too)


class _DirectWriter:
    """Writes the restored chunks with O_DIRECT where the target takes it (aligned
    offset and length: every whole chunk), else through the page cache (`fd`).

    Why: an image restored is not read back soon, and the page-cache copy into fresh
    pages was most of a restore's time on this project's test VM. The caller's fsync of
    `fd` afterwards makes both kinds of write durable (the device cache flush included).
    """

    def __init__(self, target: Path, fd: int) -> None:
        self.fd = fd
        self.buffer: mmap.mmap | None = None
        try:
            self.direct: int | None = os.open(target, os.O_WRONLY | os.O_DIRECT)
        except OSError:
            self.direct = None

    def __enter__(self) -> _DirectWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.direct is not None:
            os.close(self.direct)
            self.direct = None
        if self.buffer is not None:
            self.buffer.close()

    def write(self, offset: int, data: bytes) -> None:
        length = len(data)
        if self.direct is not None and length and not (offset | length) % _ALIGN:
            if self.buffer is None or len(self.buffer) < length:
                if self.buffer is not None:
                    self.buffer.close()
                self.buffer = mmap.mmap(-1, length)
            self.buffer[:length] = data
            view = memoryview(self.buffer)
            try:
                done = 0
                while done < length:
                    done += os.pwrite(self.direct, view[done:length], offset + done)
                return
            except OSError as error:
                if error.errno != errno.EINVAL or done:
                    raise
                os.close(self.direct)   # alignment refused: the page cache from now on
                self.direct = None
            finally:
                view.release()
        done = 0
        while done < length:
            done += os.pwrite(self.fd, data[done:], offset + done)


DEFAULT_WORKERS = 2  # chunk load/decode/check threads (zlib, zstd, hashlib release the GIL)


def restore_to(store: Datastore | RemoteDumpStore, ref: SnapshotRef, name: str,
               write: Callable[[int, bytes], object], *, crypt: CryptConfig | None = None,
               skip_zero: bool = False,
               progress: Callable[[int, int], None] | None = None,
               workers: int = DEFAULT_WORKERS) -> RestoreStats:
    """Send the image `<name>` of `ref` to `write(offset, data)` chunk by chunk, in order.

    `workers` threads load, decode and check the next chunks while this thread writes
    (a chunk repeated back to back, as the zero chunk of an empty area is, is checked
    once); a third thread keeps the whole image's SHA-256. `skip_zero`: the target reads
    zeros where nothing was written (a fresh sparse file or qcow2 image), so all-zero
    chunks are not written. `progress(done, size)` after each chunk.
    """
    index = store.read_index(ref, name)
    written = 0
    zero = bytes(index.chunk_size)

    def load(position: int, digest: bytes) -> bytes:
        try:
            data = store.chunks.read_chunk(digest, crypt)
        except ChunkError as error:
            raise RestoreError(f"chunk {position} ({digest.hex()}): {error}") from error
        start, end = index.chunk_range(position)
        if len(data) != end - start:
            raise RestoreError(f"chunk {position} has {len(data)} bytes, not {end - start}")
        return data

    window = max(1, workers) * 2
    with ThreadPoolExecutor(max_workers=max(1, workers),
                            thread_name_prefix="restore-chunk") as pool, \
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="restore-hash") as hasher:
        whole = hashlib.sha256()
        hashing: Future[None] | None = None
        loading: deque[Future[bytes]] = deque()
        previous_digest: bytes | None = None
        submitted = 0

        def submit_next() -> None:
            nonlocal submitted, previous_digest
            position = submitted
            digest = index.digests[position]
            if digest == previous_digest:
                # the same chunk again: the loaded one serves (already checked)
                loading.append(loading[-1] if loading else last_loaded)
            else:
                loading.append(pool.submit(load, position, digest))
            previous_digest = digest
            submitted += 1

        last_loaded: Future[bytes] = Future()
        try:
            for position in range(len(index.digests)):
                while submitted < len(index.digests) and len(loading) < window:
                    submit_next()
                last_loaded = loading.popleft()
                data = last_loaded.result()
                if hashing is not None:
                    hashing.result()  # the image hash takes chunks in order
                hashing = hasher.submit(whole.update, data)
                start, end = index.chunk_range(position)
                if not (skip_zero and data == zero[:len(data)]):
                    write(start, data)
                    written += len(data)
                if progress is not None:
                    progress(end, index.size)
            if hashing is not None:
                hashing.result()
        except BaseException:
            for future in loading:
                future.cancel()
            raise
    return RestoreStats(size=index.size, sha256=whole.hexdigest(), bytes_written=written)
