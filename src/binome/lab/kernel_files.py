"""Kernel files for the lab guest image: the PVH-bootable vmlinux inside a Debian
bzImage, and the kernel modules (decompressed, in dependency order) for its initramfs.

Pure file parsing (ELF notes, the bzImage header, `.ko` metadata); `binome.lab.image`
downloads the packages and assembles the image around what this returns.
"""

from __future__ import annotations

import gzip
import lzma
import re
import struct
import subprocess
import zlib
from collections.abc import Iterable
from pathlib import Path

__all__ = ["ImageBuildError", "bzimage_payload", "collect_modules", "decompress_kernel",
           "has_pvh_entry", "pvh_kernel"]


class ImageBuildError(RuntimeError):
    """The guest image could not be built."""


_XEN_ELFNOTE_PHYS32_ENTRY = 18


def bzimage_payload(data: bytes) -> bytes | None:
    """The compressed kernel inside an x86 bzImage (boot protocol >= 2.08)."""
    if len(data) < 0x250 or data[0x202:0x206] != b"HdrS":
        return None
    setup_sects = data[0x1F1] or 4
    offset, length = struct.unpack_from("<II", data, 0x248)
    start = (setup_sects + 1) * 512 + offset
    return data[start : start + length] if length else None


def decompress_kernel(payload: bytes) -> bytes | None:
    """Plain vmlinux from a bzImage payload; None if the format is unsupported."""
    try:
        if payload[:2] == b"\x1f\x8b":
            return zlib.decompressobj(wbits=31).decompress(payload)
        if payload[:6] == b"\xfd7zXZ\x00":
            return lzma.LZMADecompressor().decompress(payload)
        tools = {b"\x02\x21\x4c\x18": "lz4", b"\x28\xb5\x2f\xfd": "zstd"}
        tool = tools.get(payload[:4])
        if tool is None:
            return None
        # The kernel appends its decompressed size (4 bytes): both tools stop
        # at the end of the frame; lz4's legacy format may still complain.
        proc = subprocess.run([tool, "-dcq"], input=payload, capture_output=True, check=False)
        return proc.stdout or None
    except (OSError, lzma.LZMAError, zlib.error):
        return None


def has_pvh_entry(elf: bytes) -> bool:
    """True for a complete 64-bit ELF with a Xen PHYS32_ENTRY note (QEMU boots it via PVH)."""
    if len(elf) < 64 or elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        return False
    phoff = struct.unpack_from("<Q", elf, 0x20)[0]
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    if phoff + phentsize * phnum > len(elf):
        return False
    headers = [
        struct.unpack_from("<IIQQQQ", elf, phoff + i * phentsize) for i in range(phnum)
    ]
    # A truncated decompression must not pass for a kernel.
    if any(off + filesz > len(elf) for _t, _f, off, _v, _p, filesz in headers):
        return False
    for p_type, _flags, p_offset, _va, _pa, p_filesz in headers:
        if p_type != 4:  # PT_NOTE
            continue
        pos, end = p_offset, p_offset + p_filesz
        while pos + 12 <= end:
            namesz, descsz, ntype = struct.unpack_from("<III", elf, pos)
            name = elf[pos + 12 : pos + 12 + namesz].rstrip(b"\0")
            if name == b"Xen" and ntype == _XEN_ELFNOTE_PHYS32_ENTRY:
                return True
            pos += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4
    return False


def pvh_kernel(bzimage: bytes) -> bytes | None:
    """The uncompressed, PVH-bootable vmlinux inside ``bzimage``, if any."""
    payload = bzimage_payload(bzimage)
    elf = decompress_kernel(payload) if payload else None
    return elf if elf and has_pvh_entry(elf) else None


_KO_RE = re.compile(r"^(?P<name>.+?)\.ko(?:\.(?P<comp>xz|zst|gz))?$")


def _module_index(moddir: Path) -> dict[str, Path]:
    index: dict[str, Path] = {}
    for path in (moddir / "kernel").rglob("*.ko*"):
        m = _KO_RE.match(path.name)
        if m:
            index.setdefault(m["name"].replace("-", "_"), path)
    return index


def _builtin_modules(moddir: Path) -> set[str]:
    builtin = moddir / "modules.builtin"
    if not builtin.exists():
        return set()
    names = set()
    for line in builtin.read_text().split():
        m = _KO_RE.match(Path(line).name)
        if m:
            names.add(m["name"].replace("-", "_"))
    return names


def _module_bytes(path: Path) -> bytes:
    comp = _KO_RE.match(path.name)["comp"]  # type: ignore[index]
    data = path.read_bytes()
    if comp == "xz":
        return lzma.decompress(data)
    if comp == "gz":
        return gzip.decompress(data)
    if comp == "zst":
        try:
            return subprocess.run(
                ["zstd", "-dcq"], input=data, check=True, capture_output=True
            ).stdout
        except FileNotFoundError as exc:
            raise ImageBuildError(
                "zstd is needed to decompress .ko.zst modules (apt-get install zstd)"
            ) from exc
    return data


def _module_depends(data: bytes) -> list[str]:
    m = re.search(rb"(?:^|\0)depends=([^\0]*)\0", data)
    if not m or not m.group(1):
        return []
    return [d.replace("-", "_") for d in m.group(1).decode().split(",") if d]


def collect_modules(moddir: Path, wanted: Iterable[str]) -> list[tuple[str, Path, bytes]]:
    """(name, source path, plain .ko bytes) in load order, deps first."""
    index = _module_index(moddir)
    builtin = _builtin_modules(moddir)
    ordered: list[tuple[str, Path, bytes]] = []
    done: set[str] = set()

    def visit(name: str, stack: tuple[str, ...]) -> None:
        name = name.replace("-", "_")
        if name in done:
            return
        if name in stack:
            raise ImageBuildError(f"module dependency cycle: {' -> '.join((*stack, name))}")
        path = index.get(name)
        if path is None:
            if name in builtin:
                done.add(name)
                return
            raise ImageBuildError(f"kernel module {name} neither in {moddir} nor built in")
        data = _module_bytes(path)
        for dep in _module_depends(data):
            visit(dep, (*stack, name))
        done.add(name)
        ordered.append((name, path, data))

    for name in wanted:
        visit(name, ())
    return ordered
