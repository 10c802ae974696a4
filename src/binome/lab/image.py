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
  busybox, the virtio/ACPI-button/evdev kernel modules (decompressed to plain
  ``.ko`` at build time) and an ``/init`` shell script that configures the
  network from ``binome.*`` kernel parameters, serves HTTP (static page plus
  the ``status`` and ``disk`` CGIs), prints ``BINOME-GUEST-READY <ip>`` on the
  serial console, powers off on an ACPI power-button press and keeps a shell
  on the serial console.

It also knows how to build the kernel command line (:meth:`GuestImage.cmdline`)
and the QEMU argv (:func:`qemu_command`) for such a guest.

Guest HTTP interface (port ``binome.http``, default 80):

* ``/`` - static text containing the hostname;
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
import lzma
import os
import re
import stat
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from binome import durable

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
)

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


class ImageBuildError(RuntimeError):
    """The guest image could not be built."""


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
        without it the guest tries DHCP once. ``panic=-1`` makes a panic
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


# --------------------------------------------------------------------------
# Guest userland (busybox sh scripts)
# --------------------------------------------------------------------------

INIT_SCRIPT = r"""#!/bin/sh
# binome lab guest init (busybox sh, PID 1). Generated by binome.lab.image.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /run /tmp /var/log /var/run
mount -t devpts devpts /dev/pts 2>/dev/null
exec </dev/console >/dev/console 2>&1

log() { echo "binome-init: $*"; }

# Kernel modules, in dependency order.
while read -r mod; do
    [ -n "$mod" ] || continue
    name=${mod##*/}; name=${name%.ko}
    [ -d "/sys/module/$name" ] && continue
    insmod "/lib/modules/$mod" || log "insmod $mod failed"
done < /etc/binome/modules

IP=; GW=; HTTP_PORT=80; HOST=guest
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        binome.ip=*) IP=${arg#binome.ip=} ;;
        binome.gw=*) GW=${arg#binome.gw=} ;;
        binome.http=*) HTTP_PORT=${arg#binome.http=} ;;
        binome.hostname=*) HOST=${arg#binome.hostname=} ;;
    esac
done
hostname "$HOST"
echo "$HOST" > /etc/hostname

# ACPI power button (QMP system_powerdown) -> acpid -> /etc/acpi/PWRF/00000080
acpid -c /etc/acpi -l /var/log/acpid.log -p /var/run/acpid.pid || log "acpid failed"

ip link set lo up
i=0
while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 20 ]; do usleep 100000; i=$((i + 1)); done
ADDR=none
if [ -e /sys/class/net/eth0 ]; then
    if [ -n "$IP" ]; then
        case "$IP" in */*) ;; *) IP="$IP/24" ;; esac
        ip addr add "$IP" dev eth0 || log "ip addr add $IP failed"
        ip link set eth0 up
        [ -n "$GW" ] && { ip route add default via "$GW" || log "default route via $GW failed"; }
    else
        ip link set eth0 up
        udhcpc -i eth0 -n -q -t 3 -T 1 -s /etc/binome/udhcpc.sh >/dev/null 2>&1 || log "dhcp failed"
    fi
    ADDR=$(ip -o -4 addr show dev eth0 | awk '{print $4; exit}')
    ADDR=${ADDR%%/*}
    [ -n "$ADDR" ] || ADDR=none
else
    log "no eth0"
fi

echo "binome guest $HOST" > /www/index.html
httpd -f -p "$HTTP_PORT" -h /www &
i=0
until wget -q -O /dev/null "http://127.0.0.1:$HTTP_PORT/" 2>/dev/null || [ $i -ge 50 ]; do
    usleep 100000; i=$((i + 1))
done
# Gratuitous ARP so neighbours (and bridges) learn where we are right away.
[ "$ADDR" != none ] && arping -U -c 1 -w 1 -I eth0 "$ADDR" >/dev/null 2>&1 &
echo "BINOME-GUEST-READY $ADDR"

# Serial console shell, respawned forever (PID 1 must never exit).
while true; do
    setsid cttyhack sh -l
    sleep 1
done
"""

# halt/poweroff/reboot without -f would signal PID 1, which is a plain shell
# here and ignores them: make them act directly (after a sync). busybox ash
# prefers its applets over $PATH, hence the functions in /etc/profile too.
SHUTDOWN_WRAPPER = r"""#!/bin/sh
sync
exec /bin/busybox "${0##*/}" -f
"""

PROFILE = r"""export PATH=/bin:/sbin:/usr/bin:/usr/sbin
export PS1='\h:\w# '
poweroff() { sync; /bin/busybox poweroff -f; }
reboot() { sync; /bin/busybox reboot -f; }
halt() { sync; /bin/busybox halt -f; }
"""

POWER_SCRIPT = r"""#!/bin/sh
echo "binome-guest: power button, powering off" > /dev/console
sync
/bin/busybox poweroff -f
"""

UDHCPC_SCRIPT = r"""#!/bin/sh
case "$1" in
    bound|renew)
        ip addr flush dev "$interface"
        ip addr add "$ip/${mask:-24}" dev "$interface"
        for r in $router; do ip route add default via "$r"; break; done
        ;;
esac
exit 0
"""

STATUS_CGI = r"""#!/bin/sh
read -r up _ < /proc/uptime
addr=$(ip -o -4 addr show dev eth0 2>/dev/null | awk '{print $4; exit}')
addr=${addr%%/*}
printf 'Content-Type: application/json\r\n\r\n'
printf '{"hostname": "%s", "uptime": %s, "ip": "%s"}\n' "$(hostname)" "$up" "$addr"
"""

DISK_CGI = r"""#!/bin/sh
DEV=/dev/vda
reply() { # status text
    printf 'Status: %s\r\nContent-Type: text/plain\r\n\r\n%s\n' "$1" "$2"
    exit 0
}
set -f
R=; W=; D=
IFS='&'
for kv in $QUERY_STRING; do
    case "$kv" in
        read=*) R=${kv#read=} ;;
        write=*) W=${kv#write=} ;;
        data=*) D=${kv#data=} ;;
    esac
done
unset IFS
if [ -z "$R" ] && [ -z "$W" ]; then
    if [ -b "$DEV" ]; then
        printf 'Content-Type: text/plain\r\n\r\npresent %s\n' \
            "$(( $(cat /sys/block/vda/size) * 512 ))"
    else
        printf 'Content-Type: text/plain\r\n\r\nabsent\n'
    fi
    exit 0
fi
[ -b "$DEV" ] || reply "404 Not Found" "absent"
OFF=${R:-$W}
case "$OFF" in ''|*[!0-9]*) reply "400 Bad Request" "bad offset" ;; esac
[ $((OFF % 512)) -eq 0 ] || reply "400 Bad Request" "offset not 512-aligned"
if [ -n "$R" ]; then
    printf 'Content-Type: text/plain\r\n\r\n'
    dd if="$DEV" bs=512 skip=$((OFF / 512)) count=1 2>/dev/null | tr -d '\000'
    exit 0
fi
TEXT=$(httpd -d "$D")
LEN=$(printf '%s' "$TEXT" | wc -c)
[ "$LEN" -le 511 ] || reply "400 Bad Request" "data too long"
printf '%s' "$TEXT" | dd of="$DEV" bs=512 seek=$((OFF / 512)) count=1 \
    conv=sync,notrunc,fsync 2>/dev/null || reply "500 Internal Server Error" "write failed"
reply "200 OK" "ok $LEN"
"""

# Bumped whenever the initramfs layout changes in a way the hash below misses.
_FORMAT_VERSION = "2"


def _recipe_hash() -> str:
    h = hashlib.sha256()
    for part in (
        _FORMAT_VERSION,
        INIT_SCRIPT,
        SHUTDOWN_WRAPPER,
        PROFILE,
        POWER_SCRIPT,
        UDHCPC_SCRIPT,
        STATUS_CGI,
        DISK_CGI,
        ",".join(GUEST_MODULES),
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


_XEN_ELFNOTE_PHYS32_ENTRY = 18


def _bzimage_payload(data: bytes) -> bytes | None:
    """The compressed kernel inside an x86 bzImage (boot protocol >= 2.08)."""
    if len(data) < 0x250 or data[0x202:0x206] != b"HdrS":
        return None
    setup_sects = data[0x1F1] or 4
    offset, length = struct.unpack_from("<II", data, 0x248)
    start = (setup_sects + 1) * 512 + offset
    return data[start : start + length] if length else None


def _decompress_kernel(payload: bytes) -> bytes | None:
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


def _has_pvh_entry(elf: bytes) -> bool:
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


def _pvh_kernel(bzimage: bytes) -> bytes | None:
    """The uncompressed, PVH-bootable vmlinux inside ``bzimage``, if any."""
    payload = _bzimage_payload(bzimage)
    elf = _decompress_kernel(payload) if payload else None
    return elf if elf and _has_pvh_entry(elf) else None


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


def _collect_modules(moddir: Path, wanted: Iterable[str]) -> list[tuple[str, Path, bytes]]:
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


def _build_initramfs(busybox: Path, modules: list[tuple[str, Path, bytes]], kver: str) -> bytes:
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
    listing = []
    for name, _path, data in modules:
        rel = f"{kver}/{name}.ko"
        cpio.file(f"lib/modules/{rel}", data)
        listing.append(rel)
    cpio.file("etc/binome/modules", ("\n".join(listing) + "\n").encode())
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
        modules = _collect_modules(moddirs[-1], GUEST_MODULES)
        busybox = _find_busybox(work)
        initrd = _build_initramfs(busybox, modules, kver)

        bzimage = kernels[-1].read_bytes()
        vmlinux = _pvh_kernel(bzimage)
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
