"""The on-disk metadata of one volume: superblock, activity log and dirty bitmap.

DRBD keeps "external metadata" on a separate device; we keep it in a file
next to the backing file (`<volume>/meta`). Layout, all integers little-endian:

    offset 0        superblock slot A (4 KiB)
    offset 4096     superblock slot B (4 KiB)
    offset 8192     activity-log slot A (al_slot_size, a multiple of 4 KiB)
    + al_slot_size  activity-log slot B
    bm_offset       the dirty bitmap, one bit per bm_block_size bytes, padded to 4 KiB

Crash safety: superblock and activity log are double-buffered. Each update
writes the slot *not* holding the newest copy, with a sequence number one
higher and a CRC-32, then fdatasync; readers take the valid slot with the
highest sequence. A torn write therefore only ever damages the older copy.
The bitmap is written lazily in 4 KiB pages (DRBD does the same): the
activity log covers whatever the on-disk bitmap may miss (see activity_log).

Superblock (`_SB`): magic "BNMVOLMD", format version, seq, volume size,
bitmap block size, AL extent size, AL slots, flags (DRBD's MDF_* bits,
`states.MetaFlags`), the generation identifiers current/bitmap/history[2],
this copy's device uuid, creation time, bm_offset, al_offset, al_slot_size,
then the CRC-32 of everything before it.

Activity-log slot (`_AL`): magic "BNMVOLAL", seq, number of slots, CRC-32 of
header and table, then the full slot table (u32 extent numbers, 0xFFFFFFFF =
empty). Writing the whole table per transaction (<= 8 KiB for 1237 slots)
instead of DRBD's incremental ring keeps recovery trivial.
"""

from __future__ import annotations

import os
import struct
import time
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

from binome.storage.replica.core.activity_log import EMPTY
from binome.storage.replica.core.bitmap import PAGE, Bitmap
from binome.storage.replica.core.states import MetaFlags
from binome.storage.replica.core.uuids import UUID_JUST_CREATED, GenerationIds

SB_MAGIC = b"BNMVOLMD"
AL_MAGIC = b"BNMVOLAL"
VERSION = 1
SB_SLOT = 4096
AL_OFFSET = 2 * SB_SLOT

_SB = struct.Struct("<8sIQQIIII4QQQQQI")
_SB_CRC = struct.Struct("<I")
_AL = struct.Struct("<8sQII")       # magic, seq, nr, crc


_NO_FLAGS = MetaFlags(0)
_JUST_CREATED = GenerationIds(UUID_JUST_CREATED)


class MetaError(Exception):
    """Metadata missing, corrupt or inconsistent with the volume."""


@dataclass(frozen=True)
class Superblock:
    size: int
    bm_block_size: int = 4096
    al_extent_size: int = 4 * 1024 * 1024
    al_nr_extents: int = 1237
    flags: MetaFlags = _NO_FLAGS
    gi: GenerationIds = _JUST_CREATED
    device_uuid: int = 0
    created: int = 0
    seq: int = 0

    @property
    def al_slot_size(self) -> int:
        return -(-(_AL.size + 4 * self.al_nr_extents) // PAGE) * PAGE

    @property
    def bm_offset(self) -> int:
        return AL_OFFSET + 2 * self.al_slot_size

    @property
    def bm_bits(self) -> int:
        return -(-self.size // self.bm_block_size)

    @property
    def bm_bytes(self) -> int:
        return -(-((self.bm_bits + 7) // 8) // PAGE) * PAGE

    @property
    def file_size(self) -> int:
        return self.bm_offset + self.bm_bytes

    def with_(self, **changes: object) -> Superblock:
        return replace(self, **changes)  # type: ignore[arg-type]

    def encode(self) -> bytes:
        g = self.gi
        body = _SB.pack(SB_MAGIC, VERSION, self.seq, self.size, self.bm_block_size,
                        self.al_extent_size, self.al_nr_extents, int(self.flags),
                        g.current, g.bitmap, g.history[0], g.history[1],
                        self.device_uuid, self.created, self.bm_offset, AL_OFFSET,
                        self.al_slot_size)
        raw = body + _SB_CRC.pack(zlib.crc32(body))
        return raw + bytes(SB_SLOT - len(raw))

    @classmethod
    def decode(cls, raw: bytes) -> Superblock | None:
        """The superblock in one slot, or None if the slot is not a valid copy."""
        if len(raw) < _SB.size + 4 or raw[:8] != SB_MAGIC:
            return None
        body = raw[:_SB.size]
        (crc,) = _SB_CRC.unpack_from(raw, _SB.size)
        if zlib.crc32(body) != crc:
            return None
        (_, version, seq, size, bm_bs, al_ext, al_nr, flags, cur, bm, h0, h1, dev, created,
         bm_off, al_off, al_slot) = _SB.unpack(body)
        if version != VERSION:
            raise MetaError(f"unsupported metadata version {version}")
        sb = cls(size, bm_bs, al_ext, al_nr, MetaFlags(flags), GenerationIds(cur, bm, (h0, h1)),
                 dev, created, seq)
        if (bm_off, al_off, al_slot) != (sb.bm_offset, AL_OFFSET, sb.al_slot_size):
            raise MetaError("metadata layout does not match its header")
        return sb


def encode_al(seq: int, table: tuple[int, ...] | list[int]) -> bytes:
    payload = struct.pack(f"<{len(table)}I", *table)
    head = _AL.pack(AL_MAGIC, seq, len(table), 0)
    crc = zlib.crc32(head[:-4] + payload)
    return _AL.pack(AL_MAGIC, seq, len(table), crc) + payload


def decode_al(raw: bytes) -> tuple[int, list[int]] | None:
    if len(raw) < _AL.size or raw[:8] != AL_MAGIC:
        return None
    _, seq, nr, crc = _AL.unpack_from(raw)
    end = _AL.size + 4 * nr
    if end > len(raw):
        return None
    payload = raw[_AL.size:end]
    if zlib.crc32(raw[:_AL.size - 4] + payload) != crc:
        return None
    return seq, list(struct.unpack(f"<{nr}I", payload))


class MetaFile:
    """The metadata file of one volume. Blocking calls: run them off the event loop."""

    def __init__(self, path: Path, fd: int, sb: Superblock, al_seq: int,
                 al_table: list[int], bitmap: Bitmap) -> None:
        self.path = path
        self.fd = fd
        self.sb = sb
        self.al_seq = al_seq
        self.al_table = al_table
        self.bitmap = bitmap
        self.writes_al = 0        # DRBD's al: counter (AL transactions written)
        self.writes_bm = 0        # DRBD's bm: counter (bitmap pages written)

    @staticmethod
    def create(path: Path, sb: Superblock) -> None:
        """Write fresh metadata (drbdmeta create-md): just-created GIs, empty AL and bitmap."""
        tmp = path.with_name(path.name + ".new")
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.ftruncate(fd, sb.file_size)
            # Slot = seq % 2, the rule every later update follows.
            first = sb.with_(seq=1, created=sb.created or int(time.time()))
            os.pwrite(fd, first.encode(), SB_SLOT)
            os.pwrite(fd, encode_al(1, [EMPTY] * sb.al_nr_extents), AL_OFFSET + sb.al_slot_size)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
        _fsync_dir(path.parent)

    @classmethod
    def open(cls, path: Path) -> MetaFile:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            raise MetaError(f"no metadata at {path} (create the volume first)") from None
        try:
            slots = [Superblock.decode(os.pread(fd, SB_SLOT, i * SB_SLOT)) for i in (0, 1)]
            valid = [s for s in slots if s is not None]
            if not valid:
                raise MetaError(f"{path}: no valid superblock")
            sb = max(valid, key=lambda s: s.seq)
            al = [decode_al(os.pread(fd, sb.al_slot_size, AL_OFFSET + i * sb.al_slot_size))
                  for i in (0, 1)]
            al_valid = [a for a in al if a is not None]
            if al_valid:
                al_seq, table = max(al_valid, key=lambda a: a[0])
            else:
                al_seq, table = 0, [EMPTY] * sb.al_nr_extents
            raw_bm = os.pread(fd, sb.bm_bytes, sb.bm_offset)
            bitmap = Bitmap(sb.bm_bits, sb.bm_block_size, raw_bm)
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd, sb, al_seq, table, bitmap)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def write_superblock(self, sb: Superblock) -> Superblock:
        """Persist `sb` in the older slot (crash-safe); return it with its new seq."""
        new = sb.with_(seq=self.sb.seq + 1)
        os.pwrite(self.fd, new.encode(), (new.seq % 2) * SB_SLOT)
        os.fdatasync(self.fd)
        self.sb = new
        return new

    def grow(self, size: int) -> Superblock:
        """A grown volume (resize): a longer bitmap area (zeroes: in sync), then the new
        size in the superblock, the commit point. The in-memory bitmap grows too."""
        new = self.sb.with_(size=size)
        if size < self.sb.size:
            raise MetaError("metadata cannot shrink")
        os.ftruncate(self.fd, max(new.file_size, os.fstat(self.fd).st_size))
        os.fdatasync(self.fd)
        self.bitmap.grow(new.bm_bits)
        return self.write_superblock(new)

    def write_al(self, table: tuple[int, ...] | list[int]) -> None:
        """Persist the AL slot table in the older slot, durably."""
        seq = self.al_seq + 1
        os.pwrite(self.fd, encode_al(seq, table), AL_OFFSET + (seq % 2) * self.sb.al_slot_size)
        os.fdatasync(self.fd)
        self.al_seq = seq
        self.al_table = list(table)
        self.writes_al += 1

    def write_bitmap_pages(self, pages: dict[int, bytes], *, sync: bool = True) -> None:
        base = self.sb.bm_offset
        for index, data in pages.items():
            os.pwrite(self.fd, data, base + index * PAGE)
        self.writes_bm += len(pages)
        if sync and pages:
            os.fdatasync(self.fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
