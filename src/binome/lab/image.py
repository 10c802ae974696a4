"""The tiny lab guest image: a Debian cloud kernel plus a busybox initramfs.

This module owns building (at setup time, from Debian packages, never
installing them), caching and describing the guest that binome's lab tests
boot under QEMU/TCG:

* the kernel is ``boot/vmlinuz-*`` of the concrete package behind the
  ``linux-image-cloud-amd64`` metapackage, fetched with ``apt-get download``
  and unpacked with ``dpkg-deb -x``; its compressed payload is unpacked at
  build time to the plain ``vmlinux`` ELF, which QEMU boots through the PVH
  entry point (``XEN_ELFNOTE_PHYS32_ENTRY``): under TCG that skips the
  in-guest decompression of ~50 MB (falls back to the bzImage when the
  payload cannot be unpacked or the kernel has no PVH entry);
* the initramfs (gzip'ed newc cpio, written in pure Python) holds a static
  busybox, Debian's ``qemu-guest-agent`` (``qemu-ga`` and the shared libraries it
  needs, from their packages, found by following DT_NEEDED; started on the
  ``org.qemu.guest_agent.0`` port when the VM has one), the
  virtio/ACPI-button/evdev/virtio-console kernel modules (decompressed to plain
  ``.ko`` at build time) and an ``/init`` shell script that configures the
  network from ``binome.*`` kernel parameters, serves HTTP (static page plus
  the ``status`` and ``disk`` CGIs), prints ``BINOME-GUEST-READY <ip>`` on the
  serial console, powers off on an ACPI power-button press and keeps a shell
  on the serial console.

It also knows how to build the kernel command line (:meth:`GuestImage.cmdline`)
and the QEMU argv (:func:`qemu_command`) for such a guest.

Guest HTTP interface (port ``binome.http``, default 80):

* ``/`` - static text containing the hostname;
* ``/ci/authorized_keys``, ``/ci/hostname``, ``/ci/instance-id``, ``/ci/meta-data`` -
  what the guest took from its NoCloud seed (a ``cidata`` CD, read when the kernel
  command line has no ``binome.ip``: hostname, eth0's static address or DHCP, ssh keys);
* ``/cgi-bin/status`` - JSON ``{"hostname", "uptime", "ip"}``;
* ``/cgi-bin/disk`` - ``present <bytes>`` / ``absent`` for ``/dev/vda``;
  ``?read=OFFSET`` returns the text stored in the 512-byte sector at OFFSET
  (NUL bytes stripped); ``?write=OFFSET&data=TEXT`` stores TEXT (URL-decoded,
  at most 511 bytes, zero-padded to the sector) there with ``conv=fsync``.
  OFFSET must be a multiple of 512.
"""

from __future__ import annotations

import argparse
import fcntl
import gzip
import hashlib
import io
import json
import os
import re
import stat
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from binome import durable
from binome.lab import kernel_files
from binome.lab.guest_scripts import (
    DISK_CGI,
    INIT_SCRIPT,
    OS_RELEASE,
    POWER_SCRIPT,
    PROFILE,
    SHUTDOWN_COMMAND,
    SHUTDOWN_WRAPPER,
    STATUS_CGI,
    UDHCPC_SCRIPT,
)
from binome.lab.kernel_files import ImageBuildError

__all__ = [
    "DEFAULT_CACHE_DIR",
    "GUEST_MODULES",
    "READY_MARKER",
    "GuestImage",
    "ImageBuildError",
    "build_image",
    "default_cache_dir",
    "qemu_command",
]

KERNEL_METAPACKAGE = "linux-image-cloud-amd64"
BUSYBOX_PACKAGE = "busybox-static"
#: Debian's QEMU guest agent, unpacked with the libraries it links (from their own
#: packages: Depends, recursively, but not PreDepends) into the initramfs
AGENT_PACKAGE = "qemu-guest-agent"
AGENT_BINARY = "usr/sbin/qemu-ga"
_LIB_DIRS = ("lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu", "lib64")
QEMU_BINARY = "qemu-system-x86_64"
READY_MARKER = "BINOME-GUEST-READY"

#: Kernel modules loaded by /init, in this order (dependencies found in a
#: module's ``.modinfo`` are pulled in ahead of it automatically). Modules
#: built into the kernel are skipped.
GUEST_MODULES: tuple[str, ...] = (
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "failover",
    "net_failover",
    "virtio_net",
    "virtio_blk",
    # ACPI power button -> input event -> busybox acpid -> poweroff -f
    "button",
    "evdev",
    # the guest agent's virtio-serial port (/dev/vportNpM)
    "virtio_console",
)

#: Kernel modules /init loads only when it looks for a NoCloud seed (no ``binome.ip``):
#: a CD-ROM or disk on virtio-scsi (``scsiN: STORAGE:cloudinit``) and ISO 9660 (Rock
#: Ridge) to read it. Debian's cloud kernel has no AHCI driver (CONFIG_SATA_AHCI unset),
#: so this guest cannot see an ``ide2``/``sataN`` drive on q35; a virtio disk works too.
SEED_MODULES: tuple[str, ...] = ("virtio_scsi", "sr_mod", "sd_mod", "isofs")

#: Busybox applets linked into the initramfs (/init also calls them by name).
BUSYBOX_APPLETS: tuple[str, ...] = tuple(
    """
    sh ash acpid awk cat cttyhack dd dmesg echo free grep head hostname
    httpd ifconfig insmod ip kill ls lsmod mkdir mknod mount nc ping ps rm
    arping route sed seq setsid sleep stat sync tail test tr udhcpc umount
    uname uptime usleep vi wget xxd hexdump od [ [[ true false printf wc
    cut env top sysctl blockdev cp mv ln touch find date expr less sort
    """.split()
)


def default_cache_dir() -> Path:
    """Root of binome's build caches (the guest image lives in ``<it>/guest``).

    ``$BINOME_CACHE_DIR`` if set; else ``<repo>/.cache`` when running from a
    source tree (``<repo>/pyproject.toml`` exists); else ``/var/cache/binome``.
    """
    env = os.environ.get("BINOME_CACHE_DIR")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[3]
    if (repo / "pyproject.toml").exists():
        return repo / ".cache"
    return Path("/var/cache/binome")


DEFAULT_CACHE_DIR: Path = default_cache_dir()



@dataclass(frozen=True)
class GuestImage:
    """A built guest: kernel, initramfs and the kernel's version string."""

    kernel: Path
    initrd: Path
    kernel_version: str

    def cmdline(
        self,
        ip: str | None = None,
        gateway: str | None = None,
        http_port: int = 80,
        hostname: str = "guest",
        extra: str = "",
    ) -> str:
        """Kernel command line for this guest.

        ``ip`` is ``ADDR/PREFIX`` (``/24`` assumed if the prefix is missing);
        without it the guest reads its NoCloud seed (a ``cidata`` CD) if it has
        one, else tries DHCP once. ``panic=-1`` makes a panic
        reboot, which ``-no-reboot`` turns into a QEMU exit.
        """
        parts = [
            "console=ttyS0",
            "quiet",
            "loglevel=3",
            "panic=-1",
            "oops=panic",
            "mitigations=off",
            "no_timer_check",
            "tsc=reliable",
            "8250.nr_uarts=1",
            "random.trust_cpu=on",
            # The crypto self-tests cost ~0.3 s of TCG time at boot and the
            # guest uses no crypto beyond the module signature check.
            "cryptomgr.notests",
            "rdinit=/init",
        ]
        if ip:
            _check_token(ip, "ip")
            parts.append(f"binome.ip={ip}")
        if gateway:
            _check_token(gateway, "gateway")
            parts.append(f"binome.gw={gateway}")
        parts.append(f"binome.http={int(http_port)}")
        _check_token(hostname, "hostname")
        parts.append(f"binome.hostname={hostname}")
        if extra:
            parts.append(extra)
        return " ".join(parts)


def _check_token(value: str, what: str) -> None:
    if not value or re.search(r"[\s\"'`$\\;&|<>]", value):
        raise ValueError(f"invalid {what} for the kernel command line: {value!r}")


def qemu_command(
    image: GuestImage,
    *,
    memory_mb: int = 128,
    tap: str | None = None,
    mac: str | None = None,
    cmdline: str,
    serial: str = "stdio",
    extra: list[str] | None = None,
) -> list[str]:
    """QEMU argv booting ``image`` under TCG (never KVM).

    ``serial`` is a QEMU chardev spec for the guest's ttyS0 (``stdio``,
    ``file:PATH``, ``unix:PATH,server=on,wait=off``, ``none`` ...). With ``tap``
    the guest gets a virtio-net NIC on that (pre-created) tap device; ``extra``
    is appended verbatim (e.g. ``-drive``, ``-qmp``). The guest powering off
    (or panicking) makes QEMU exit (``-no-reboot``).
    """
    argv = [
        QEMU_BINARY,
        "-accel",
        "tcg",
        # q35 + the plain TCG CPU measured fastest (~2.5 s kernel start to
        # HTTP); pc and "-cpu max" were within noise, never faster.
        "-machine",
        "q35",
        "-cpu",
        "qemu64",
        "-smp",
        "1",
        "-m",
        str(int(memory_mb)),
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-vga",
        "none",
        "-serial",
        serial,
        "-no-reboot",
        "-kernel",
        str(image.kernel),
        "-initrd",
        str(image.initrd),
        "-append",
        cmdline,
    ]
    if tap is not None:
        argv += [
            "-netdev",
            f"tap,id=n0,ifname={tap},script=no,downscript=no",
            "-device",
            f"virtio-net-pci,netdev=n0,mac={mac}" if mac else "virtio-net-pci,netdev=n0",
        ]
    if extra:
        argv += list(extra)
    return argv


# Bumped whenever the initramfs layout changes in a way the hash below misses.
_FORMAT_VERSION = "3"


def _recipe_hash() -> str:
    h = hashlib.sha256()
    for part in (
        _FORMAT_VERSION,
        INIT_SCRIPT,
        SHUTDOWN_WRAPPER,
        SHUTDOWN_COMMAND,
        OS_RELEASE,
        AGENT_PACKAGE,
        PROFILE,
        POWER_SCRIPT,
        UDHCPC_SCRIPT,
        STATUS_CGI,
        DISK_CGI,
        ",".join(GUEST_MODULES),
        ",".join(SEED_MODULES),
        ",".join(BUSYBOX_APPLETS),
    ):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------
# newc cpio writer
# --------------------------------------------------------------------------


class _Cpio:
    """Minimal ``newc`` cpio archive writer (root-owned, mtime 0)."""

    def __init__(self) -> None:
        self._buf = io.BytesIO()
        self._ino = 1
        self._seen: set[str] = set()

    def _entry(
        self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)
    ) -> None:
        name = name.lstrip("/")
        if name in self._seen:
            raise ValueError(f"duplicate cpio entry {name}")
        self._seen.add(name)
        nameb = name.encode() + b"\0"
        fields = (
            self._ino,
            mode,
            0,
            0,
            2 if stat.S_ISDIR(mode) else 1,
            0,
            len(data),
            0,
            0,
            rdev[0],
            rdev[1],
            len(nameb),
            0,
        )
        self._ino += 1
        hdr = b"070701" + b"".join(b"%08X" % f for f in fields)
        self._write_padded(hdr + nameb)
        self._write_padded(data)

    def _write_padded(self, b: bytes) -> None:
        self._buf.write(b)
        self._buf.write(b"\0" * (-len(b) % 4))

    def dir(self, name: str, perm: int = 0o755) -> None:
        self._entry(name, stat.S_IFDIR | perm)

    def file(self, name: str, data: bytes, perm: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | perm, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def chardev(self, name: str, major: int, minor: int, perm: int = 0o600) -> None:
        self._entry(name, stat.S_IFCHR | perm, rdev=(major, minor))

    def finish(self) -> bytes:
        self._ino = 0
        self._entry("TRAILER!!!", 0)
        self._buf.write(b"\0" * (-self._buf.tell() % 512))
        return self._buf.getvalue()


# --------------------------------------------------------------------------
# Build steps
# --------------------------------------------------------------------------


def _run(argv: list[str], cwd: Path | None = None) -> str:
    try:
        proc = subprocess.run(argv, cwd=cwd, check=True, capture_output=True, text=True)
    except FileNotFoundError as exc:
        raise ImageBuildError(f"{argv[0]} not found (needed to build the guest image)") from exc
    except subprocess.CalledProcessError as exc:
        raise ImageBuildError(
            f"{' '.join(argv)} failed ({exc.returncode}): {exc.stderr.strip()}"
        ) from exc
    return proc.stdout


_apt_updated = False


def _apt_update() -> None:
    global _apt_updated
    if not _apt_updated:
        _run(["apt-get", "update", "-qq"])
        _apt_updated = True


def _resolve_kernel_package() -> str:
    """Concrete ``linux-image-<ver>-cloud-amd64`` behind the metapackage."""
    pattern = re.compile(r"Depends:\s*(linux-image-\S+-cloud-amd64)\b")
    for attempt in range(2):
        try:
            out = _run(["apt-cache", "depends", KERNEL_METAPACKAGE])
        except ImageBuildError:
            out = ""
        found = pattern.findall(out)
        if found:
            return found[0]
        if attempt == 0:
            _apt_update()
    raise ImageBuildError(f"cannot resolve {KERNEL_METAPACKAGE} to a concrete kernel package")


def _apt_download(package: str, dest: Path, retry: bool = True) -> Path:
    argv = ["apt-get", "download", "-q"]
    if os.geteuid() == 0:
        argv += ["-o", "APT::Sandbox::User=root"]
    try:
        _run([*argv, package], cwd=dest)
    except ImageBuildError:
        if not retry:
            raise
        _apt_update()  # stale lists: the mirror may have dropped that version
        _run([*argv, package], cwd=dest)
    debs = sorted(dest.glob(f"{package}_*.deb"))
    if not debs:
        raise ImageBuildError(f"apt-get download {package} produced no .deb in {dest}")
    return debs[-1]


def _is_static_elf(path: Path) -> bool:
    """True for an ELF executable without a PT_INTERP program header."""
    with path.open("rb") as f:
        ident = f.read(64)
        if len(ident) < 64 or ident[:4] != b"\x7fELF" or ident[4] != 2:
            return False
        endian = "<" if ident[5] == 1 else ">"
        phoff = struct.unpack_from(endian + "Q", ident, 0x20)[0]
        phentsize, phnum = struct.unpack_from(endian + "HH", ident, 0x36)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    for i in range(phnum):
        (p_type,) = struct.unpack_from(endian + "I", table, i * phentsize)
        if p_type == 3:  # PT_INTERP
            return False
    return True


def _find_busybox(work: Path) -> Path:
    for candidate in (Path("/bin/busybox"), Path("/usr/bin/busybox")):
        if candidate.is_file() and _is_static_elf(candidate):
            return candidate
    deb = _apt_download(BUSYBOX_PACKAGE, work)
    root = work / "busybox-root"
    _run(["dpkg-deb", "-x", str(deb), str(root)])
    for rel in ("bin/busybox", "usr/bin/busybox"):
        candidate = root / rel
        if candidate.is_file() and _is_static_elf(candidate):
            return candidate
    raise ImageBuildError(f"no static busybox in {deb.name}")


def _agent_packages() -> list[str]:
    """qemu-guest-agent and what it Depends on, recursively (apt's resolution)."""
    out = _run(["apt-cache", "depends", "--recurse", "--no-recommends", "--no-suggests",
                "--no-conflicts", "--no-breaks", "--no-replaces", "--no-enhances",
                "--no-pre-depends", AGENT_PACKAGE])
    names = {line.strip() for line in out.splitlines()
             if line and not line[0].isspace() and not line.startswith("<")}
    if AGENT_PACKAGE not in names:
        raise ImageBuildError(f"apt-cache knows no {AGENT_PACKAGE}")
    return sorted(names)


def elf_needed(data: bytes) -> tuple[str | None, list[str]]:
    """(PT_INTERP, DT_NEEDED sonames) of a 64-bit little-endian ELF file."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ImageBuildError("not a 64-bit little-endian ELF file")
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    interp = None
    loads: list[tuple[int, int, int]] = []    # (vaddr, file offset, file size)
    dynamic: tuple[int, int] | None = None
    for i in range(phnum):
        p_type, _flags, offset, vaddr, _paddr, filesz = struct.unpack_from(
            "<IIQQQQ", data, phoff + i * phentsize)
        if p_type == 1:      # PT_LOAD
            loads.append((vaddr, offset, filesz))
        elif p_type == 2:    # PT_DYNAMIC
            dynamic = (offset, filesz)
        elif p_type == 3:    # PT_INTERP
            interp = data[offset:offset + filesz].rstrip(b"\0").decode()
    if dynamic is None:
        return interp, []
    needed: list[int] = []
    strtab = None
    for pos in range(dynamic[0], dynamic[0] + dynamic[1], 16):
        tag, value = struct.unpack_from("<qQ", data, pos)
        if tag == 0:
            break
        if tag == 1:         # DT_NEEDED: an offset in DT_STRTAB
            needed.append(value)
        elif tag == 5:       # DT_STRTAB: a virtual address
            strtab = next((value - vaddr + offset for vaddr, offset, size in loads
                           if vaddr <= value < vaddr + size), None)
    if strtab is None:
        return interp, []
    names = [data[strtab + n:data.index(b"\0", strtab + n)].decode() for n in needed]
    return interp, names


def _resolve_in(root: Path, path: Path) -> Path:
    """Follow symlinks inside an unpacked package tree (absolute ones stay in it)."""
    for _ in range(16):
        if not path.is_symlink():
            return path
        target = os.readlink(path)
        path = root / target.lstrip("/") if target.startswith("/") else path.parent / target
    raise ImageBuildError(f"symlink loop at {path}")


def _agent_files(work: Path) -> list[tuple[str, bytes]]:
    """qemu-ga, its ELF interpreter and the libraries it needs, transitively, as
    (path in the initramfs, content); the libraries go to /lib/x86_64-linux-gnu, a
    directory the dynamic loader searches without a cache."""
    root = work / "agent-root"
    debs = work / "agent-debs"
    debs.mkdir()
    for package in _agent_packages():
        _run(["dpkg-deb", "-x", str(_apt_download(package, debs)), str(root)])
    binary = root / AGENT_BINARY
    if not binary.is_file():
        raise ImageBuildError(f"{AGENT_PACKAGE} has no {AGENT_BINARY}")
    files: list[tuple[str, bytes]] = [(AGENT_BINARY, binary.read_bytes())]
    interp, pending = elf_needed(files[0][1])
    if interp is None:
        raise ImageBuildError(f"{AGENT_BINARY} has no ELF interpreter")
    loader = _resolve_in(root, root / interp.lstrip("/"))
    if not loader.is_file():
        raise ImageBuildError(f"the ELF interpreter {interp} is in no dependency of "
                              f"{AGENT_PACKAGE}")
    files.append((interp.lstrip("/"), loader.read_bytes()))
    seen: set[str] = set()
    while pending:
        soname = pending.pop()
        if soname in seen:
            continue
        seen.add(soname)
        found = next((p for d in _LIB_DIRS
                      if (p := _resolve_in(root, root / d / soname)).is_file()), None)
        if found is None:
            raise ImageBuildError(f"{soname} (needed by qemu-ga) is in none of its "
                                  f"dependencies")
        data = found.read_bytes()
        files.append((f"lib/x86_64-linux-gnu/{soname}", data))
        pending.extend(elf_needed(data)[1])
    return files


def _build_initramfs(busybox: Path, modules: list[tuple[str, Path, bytes]], kver: str,
                     seed_modules: list[tuple[str, Path, bytes]] | None = None,
                     agent_files: list[tuple[str, bytes]] | None = None) -> bytes:
    seed_modules = seed_modules or []
    cpio = _Cpio()
    for d in (
        "bin",
        "sbin",
        "usr",
        "usr/bin",
        "usr/sbin",
        "dev",
        "proc",
        "sys",
        "run",
        "var",
        "var/log",
        "var/run",
        "etc",
        "etc/binome",
        "etc/acpi",
        "etc/acpi/PWRF",
        "lib",
        "lib/x86_64-linux-gnu",
        "lib64",
        "lib/modules",
        f"lib/modules/{kver}",
        "www",
        "www/cgi-bin",
        "root",
    ):
        cpio.dir(d)
    cpio.dir("tmp", 0o1777)
    cpio.chardev("dev/console", 5, 1)
    cpio.chardev("dev/null", 1, 3, 0o666)
    cpio.chardev("dev/ttyS0", 4, 64)
    cpio.file("bin/busybox", busybox.read_bytes(), 0o755)
    for applet in BUSYBOX_APPLETS:
        cpio.symlink(f"bin/{applet}", "busybox")
    for cmd in ("halt", "poweroff", "reboot"):
        cpio.file(f"bin/{cmd}", SHUTDOWN_WRAPPER.encode(), 0o755)
    cpio.file("etc/profile", PROFILE.encode())
    cpio.file("init", INIT_SCRIPT.encode(), 0o755)
    cpio.file("etc/acpi/PWRF/00000080", POWER_SCRIPT.encode(), 0o755)
    cpio.file("etc/binome/udhcpc.sh", UDHCPC_SCRIPT.encode(), 0o755)
    cpio.file("www/cgi-bin/status", STATUS_CGI.encode(), 0o755)
    cpio.file("www/cgi-bin/disk", DISK_CGI.encode(), 0o755)
    cpio.file("www/index.html", b"binome guest\n")
    cpio.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
    cpio.file("etc/group", b"root:x:0:\n")
    cpio.file("etc/hostname", b"guest\n")
    cpio.file("etc/os-release", OS_RELEASE.encode())
    cpio.file("sbin/shutdown", SHUTDOWN_COMMAND.encode(), 0o755)
    for name, data in agent_files or []:
        cpio.file(name, data, 0o755)
    listing = []
    for name, _path, data in modules:
        rel = f"{kver}/{name}.ko"
        cpio.file(f"lib/modules/{rel}", data)
        listing.append(rel)
    cpio.file("etc/binome/modules", ("\n".join(listing) + "\n").encode())
    seed_listing = []
    for name, _path, data in seed_modules:
        rel = f"{kver}/{name}.ko"
        cpio.file(f"lib/modules/{rel}", data)
        seed_listing.append(rel)
    cpio.file("etc/binome/seed-modules", ("\n".join(seed_listing) + "\n").encode())
    return gzip.compress(cpio.finish(), compresslevel=6, mtime=0)


def _stamp_path(guest_dir: Path) -> Path:
    return guest_dir / "stamp.json"


def _load_cached(guest_dir: Path) -> GuestImage | None:
    stamp = _stamp_path(guest_dir)
    if not stamp.is_file():
        return None
    try:
        info = json.loads(stamp.read_text())
    except (OSError, ValueError):
        return None
    if info.get("recipe") != _recipe_hash() or not info.get("kernel_version"):
        return None
    kernel = guest_dir / str(info.get("kernel_file", "vmlinuz"))
    initrd = guest_dir / "initrd.gz"
    if not (kernel.is_file() and initrd.is_file()):
        return None
    return GuestImage(kernel=kernel, initrd=initrd, kernel_version=info["kernel_version"])


def build_image(cache_dir: Path | None = None, force: bool = False) -> GuestImage:
    """Build (or reuse) the guest image under ``<cache_dir>/guest``.

    ``cache_dir`` defaults to :data:`DEFAULT_CACHE_DIR`. Idempotent: an
    existing kernel + initramfs + stamp made by the same recipe is returned
    as is unless ``force``. Needs ``apt-get``/``apt-cache``/``dpkg-deb``
    (Debian) and network access to the Debian mirror on the first build.
    """
    guest_dir = Path(cache_dir if cache_dir is not None else DEFAULT_CACHE_DIR) / "guest"
    guest_dir.mkdir(parents=True, exist_ok=True)
    if not force and (cached := _load_cached(guest_dir)) is not None:
        return cached
    with (guest_dir / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not force and (cached := _load_cached(guest_dir)) is not None:
            return cached
        return _build_locked(guest_dir)


def _build_locked(guest_dir: Path) -> GuestImage:
    with tempfile.TemporaryDirectory(prefix="binome-img-", dir=guest_dir) as tmp:
        work = Path(tmp)
        os.chmod(work, 0o755)  # readable by apt's _apt sandbox user if it is used
        package = _resolve_kernel_package()
        try:
            deb = _apt_download(package, work, retry=False)
        except ImageBuildError:
            # Stale lists (e.g. a new kernel ABI landed): refresh, re-resolve.
            _apt_update()
            package = _resolve_kernel_package()
            deb = _apt_download(package, work, retry=False)
        root = work / "kernel-root"
        _run(["dpkg-deb", "-x", str(deb), str(root)])
        kernels = sorted((root / "boot").glob("vmlinuz-*"))
        moddirs = sorted(p for p in (root / "lib" / "modules").glob("*") if p.is_dir())
        if not kernels or not moddirs:
            raise ImageBuildError(f"{deb.name} has no boot/vmlinuz-* or lib/modules/*")
        kver = moddirs[-1].name
        modules = kernel_files.collect_modules(moddirs[-1], GUEST_MODULES)
        loaded = {name for name, _p, _d in modules}
        seed_modules = [m for m in kernel_files.collect_modules(
            moddirs[-1], (*GUEST_MODULES, *SEED_MODULES)) if m[0] not in loaded]
        busybox = _find_busybox(work)
        agent_files = _agent_files(work)
        initrd = _build_initramfs(busybox, modules, kver, seed_modules, agent_files)

        bzimage = kernels[-1].read_bytes()
        vmlinux = kernel_files.pvh_kernel(bzimage)
        kernel_file = "vmlinux" if vmlinux is not None else "vmlinuz"
        # a cache rebuilt when its stamp is missing or stale: atomic, no fsync; the stamp
        # goes first and comes back last, so a torn rebuild is never taken as complete
        _stamp_path(guest_dir).unlink(missing_ok=True)
        durable.write_bytes(guest_dir / kernel_file,
                            vmlinux if vmlinux is not None else bzimage, sync=False)
        durable.write_bytes(guest_dir / "initrd.gz", initrd, sync=False)
        stamp = {
            "kernel_version": kver,
            "kernel_package": deb.name,
            "kernel_file": kernel_file,
            "pvh": vmlinux is not None,
            "busybox": str(busybox) if not busybox.is_relative_to(work) else BUSYBOX_PACKAGE,
            "modules": [str(p.relative_to(moddirs[-1])) for _n, p, _d in modules],
            "seed_modules": [str(p.relative_to(moddirs[-1])) for _n, p, _d in seed_modules],
            "agent_files": [name for name, _data in agent_files],
            "recipe": _recipe_hash(),
            "built_at": int(time.time()),
        }
        durable.write_json(_stamp_path(guest_dir), stamp, sync=False)
    return GuestImage(
        kernel=guest_dir / kernel_file, initrd=guest_dir / "initrd.gz", kernel_version=kver
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m binome.lab.image", description="Build the binome lab guest image."
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help=f"cache root (image goes in DIR/guest; default {DEFAULT_CACHE_DIR})",
    )
    parser.add_argument("--force", action="store_true", help="rebuild even if cached")
    args = parser.parse_args(argv)
    start = time.monotonic()
    try:
        image = build_image(args.cache_dir, force=args.force)
    except ImageBuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"kernel: {image.kernel}")
    print(f"initrd: {image.initrd}")
    print(f"kernel_version: {image.kernel_version}")
    print(f"took: {time.monotonic() - start:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
