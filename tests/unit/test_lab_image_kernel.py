"""The lab image's kernel unpacking: bzImage payload -> PVH-bootable vmlinux (pure, no QEMU)."""

from __future__ import annotations

import gzip
import lzma
import struct

from binome.lab.kernel_files import bzimage_payload, has_pvh_entry, pvh_kernel


def _elf(with_pvh_note: bool) -> bytes:
    """A minimal 64-bit little-endian ELF: one PT_NOTE, one PT_LOAD."""
    note_type = 18 if with_pvh_note else 5  # XEN_ELFNOTE_PHYS32_ENTRY, or another Xen note
    note = struct.pack("<III", 4, 4, note_type) + b"Xen\0" + struct.pack("<I", 0x1000000)
    phoff, phentsize, phnum = 64, 56, 2
    note_off = phoff + phentsize * phnum
    load_off = note_off + len(note)
    body = b"\x90" * 256
    header = bytearray(64)
    header[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<Q", header, 0x20, phoff)
    struct.pack_into("<HH", header, 0x36, phentsize, phnum)
    phdrs = struct.pack("<IIQQQQQQ", 4, 4, note_off, 0, 0, len(note), len(note), 4)
    phdrs += struct.pack("<IIQQQQQQ", 1, 5, load_off, 0, 0x1000000, len(body), len(body), 0x1000)
    return bytes(header) + phdrs + note + body


def _bzimage(payload: bytes, setup_sects: int = 4) -> bytes:
    """A bzImage-shaped blob: setup header fields the unpacker reads, then the payload."""
    setup = bytearray((setup_sects + 1) * 512)
    setup[0x1F1] = setup_sects
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<II", setup, 0x248, 16, len(payload) + 4)
    # The kernel appends the decompressed size after the compressed stream.
    return bytes(setup) + b"\0" * 16 + payload + struct.pack("<I", 12345)


def test_gzip_and_xz_payloads_unpack_to_the_pvh_elf() -> None:
    elf = _elf(with_pvh_note=True)
    assert has_pvh_entry(elf)
    for compressed in (gzip.compress(elf), lzma.compress(elf, format=lzma.FORMAT_XZ)):
        image = _bzimage(compressed)
        assert bzimage_payload(image)[: len(compressed)] == compressed
        assert pvh_kernel(image) == elf


def test_no_pvh_note_truncated_or_unknown_payload_keeps_the_bzimage() -> None:
    assert pvh_kernel(_bzimage(gzip.compress(_elf(with_pvh_note=False)))) is None
    elf = _elf(with_pvh_note=True)
    assert not has_pvh_entry(elf[:-10])  # PT_LOAD runs past the end: truncated
    assert pvh_kernel(_bzimage(b"not compressed at all")) is None
    assert pvh_kernel(b"MZ" + b"\0" * 600) is None  # no setup header
