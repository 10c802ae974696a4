"""QEMU's side of guest snapshots: the QMP commands that snapshot a running guest's disks.

Disks are named by their ``-drive`` id (``drive-virtio0``). What QEMU 7.2 offers
for qcow2 internal snapshots, and what each is used for:
- disks only: ``blockdev-snapshot-internal-sync`` in one ``transaction`` (every
  disk at the same instant) and ``blockdev-snapshot-delete-internal-sync``;
- disks and RAM: the ``snapshot-save`` job (the guest pauses while its RAM is
  written into one of the disks' images, `vmstate`, then runs on) and the
  ``snapshot-load`` job (on a guest started paused).
Which snapshot to take, and when, is the snapshot operations' business
(`guest.snapshots`); this module only speaks QMP.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from binome.guest.errors import GuestError

# (command, arguments, timeout) -> QEMU's answer: the runtime's QMP channel of one guest
Qmp = Callable[[str, "dict[str, Any] | None", float], Awaitable[Any]]

JOB_POLL = 0.1
COMMAND_TIMEOUT = 30.0


def drive_id(disk_key: str) -> str:
    """The ``-drive`` id QEMU knows a disk by (see `argv`)."""
    return f"drive-{disk_key}"


async def _nodes(qmp: Qmp, disk_keys: list[str]) -> list[str]:
    """The format node names of the disks (what the snapshot jobs take)."""
    by_drive = {b["device"]: b["inserted"]["node-name"]
                for b in await qmp("query-block", None, COMMAND_TIMEOUT) if b.get("inserted")}
    missing = [k for k in disk_keys if drive_id(k) not in by_drive]
    if missing:
        raise GuestError(f"QEMU has no block device for {', '.join(missing)}")
    return [by_drive[drive_id(k)] for k in disk_keys]


async def _run_job(qmp: Qmp, command: str, args: dict[str, Any], timeout: float) -> None:
    """Start a QMP job and wait for its end; GuestError with QEMU's reason on failure."""
    job_id = f"binome-{command}-{uuid.uuid4().hex[:8]}"
    await qmp(command, {"job-id": job_id, **args}, COMMAND_TIMEOUT)
    deadline = time.monotonic() + timeout
    while True:
        jobs = {j["id"]: j for j in await qmp("query-jobs", None, COMMAND_TIMEOUT)}
        job = jobs.get(job_id)
        if job is None:
            raise GuestError(f"{command}: job {job_id} vanished")
        if job["status"] == "concluded":
            await qmp("job-dismiss", {"id": job_id}, COMMAND_TIMEOUT)
            if job.get("error"):
                raise GuestError(f"{command} failed - {job['error']}")
            return
        if time.monotonic() > deadline:
            raise GuestError(f"{command}: not done after {timeout:.0f}s")
        await asyncio.sleep(JOB_POLL)


async def snapshot_disks(qmp: Qmp, name: str, disk_keys: list[str]) -> None:
    """Snapshot `name` of every disk at one instant (the guest runs on)."""
    actions = [{"type": "blockdev-snapshot-internal-sync",
                "data": {"device": drive_id(k), "name": name}} for k in disk_keys]
    await qmp("transaction", {"actions": actions}, COMMAND_TIMEOUT)


async def delete_disk_snapshot(qmp: Qmp, name: str, disk_key: str) -> None:
    await qmp("blockdev-snapshot-delete-internal-sync",
              {"device": drive_id(disk_key), "name": name}, COMMAND_TIMEOUT)


async def save_with_state(qmp: Qmp, name: str, disk_keys: list[str], state_disk: str,
                          timeout: float) -> None:
    """Snapshot `name` of the disks and of the RAM, written into `state_disk`'s image."""
    nodes = await _nodes(qmp, disk_keys)
    state_node = nodes[disk_keys.index(state_disk)]
    await _run_job(qmp, "snapshot-save",
                   {"tag": name, "vmstate": state_node, "devices": nodes}, timeout)


async def load_with_state(qmp: Qmp, name: str, disk_keys: list[str], state_disk: str,
                          timeout: float) -> None:
    """Load snapshot `name` (disks and RAM) into a guest started paused; it stays
    paused (the caller resumes it)."""
    nodes = await _nodes(qmp, disk_keys)
    state_node = nodes[disk_keys.index(state_disk)]
    await _run_job(qmp, "snapshot-load",
                   {"tag": name, "vmstate": state_node, "devices": nodes}, timeout)
