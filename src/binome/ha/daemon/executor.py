"""The LRM's executor on `binome.guest`: asynchronous jobs keyed by the command uid.

Each `exec_*` of the LRM becomes an asyncio job run as a UPID task (`hastart`,
`hastop`, `harelocate`); its result is collected by the next LRM round. The
executor refuses a start (no job, an immediate result) when the guest config
is not on this node (`EWRONG_NODE`) or the watchdog does not protect the sid
(`ERROR`). Live migration is not implemented yet: a migrate of a running
guest fails (the CRM keeps it on its node); of a stopped guest it is a
config move, like a relocate.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from binome.ha.daemon.etcd_env import vmid_of
from binome.ha.model import ExitCode, LrmResult
from binome.store import keys

if TYPE_CHECKING:
    from binome.ha.daemon.service import HaService
    from binome.tasks.manager import Task

log = logging.getLogger("binome.ha")

STOP_TIMEOUT = 30.0


class Executor:
    def __init__(self, hub: HaService) -> None:
        self.hub = hub
        self._jobs: dict[str, tuple[str, asyncio.Task]] = {}
        self._results: dict[str, LrmResult] = {}
        self._managed: set[str] = set()

    # ------------------------------------------------------------ views

    def running(self, managed: set[str] | None) -> set[str]:
        """HA guests running here (`managed`: the HA sids; None: the last known set)."""
        if managed is not None:
            self._managed = managed
        guests = self.hub.guests
        if guests is None:
            return set()
        return {f"vm:{v}" for v in guests.runtime.running()} & self._managed

    def jobs(self) -> dict[str, str]:
        return {uid: sid for uid, (sid, _t) in sorted(self._jobs.items())}

    def collect(self) -> dict[str, LrmResult]:
        out, self._results = self._results, {}
        return out

    # ------------------------------------------------------------ commands

    def _result(self, uid: str, sid: str, cmd: str, code: ExitCode, message: str) -> None:
        self._results[uid] = LrmResult(sid, cmd, code, message)
        self.hub.wake()

    def _spawn(self, uid: str, sid: str, cmd: str, kind: str,
               body: Callable[[Task, int], Awaitable[str]]) -> None:
        vmid = vmid_of(sid)
        if vmid is None:
            self._result(uid, sid, cmd, ExitCode.ERROR, f"unsupported service type: {sid}")
            return
        if uid in self._jobs:
            return
        hub = self.hub

        async def task_body(task: Task) -> None:
            message = await body(task, vmid)
            task.log(message)

        async def run() -> None:
            try:
                upid = hub.tasks.start(kind, str(vmid), "root@pam", task_body)
                rec = await hub.tasks.wait(upid)
                if rec.exitstatus == "OK" or str(rec.exitstatus).startswith("WARNINGS"):
                    self._result(uid, sid, cmd, ExitCode.SUCCESS, f"{kind} ok ({upid})")
                else:
                    self._result(uid, sid, cmd, ExitCode.ERROR, str(rec.exitstatus))
            except asyncio.CancelledError:
                raise
            except Exception as exc:   # a job's failure is its result, never the loop's
                log.exception("HA job %s %s failed", cmd, sid)
                self._result(uid, sid, cmd, ExitCode.ERROR, str(exc))
            finally:
                self._jobs.pop(uid, None)

        self._jobs[uid] = (sid, asyncio.get_running_loop().create_task(run(), name=uid))

    def start(self, sid: str, uid: str, owner: str | None) -> None:
        hub = self.hub
        if owner != hub.node:
            self._result(uid, sid, "start", ExitCode.EWRONG_NODE,
                         f"config of {sid} is on {owner}, not {hub.node}")
            return
        if sid not in hub.armed_sids or hub.watchdog.running_pid() is None:
            self._result(uid, sid, "start", ExitCode.ERROR,
                         f"refusing to start {sid}: not protected by an armed watchdog")
            return

        async def body(task: Task, vmid: int) -> str:
            assert hub.guests is not None
            # start_vm re-reads the config with a quorum read: it must still be ours
            await hub.guests.start_vm(task, vmid)
            return f"HA start of {sid} done"

        self._spawn(uid, sid, "start", "hastart", body)

    def stop(self, sid: str, uid: str) -> None:
        hub = self.hub

        async def body(task: Task, vmid: int) -> str:
            assert hub.guests is not None
            if hub.guests.runtime.is_running(vmid):
                await hub.guests.shutdown_vm(task, vmid, STOP_TIMEOUT, force_stop=True)
            return f"HA stop of {sid} done"

        self._spawn(uid, sid, "stop", "hastop", body)

    def relocate(self, sid: str, uid: str, target: str, cmd: str = "relocate") -> None:
        hub = self.hub

        async def body(task: Task, vmid: int) -> str:
            assert hub.guests is not None and hub.store is not None
            if hub.guests.runtime.is_running(vmid):
                await hub.guests.shutdown_vm(task, vmid, STOP_TIMEOUT, force_stop=True)
            await move_config(hub.store, vmid, hub.node, target, hub.io_timeout * 4)
            task.log(f"config of VM {vmid} moved to {target}")
            return f"HA {cmd} of {sid} to {target} done"

        self._spawn(uid, sid, cmd, "harelocate", body)

    def migrate(self, sid: str, uid: str, target: str) -> None:
        vmid = vmid_of(sid)
        guests = self.hub.guests
        if vmid is not None and guests is not None and guests.runtime.is_running(vmid):
            self._result(uid, sid, "migrate", ExitCode.ERROR,
                         "live migration is not implemented in the HA executor yet")
            return
        self.relocate(sid, uid, target, cmd="migrate")

    async def cancel_all(self) -> None:
        for _sid, t in list(self._jobs.values()):
            t.cancel()
        self._jobs.clear()


async def move_config(store, vmid: int, src: str, dst: str, timeout: float) -> None:
    """One transaction moving the config `src` -> `dst`, conditioned on the owner."""
    from binome.guest.service import GuestFailure

    src_key, dst_key, owner_key = keys.vm_conf(src, vmid), keys.vm_conf(dst, vmid), keys.vmid(vmid)
    cur = await store.get(src_key)
    own = await store.get(owner_key)
    if cur is None or own is None or (own.value or {}).get("node") != src:
        raise GuestFailure(f"VM {vmid}: config is not on {src}")
    rev = await store.txn([(src_key, "mod", cur.mod_revision),
                            (owner_key, "mod", own.mod_revision), (dst_key, "create", 0)],
                    {dst_key: (cur.value, 0), owner_key: ({**own.value, "node": dst}, 0)},
                    [src_key], timeout)
    if rev is None:
        raise GuestFailure(f"VM {vmid}: config changed while moving it; not moved")
