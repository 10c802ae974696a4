"""QEMU's side of a live migration, over a guest's QMP channel.

Owns the QMP conversation of a migration and its polling: on the target,
listening for the state stream (`listen_incoming`) and waiting until it is
complete (`wait_incoming`); on the source, sending it (`migrate_out`:
capabilities, parameters, ``migrate``, then ``query-migrate`` until it ends)
and cancelling it so the source runs on (`cancel_outgoing`); and what a
restarted daemon reads of one its previous life left (`migration_state`).
`runtime.QemuRuntime` exposes these per vmid; who owns the config, the
volumes and the switch-over order is `migration`'s business.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from binome.guest.errors import GuestError
from binome.guest.qmp import QmpChannel

MIGRATE_POLL = 0.05         # query-migrate while a migration runs (cancel)
# the target's wait for the end of an incoming migration, at the switch-over while the
# guest is paused on both sides: every poll period is downtime (a query-status is cheap)
INCOMING_POLL = 0.01
# the source waits for QEMU's MIGRATION event, polling at least this often (progress,
# timeout, a missed event)
MIGRATE_EVENT_POLL = 0.25
# QEMU's downtime-limit when the VM sets no migrate_downtime. PVE's default is 0.1 s;
# measured side by side (bench/migration.py, 6 runs each, TCG lab) 0.1 s gave a client
# gap of 146 ms median, 0.03 s 92 ms, 0.01 s 86 ms: most of QEMU's stop-and-copy is
# on the gap. 30 ms still lets a busy guest converge on a 1 Gb/s link (~3.7 MB in
# the last round; auto-converge throttles a guest that dirties faster).
MIGRATE_DOWNTIME_MS = 30
MIGRATE_MAX_BANDWIDTH = 1 << 30   # bytes/s; QEMU 7.2 defaults to 128 MiB/s, below 10 GbE
MIGRATE_TIMEOUT = 600.0

# QEMU's migration states in which a cancelled migration has not ended yet
_STILL_MIGRATING = ("active", "setup", "device", "pre-switchover", "cancelling")


async def export_drives(qmp: QmpChannel, host: str, port: int, keys: list[str]
                        ) -> dict[str, str]:
    """On the target of a live migration with local disks: QEMU's own NBD server on
    ``host:port`` exporting each drive `key` writable (``block-export-add``, which
    activates the incoming guest's image for it), as qemu-server's ``nbd-server-start``
    + ``block-export-add``; {key: nbd://host:port/drive-KEY}. GuestError if QEMU
    refuses (the caller stops this QEMU then)."""
    blocks = {b.get("device"): b for b in await qmp.command("query-block")}
    await qmp.command("nbd-server-start", {"addr": {"type": "inet", "data": {
        "host": host, "port": str(port)}}})
    uris = {}
    h = f"[{host}]" if ":" in host else host
    for key in keys:
        device = f"drive-{key}"
        node = ((blocks.get(device) or {}).get("inserted") or {}).get("node-name")
        if not node:
            raise GuestError(f"{device} has no medium in the incoming guest")
        await qmp.command("block-export-add", {"type": "nbd", "id": device,
                                               "node-name": node, "name": device,
                                               "writable": True})
        uris[key] = f"nbd://{h}:{port}/{device}"
    return uris


async def stop_exports(qmp: QmpChannel) -> None:
    """Stop the NBD server of `export_drives` (its exports with it)."""
    await qmp.command("nbd-server-stop")


async def listen_incoming(qmp: QmpChannel, host: str) -> str:
    """On the target: listen for the migration stream; returns ``tcp:HOST:PORT``.

    The guest must have been started with ``incoming=True``. Port 0 lets
    the kernel choose a free port (no range to configure, no race with
    another migration); QEMU reports it in ``query-migrate``. QEMU
    accepts exactly one connection, then closes the listening socket.
    """
    await qmp.command("migrate-set-capabilities", {"capabilities": [
        {"capability": "events", "state": True}]})
    # QEMU announces the guest's MACs (RARP, and a guest announce request) when the
    # incoming migration completes, first after `announce-initial` ms: 50 by default,
    # during which the switches still send the guest's traffic to the source, where it
    # is lost. At 0 the announce goes out at once, while the guest is still paused
    # here: what arrives meanwhile waits in the tap's queue and is read on resume.
    await qmp.command("migrate-set-parameters", {"announce-initial": 0})
    await qmp.command("migrate-incoming", {"uri": f"tcp:{host}:0"})
    info = await qmp.command("query-migrate")
    for addr in info.get("socket-address") or []:
        if addr.get("type") == "inet" and addr.get("port"):
            return f"tcp:{host}:{addr['port']}"
    raise GuestError(f"VM {qmp.vmid}: incoming migration did not report its port ({info})")


async def migrate_out(
    qmp: QmpChannel, alive: Callable[[], bool], uri: str, *,
    downtime_ms: int = MIGRATE_DOWNTIME_MS, max_bandwidth: int = MIGRATE_MAX_BANDWIDTH,
    timeout: float = MIGRATE_TIMEOUT,
    on_progress: Callable[[dict[str, Any]], Any] | None = None,
) -> dict[str, Any]:
    """On the source: send the guest's state to ``uri``; the final ``query-migrate``.
    `alive()`: whether the source QEMU still runs.

    Capabilities: ``auto-converge`` (QEMU throttles the vcpus when the
    guest dirties memory faster than the link carries it, so a busy guest
    still converges instead of running until the timeout) and ``events``.
    No ``xbzrle``/compression: they trade CPU for bandwidth, and CPU is what
    a TCG guest on a shared host lacks; no postcopy: a failure after the
    switch would lose the guest, precopy keeps the source intact until the
    end. ``downtime-limit`` bounds the stop-and-copy phase (binome's default 30 ms,
    PVE's migrate_downtime 0.1 s). On success the source is paused
    (``postmigrate``): the caller decides when it quits. On failure,
    timeout or cancellation the migration is cancelled and the source goes
    on running; GuestError says why.
    """
    vmid = qmp.vmid
    await qmp.command("migrate-set-capabilities", {"capabilities": [
        {"capability": "auto-converge", "state": True},
        {"capability": "events", "state": True}]})
    await qmp.command("migrate-set-parameters", {
        "downtime-limit": int(downtime_ms), "max-bandwidth": int(max_bandwidth)})
    qmp.migration_changed.clear()
    await qmp.command("migrate", {"uri": uri})
    deadline = time.monotonic() + timeout
    try:
        while True:
            info = await qmp.command("query-migrate", timeout=5.0)
            status = info.get("status")
            if status == "completed":
                return info
            if status in ("failed", "cancelled", None):
                why = info.get("error-desc") or f"status {status}"
                raise GuestError(f"VM {vmid}: migration {status or 'vanished'}: {why}")
            if on_progress is not None:
                on_progress(info)
            if time.monotonic() > deadline:
                raise GuestError(f"VM {vmid}: migration did not finish within "
                                 f"{timeout:.0f} s")
            if not alive():
                raise GuestError(f"VM {vmid}: QEMU exited during the migration")
            # the target sits paused from completion until we notice it: QEMU's
            # MIGRATION event ends the wait at once (no poll period in the downtime)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(qmp.migration_changed.wait(), MIGRATE_EVENT_POLL)
            qmp.migration_changed.clear()
    except BaseException:
        if alive():
            await asyncio.shield(cancel_outgoing(qmp, alive))
        raise


async def cancel_outgoing(qmp: QmpChannel, alive: Callable[[], bool]) -> None:
    """After a failed migration: the source must run on (cancel, then ``cont``)."""
    with contextlib.suppress(GuestError):
        await qmp.command("migrate_cancel")
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline and alive():
        try:
            status = (await qmp.command("query-migrate", timeout=3.0)).get("status")
        except GuestError:
            break
        if status not in _STILL_MIGRATING:
            break
        await asyncio.sleep(MIGRATE_POLL)
    # a migration that failed in its last phase leaves the source paused (postmigrate
    # or finish-migrate); a guest that was running must go on running
    if await qmp.runstate() in ("postmigrate", "finish-migrate", "paused"):
        with contextlib.suppress(GuestError):
            await qmp.command("cont")


async def wait_incoming(qmp: QmpChannel, alive: Callable[[], bool],
                        timeout: float = 30.0) -> str:
    """On the target: wait until the incoming state is complete; the runstate.

    The guest then sits ``paused`` (it was started with ``-S``) until
    resumed. GuestError if QEMU exits, fails the migration or is still
    receiving after ``timeout``.
    """
    vmid = qmp.vmid
    deadline = time.monotonic() + timeout
    while True:
        status = await qmp.runstate()
        if status is not None and status != "inmigrate":
            if status != "paused":
                raise GuestError(f"VM {vmid}: incoming migration ended in state {status}")
            info = await qmp.command("query-migrate", timeout=3.0)
            if info.get("status") not in (None, "completed"):
                raise GuestError(f"VM {vmid}: incoming migration {info.get('status')}")
            return status
        if not alive():
            raise GuestError(f"VM {vmid}: QEMU exited during the incoming migration")
        if time.monotonic() > deadline:
            raise GuestError(f"VM {vmid}: incoming migration not complete after "
                             f"{timeout:.0f} s")
        await asyncio.sleep(INCOMING_POLL)


async def migration_state(qmp: QmpChannel) -> tuple[str | None, str | None]:
    """(runstate, ``query-migrate`` status) of a running guest; None where QMP does
    not answer."""
    try:
        info = await qmp.command("query-migrate", timeout=3.0)
    except GuestError:
        info = {}
    return await qmp.runstate(), info.get("status")
