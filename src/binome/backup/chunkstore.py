"""The deduplicated chunk store: PBS-style data blobs in `.chunks/<4 hex>/<digest>`.

Owns chunk encoding (PBS data blob: 8-byte magic, CRC-32 of the payload, for encrypted
blobs a 16-byte IV and 16-byte GCM tag, then the zstd-compressed or plain payload; the
key, its derived keys and the keyed chunk ids of encrypted backups are
`binome.backup.crypt`'s: the store never learns plaintext digests), atomic
insert (temp, fsync, rename, then an fsync of the directory, or one per directory and
backup), a backup's batched insert (`ChunkBatch`: temp files written without fsync, one
`syncfs` of the store's filesystem, the renames, a second `syncfs`; as PBS's default
"filesystem" sync level) and the two GC phases (touch, then sweep chunks not touched
since a cutoff). In every mode a chunk under its final name has durable content.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import mmap
import os
import struct
import tempfile
import threading
import time
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import zstandard

from binome.backup.crypt import CryptConfig as CryptConfig  # re-exported: the blobs' key
from binome.durable import fsync_dir

DEFAULT_CHUNK_SIZE = 4 * 1024 * 1024
UNCOMPRESSED_MAGIC = bytes([66, 171, 56, 7, 190, 131, 112, 161])
COMPRESSED_MAGIC = bytes([49, 185, 88, 66, 111, 182, 163, 127])
ENCRYPTED_MAGIC = bytes([123, 103, 133, 190, 34, 45, 76, 240])
ENCRYPTED_COMPRESSED_MAGIC = bytes([230, 89, 27, 191, 11, 191, 216, 11])
_IV_LEN = 16
_TAG_LEN = 16


class ChunkError(Exception):
    """A chunk that is missing, torn, corrupt or cannot be decrypted."""


def is_encrypted_blob(blob: bytes) -> bool:
    return blob[:8] in (ENCRYPTED_MAGIC, ENCRYPTED_COMPRESSED_MAGIC)


def chunk_digest(data: bytes | bytearray, crypt: CryptConfig | None = None) -> bytes:
    """The digest a chunk is stored under: plain SHA-256, or keyed when encrypted."""
    return crypt.digest(data) if crypt else hashlib.sha256(data).digest()


_local = threading.local()

# The incompressibility probe: chunks at least this long are compressed whole only if
# zstd shrinks these samples (spread over the chunk) below _PROBE_RATIO of their size.
# Random or already compressed data (most of a used disk's new chunks) then costs 8 x
# 16 KiB of zstd instead of the whole chunk (zstd level 1 runs at ~1.4 GiB/s here,
# as slow as SHA-256), and is stored plain, as PBS stores a chunk zstd does not shrink.
_PROBE_MIN = 1 << 20
_PROBE_SAMPLES = 8
_PROBE_SAMPLE = 16 * 1024
_PROBE_RATIO = 0.95


def _compressor() -> zstandard.ZstdCompressor:
    """This thread's zstd level-1 compressor (a context is not thread-safe; reusing it
    saves its setup per chunk)."""
    compressor: zstandard.ZstdCompressor | None = getattr(_local, "zstd", None)
    if compressor is None:
        compressor = _local.zstd = zstandard.ZstdCompressor(level=1)
    return compressor


def worth_compressing(data: bytes | bytearray) -> bool:
    """False when samples of a large chunk do not compress: the whole will not either."""
    length = len(data)
    if length < _PROBE_MIN:
        return True
    view = memoryview(data)
    step = length // _PROBE_SAMPLES
    compressor = _compressor()
    packed = sum(len(compressor.compress(view[i * step:i * step + _PROBE_SAMPLE]))
                 for i in range(_PROBE_SAMPLES))
    return packed < _PROBE_RATIO * _PROBE_SAMPLES * _PROBE_SAMPLE


def encode_blob_parts(data: bytes | bytearray, crypt: CryptConfig | None = None,
                      compress: bool = True) -> tuple[bytes, bytes | bytearray]:
    """A PBS-style data blob as (12-byte header, body), written as is without joining
    them (a copy of the chunk saved); compression is kept only when it makes the chunk
    smaller, and not tried on a large chunk whose samples do not compress."""
    payload: bytes | bytearray = data
    compressed = False
    if compress and worth_compressing(data):
        packed = _compressor().compress(data)
        if len(packed) < len(data):
            payload, compressed = packed, True
    body: bytes | bytearray
    if crypt:
        iv, tag, sealed = crypt.encrypt(payload)
        magic = ENCRYPTED_COMPRESSED_MAGIC if compressed else ENCRYPTED_MAGIC
        body = iv + tag + sealed
    else:
        magic = COMPRESSED_MAGIC if compressed else UNCOMPRESSED_MAGIC
        body = payload
    return magic + struct.pack("<I", zlib.crc32(body)), body


def encode_blob(data: bytes, crypt: CryptConfig | None = None, compress: bool = True) -> bytes:
    """A PBS-style data blob; compression is kept only when it makes the chunk smaller."""
    header, body = encode_blob_parts(data, crypt, compress)
    return header + bytes(body)


def decode_blob(blob: bytes, crypt: CryptConfig | None = None) -> bytes:
    """The plaintext of a blob; ChunkError if torn, corrupt or the key is missing/wrong."""
    if len(blob) < 12:
        raise ChunkError("blob shorter than its header")
    magic, (crc,), body = blob[:8], struct.unpack("<I", blob[8:12]), blob[12:]
    if zlib.crc32(body) != crc:
        raise ChunkError("blob CRC mismatch")
    if magic in (ENCRYPTED_MAGIC, ENCRYPTED_COMPRESSED_MAGIC):
        if crypt is None:
            raise ChunkError("blob is encrypted and no key was given")
        if len(body) < _IV_LEN + _TAG_LEN:
            raise ChunkError("encrypted blob too short")
        try:
            payload = crypt.decrypt(body[:_IV_LEN], body[_IV_LEN:_IV_LEN + _TAG_LEN],
                                    body[_IV_LEN + _TAG_LEN:])
        except Exception as error:  # InvalidTag: wrong key or tampered data
            raise ChunkError("blob decryption failed (wrong key or tampered)") from error
        compressed = magic == ENCRYPTED_COMPRESSED_MAGIC
    elif magic in (UNCOMPRESSED_MAGIC, COMPRESSED_MAGIC):
        payload, compressed = body, magic == COMPRESSED_MAGIC
    else:
        raise ChunkError("unknown blob magic")
    if compressed:
        try:
            return zstandard.ZstdDecompressor().decompress(payload)
        except zstandard.ZstdError as error:
            raise ChunkError(f"blob decompression failed: {error}") from error
    return payload


def check_blob(digest: bytes, blob: bytes) -> None:
    """Check a blob without its key (a backup server's view): a plain blob must decode to
    data of `digest`, an encrypted one must have a good CRC. ChunkError otherwise."""
    if blob[:8] in (ENCRYPTED_MAGIC, ENCRYPTED_COMPRESSED_MAGIC):
        if len(blob) < 12 or zlib.crc32(blob[12:]) != struct.unpack("<I", blob[8:12])[0]:
            raise ChunkError(f"chunk {digest.hex()}: CRC mismatch")
        return
    if chunk_digest(decode_blob(blob)) != digest:
        raise ChunkError(f"chunk {digest.hex()} does not match its digest")


def missing_digests(store: ChunkStore, digests: Iterable[bytes]) -> list[bytes]:
    """Those of `digests` the store lacks (in order, once each); the present ones are
    touched, so a garbage collection running meanwhile keeps them for the caller."""
    missing, seen = [], set()
    for digest in digests:
        if digest in seen:
            continue
        seen.add(digest)
        if store.contains(digest):
            store.touch(digest)
        else:
            missing.append(digest)
    return missing


_libc: ctypes.CDLL | None = None


def syncfs(path: str | os.PathLike[str]) -> None:
    """Flush the whole filesystem holding `path` (data and metadata: renames included)
    to disk, as syncfs(2) does; `os.sync()` where that call is missing."""
    global _libc
    try:
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
        call = _libc.syncfs
    except (OSError, AttributeError):
        os.sync()
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if call(fd) != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"syncfs {path}: {os.strerror(error)}")
    finally:
        os.close(fd)


_DIRECT_ALIGN = 4096   # O_DIRECT: buffer address, file offset and length (covers 512 too)


def _write_all(fd: int, parts: Sequence[bytes | bytearray]) -> None:
    total = sum(len(part) for part in parts)
    written = os.writev(fd, parts)
    if written != total:   # a short write (regular files: only when the disk is full)
        view = memoryview(b"".join(parts))[written:]
        while view:
            view = view[os.write(fd, view):]


def _write_direct(fd: int, path: str, parts: Sequence[bytes | bytearray]) -> bool:
    """Write `parts` to the empty file `fd` with O_DIRECT, from this thread's aligned
    buffer (one copy), the length rounded up to the alignment and then truncated back.
    False, nothing written, if the filesystem does not take O_DIRECT.

    Why: a chunk goes to the disk once and is not read back soon, so the page cache
    only costs a copy into fresh pages (on this project's test VM that copy was the
    largest cost of a full backup: ~1.4 ms per MiB) and their writeback later.
    """
    total = sum(len(part) for part in parts)
    padded = -(-total // _DIRECT_ALIGN) * _DIRECT_ALIGN
    buffer: mmap.mmap | None = getattr(_local, "direct_buffer", None)
    if buffer is None or len(buffer) < padded:
        if buffer is not None:
            buffer.close()
        buffer = _local.direct_buffer = mmap.mmap(-1, max(padded, DEFAULT_CHUNK_SIZE
                                                          + _DIRECT_ALIGN))
    try:
        direct = os.open(path, os.O_WRONLY | os.O_DIRECT)
    except OSError:
        return False
    try:
        at = 0
        for part in parts:
            buffer[at:at + len(part)] = part
            at += len(part)
        buffer[total:padded] = bytes(padded - total)
        view = memoryview(buffer)
        try:
            done = 0
            while done < padded:
                done += os.pwrite(direct, view[done:padded], done)
        except OSError as error:
            if error.errno != errno.EINVAL or done:
                raise
            return False   # alignment refused (another logical block size)
        finally:
            view.release()
        if padded != total:
            os.ftruncate(direct, total)
    finally:
        os.close(direct)
    return True


class ChunkBatch:
    """The new chunks of one backup, made durable together before its index is written.

    `add` writes a chunk's blob to a temporary file in its directory, with O_DIRECT where
    the filesystem allows it (no page-cache copy), without fsync; `commit` then runs one
    `syncfs` (every staged file's data on disk), renames each to its chunk name (or
    drops it when the chunk appeared meanwhile) and runs a second `syncfs` (the names
    on disk). So a chunk
    name, once there, always has durable content, and after `commit` returns the index
    may name every chunk added. `abort` removes the staged files. Thread-safe `add`.
    """

    def __init__(self, store: ChunkStore) -> None:
        self.store = store
        self.direct = True   # O_DIRECT writes, until the filesystem refuses them
        self._lock = threading.Lock()
        self._staged: list[tuple[str, bytes]] = []

    def add(self, digest: bytes, parts: Sequence[bytes | bytearray]) -> bool:
        """Stage `parts` (a blob, whole or as header and body) as chunk `digest` unless the
        store has it (then only touch it); True if staged."""
        store = self.store
        target = store.path(digest)
        if target.exists():
            store.touch(digest)
            return False
        target.parent.mkdir(parents=True, exist_ok=True)   # made durable by commit's syncfs
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            if not (self.direct and _write_direct(fd, tmp, parts)):
                self.direct = False
                _write_all(fd, parts)
        except BaseException:
            os.close(fd)
            Path(tmp).unlink(missing_ok=True)
            raise
        os.close(fd)
        with self._lock:
            self._staged.append((tmp, digest))
        return True

    def commit(self) -> None:
        staged, self._staged = self._staged, []
        if not staged:
            return
        try:
            syncfs(self.store.base)
        except BaseException:
            self._staged = staged
            self.abort()
            raise
        for tmp, digest in staged:
            target = self.store.path(digest)
            if target.exists():   # another backup stored it meanwhile: the same content
                Path(tmp).unlink(missing_ok=True)
                self.store.touch(digest)
            else:
                os.replace(tmp, target)
        syncfs(self.store.base)

    def abort(self) -> None:
        staged, self._staged = self._staged, []
        for tmp, _digest in staged:
            Path(tmp).unlink(missing_ok=True)


@dataclass
class SweepStats:
    removed_chunks: int = 0
    removed_bytes: int = 0
    kept_chunks: int = 0
    kept_bytes: int = 0


class ChunkStore:
    """Chunks of one datastore, addressed by digest, shared by every backup in it."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.base = Path(root) / ".chunks"

    def create(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)

    def path(self, digest: bytes) -> Path:
        hexdigest = digest.hex()
        return self.base / hexdigest[:4] / hexdigest

    def contains(self, digest: bytes) -> bool:
        return self.path(digest).exists()

    def insert(self, digest: bytes, blob: bytes, *, sync_dir: bool = True) -> bool:
        """Store `blob` under `digest` unless present (then only touch it); True if new.

        The blob's data is fsynced before it gets its name, so a chunk under its final
        name always has durable content. The name itself is durable once its directory
        is fsynced: here, or with `sync_dir=False` by the caller's `sync_dirs` of
        `self.path(digest).parent` before anything references the chunk (a backup
        batches that, one fsync per directory, just before its index is written).
        """
        target = self.path(digest)
        if target.exists():
            self.touch(digest)
            return False
        if not target.parent.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            fsync_dir(self.base)  # the new prefix directory's own entry
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(blob)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        if sync_dir:
            fsync_dir(target.parent)
        return True

    def batch(self) -> ChunkBatch:
        """A backup's new chunks, made durable together (see `ChunkBatch`)."""
        return ChunkBatch(self)

    def missing(self, digests: Iterable[bytes]) -> list[bytes]:
        """Those of `digests` not stored here (the others are touched)."""
        return missing_digests(self, digests)

    def sync_dirs(self, directories: Iterable[Path]) -> None:
        """Make the names of chunks inserted with `sync_dir=False` durable."""
        for directory in sorted(set(directories)):
            fsync_dir(directory)

    def load(self, digest: bytes) -> bytes:
        try:
            return self.path(digest).read_bytes()
        except FileNotFoundError as error:
            raise ChunkError(f"chunk {digest.hex()} is missing") from error

    def read_chunk(self, digest: bytes, crypt: CryptConfig | None = None) -> bytes:
        """The plaintext of a chunk, checked against its digest."""
        data = decode_blob(self.load(digest), crypt)
        if chunk_digest(data, crypt) != digest:
            raise ChunkError(f"chunk {digest.hex()} does not match its digest")
        return data

    def verify_chunk(self, digest: bytes, crypt: CryptConfig | None = None) -> None:
        """Raise ChunkError if the chunk is bad. Without the key, an encrypted chunk is checked
        by CRC only (as PBS's server does: it cannot decrypt)."""
        blob = self.load(digest)
        if crypt is None:
            check_blob(digest, blob)
            return
        self.read_chunk(digest, crypt)

    def touch(self, digest: bytes) -> None:
        """GC phase 1 mark: the chunk is in use as of now."""
        now = time.time()
        try:
            os.utime(self.path(digest), (now, now))
        except FileNotFoundError:
            pass

    def sweep(self, cutoff: float) -> SweepStats:
        """GC phase 2: remove chunks not touched since `cutoff` (and stale temp files)."""
        stats = SweepStats()
        if not self.base.exists():
            return stats
        for prefix in sorted(self.base.iterdir()):
            for entry in prefix.iterdir():
                info = entry.stat()
                if info.st_mtime < cutoff:
                    entry.unlink(missing_ok=True)
                    if not entry.name.startswith(".tmp-"):
                        stats.removed_chunks += 1
                        stats.removed_bytes += info.st_size
                elif not entry.name.startswith(".tmp-"):
                    stats.kept_chunks += 1
                    stats.kept_bytes += info.st_size
        return stats
