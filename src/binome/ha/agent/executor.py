"""The LRM's executor on `binome.guest`: asynchronous jobs keyed by the command uid.

Each `exec_*` of the LRM becomes an asyncio job run as a UPID task (`hastart`,
`hastop`, `harelocate`); its result is collected by the next LRM round. The
executor refuses a start (no job, an immediate result) when the guest config
is not on this node (`EWRONG_NODE`) or the watchdog does not protect the sid
(`ERROR`). A start first promotes the guest's replicated volumes here
(`promote_volumes`: UpToDate copies only, through the volume service's
quorum-fencing rules, never forced); a copy not ready *yet* (resyncing, marked
Outdated until its resync ends, the peer still Primary) answers `ETRY_AGAIN`, which
the CRM retries without counting a restart, and other refusals fail with the reason; a
stop or relocate demotes them to Secondary once QEMU has closed them. A
migrate of a running guest is the guest service's live migration
(`GuestService.migrate_vm`, task `hamigrate`: dual-primary volumes, paused
target, config moved at the switch-over, source volumes demoted); of a
stopped guest it is a config move, like a relocate.

Volumes after a fence (issue 5): a start that had to disconnect from a fenced
peer still Primary connects again after promoting, and every round
`release_fenced` demotes and reconnects the copies here that the peer recorded
Outdated once their guest no longer runs here (`release_fenced_volumes`), so a
self-fenced node resyncs by itself when its links or its daemon come back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from binome.guest import configs
from binome.guest.errors import GuestFailure
from binome.ha.agent.etcd_env import vmid_of
from binome.ha.model import ExitCode, LrmResult
from binome.storage.base import PeerActive, StaleCopy, StorageError
from binome.store import keys
from binome.store.client import StoreUnavailable

if TYPE_CHECKING:
    from binome.ha.agent.agent import HaAgent
    from binome.tasks.manager import Task

log = logging.getLogger("binome.ha")


class StartNotReady(GuestFailure):
    """The guest cannot start here *yet*: a copy is not UpToDate (resyncing, or still
    marked Outdated until its resync ends) or the peer is still Primary. Reported as
    ETRY_AGAIN, so the CRM retries or places it elsewhere without counting a restart."""

STOP_TIMEOUT = 30.0
START_ARM_WAIT = 2.0     # seconds an HA start waits for the supervisor to take the arm over
RELEASE_INTERVAL = 2.0   # seconds between two looks at the fencing marks of stuck Primaries


class Executor:
    def __init__(self, hub: HaAgent) -> None:
        self.hub = hub
        self._jobs: dict[str, tuple[str, asyncio.Task[None]]] = {}
        self._results: dict[str, LrmResult] = {}
        self._managed: set[str] = set()
        self._releasing: asyncio.Task[list[str]] | None = None
        self._release_next = 0.0

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

        not_ready: list[StartNotReady] = []

        async def task_body(task: Task) -> None:
            try:
                message = await body(task, vmid)
            except StartNotReady as exc:
                not_ready.append(exc)
                raise
            task.log(message)

        async def run() -> None:
            try:
                upid = hub.tasks.start(kind, str(vmid), "root@pam", task_body)
                rec = await hub.tasks.wait(upid)
                if rec.exitstatus == "OK" or str(rec.exitstatus).startswith("WARNINGS"):
                    self._result(uid, sid, cmd, ExitCode.SUCCESS, f"{kind} ok ({upid})")
                elif not_ready:
                    self._result(uid, sid, cmd, ExitCode.ETRY_AGAIN, str(not_ready[0]))
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
            # the guest's replicated disks must be Primary here before QEMU opens them
            await promote_volumes(hub, task, sid, vmid)
            # the arm written is not enough: a supervisor still latched on an earlier
            # fire kills a listed guest that runs until it has read the new deadline
            if not await hub.watchdog_protects(vmid, START_ARM_WAIT):
                raise StartNotReady(f"refusing to start {sid}: the watchdog supervisor has "
                                    f"not taken this node's arm over yet")
            # start_vm re-reads the config with a quorum read: it must still be ours
            await hub.guests.start_vm(task, vmid)
            return f"HA start of {sid} done"

        self._spawn(uid, sid, "start", "hastart", body)

    def stop(self, sid: str, uid: str) -> None:
        hub = self.hub

        async def body(task: Task, vmid: int) -> str:
            assert hub.guests is not None
            if hub.guests.runtime.is_running(vmid):
                await hub.guests.shutdown_vm(task, vmid, hub.stop_timeout(sid, STOP_TIMEOUT),
                                             force_stop=True)
            await demote_volumes(hub, task, vmid)
            return f"HA stop of {sid} done"

        self._spawn(uid, sid, "stop", "hastop", body)

    def relocate(self, sid: str, uid: str, target: str, cmd: str = "relocate") -> None:
        hub = self.hub

        async def body(task: Task, vmid: int) -> str:
            assert hub.guests is not None and hub.store is not None
            if hub.guests.runtime.is_running(vmid):
                await hub.guests.shutdown_vm(task, vmid, STOP_TIMEOUT, force_stop=True)
            await demote_volumes(hub, task, vmid, strict=True)   # the target promotes them
            await configs.move(hub.store, vmid, hub.node, target,
                               timeout=hub.io_timeout * 4)
            task.log(f"config of VM {vmid} moved to {target}")
            return f"HA {cmd} of {sid} to {target} done"

        self._spawn(uid, sid, cmd, "harelocate", body)

    def migrate(self, sid: str, uid: str, target: str) -> None:
        """A running guest: the guest service's live migration (`hamigrate` task);
        a stopped one: a config move, as relocate."""
        hub = self.hub
        vmid = vmid_of(sid)
        guests = hub.guests
        if vmid is None or guests is None or not guests.runtime.is_running(vmid):
            self.relocate(sid, uid, target, cmd="migrate")
            return

        async def body(task: Task, vmid: int) -> str:
            assert hub.guests is not None
            if await hub.guests.owner(vmid) == target:
                # a re-run after the switch-over (our result was lost): it happened
                return f"HA migrate of {sid} to {target} already done"
            await hub.guests.migrate_vm(task, vmid, target, online=True)
            return f"HA migrate of {sid} to {target} done"

        self._spawn(uid, sid, "migrate", "hamigrate", body)

    async def cancel_all(self) -> None:
        for _sid, t in list(self._jobs.values()):
            t.cancel()
        self._jobs.clear()
        if self._releasing is not None:
            self._releasing.cancel()

    # ------------------------------------------------------------ fenced volumes

    def release_fenced(self) -> None:
        """Called every round: in the background (a round never waits for it), give
        up the Primary role of volumes whose guest was recovered elsewhere."""
        if self._releasing is not None and not self._releasing.done():
            return
        if not self.hub.storages.idle_active_copies(self._busy_vmids()):
            return   # the common case: no etcd read, no task
        now = time.monotonic()
        if now < self._release_next:
            return   # stopped guests' volumes stay Primary: not an etcd read per round
        self._release_next = now + RELEASE_INTERVAL
        self._releasing = asyncio.get_running_loop().create_task(
            release_fenced_volumes(self.hub, self._busy_vmids()), name="ha-release-fenced")

    def _busy_vmids(self) -> set[int]:
        """Guests this node is acting on: running, rebooting, or with an HA job here."""
        hub = self.hub
        busy = set(hub.rebooting_vmids)
        busy |= {v for v in (vmid_of(s) for s, _t in self._jobs.values()) if v is not None}
        if hub.guests is not None:
            busy |= set(hub.guests.runtime.running())
        return busy


async def release_fenced_volumes(hub: HaAgent, busy: set[int]) -> list[str]:
    """Deactivate and reconnect the copies here that the peer recorded Outdated, once
    their guest no longer runs here; returns the volids released.

    This is what a self-fenced node does when it wakes up (its watchdog fired
    and killed the guests, its lease expired, the HA manager recovered them on
    the other node): without `/dev/watchdog` resetting the machine, its engine
    would stay Primary on stale data and refuse to resync ("I shall become
    SyncTarget, but I am primary!"). The trigger is the fencing record the
    survivor wrote before it promoted (`Storage.release_fenced_copy`). A copy
    whose peer never marked it (a normal stop, a migration in progress, a
    Primary created with its volume) is never touched, and neither is one whose
    guest runs, reboots or has an HA job here (`busy`, vmids). A split brain is
    not resolved here: the handshake leaves both StandAlone with the reason, as
    before.
    """
    released: list[str] = []
    if hub.store is None:
        return released
    for volid, vmid in hub.storages.idle_active_copies(busy):
        name = volid.partition(":")[2]

        def idle(vmid: int = vmid) -> bool:
            # asked under the volume's lock, after the engine's status: an incoming
            # migration holds the guest from before it promotes until QEMU has the copy
            return hub.guests is None or not (hub.guests.runtime.is_running(vmid)
                                              or hub.guests.operating_here(vmid))

        try:
            # the config's node: a guest recovered elsewhere by the watchdog proof while
            # this node was back at once (its copy connected, never marked Outdated)
            owner = await hub.guests.owner(vmid) if hub.guests is not None else None
            by = await hub.storages.release_fenced_copy(volid, still_idle=idle,
                                                         timeout=hub.io_timeout,
                                                         owner=owner)
        except (StoreUnavailable, TimeoutError) as exc:
            # expected while this node is cut off; the next round tries again
            log.debug("volume %s: fenced copy not released yet: %s", name, exc)
            continue
        except (StorageError, OSError) as exc:
            log.info("volume %s: fenced copy not released yet: %s", name, exc)
            continue
        if by is None:
            continue
        released.append(volid)
        if by == owner:
            hub.log("info", f"{hub.node}/lrm",
                    f"volume {name}: VM {vmid} was recovered on {owner} and does not run "
                    f"here: this copy demoted to Secondary, so that {owner} can start it")
        else:
            hub.log("info", f"{hub.node}/lrm",
                    f"volume {name}: this copy was recorded Outdated by {by} and VM {vmid} "
                    f"does not run here: demoted to Secondary and reconnecting (it resyncs "
                    f"from {by})")
    return released


async def promote_volumes(hub: HaAgent, task: Task, sid: str, vmid: int) -> None:
    """Activate (Primary) every replicated volume of the guest here, or refuse the start.

    Only an UpToDate copy is activated; the storage applies quorum fencing (a
    disconnected promotion first records the peer Outdated in etcd, which
    needs quorum) and is never forced. A peer copy still active while its node
    is offline belongs to a node the CRM proved fenced (the config was moved
    here only after that proof, a relocation demotes first): its daemon may be
    frozen with the engine still connected, so this node takes the volume over
    (`take_over_volume`: disconnects from it, fences it in etcd, promotes,
    reconnects). "Offline" is the HA view: the peer's heartbeat key, bound to
    its lease, is gone (the lease expired, so its watchdog fired); a peer whose
    lease lives is never disconnected.
    """
    storages = hub.storages
    for volid in await storages.guest_volumes(vmid):
        name = volid.partition(":")[2]
        try:
            st = await storages.volume_state(volid)
            if st.active:
                task.log(f"volume {name}: already Primary on {hub.node}")
                continue
            if st.disk != "UpToDate":
                raise StartNotReady(
                    f"volume {name}: the copy on {hub.node} is {st.disk}, not UpToDate; "
                    f"refusing to start {sid} on stale data")
            peer = st.peer
            if st.peer_active and st.connected:
                assert hub.store is not None
                if peer is None:
                    raise GuestFailure(f"refusing to start {sid}: volume {name}: its peer "
                                       f"node is unknown")
                if await hub.store.get(keys.ha_heartbeat(peer)) is not None:   # linearizable
                    raise StartNotReady(f"volume {name}: {peer} is Primary and its lease is "
                                       f"alive; refusing to start {sid} here")
                task.log(f"volume {name}: {peer}'s lease expired (fenced) but its engine is "
                         f"still Primary: disconnecting from it")
                await storages.take_over_volume(
                    volid, reason=f"HA recovery of {sid}: {peer}'s lease expired", task=task)
                continue
            await storages.activate_volume(volid, task=task)
            task.log(f"volume {name}: Primary on {hub.node}")
        except StaleCopy as exc:
            raise StartNotReady(f"{exc}; refusing to start {sid}") from None
        except PeerActive as exc:
            # after a fence proof the CRM recovers at once (a chassis read off: 25 ms
            # after the lease revocation), before this node's view of the members has
            # dropped the fenced node; retried, not counted as a failed start
            raise StartNotReady(f"{exc}; not starting {sid} yet") from None
        except StorageError as exc:
            raise GuestFailure(f"refusing to start {sid}: {exc}") from None


async def demote_volumes(hub: HaAgent, task: Task, vmid: int, strict: bool = False) -> None:
    """Back to Secondary once QEMU has closed its disks (the next node promotes them).

    `strict` (relocation): a volume that stays Primary fails the job, so the
    config never moves to a node whose promotion would then meet a Primary peer.
    """
    storages = hub.storages
    loop = asyncio.get_running_loop()
    for volid in await storages.guest_volumes(vmid):
        name = volid.partition(":")[2]
        try:
            st = await storages.volume_state(volid)
            deadline = loop.time() + 5.0
            while st.in_use and loop.time() < deadline:
                await asyncio.sleep(0.1)   # QEMU's NBD close reaches the engine after its exit
                st = await storages.volume_state(volid)
            if st.active:
                await storages.deactivate_volume(volid)
                task.log(f"volume {name}: Secondary on {hub.node}")
        except StorageError as exc:
            if strict:
                raise
            task.log(f"warning: volume {name} stays Primary on {hub.node}: {exc}")
