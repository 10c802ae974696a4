"""Task execution: every state-changing action runs as a task with a UPID and a log.

Logs stay on the node that ran the task (``<state>/tasks/``): one log file per
task plus an append-only index of start/end records, replayed at start-up. A
task that was running when the daemon died is closed as
``unexpected status`` on the next start, as in PVE.
"""

from __future__ import annotations

import asyncio
import builtins
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from binome import durable
from binome.errors import BinomeError
from binome.tasks.upid import Upid

log = logging.getLogger("binome.tasks")

MAX_TASKS_KEPT = 5000
#: PVE's active_workers ($MAX_FINISHED): a node's recent-task list, broadcast to the
#: cluster, holds every running task and finished ones up to this many entries in all.
RECENT_TASKS = 25


def process_start_ticks(pid: int | None = None) -> int:
    """Start time of a process in clock ticks since boot (field 22 of /proc/PID/stat)."""
    stat = Path(f"/proc/{pid or os.getpid()}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[19])


class TaskFailed(BinomeError):
    """Raised inside a task to end it with `TASK ERROR: <message>`."""


@dataclass
class TaskRecord:
    upid: Upid
    status: str = "running"          # running | stopped
    exitstatus: str | None = None    # OK | WARNINGS: n | error text
    endtime: int | None = None

    def to_status(self) -> dict[str, Any]:
        data = self.upid.to_dict()
        data["status"] = self.status
        if self.exitstatus is not None:
            data["exitstatus"] = self.exitstatus
        return data

    def to_list_entry(self) -> dict[str, Any]:
        data = self.upid.to_dict()
        if self.status == "running":
            data["status"] = "RUNNING"
        else:
            data["status"] = self.exitstatus
            data["endtime"] = self.endtime
        return data


@dataclass
class Task:
    """Handle given to a running task's body."""

    record: TaskRecord
    log_path: Path
    warnings: int = 0
    _file: Any = field(default=None, repr=False)

    @property
    def upid(self) -> str:
        return str(self.record.upid)

    @property
    def user(self) -> str:
        return self.record.upid.user

    def log(self, message: str) -> None:
        for line in str(message).splitlines() or [""]:
            self._file.write(line + "\n")
        self._file.flush()

    def warn(self, message: str) -> None:
        self.warnings += 1
        self.log(f"WARN: {message}")


TaskBody = Callable[[Task], Awaitable[Any]]


class TaskManager:
    def __init__(self, node: str, tasks_dir: Path) -> None:
        self.node = node
        self.dir = tasks_dir
        self.log_dir = tasks_dir / "log"
        self.index_path = tasks_dir / "index.jsonl"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.records: dict[str, TaskRecord] = {}
        self._running: dict[str, asyncio.Task] = {}
        self._serial = 0
        self._pstart = process_start_ticks()
        self.listeners: list[Callable[[TaskRecord], None]] = []
        self._load()

    def _load(self) -> None:
        if not self.index_path.exists():
            return
        interrupted = []
        text = self.index_path.read_text()
        if text and not text.endswith("\n"):
            # a record torn by a crash: terminate it so the next append starts a new line
            with open(self.index_path, "a") as f:
                f.write("\n")
        for line in text.splitlines():
            try:
                rec = json.loads(line)
                upid = Upid.parse(rec["upid"])
                event = rec["event"]
                if event == "end":
                    exitstatus, endtime = str(rec["exitstatus"]), int(rec["endtime"])
            except (ValueError, KeyError, TypeError):
                continue
            key = str(upid)
            if event == "start":
                self.records[key] = TaskRecord(upid)
            elif event == "end" and key in self.records:
                r = self.records[key]
                r.status, r.exitstatus, r.endtime = "stopped", exitstatus, endtime
            if upid.node == self.node:
                self._serial = max(self._serial, upid.pid)
        for key, r in self.records.items():
            if r.status == "running":
                interrupted.append(key)
        for key in interrupted:
            self._finish(self.records[key], "unexpected status", append_log=True)
        self._compact()

    def _compact(self) -> None:
        if len(self.records) <= MAX_TASKS_KEPT:
            return
        ordered = sorted(self.records.values(), key=lambda r: r.upid.starttime)
        for r in ordered[: len(ordered) - MAX_TASKS_KEPT]:
            self.records.pop(str(r.upid), None)
            self.log_path(r.upid).unlink(missing_ok=True)
        lines = []
        for r in self.records.values():
            lines.append(json.dumps({"event": "start", "upid": str(r.upid)}) + "\n")
            if r.status == "stopped":
                lines.append(json.dumps({"event": "end", "upid": str(r.upid),
                                         "exitstatus": r.exitstatus, "endtime": r.endtime}) + "\n")
        durable.write_text(self.index_path, "".join(lines))

    def _append_index(self, rec: dict) -> None:
        with open(self.index_path, "a") as f:
            f.write(json.dumps(rec) + "\n")

    def log_path(self, upid: Upid) -> Path:
        return self.log_dir / f"{upid.starttime:08X}-{upid.pid:08X}.log"

    def new_upid(self, type_: str, id_: str, user: str) -> Upid:
        self._serial += 1
        return Upid(self.node, self._serial, self._pstart, int(time.time()), type_, id_, user)

    def start(self, type_: str, id_: str, user: str, body: TaskBody) -> str:
        """Start a task; returns its UPID string at once."""
        upid = self.new_upid(type_, str(id_), user)
        record = TaskRecord(upid)
        key = str(upid)
        self.records[key] = record
        self._append_index({"event": "start", "upid": key})
        path = self.log_path(upid)
        task = Task(record, path, _file=open(path, "a"))
        self._running[key] = asyncio.create_task(self._run(task, body), name=key)
        log.info("task started upid=%s", key)
        self._notify(record)
        return key

    async def _run(self, task: Task, body: TaskBody) -> None:
        try:
            await body(task)
        except asyncio.CancelledError:
            task.log("received interrupt")
            task.log("TASK ERROR: interrupted by signal")
            self._end(task, "interrupted by signal")
            raise
        except Exception as exc:  # every failure of a task body is the task's result
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if not isinstance(exc, BinomeError):
                log.exception("task %s failed", task.upid)
            task.log(f"TASK ERROR: {message}")
            self._end(task, message)
        else:
            if task.warnings:
                task.log(f"TASK WARNINGS: {task.warnings}")
                self._end(task, f"WARNINGS: {task.warnings}")
            else:
                task.log("TASK OK")
                self._end(task, "OK")
        finally:
            self._running.pop(task.upid, None)

    def _end(self, task: Task, exitstatus: str) -> None:
        task._file.close()
        self._finish(task.record, exitstatus)

    def _finish(self, record: TaskRecord, exitstatus: str, append_log: bool = False) -> None:
        record.status, record.exitstatus, record.endtime = "stopped", exitstatus, int(time.time())
        if append_log:
            with open(self.log_path(record.upid), "a") as f:
                f.write(f"TASK ERROR: {exitstatus}\n")
        self._append_index({"event": "end", "upid": str(record.upid),
                            "exitstatus": exitstatus, "endtime": record.endtime})
        log.info("task ended upid=%s status=%r", record.upid, exitstatus)
        self._notify(record)

    def _notify(self, record: TaskRecord) -> None:
        for listener in self.listeners:
            try:
                listener(record)
            except Exception:
                log.exception("task listener failed")

    def get(self, upid: str) -> TaskRecord | None:
        return self.records.get(upid)

    def read_log(self, upid: str, start: int = 0, limit: int = 50) -> tuple[list[dict], int]:
        record = self.records.get(upid)
        if record is None:
            return [], 0
        try:
            lines = self.log_path(record.upid).read_text().splitlines()
        except FileNotFoundError:
            lines = []
        selected = lines[start:start + limit] if limit else lines[start:]
        return [{"n": start + i + 1, "t": t} for i, t in enumerate(selected)], len(lines)

    def list(self, *, start: int = 0, limit: int = 50, source: str = "archive",
             typefilter: str | None = None, userfilter: str | None = None,
             vmid: str | None = None, errors: bool = False, since: int | None = None,
             until: int | None = None, statusfilter: str | None = None
             ) -> tuple[list[dict], int]:
        items = []
        for r in self.records.values():
            if source == "active" and r.status != "running":
                continue
            if source == "archive" and r.status == "running":
                continue
            u = r.upid
            if typefilter and u.type != typefilter:
                continue
            if userfilter and userfilter not in u.user:
                continue
            if vmid is not None and u.id != str(vmid):
                continue
            if errors and r.status == "stopped" and r.exitstatus == "OK":
                continue
            if since is not None and u.starttime < since:
                continue
            if until is not None and u.starttime > until:
                continue
            if statusfilter:
                kind = ("running" if r.status == "running" else "ok" if r.exitstatus == "OK"
                        else "warning" if (r.exitstatus or "").startswith("WARNINGS")
                        else "error")
                if kind not in statusfilter.split(","):
                    continue
            items.append(r)
        items.sort(key=lambda r: (r.upid.starttime, r.upid.pid), reverse=True)
        total = len(items)
        return [r.to_list_entry() for r in items[start:start + limit]], total

    def recent(self, max_entries: int = RECENT_TASKS) -> builtins.list[TaskRecord]:
        """PVE's per-node list behind /cluster/tasks (RESTEnvironment `active_workers`):
        every running task, then the newest finished ones while fewer than `max_entries`."""
        return recent_tasks(self.records.values(), max_entries)

    def stop(self, upid: str) -> bool:
        running = self._running.get(upid)
        if running is None:
            return False
        running.cancel()
        return True

    async def wait(self, upid: str) -> TaskRecord:
        running = self._running.get(upid)
        if running is not None:
            try:
                await asyncio.shield(running)
            except (asyncio.CancelledError, Exception):
                pass
        return self.records[upid]

    async def shutdown(self) -> None:
        for running in list(self._running.values()):
            running.cancel()
        if self._running:
            await asyncio.gather(*self._running.values(), return_exceptions=True)


def recent_tasks(records: Iterable[TaskRecord],
                 max_entries: int = RECENT_TASKS) -> list[TaskRecord]:
    """Running tasks (newest first), then finished ones, newest first, up to
    `max_entries` entries in all (running tasks are never left out)."""
    def newest(r: TaskRecord) -> tuple[int, int]:
        return (r.upid.starttime, r.upid.pid)
    running = sorted((r for r in records if r.status == "running"), key=newest, reverse=True)
    finished = sorted((r for r in records if r.status != "running"), key=newest,
                      reverse=True)
    return running + finished[:max(0, max_entries - len(running))]
