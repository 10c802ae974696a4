"""The deduplicated chunk store: PBS-style data blobs in `.chunks/<4 hex>/<digest>`.

Owns chunk encoding (PBS data blob: 8-byte magic, CRC-32 of the payload, for encrypted
blobs a 16-byte IV and 16-byte GCM tag, then the zstd-compressed or plain payload; the
key, its derived keys and the keyed chunk ids of encrypted backups are
`binome.backup.crypt`'s: the store never learns plaintext digests), atomic
insert (temp, fsync, rename, then an fsync of the directory, or one per directory and
backup) and the two GC phases (touch, then sweep chunks not touched since a cutoff).
"""

from __future__ import annotations

import hashlib
import os
import struct
import tempfile
import time
import zlib
from collections.abc import Iterable
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


def chunk_digest(data: bytes, crypt: CryptConfig | None = None) -> bytes:
    """The digest a chunk is stored under: plain SHA-256, or keyed when encrypted."""
    return crypt.digest(data) if crypt else hashlib.sha256(data).digest()


def encode_blob(data: bytes, crypt: CryptConfig | None = None, compress: bool = True) -> bytes:
    """A PBS-style data blob; compression is kept only when it makes the chunk smaller."""
    payload, compressed = data, False
    if compress:
        packed = zstandard.ZstdCompressor(level=1).compress(data)
        if len(packed) < len(data):
            payload, compressed = packed, True
    if crypt:
        iv, tag, sealed = crypt.encrypt(payload)
        magic = ENCRYPTED_COMPRESSED_MAGIC if compressed else ENCRYPTED_MAGIC
        body = iv + tag + sealed
    else:
        magic = COMPRESSED_MAGIC if compressed else UNCOMPRESSED_MAGIC
        body = payload
    return magic + struct.pack("<I", zlib.crc32(body)) + body


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
