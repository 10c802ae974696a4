"""Handlers: the administrator's commands the engine runs on events (DRBD's `handlers` section).

DRBD's kernel calls `drbdadm <handler> <minor>`, which runs the command the
resource configures for that handler with `DRBD_*` environment variables.
Here a volume's config holds `handlers: {"split-brain": "command ...", ...}`
and the engine runs the command itself with `/bin/sh -c`, in a new session,
with a small clean environment (never the engine's own, never the
replication secret):

    DRBD_RESOURCE       the volume name (a volume is its own resource here)
    DRBD_VOLUME         0 (one volume per resource)
    BINOME_VOLUME       the volume name again (volumes have no minor numbers:
                        DRBD_MINOR is not set)
    BINOME_HANDLER      the handler's name (DRBD passes it as drbdadm's argument)
    DRBD_BACKING_DEV    the backing file or block device
    DRBD_META_DEV       the metadata file
    DRBD_CONF           the volume's volume.json (0600, holds the secret: a
                        handler running as root may read it, like drbd.conf)
    DRBD_MY_NODE, DRBD_MY_ADDRESS, DRBD_MY_AF             this node, on the replication net
    DRBD_PEER_NODE, DRBD_PEERS, DRBD_PEER_ADDRESS, DRBD_PEER_AF   the peer
    PATH, LANG          fixed values

Every run is logged DRBD-style ("helper command: split-brain r0 ..." and "...
exit code N (0xN00)"), with the command's output (stdout and stderr, at most
64 KiB kept) line by line. A command still running after the volume's
`handler_timeout` is killed (SIGKILL to its process group) and counts as exit
code -9. An unconfigured handler is not an error: it "succeeds" (exit 0), as
`drbdadm` does when the resource has no such handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal

from binome.storage.replica.core.handler_rules import (
    DEFAULT_TIMEOUT,
    HANDLERS,
    MAX_OUTPUT,
    HandlerResult,
    handler_env,
    validate,
)

__all__ = ["DEFAULT_TIMEOUT", "HANDLERS", "HandlerResult", "handler_env", "run", "validate"]

log = logging.getLogger("binome.replica.handlers")


async def run(name: str, command: str | None, env: dict[str, str], *, volume: str,
              timeout: float = DEFAULT_TIMEOUT) -> HandlerResult:
    """Run one handler command and log it; never raises for the command's failures."""
    if not command:
        log.info("%s: helper command: %s (no handler configured)", volume, name)
        return HandlerResult(name, False, 0)
    log.info("%s: helper command: %s %s", volume, name, volume)
    try:
        proc = await asyncio.create_subprocess_exec(
            "/bin/sh", "-c", command, env=env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            start_new_session=True, close_fds=True)
    except OSError as e:
        log.error("%s: helper command: %s %s could not start: %s", volume, name, volume, e)
        return HandlerResult(name, True, 127, str(e))
    assert proc.stdout is not None
    chunks: list[bytes] = []
    kept = 0

    async def collect() -> None:
        nonlocal kept
        assert proc.stdout is not None
        while chunk := await proc.stdout.read(65536):
            if kept < MAX_OUTPUT:
                chunks.append(chunk[:MAX_OUTPUT - kept])
                kept += len(chunks[-1])
        await proc.wait()

    timed_out = False
    try:
        await asyncio.wait_for(collect(), timeout)
    except TimeoutError:
        timed_out = True
        # The whole group: a shell script's children must not outlive it.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
    finally:
        if proc.returncode is None:     # cancelled (volume going down): do not leak it
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                await asyncio.shield(proc.wait())
    output = b"".join(chunks).decode(errors="replace")
    for line in output.splitlines():
        log.info("%s: helper %s: %s", volume, name, line)
    code = proc.returncode if proc.returncode is not None else -9
    if timed_out:
        log.error("%s: helper command: %s %s killed after %.0f s", volume, name, volume, timeout)
        code = -9
    # DRBD prints the wait status too ("exit code 4 (0x400)").
    log.log(logging.INFO if code == 0 else logging.WARNING,
            "%s: helper command: %s %s exit code %d (0x%x)", volume, name, volume, code,
            (code & 0xFF) << 8 if code >= 0 else -code)
    return HandlerResult(name, True, code, output, timed_out)
