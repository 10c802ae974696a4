"""The fixed index of one backed-up image (PBS `.fidx` layout) and a snapshot's manifest.

A fixed index is a 4096-byte header (magic, uuid, ctime, SHA-256 over the digests, image
size, chunk size) followed by one 32-byte chunk digest per fixed-size chunk. The manifest
(`index.json`) lists a snapshot's files with sizes and checksums and carries the mutable
parts: notes, protected flag, verify state. An encrypted backup's manifest also names its
key (`crypt-fingerprint`) and carries the `signature` over its protected part
(`binome.backup.crypt.signed_payload`).
"""

from __future__ import annotations

import hashlib
import struct
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from binome.backup.crypt import signed_payload
from binome.durable import write_bytes

FIXED_INDEX_MAGIC = bytes([47, 127, 65, 237, 145, 253, 15, 205])
HEADER_SIZE = 4096
DIGEST_SIZE = 32
_HEADER = struct.Struct("<8s16sq32sQQ")


class FixedIndexError(ValueError):
    """A fixed index file that is torn or not an index."""


@dataclass
class FixedIndex:
    """An image as a list of chunk digests; the last chunk may be short."""

    size: int
    chunk_size: int
    digests: list[bytes]
    uuid: bytes = field(default_factory=lambda: uuid.uuid4().bytes)
    ctime: int = field(default_factory=lambda: int(time.time()))

    def __post_init__(self) -> None:
        expected = -(-self.size // self.chunk_size) if self.size else 0
        if len(self.digests) != expected:
            raise FixedIndexError(f"{len(self.digests)} digests for {expected} chunks")

    def checksum(self) -> bytes:
        return hashlib.sha256(b"".join(self.digests)).digest()

    def chunk_range(self, position: int) -> tuple[int, int]:
        start = position * self.chunk_size
        return start, min(start + self.chunk_size, self.size)

    def to_bytes(self) -> bytes:
        header = _HEADER.pack(FIXED_INDEX_MAGIC, self.uuid, self.ctime, self.checksum(),
                              self.size, self.chunk_size)
        return header.ljust(HEADER_SIZE, b"\0") + b"".join(self.digests)

    @classmethod
    def from_bytes(cls, data: bytes) -> FixedIndex:
        if len(data) < HEADER_SIZE:
            raise FixedIndexError("fixed index shorter than its header")
        magic, uid, ctime, csum, size, chunk_size = _HEADER.unpack_from(data)
        if magic != FIXED_INDEX_MAGIC:
            raise FixedIndexError("not a fixed index (bad magic)")
        body = data[HEADER_SIZE:]
        if len(body) % DIGEST_SIZE or chunk_size <= 0:
            raise FixedIndexError("fixed index body is torn")
        digests = [body[i:i + DIGEST_SIZE] for i in range(0, len(body), DIGEST_SIZE)]
        index = cls(size=size, chunk_size=chunk_size, digests=digests, uuid=uid, ctime=ctime)
        if index.checksum() != csum:
            raise FixedIndexError("fixed index checksum mismatch")
        return index

    def write(self, path: Path) -> None:
        write_bytes(path, self.to_bytes())

    @classmethod
    def read(cls, path: Path) -> FixedIndex:
        return cls.from_bytes(path.read_bytes())


@dataclass
class Manifest:
    """`index.json` of a snapshot: files, plus notes, protection and the last verify."""

    backup_type: str
    backup_id: str
    backup_time: int
    files: list[dict[str, Any]] = field(default_factory=list)
    notes: str = ""
    protected: bool = False
    verify_state: dict[str, Any] | None = None
    crypt_fingerprint: str | None = None
    signature: str | None = None

    def signed_payload(self) -> bytes:
        return signed_payload(self.backup_type, self.backup_id, self.backup_time, self.files,
                              self.crypt_fingerprint)

    def file(self, name: str) -> dict[str, Any] | None:
        return next((f for f in self.files if f.get("filename") == name), None)

    def to_json(self) -> dict[str, Any]:
        return {
            "backup-type": self.backup_type, "backup-id": self.backup_id,
            "backup-time": self.backup_time, "files": self.files,
            "crypt-fingerprint": self.crypt_fingerprint, "signature": self.signature,
            "unprotected": {"notes": self.notes, "protected": self.protected,
                            "verify_state": self.verify_state},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        extra = data.get("unprotected") or {}
        return cls(backup_type=data["backup-type"], backup_id=str(data["backup-id"]),
                   backup_time=int(data["backup-time"]), files=list(data.get("files", [])),
                   notes=extra.get("notes", ""), protected=bool(extra.get("protected")),
                   verify_state=extra.get("verify_state"),
                   crypt_fingerprint=data.get("crypt-fingerprint"),
                   signature=data.get("signature"))
