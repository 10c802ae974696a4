"""swtpm beside QEMU: owns the software TPM process of a guest with a ``tpmstate0``.

PVE runs Debian's ``swtpm`` next to QEMU (QemuServer.pm ``start_swtpm``); so does
binome: before QEMU starts, ``swtpm_setup --not-overwrite`` manufactures the TPM in
the state file once (an empty volume gets an EK and certificates; an existing state
is kept), then ``swtpm socket --daemon --terminate`` serves QEMU's ``tpm-emulator``
on ``<vmid>.tpm``. ``--terminate`` makes swtpm exit when QEMU closes the socket, so
it stops with the guest; the runtime also stops it by the pid swtpm wrote
(``<vmid>.tpm.pid``, checked against /proc so a reused pid is never signalled) when
a start fails or the guest's exit is finalized. The state must be a raw file on this
node (the config layer refuses a tpmstate0 on an NBD-backed volume).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time

from binome.guest.errors import GuestError
from binome.guest.paths import GuestPaths
from binome.guest.process import is_alive, proc_cmdline

__all__ = ["SWTPM", "SWTPM_SETUP", "start_swtpm", "stop_swtpm", "swtpm_argv", "swtpm_pid"]

SWTPM = "swtpm"
SWTPM_SETUP = "swtpm_setup"
SETUP_TIMEOUT = 60.0
READY_TIMEOUT = 10.0


def setup_argv(state: str, version: str) -> list[str]:
    """PVE's swtpm_setup call (--not-overwrite: an existing TPM is kept)."""
    argv = [SWTPM_SETUP, "--tpmstate", f"file://{state}", "--createek", "--create-ek-cert",
            "--create-platform-cert", "--lock-nvram", "--config", "/etc/swtpm_setup.conf",
            "--runas", "0", "--not-overwrite"]
    if version == "v2.0":
        argv += ["--tpm2", "--ecc"]
    return argv


def swtpm_argv(paths: GuestPaths, state: str, version: str) -> list[str]:
    argv = [SWTPM, "socket", "--tpmstate", f"backend-uri=file://{state},mode=0600",
            "--ctrl", f"type=unixio,path={paths.tpm_socket},mode=0600",
            "--pid", f"file={paths.tpm_pid}", "--terminate", "--daemon",
            "--log", f"file={paths.tpm_log},level=1"]
    if version == "v2.0":
        argv.append("--tpm2")
    return argv


async def _run(argv: list[str], timeout: float) -> None:
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT)
    except FileNotFoundError:
        raise GuestError(f"start failed: tpmstate0 needs '{argv[0]}' (Debian packages "
                         f"'swtpm', 'swtpm-tools'), which is not installed") from None
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise GuestError(f"start failed: {argv[0]} did not finish within {timeout:.0f}s") \
            from None
    if proc.returncode != 0:
        last = (out or b"").decode(errors="replace").strip().splitlines()[-1:] or ["?"]
        raise GuestError(f"start failed: {argv[0]} exited with {proc.returncode}: "
                         f"{last[0]}")


def swtpm_pid(paths: GuestPaths) -> int | None:
    """The pid of this guest's swtpm if it runs (its pid file, checked in /proc)."""
    try:
        pid = int(paths.tpm_pid.read_text().strip())
    except (OSError, ValueError):
        return None
    cmdline = proc_cmdline(pid) or []
    if not is_alive(pid) or not cmdline or os.path.basename(cmdline[0]) != SWTPM \
            or f"type=unixio,path={paths.tpm_socket},mode=0600" not in cmdline:
        return None
    return pid


async def start_swtpm(paths: GuestPaths, state: str, version: str) -> int:
    """Manufacture the TPM if new, start swtpm and wait for its socket; its pid."""
    await stop_swtpm(paths)
    for path in (paths.tpm_socket, paths.tpm_pid):
        path.unlink(missing_ok=True)
    await _run(setup_argv(state, version), SETUP_TIMEOUT)
    await _run(swtpm_argv(paths, state, version), READY_TIMEOUT)
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        pid = swtpm_pid(paths)
        if pid is not None and paths.tpm_socket.exists():
            return pid
        if time.monotonic() > deadline:
            await stop_swtpm(paths)
            raise GuestError("start failed: swtpm did not come up")
        await asyncio.sleep(0.05)


async def stop_swtpm(paths: GuestPaths, timeout: float = 5.0) -> None:
    """Stop this guest's swtpm (SIGTERM, then SIGKILL) and remove its files."""
    pid = swtpm_pid(paths)
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while is_alive(pid) and time.monotonic() < deadline:  # noqa: ASYNC110 (a pid)
            await asyncio.sleep(0.05)
        if is_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    for path in (paths.tpm_socket, paths.tpm_pid):
        path.unlink(missing_ok=True)
