"""The node's backup job scheduler (PVE's pvescheduler, for vzdump jobs) and the crash
cleanup of backup staging directories.

Owns this node's job states (`<state_dir>/jobs/vzdump-<id>.json`, PVE's
`/var/lib/pve-manager/jobs/`): every node runs the scheduler; at each round it reads the
jobs (`binome.backup.jobs`, a local read: a node without quorum still runs its backups
into local storage), keeps its state per job (`binome.backup.schedule`, pure: when a job
is due) and, for each due job, starts one `vzdump` task for the job's guests this node
holds (so a guest is backed up by its current node, and by no other). A job result is a
`backup-result` notification (type `vzdump`, info on success, error on failure). The
state survives a daemon restart; `repeat-missed` decides whether a missed event runs at
start. Nothing here reads the clock but `clock`, so a unit test drives it. At its first
round on a real node, the staging directories of backups interrupted by a crash are
removed (`remove_stale_staging`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import shlex
import time
from collections.abc import Awaitable, Callable
from datetime import tzinfo
from pathlib import Path
from typing import TYPE_CHECKING, Any

from binome.backup import schedule
from binome.backup.dumpstore import DumpStore
from binome.backup.jobs import BackupJobs, parse_vmid_list
from binome.backup.prune import PruneError, parse_prune_backups
from binome.backup.schedule import JobState
from binome.durable import write_json
from binome.loops import Backoff, run_periodic
from binome.store.client import StoreUnavailable
from binome.tasks.manager import Task

if TYPE_CHECKING:
    from binome.daemon.graph import NodeGraph

log = logging.getLogger("binome.backup.scheduler")

TICK_SECONDS = 5.0
JOB_USER = "root@pam"      # PVE runs scheduled jobs as root@pam

#: starts one job on this node; returns the task's UPID, or None if there was nothing to
#: do here; calls the callback with the result message when the task ends
JobRunner = Callable[[str, dict[str, Any], Callable[[str], None]], Awaitable[str | None]]


class JobStateFiles:
    """One JSON file per job: `<dir>/vzdump-<id>.json`."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory

    def _path(self, job_id: str) -> Path:
        return self.dir / f"vzdump-{job_id}.json"

    def read(self, job_id: str) -> JobState | None:
        try:
            return JobState.from_json(json.loads(self._path(job_id).read_text()))
        except FileNotFoundError:
            return None
        except (ValueError, TypeError) as exc:
            log.warning("job state of %s unreadable (%s): starting it afresh", job_id, exc)
            return None

    def write(self, job_id: str, state: JobState) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        write_json(self._path(job_id), state.to_json())

    def job_ids(self) -> list[str]:
        if not self.dir.is_dir():
            return []
        return sorted(p.name[len("vzdump-"):-len(".json")]
                      for p in self.dir.glob("vzdump-*.json"))

    def remove(self, job_id: str) -> None:
        self._path(job_id).unlink(missing_ok=True)


class BackupScheduler:
    """Decides, each round, which jobs start on this node (see the module docstring)."""

    def __init__(self, node: str, jobs: Callable[[], Awaitable[dict[str, dict[str, Any]]]],
                 states: JobStateFiles, run_job: JobRunner, *,
                 clock: Callable[[], float] = time.time, tz: tzinfo | None = None) -> None:
        self.node = node
        self._jobs = jobs
        self.states = states
        self._run_job = run_job
        self._clock = clock
        self._tz = tz
        self._first_round = True
        self._running: set[str] = set()

    async def tick(self) -> list[str]:
        """One round; returns the ids of the jobs started."""
        now = self._clock()
        jobs = await self._jobs()
        for gone in set(self.states.job_ids()) - set(jobs):
            self.states.remove(gone)
        first, self._first_round = self._first_round, False
        started: list[str] = []
        for job_id in sorted(jobs):
            job = jobs[job_id]
            if job.get("node") not in (None, "", self.node):
                continue
            old = self.states.read(job_id)
            state = schedule.synchronize(old, job, now)
            if first:
                state = schedule.on_daemon_start(state, job, now, job_id in self._running)
            if state != old:
                self.states.write(job_id, state)
            if not schedule.is_due(job, state, now, self._tz):
                continue
            state = schedule.starting(state, now)
            self.states.write(job_id, state)
            self._running.add(job_id)
            try:
                upid = await self._run_job(job_id, job, self._finisher(job_id))
            except Exception as exc:
                self._running.discard(job_id)
                log.error("backup job %s could not start: %s", job_id, exc)
                self.states.write(job_id, schedule.stopped(state, str(exc)))
                continue
            if upid is None:
                self._running.discard(job_id)
                self.states.write(job_id, schedule.stopped(state, "OK"))
            else:
                log.info("backup job %s started: %s", job_id, upid)
                self.states.write(job_id, schedule.started(state, upid))
            started.append(job_id)
        return started

    def _finisher(self, job_id: str) -> Callable[[str], None]:
        def finished(msg: str) -> None:
            self._running.discard(job_id)
            state = self.states.read(job_id)
            if state is not None and state.state in ("starting", "started"):
                self.states.write(job_id, schedule.stopped(state, msg))
        return finished

    async def run(self) -> None:
        await run_periodic("backup job scheduler", self.tick_quietly, TICK_SECONDS,
                           logger=log, quiet=(StoreUnavailable,),
                           backoff=Backoff(TICK_SECONDS, 60.0))

    async def tick_quietly(self) -> None:
        await self.tick()


# ------------------------------------------------------------------ on a real node

def vzdump_command_line(job: dict[str, Any], node: str) -> str:
    """The job as PVE's vzdump command line (first line of the task log)."""
    words = []
    for key in ("all", "exclude", "pool", "storage", "mode", "compress", "notes-template",
                "protected", "prune-backups", "bwlimit", "mailto"):
        value = job.get(key)
        if value in (None, "", 0, "0"):
            continue
        words.append(f"--{key} {shlex.quote(str(value))}")
    words.append(f"--node {node}")
    if job.get("vmid"):
        words.append(str(job["vmid"]).replace(",", " "))
    return " ".join(words)


class NodeJobRunner:
    """Starts a job's vzdump task on this node (the guests it holds) and reports it."""

    def __init__(self, graph: NodeGraph) -> None:
        self.graph = graph

    async def guests_here(self, job: dict[str, Any]) -> list[int]:
        guests = self.graph.guests
        if guests is None:
            return []
        here = [vm.vmid for vm in await guests.configs.list(self.graph.config.name)]
        exclude = set(parse_vmid_list(str(job.get("exclude") or "")))
        if job.get("vmid"):
            wanted = parse_vmid_list(str(job["vmid"]))
            return [v for v in wanted if v in here]
        if job.get("pool"):
            pools = (await self.graph.access.config()).pools
            pool = pools.get(str(job["pool"]))
            members = set(pool.vms) if pool is not None else set()
            return [v for v in here if v in members and v not in exclude]
        return [v for v in here if v not in exclude]

    async def storage_for(self, job: dict[str, Any]) -> str:
        if job.get("storage"):
            return str(job["storage"])
        for cfg in await self.graph.storages.configs():
            if "backup" in cfg.content and cfg.available_on(self.graph.config.name) \
                    and not cfg.disable:
                return cfg.storage
        raise RuntimeError("no storage with content 'backup' on this node")

    async def __call__(self, job_id: str, job: dict[str, Any],
                      finished: Callable[[str], None]) -> str | None:
        from binome.guest.guests import VzdumpOptions

        guests = self.graph.guests
        vmids = await self.guests_here(job)
        if guests is None or not vmids:
            return None
        storage = await self.storage_for(job)
        prune = None
        if job.get("prune-backups") and job.get("remove", 1):
            try:
                prune = parse_prune_backups(str(job["prune-backups"]))
            except PruneError as exc:
                raise RuntimeError(str(exc)) from None
            if prune.keeps_all():
                prune = None
        options = VzdumpOptions(
            storage=storage, mode=str(job.get("mode") or "snapshot"),
            notes_template=job.get("notes-template"), protected=bool(job.get("protected")),
            prune=prune, bwlimit_kib=int(job.get("bwlimit") or 0),
            command_line=vzdump_command_line({**job, "storage": storage},
                                             self.graph.config.name))
        notify = self.graph.notifications.emit

        async def body(task: Task) -> None:
            began = time.monotonic()
            message = "OK"
            try:
                await guests.backup_job(task, vmids, options)
            except BaseException as exc:     # a cancelled task (shutdown) failed too
                message = str(exc) or type(exc).__name__
                raise
            finally:
                failed = _failed_vmids(task.log_path)
                details = "\n".join(
                    f"VM {v}: {'failed' if v in failed else 'ok'}" for v in vmids)
                with contextlib.suppress(Exception):
                    notify("backup-result", job_id=job_id,
                           status="ok" if message == "OK" else "failed",
                           ok_count=len([v for v in vmids if v not in failed]),
                           failed_count=max(len(failed), 0 if message == "OK" else 1),
                           total_time=int(time.monotonic() - began),
                           total_size=_stored_bytes(task.log_path), details=details)
                finished(message)

        task_id = str(vmids[0]) if len(vmids) == 1 else ""
        return self.graph.tasks.start("vzdump", task_id, JOB_USER, body)


_FAILED_RE = re.compile(r"ERROR: Backup of VM (\d+) failed")


def _failed_vmids(log_path: Path) -> set[int]:
    """The guests the vzdump log says failed (its `ERROR: Backup of VM N failed` lines)."""
    try:
        return {int(m.group(1)) for m in _FAILED_RE.finditer(log_path.read_text())}
    except OSError:
        return set()


def _stored_bytes(log_path: Path) -> str:
    try:
        sizes = re.findall(r"INFO: archive file size: (.+)", log_path.read_text())
    except OSError:
        return "?"
    return ", ".join(sizes) if sizes else "0"


# ------------------------------------------------------------------ crash cleanup

async def remove_stale_staging(graph: NodeGraph, started_before: float) -> list[str]:
    """Remove the `dump/.tmp-*` staging directories of backups that started before
    `started_before` (this daemon's start: no backup of this process wrote them, so
    they were interrupted by a crash or a restart) on this node's local (non-shared)
    backup storages, saying so. A shared storage may hold another node's running
    backup: its staging directories are left (logged). Raises if the storages cannot be
    read (the caller tries again later)."""
    removed: list[str] = []
    node = graph.config.name
    for cfg in await graph.storages.configs():
        if "backup" not in cfg.content or not cfg.available_on(node) or cfg.disable:
            continue
        try:
            store = (await graph.storages.get(cfg.storage)).backup_store()
        except Exception:
            continue
        if not isinstance(store, DumpStore):
            continue   # a backup server aborts and drops its own unfinished backups
        for staging in store.staging_dirs():
            began = store.staging_started(staging)
            if began is not None and began >= started_before:
                continue          # a backup of this daemon: running
            if cfg.shared:
                log.info("backup storage %s is shared: staging directory %s left (another "
                         "node may be writing it)", cfg.storage, staging.name)
                continue
            store.remove_staging(staging)
            removed.append(str(staging))
            log.warning("removed stale backup staging directory %s (a backup interrupted "
                        "by a crash or restart; it was never listed)", staging)
    return removed


def node_scheduler(graph: NodeGraph) -> BackupScheduler:
    """The scheduler of a real node: jobs from etcd (local read), states in state_dir."""

    daemon_started = time.time()
    cleaned = False

    async def jobs() -> dict[str, dict[str, Any]]:
        nonlocal cleaned
        store = graph.cluster.store
        if store is None:
            return {}
        if not cleaned:      # once, when the storages can be read (quorum may come late)
            await remove_stale_staging(graph, daemon_started)
            cleaned = True
        return await BackupJobs(store).records(serializable=True)

    return BackupScheduler(graph.config.name, jobs,
                           JobStateFiles(graph.config.state_dir / "jobs"),
                           NodeJobRunner(graph))
