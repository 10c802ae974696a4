"""KVM or TCG: use KVM only when a probe proves a Linux guest boots with it.

On some hosts ``/dev/kvm`` opens but KVM never runs an ordinary kernel (a
nested, paravirtual KVM: the guest hangs before printing anything). So
"``/dev/kvm`` exists" is not enough: :func:`probe_kvm` boots a real kernel
under ``-accel kvm`` with its console on QEMU's stdout and waits (at most
:data:`PROBE_TIMEOUT` seconds) for a line that only a kernel which came all
the way up prints:

* the lab guest image (if already built; it is never built here) with
  ``rdinit=/init``: "Run /init as init process", or its ready marker;
* otherwise the host's own kernel without an initrd: it reaches
  "VFS: Unable to mount root fs" (and panics, which ``-no-reboot`` turns into
  an exit) - proof enough that KVM runs a kernel.

No marker in time, no kernel to try, or no usable ``/dev/kvm``: TCG. The
probe QEMU is always killed by its pid and reaped. The decision is cached in
``<run_dir>/accel.json`` (and host-wide in ``/run/binome/accel.json``) together with
the host kernel release and the QEMU
binary's identity, and re-probed when either changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from binome import durable
from binome.guest.argv import QEMU_BINARY

__all__ = [
    "ACCEL_CACHE",
    "PROBE_TIMEOUT",
    "AccelDecision",
    "cached_accel",
    "probe_kvm",
    "resolve_accel",
]

log = logging.getLogger(__name__)

ACCEL_CACHE = "accel.json"
HOST_CACHE_DIR = Path(os.environ.get("BINOME_HOST_RUN_DIR", "/run/binome"))
#: A working KVM brings the probe kernel to its marker in well under 2 s; a
#: host too slow for that is better served by TCG's predictability anyway.
PROBE_TIMEOUT = 6.0
PROBE_MARKERS = (
    b"Run /init as init process",
    b"BINOME-GUEST-READY",
    b"VFS: Unable to mount root fs",
)


@dataclass(frozen=True)
class AccelDecision:
    accel: str  # "kvm" | "tcg"
    reason: str
    probe_seconds: float | None = None
    probe_pid: int | None = None  # the probe's QEMU (already gone when this is returned)


def _kvm_unusable() -> str | None:
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return f"/dev/kvm unusable ({exc.strerror})"
    os.close(fd)
    return None


def _image_dir() -> Path:
    """Where a built lab guest image would be: ``<binome build cache>/guest``.

    The cache root is ``$BINOME_CACHE_DIR``, else ``<repo>/.cache`` in a source tree,
    else ``/var/cache/binome``: the layout ``binome.lab.image`` builds into (the guest
    package does not import the lab; tests/unit/test_accel_image.py pins the two).
    """
    env = os.environ.get("BINOME_CACHE_DIR")
    if env:
        return Path(env) / "guest"
    repo = Path(__file__).resolve().parents[3]
    root = repo / ".cache" if (repo / "pyproject.toml").exists() else Path("/var/cache/binome")
    return root / "guest"


def _built_image(guest_dir: Path) -> tuple[Path, Path] | None:
    """(kernel, initrd) of an already-built lab guest image, from its ``stamp.json``.

    Any built image will do, whatever recipe built it: the probe only needs a kernel
    that runs an initramfs' ``/init``.
    """
    try:
        info = json.loads((guest_dir / "stamp.json").read_text())
        kernel = guest_dir / str(info.get("kernel_file", "vmlinuz"))
    except (OSError, ValueError, AttributeError):
        return None
    initrd = guest_dir / "initrd.gz"
    return (kernel, initrd) if kernel.is_file() and initrd.is_file() else None


def _probe_kernel() -> tuple[Path, Path | None, str, str] | None:
    """(kernel, initrd, append, description) to boot, or None."""
    # Only an already-built image: a probe must never start a build.
    built = _built_image(_image_dir())
    if built is not None:
        return built[0], built[1], "console=ttyS0 panic=-1 rdinit=/init", "lab image"
    release = os.uname().release
    candidates = [Path(f"/boot/vmlinuz-{release}"), *sorted(Path("/boot").glob("vmlinuz-*"))]
    for kernel in candidates:
        if kernel.is_file() and os.access(kernel, os.R_OK):
            return kernel, None, "console=ttyS0 panic=-1", f"host kernel {kernel.name}"
    return None


async def probe_kvm(
    timeout: float = PROBE_TIMEOUT, qemu: str = QEMU_BINARY, *, accel: str = "kvm"
) -> AccelDecision:
    """Boot a kernel with ``-accel kvm``; "kvm" only if it reaches a marker in ``timeout``.

    ``accel="tcg"`` runs the same probe under TCG (tests use it to prove the
    marker detection works); the decision then names the accelerator probed.
    """
    why = _kvm_unusable() if accel == "kvm" else None
    if why is not None:
        return AccelDecision("tcg", why)
    kernel = _probe_kernel()
    if kernel is None:
        return AccelDecision("tcg", "no kernel to probe KVM with (no lab image, nothing in /boot)")
    kpath, initrd, append, what = kernel
    argv = [qemu, "-accel", accel, "-machine", "q35", "-cpu", "qemu64", "-m", "256",
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-serial", "stdio", "-kernel", str(kpath), "-append", append]
    if initrd is not None:
        argv += ["-initrd", str(initrd)]
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    seen = b""
    found: bytes | None = None
    try:
        assert proc.stdout is not None
        deadline = started + timeout
        while found is None:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                chunk = await asyncio.wait_for(proc.stdout.read(4096), left)
            except TimeoutError:
                break
            if not chunk:  # QEMU exited (e.g. KVM refused) before any marker
                break
            seen = (seen + chunk)[-8192:]
            found = next((m for m in PROBE_MARKERS if m in seen), None)
    finally:
        # By pid, and reaped: the probe must never leave a QEMU behind.
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
    took = time.monotonic() - started
    if found is not None:
        return AccelDecision(
            accel, f"{what} reached {found.decode()!r} under {accel.upper()} in {took:.1f}s",
            took, proc.pid,
        )
    err = b""
    if proc.stderr is not None:
        err = await proc.stderr.read()
    detail = err.decode(errors="replace").strip().splitlines()
    tail = f" (QEMU: {detail[-1]})" if detail else ""
    return AccelDecision(
        "tcg",
        f"{what} printed no boot marker under {accel.upper()} within {timeout:.0f}s{tail}",
        took, proc.pid,
    )


def _host_identity(qemu: str) -> dict[str, Any]:
    path = shutil.which(qemu) or qemu
    try:
        st = os.stat(path)
        binary = {"path": os.path.realpath(path), "size": st.st_size, "mtime": int(st.st_mtime)}
    except OSError:
        binary = {"path": path}
    return {"kernel_release": os.uname().release, "qemu": binary}


def cached_accel(run_dir: Path, qemu: str = QEMU_BINARY) -> AccelDecision | None:
    """The cached decision if it was made on this kernel with this QEMU binary."""
    try:
        data = json.loads((run_dir / ACCEL_CACHE).read_text())
    except (OSError, ValueError):
        return None
    if data.get("host") != _host_identity(qemu) or data.get("accel") not in ("kvm", "tcg"):
        return None
    return AccelDecision(data["accel"], data.get("reason", ""), data.get("probe_seconds"))


def _write_cache(directory: Path, record: dict[str, Any]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    # a cache, probed again if lost: atomic, without the fsyncs
    durable.write_json(directory / ACCEL_CACHE, record, indent=1, sync=False)


async def resolve_accel(
    run_dir: Path, *, timeout: float = PROBE_TIMEOUT, qemu: str = QEMU_BINARY,
    host_cache: Path | None = HOST_CACHE_DIR,
) -> AccelDecision:
    """The cached decision, else probe once and cache the result in ``run_dir``.

    KVM's usability is a property of the host, so the decision is also kept in a
    host-wide cache on tmpfs (``/run/binome``, gone at reboot): every node daemon
    and test cluster on the machine shares one probe instead of booting its own.
    """
    cached = cached_accel(run_dir, qemu)
    if cached is not None:
        return cached
    if host_cache is not None:
        shared = cached_accel(host_cache, qemu)
        if shared is not None:
            record = {**asdict(shared), "host": _host_identity(qemu),
                      "decided_at": int(time.time())}
            record.pop("probe_pid", None)
            _write_cache(run_dir, record)
            return shared
    decision = await probe_kvm(timeout, qemu)
    log.info("acceleration: %s (%s)", decision.accel, decision.reason)
    record = {**asdict(decision), "host": _host_identity(qemu), "decided_at": int(time.time())}
    record.pop("probe_pid", None)
    _write_cache(run_dir, record)
    if host_cache is not None:
        try:
            _write_cache(host_cache, record)
        except OSError as exc:   # not root, read-only /run: the per-node cache still works
            log.debug("host accel cache not written: %s", exc)
    return decision
