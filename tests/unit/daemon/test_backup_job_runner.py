"""The node side of a backup job (binome.daemon.backupjobs): which guests a node backs up,
the vzdump task it starts (a real TaskManager) and the `backup-result` notification it
emits; and the crash cleanup of staging directories on real dir storages. The guest
service is a stand-in that writes vzdump's log lines (the real one needs QEMU: the
integration test tests/integration/backup/test_backup_jobs.py runs it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from binome.backup.dumpstore import DumpStore
from binome.daemon.backupjobs import NodeJobRunner, remove_stale_staging
from binome.durable import write_json
from binome.notify.events import Severity, make_event
from binome.storage.base import StorageConfig
from binome.storage.dir import DirStorage
from binome.tasks.manager import Task, TaskFailed, TaskManager


@dataclass
class GuestsHere:
    vmids: list[int]
    fail: set[int] = field(default_factory=set)
    calls: list[tuple[list[int], Any]] = field(default_factory=list)

    @property
    def configs(self) -> Any:
        async def list_(node: str) -> list[Any]:
            return [SimpleNamespace(vmid=v) for v in self.vmids]
        return SimpleNamespace(list=list_)

    async def backup_job(self, task: Task, vmids: list[int], options: Any) -> None:
        self.calls.append((vmids, options))
        task.log(f"INFO: starting new backup job: vzdump {options.command_line}")
        for vmid in vmids:
            if vmid in self.fail:
                task.log(f"ERROR: Backup of VM {vmid} failed - disk gone")
            else:
                task.log("INFO: archive file size: 12.0 MiB")
        if self.fail & set(vmids):
            raise TaskFailed("job errors")


class Storages:
    def __init__(self, configs: list[StorageConfig]) -> None:
        self._configs = configs

    async def configs(self) -> list[StorageConfig]:
        return self._configs

    async def get(self, storage_id: str) -> DirStorage:
        return DirStorage(next(c for c in self._configs if c.storage == storage_id), "n1")


def _graph(tmp_path: Path, guests: GuestsHere, storages: list[StorageConfig]) -> Any:
    events: list[tuple[str, dict[str, Any]]] = []

    async def access_config() -> Any:
        return SimpleNamespace(pools={"prod": SimpleNamespace(vms=frozenset({101, 300}))})

    (tmp_path / "tasks").mkdir(exist_ok=True)
    return SimpleNamespace(
        config=SimpleNamespace(name="n1", state_dir=tmp_path), guests=guests,
        storages=Storages(storages), tasks=TaskManager("n1", tmp_path / "tasks"),
        access=SimpleNamespace(config=access_config),
        notifications=SimpleNamespace(emit=lambda kind, **data: events.append((kind, data))),
        events=events)


def _bk(tmp_path: Path, shared: bool = False, name: str = "bk") -> StorageConfig:
    return StorageConfig(storage=name, type="dir", path=str(tmp_path / name),
                         content=("backup",), shared=shared)


async def test_selection_is_the_guests_this_node_holds(tmp_path: Path) -> None:
    runner = NodeJobRunner(_graph(tmp_path, GuestsHere([100, 101, 102]), [_bk(tmp_path)]))
    assert await runner.guests_here({"vmid": "102,100,900"}) == [102, 100]
    assert await runner.guests_here({"all": 1, "exclude": "101"}) == [100, 102]
    assert await runner.guests_here({"pool": "prod"}) == [101]
    assert await runner.storage_for({"all": 1}) == "bk"


async def test_job_task_and_its_notification(tmp_path: Path) -> None:
    guests = GuestsHere([100, 101], fail={101})
    graph = _graph(tmp_path, guests, [_bk(tmp_path)])
    runner = NodeJobRunner(graph)
    results: list[str] = []
    assert await runner("nightly", {"vmid": "900"}, results.append) is None   # none here
    upid = await runner("nightly", {"all": 1, "prune-backups": "keep-last=2",
                                    "mode": "stop"}, results.append)
    assert upid is not None and ":vzdump::root@pam:" in upid
    record = await graph.tasks.wait(upid)
    assert record.exitstatus == "job errors" and results == ["job errors"]
    (vmids, options), = guests.calls
    assert vmids == [100, 101] and options.storage == "bk" and options.mode == "stop"
    assert options.prune is not None and options.prune.keep_last == 2
    assert options.command_line.startswith("--all 1 --storage bk --mode stop")
    (kind, data), = graph.events
    assert kind == "backup-result" and data["ok_count"] == 1 and data["failed_count"] == 1
    event = make_event(kind, "n1", **data)
    assert event.severity is Severity.ERROR and event.fields["type"] == "vzdump"
    assert event.title == "vzdump backup status (n1): backup failed"
    assert event.fields["job-id"] == "nightly"

    guests.fail.clear()
    graph.events.clear()
    upid = await runner("nightly", {"vmid": "100"}, results.append)
    assert (await graph.tasks.wait(upid)).exitstatus == "OK" and results[-1] == "OK"
    (kind, data), = graph.events
    assert make_event(kind, "n1", **data).severity is Severity.INFO


async def test_stale_staging_removed_but_not_running_or_shared(tmp_path: Path) -> None:
    local, shared = _bk(tmp_path), _bk(tmp_path, shared=True, name="nfs")
    graph = _graph(tmp_path, GuestsHere([]), [local, shared])
    stale = DumpStore(local.path, "bk").begin("vm", "100", 1_000)
    on_shared = DumpStore(shared.path, "nfs").begin("vm", "100", 1_000)
    running = DumpStore(local.path, "bk").begin("vm", "101", 2_000)
    # the first two were interrupted by a crash an hour before this daemon started
    daemon_started = running.started
    for writer in (stale, on_shared):
        write_json(writer.store.root / ".writers" / writer.staging.name,
                   {"started": daemon_started - 3600})
    removed = await remove_stale_staging(graph, daemon_started)
    assert removed == [str(stale.staging)]
    assert not stale.staging.exists() and running.staging.exists()
    assert on_shared.staging.exists()
