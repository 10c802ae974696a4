"""The quick-sync bitmap (pure, no I/O): one bit per block, set = out of sync.

DRBD's bitmap: one bit per 4 KiB block by default (configurable per volume),
kept in RAM and written to disk lazily, page by page. This class tracks which
4 KiB bitmap pages changed since they were last written (`dirty_pages`) so the
metadata layer writes only those. Bit `i` lives in byte `i // 8` at bit
position `i % 8` (least significant first), which is also the on-disk order.
"""

from __future__ import annotations

from collections.abc import Iterator

PAGE = 4096                      # bytes of bitmap per on-disk page
_BITS_PER_PAGE = PAGE * 8


class Bitmap:
    def __init__(self, nbits: int, block_size: int = 4096, data: bytes | None = None) -> None:
        if block_size <= 0 or block_size & (block_size - 1):
            raise ValueError("bitmap block size must be a power of two")
        self.nbits = nbits
        self.block_size = block_size
        self.block_shift = block_size.bit_length() - 1
        nbytes = (nbits + 7) // 8
        self._bits = bytearray(nbytes) if data is None else bytearray(data[:nbytes])
        if len(self._bits) < nbytes:
            self._bits.extend(bytes(nbytes - len(self._bits)))
        self._clear_tail()
        self.weight = int.from_bytes(self._bits, "little").bit_count()
        self.dirty_pages: set[int] = set()

    @classmethod
    def for_size(cls, size: int, block_size: int = 4096) -> Bitmap:
        return cls(-(-size // block_size), block_size)

    def grow(self, nbits: int) -> None:
        """Add bits (clear: in sync) for a grown volume; every page from the old tail on
        becomes dirty, so the on-disk copy gets the new length's pages."""
        if nbits < self.nbits:
            raise ValueError("a bitmap cannot shrink")
        old_pages = self.npages
        old_last = max(len(self._bits) - 1, 0) >> 12
        self.nbits = nbits
        nbytes = (nbits + 7) // 8
        self._bits.extend(bytes(nbytes - len(self._bits)))
        self.dirty_pages.update(range(old_last, max(self.npages, old_pages)))

    def _clear_tail(self) -> None:
        # Bits past nbits are never set, whatever was on disk.
        extra = len(self._bits) * 8 - self.nbits
        if extra:
            self._bits[-1] &= 0xFF >> extra

    @property
    def nbytes(self) -> int:
        return len(self._bits)

    @property
    def npages(self) -> int:
        return -(-len(self._bits) // PAGE)

    def test(self, bit: int) -> bool:
        return bool(self._bits[bit >> 3] & (1 << (bit & 7)))

    def set_bit(self, bit: int) -> bool:
        """Set one bit; True if it was clear."""
        i = bit >> 3
        m = 1 << (bit & 7)
        v = self._bits[i]
        if v & m:
            return False
        self._bits[i] = v | m
        self.weight += 1
        self.dirty_pages.add(i >> 12)
        return True

    def set_range(self, first: int, last: int) -> int:
        """Set bits first..last (inclusive); return how many were clear."""
        if first == last:
            return int(self.set_bit(first))
        return self._change(first, last, True)

    def clear_range(self, first: int, last: int) -> int:
        """Clear bits first..last (inclusive); return how many were set."""
        return self._change(first, last, False)

    def set_bytes_range(self, offset: int, length: int) -> int:
        """Mark the blocks touched by a byte range out of sync."""
        if length <= 0:
            return 0
        shift = self.block_shift
        return self.set_range(offset >> shift, (offset + length - 1) >> shift)

    def _change(self, first: int, last: int, value: bool) -> int:
        if first > last:
            return 0
        if first < 0 or last >= self.nbits:
            raise IndexError(f"bits {first}..{last} outside 0..{self.nbits - 1}")
        b0, b1 = first >> 3, last >> 3
        bits = self._bits
        before = int.from_bytes(bits[b0:b1 + 1], "little").bit_count()
        lo_mask = (0xFF << (first & 7)) & 0xFF
        hi_mask = 0xFF >> (7 - (last & 7))
        if b0 == b1:
            mask = lo_mask & hi_mask
            bits[b0] = bits[b0] | mask if value else bits[b0] & ~mask
        else:
            bits[b0] = bits[b0] | lo_mask if value else bits[b0] & ~lo_mask
            bits[b1] = bits[b1] | hi_mask if value else bits[b1] & ~hi_mask
            if b1 > b0 + 1:
                bits[b0 + 1:b1] = (b"\xff" if value else b"\x00") * (b1 - b0 - 1)
        after = int.from_bytes(bits[b0:b1 + 1], "little").bit_count()
        self.weight += after - before
        self.dirty_pages.update(range(b0 >> 12, (b1 >> 12) + 1))
        return abs(after - before)

    def set_all(self) -> None:
        self._bits[:] = b"\xff" * len(self._bits)
        self._clear_tail()
        self.weight = self.nbits
        self.dirty_pages.update(range(self.npages))

    def clear_all(self) -> None:
        self._bits[:] = bytes(len(self._bits))
        self.weight = 0
        self.dirty_pages.update(range(self.npages))

    def set_bits(self) -> Iterator[int]:
        """Indices of set bits, in order."""
        bits = self._bits
        for i, byte in enumerate(bits):
            if byte:
                base = i << 3
                for j in range(8):
                    if byte & (1 << j):
                        yield base + j

    def runs(self) -> Iterator[tuple[int, int]]:
        """Runs of set bits as (first, count), in order (what a resync walks)."""
        start = None
        prev = -2
        for bit in self.set_bits():
            if bit != prev + 1:
                if start is not None:
                    yield start, prev - start + 1
                start = bit
            prev = bit
        if start is not None:
            yield start, prev - start + 1

    def merge(self, offset: int, data: bytes) -> int:
        """OR the peer's bitmap bytes at byte `offset` into ours (the connect-time merge).

        Returns how many bits became set.
        """
        end = min(offset + len(data), len(self._bits))
        if end <= offset:
            return 0
        mine = int.from_bytes(self._bits[offset:end], "little")
        merged = mine | int.from_bytes(data[:end - offset], "little")
        if merged == mine:
            return 0
        self._bits[offset:end] = merged.to_bytes(end - offset, "little")
        self._clear_tail()
        added = int.from_bytes(self._bits[offset:end], "little").bit_count() - mine.bit_count()
        self.weight += added
        self.dirty_pages.update(range(offset >> 12, ((end - 1) >> 12) + 1))
        return added

    def page(self, index: int) -> bytes:
        """One on-disk page (zero-padded at the end of the bitmap)."""
        chunk = bytes(self._bits[index * PAGE:(index + 1) * PAGE])
        return chunk if len(chunk) == PAGE else chunk + bytes(PAGE - len(chunk))

    def take_dirty_pages(self) -> dict[int, bytes]:
        """Snapshot and forget the dirty pages; bits set afterwards dirty them again."""
        pages = {i: self.page(i) for i in sorted(self.dirty_pages)}
        self.dirty_pages.clear()
        return pages

    def pages_for_bits(self, first: int, last: int) -> range:
        return range(first >> 15, (last >> 15) + 1)

    def to_bytes(self) -> bytes:
        return bytes(self._bits)
