"""Block digests for online verify (`verify-alg`) and checksum-based resync (`csums-alg`).

Pure: functions of bytes. One digest per bitmap block, concatenated, is what
P_OV_REQUEST and P_CSUM_RS_REQUEST carry. The algorithms are those of
`hashlib` plus `crc32` (zlib); DRBD names its kernel crypto algorithms the
same way (`sha256`, `md5`, `crc32c`). `crc32c` itself has no implementation in
the standard library, so it is not offered: `crc32` is the cheap choice.
A 32-bit checksum is fine to *find* differences (verify) but lets about one
differing block in 2^32 pass as equal, which checksum-based resync would then
skip: use a cryptographic digest (`sha256`, `blake2b`, `md5`) for `csums-alg`.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Callable

_HASHLIB = ("md5", "sha1", "sha256", "sha512", "blake2b", "blake2s", "sha3_256")
ALGORITHMS = ("crc32", *_HASHLIB)

# What the digest functions read: the engine hands them its read buffers as they are.
BytesLike = bytes | bytearray | memoryview


def _crc32(data: BytesLike) -> bytes:
    return zlib.crc32(data).to_bytes(4, "big")


def digest_fn(alg: str) -> tuple[Callable[[BytesLike], bytes], int]:
    """(function of one block, digest size) for `alg`; ValueError if unknown."""
    if alg == "crc32":
        return _crc32, 4
    if alg not in _HASHLIB:
        raise ValueError(f"unknown checksum algorithm {alg!r} (one of {', '.join(ALGORITHMS)})")
    ctor = getattr(hashlib, alg)
    size = ctor().digest_size
    return (lambda data: ctor(data).digest()), size


def block_digests(alg: str, data: BytesLike, block: int) -> bytes:
    """The digests of every `block`-byte block of `data` (the last may be short), joined."""
    fn, _ = digest_fn(alg)
    view = memoryview(data)
    return b"".join(fn(view[i:i + block]) for i in range(0, len(view), block))


def differing_blocks(alg: str, data: BytesLike, block: int,
                     digests: BytesLike) -> list[int]:
    """Indexes of the blocks of `data` whose digest differs from the one in `digests`."""
    fn, size = digest_fn(alg)
    view = memoryview(data)
    theirs = memoryview(digests)
    n = (len(view) + block - 1) // block
    if len(theirs) != n * size:
        raise ValueError(f"{len(theirs)} digest bytes for {n} blocks of {alg}")
    return [i for i in range(n)
            if fn(view[i * block:(i + 1) * block]) != theirs[i * size:(i + 1) * size]]


def mask_of(indexes: list[int], n: int) -> bytes:
    """A bit mask of `n` bits (LSB first within a byte, as the bitmap) with `indexes` set."""
    out = bytearray((n + 7) // 8)
    for i in indexes:
        out[i >> 3] |= 1 << (i & 7)
    return bytes(out)


def mask_indexes(mask: BytesLike, n: int) -> list[int]:
    m = bytes(mask)
    if len(m) < (n + 7) // 8:
        raise ValueError("mask too short")
    return [i for i in range(n) if m[i >> 3] >> (i & 7) & 1]
