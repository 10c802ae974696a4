"""QEMU's side of a running guest's disk move: the QMP conversation of a mirror job
(as qemu-server's PVE::QemuServer::BlockJob::blockdev_mirror). It owns nothing: the
runtime calls it with the guest's QMP channel; which volume, when the config
switches and what happens to the old volume is the guest service's business
(`disk_move`).

The job, and why:
- the target volume is opened by ``blockdev-add`` (node ``mv-<disk>-<n>``: a
  file, or a volume engine's NBD export) with the drive's cache mode;
- ``blockdev-mirror`` (job ``drive-<disk>``, PVE's drive-mirror name, so the
  progress lines read like PVE's) with ``sync=full``, ``auto-dismiss=false`` (a
  failed job stays to tell its error) and ``copy-mode=write-blocking``: once the
  job is ``ready`` every guest write is acknowledged only after it reached both
  volumes, so at any moment after that both hold every acknowledged write. The
  caller switches the config while the job is ready: the volume the config names
  is then complete whether or not QEMU ever completes the switch;
- ``job-complete`` switches the drive to the target (``replaces`` the node the
  drive had); the old node goes with its last reference, or, when an earlier move
  added it (``mv-...``), by ``blockdev-del``, which closes its file or NBD export;
- a cancel before the switch (``block-job-cancel``) keeps the drive where it was
  and ``blockdev-del`` closes the target;
- a live migration's local disks (`release`): the target is another node's NBD
  export (``nbd://host:port/export``, its incoming QEMU's drive); once the guest's
  state is sent the ready job is cancelled without force, which ends it after its
  last synchronization, the drive never switching; the jobs such a migration left
  when its daemon died are ended by the restarted daemon's settling
  (`end_migration_mirrors`).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from binome.guest.errors import GuestError
from binome.guest.qmp import QmpChannel
from binome.guest.spec import is_nbd_uri
from binome.units import render_bytes

POLL = 0.5            # seconds between query-block-jobs
PROGRESS_EVERY = 1.0  # a progress line at most this often (PVE prints one a second)
FINISH_TIMEOUT = 60.0  # job-complete / cancel until the job has concluded
NODE_PREFIX = "mv-"

_serial = itertools.count()


@dataclass
class MirrorJob:
    """One mirror job of a running guest's disk `key`."""

    key: str
    job_id: str
    source_node: str      # the node the drive had: what job-complete replaces
    target_node: str      # the blockdev-add'ed target


def render_duration(seconds: float) -> str:
    """PVE's render_duration: ``0s``, ``5s``, ``1m 5s``, ``2h 0m 3s``."""
    rest = round(seconds)
    if rest <= 0:
        return "0s"
    parts: list[str] = []
    for size, unit in ((86400, "d"), (3600, "h"), (60, "m")):
        if rest >= size or parts:
            parts.append(f"{rest // size}{unit}")
            rest %= size
    parts.append(f"{rest}s")
    return " ".join(parts)


def progress_line(job_id: str, info: dict[str, Any], elapsed: float) -> str | None:
    """PVE's BlockJob::monitor line for one query-block-jobs entry (None without a
    length yet): ``drive-scsi0: transferred 1.0 GiB of 4.0 GiB (25.00%) in 3s``."""
    total = int(info.get("len") or 0)
    if not total:
        return None
    done = int(info.get("offset") or 0)
    line = (f"{job_id}: transferred {render_bytes(done)} of {render_bytes(total)} "
            f"({done * 100 / total:.2f}%) in {render_duration(elapsed)}")
    if info.get("ready") or info.get("status") == "ready":
        line += ", still busy" if info.get("busy") else ", ready"
    return line


def cache_options(cache: str) -> dict[str, bool]:
    """A -drive cache mode as blockdev cache options (QEMU's own mapping); the write
    cache (writethrough) belongs to the drive, which keeps it."""
    return {"direct": cache in ("none", "directsync"), "no-flush": cache == "unsafe"}


def target_blockdev(node_name: str, source: str, fmt: str | None, cache: str
                    ) -> dict[str, Any]:
    """blockdev-add arguments opening a volume (a file, or an NBD URI
    ``nbd+unix:///EXPORT?socket=PATH``) as node `node_name`."""
    caching = cache_options(cache)
    if is_nbd_uri(source):
        url = urlsplit(source)
        socket = (parse_qs(url.query).get("socket") or [""])[0]
        file: dict[str, Any]
        if url.scheme == "nbd" and url.hostname and url.port:
            # another node's NBD export (a live migration's local disks)
            file = {"driver": "nbd", "export": url.path.lstrip("/"),
                    "server": {"type": "inet", "host": url.hostname, "port": str(url.port)}}
        elif url.scheme == "nbd+unix" and socket:
            file = {"driver": "nbd", "server": {"type": "unix", "path": socket},
                    "export": url.path.lstrip("/")}
        else:
            raise GuestError(f"unsupported NBD source '{source}' for a mirror target")
        fmt = fmt or "raw"
    else:
        if fmt is None:
            raise GuestError(f"mirror target '{source}': a file needs an explicit format")
        file = {"driver": "file", "filename": source, "cache": dict(caching)}
    return {"driver": fmt, "node-name": node_name, "file": file, "cache": caching}


async def _jobs(qmp: QmpChannel) -> dict[str, dict[str, Any]]:
    return {j.get("device"): j for j in await qmp.command("query-block-jobs")}


async def _dismiss_failed(qmp: QmpChannel, job: MirrorJob, info: dict[str, Any]) -> str:
    """A concluded job: dismissed, its target closed; its error (or '')."""
    try:
        await qmp.command("job-dismiss", {"id": job.job_id})
    except GuestError:
        pass
    await detach(qmp, job.target_node)
    return str(info.get("error") or "")


async def detach(qmp: QmpChannel, node_name: str) -> None:
    """blockdev-del a node this module added; gone already is fine."""
    try:
        await qmp.command("blockdev-del", {"node-name": node_name})
    except GuestError as exc:
        text = str(exc).lower()
        if not any(gone in text for gone in ("not found", "cannot find", "failed to find")):
            raise


async def start(qmp: QmpChannel, key: str, source: str, fmt: str | None, cache: str, *,
                speed: int | None = None) -> MirrorJob:
    """Open the target and start the mirror job of drive `key` (see the module notes);
    GuestError, with the target closed again, if QEMU refuses."""
    device = f"drive-{key}"
    blocks = {b.get("device"): b for b in await qmp.command("query-block")}
    inserted = (blocks.get(device) or {}).get("inserted") or {}
    source_node = inserted.get("node-name")
    if not source_node:
        raise GuestError(f"drive {device} has no medium in the running guest")
    target = f"{NODE_PREFIX}{key}-{next(_serial)}-{int(time.time()) % 100000}"
    await qmp.command("blockdev-add", target_blockdev(target, source, fmt, cache))
    job = MirrorJob(key, device, source_node, target)
    args: dict[str, Any] = {"job-id": device, "device": device, "target": target,
                            "sync": "full", "replaces": source_node,
                            "auto-dismiss": False, "copy-mode": "write-blocking"}
    if speed:
        args["speed"] = int(speed)
    try:
        await qmp.command("blockdev-mirror", args)
    except GuestError:
        await detach(qmp, target)
        raise
    return job


async def wait_ready(qmp: QmpChannel, alive: Callable[[], bool], job: MirrorJob,
                     on_progress: Callable[[str], Any] | None = None,
                     poll: float = POLL) -> None:
    """Poll the job until it is ready (the target in sync), with PVE's progress lines;
    GuestError (the job dismissed, its target closed) if it fails or QEMU goes."""
    started = last = time.monotonic()
    said = None
    while True:
        if not alive():
            raise GuestError(f"{job.job_id}: the guest's QEMU exited during the mirror")
        info = (await _jobs(qmp)).get(job.job_id)
        if info is None:
            await detach(qmp, job.target_node)
            raise GuestError(f"{job.job_id}: 'mirror' has been cancelled")
        if info.get("status") == "concluded":
            error = await _dismiss_failed(qmp, job, info)
            raise GuestError(f"{job.job_id}: {error or 'mirror job ended early'}"
                             + (f" (io-status: {info['io-status']})"
                                if info.get("io-status") else ""))
        ready = info.get("status") == "ready" or bool(info.get("ready"))
        now = time.monotonic()
        line = progress_line(job.job_id, info, now - started)
        if on_progress is not None and line and line != said and \
                (ready or now - last >= PROGRESS_EVERY or said is None):
            on_progress(line)
            said, last = line, now
        if ready:
            return
        await asyncio.sleep(poll)


async def _until_gone_or_concluded(qmp: QmpChannel, job: MirrorJob, timeout: float
                                   ) -> dict[str, Any] | None:
    deadline = time.monotonic() + timeout
    while True:
        info = (await _jobs(qmp)).get(job.job_id)
        if info is None or info.get("status") == "concluded":
            return info
        if time.monotonic() > deadline:
            raise GuestError(f"{job.job_id}: block job did not finish within "
                             f"{timeout:.0f}s")
        await asyncio.sleep(0.1)


async def complete(qmp: QmpChannel, job: MirrorJob, timeout: float = FINISH_TIMEOUT) -> None:
    """job-complete: the drive switches to the target; returns once the job concluded
    without error (dismissed, the old node closed if it was ours). GuestError if QEMU
    refuses or the job failed: the drive may then still be on its old node."""
    await qmp.command("job-complete", {"id": job.job_id})
    info = await _dismissed(qmp, job, timeout)
    if info is not None:
        if info.get("error"):
            raise GuestError(f"{job.job_id}: {info['error']}")
    if job.source_node.startswith(NODE_PREFIX):
        # a previous move's target: monitor-owned, so only blockdev-del closes it
        await detach(qmp, job.source_node)


async def cancel(qmp: QmpChannel, job: MirrorJob, timeout: float = FINISH_TIMEOUT) -> None:
    """Cancel a job that has not switched (block-job-cancel, force: a ready job too):
    the drive stays on its node; the target is closed."""
    try:
        await qmp.command("block-job-cancel", {"device": job.job_id, "force": True})
    except GuestError:
        pass   # already concluded or gone: dismissed below
    await _dismissed(qmp, job, timeout)
    await detach(qmp, job.target_node)


async def release(qmp: QmpChannel, job: MirrorJob, timeout: float = FINISH_TIMEOUT
                  ) -> None:
    """End a ready job without switching the drive, after its last synchronization
    (block-job-cancel without force, as qemu-server ends a live migration's mirror of
    local disks once the state is sent): the target holds every write; closed after."""
    await qmp.command("block-job-cancel", {"device": job.job_id})
    info = await _dismissed(qmp, job, timeout)
    await detach(qmp, job.target_node)
    if info is not None and info.get("error"):
        raise GuestError(f"{job.job_id}: {info['error']}")


async def _dismissed(qmp: QmpChannel, job: MirrorJob, timeout: float) -> dict | None:
    """Wait for the job to conclude and dismiss it; its last info (None: already gone)."""
    info = await _until_gone_or_concluded(qmp, job, timeout)
    if info is not None:
        try:
            await qmp.command("job-dismiss", {"id": job.job_id})
        except GuestError:
            pass   # dismissed meanwhile (auto-dismiss, or another caller)
    return info


async def end_migration_mirrors(qmp: QmpChannel, timeout: float = FINISH_TIMEOUT
                                ) -> list[str]:
    """After a migration with local disks whose task died with its daemon: cancel the
    mirror jobs it left (force: the drives stay where they are) and close their
    targets, the other node's NBD exports (``mv-`` nodes over ``nbd://host:port``
    that no drive uses); the ids of the jobs ended. A later mirror can then use the
    drives' job ids again."""
    ended = []
    for job_id, info in (await _jobs(qmp)).items():
        if info.get("type") != "mirror" or not str(job_id).startswith("drive-"):
            continue
        job = MirrorJob(str(job_id)[len("drive-"):], str(job_id), "", "")
        try:
            await qmp.command("block-job-cancel", {"device": job.job_id, "force": True})
        except GuestError:
            pass   # concluded already (its target gone): dismissed below
        await _dismissed(qmp, job, timeout)
        ended.append(job.job_id)
    inserted = {(b.get("inserted") or {}).get("node-name")
                for b in await qmp.command("query-block")}
    for node in await qmp.command("query-named-block-nodes"):
        name = str(node.get("node-name", ""))
        if name.startswith(NODE_PREFIX) and name not in inserted \
                and str(node.get("file", "")).startswith("nbd://"):
            await detach(qmp, name)
    return ended


async def owned_nodes(qmp: QmpChannel, key: str) -> list[str]:
    """The nodes earlier moves added for drive `key` (``mv-<key>-...``): what an unplug
    must blockdev-del after the device is gone."""
    prefix = f"{NODE_PREFIX}{key}-"
    return [n["node-name"] for n in await qmp.command("query-named-block-nodes")
            if str(n.get("node-name", "")).startswith(prefix)]
