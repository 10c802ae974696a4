"""What the parts of the guest service share: this node's dependencies and guest state.

The guest service is split by job (`lifecycle`, `migration`, `settling`,
`status`, assembled by `guests.GuestService`); each part gets this one
`GuestContext`: the node, the cluster, the config repository, the storage
manager, the QEMU runtime, the cluster log, the per-VM operation locks, the
guests this daemon believes running (an exit of one nobody asked for goes to
the cluster log) and the incoming copies of live migrations served here.
Also the storage questions every part asks about a VM's disks.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from binome.guest import config as vmconf
from binome.guest.configs import VmConfig, VmConfigs

if TYPE_CHECKING:
    from binome.cluster.cluster import ClusterService
    from binome.guest.runtime import QemuRuntime
    from binome.storage.manager import StorageManager
    from binome.tasks.clusterlog import ClusterLog
    from binome.tasks.manager import Task

log = logging.getLogger("binome.guest")


def volume_name(volid: str) -> str:
    """The name part of a volid, as the task and cluster logs show volumes."""
    return volid.partition(":")[2]


class GuestContext:
    def __init__(self, node: str, cluster: ClusterService, storages: StorageManager,
                 runtime: QemuRuntime, clusterlog: ClusterLog) -> None:
        self.node = node
        self.cluster = cluster
        self.storages = storages
        self.runtime = runtime
        self.clusterlog = clusterlog
        self.configs = VmConfigs(node, lambda: cluster.store)
        self._locks: dict[int, asyncio.Lock] = {}
        self.believed_running: set[int] = set()
        self.incoming: dict[int, dict[str, Any]] = {}   # target side of live migrations
        # what must hold before an incoming live migration starts QEMU here: installed by
        # the HA agent (an HA guest runs only under this node's armed watchdog); raises
        # GuestFailure to refuse
        self.incoming_guard: Callable[[int], Awaitable[None]] | None = None

    def lock(self, vmid: int) -> asyncio.Lock:
        """Held by every operation on guest `vmid` on this node."""
        return self._locks.setdefault(vmid, asyncio.Lock())

    def locked(self, vmid: int) -> bool:
        """An operation on guest `vmid` holds its lock now (no lock made to ask)."""
        lock = self._locks.get(vmid)
        return lock is not None and lock.locked()

    async def read(self, vmid: int, node: str | None = None, *, fresh: bool = True
                   ) -> VmConfig:
        return await self.configs.read(vmid, node, fresh=fresh)

    async def until_quorate(self, poll: float) -> None:
        """Return once this node is a member of a quorate cluster (checked every `poll`
        seconds): what the jobs that read configs at start wait for."""
        while not (self.cluster.is_member and self.cluster.view.quorate):  # noqa: ASYNC110
            await asyncio.sleep(poll)

    def migration_nodes(self) -> list[str]:
        """The other nodes that can host guests (not witnesses), sorted."""
        return sorted(n for n, rec in self.cluster.node_records.items()
                      if n != self.node and rec.get("role", "node") == "node"
                      and rec.get("state", "member") == "member")

    # ------------------------------------------------------------ the VM's volumes

    async def disk_kinds(self, vm: VmConfig) -> tuple[list[dict[str, Any]], list[str]]:
        """(local disks in PVE's shape, volids bound to nodes) of a VM's disks: the
        second are activated on the node that runs the guest (replicated volumes)."""
        local: list[dict[str, Any]] = []
        per_node: list[str] = []
        # ISO images and kernels must exist on the target: checked there
        for d in vmconf.drive_volumes(vm.config):    # disks, efidisk0, tpmstate0
            assert d.volid is not None
            storage = await self.storages.for_volid(d.volid)
            if storage.per_node_activation:
                per_node.append(d.volid)
            elif not storage.config.shared:
                local.append({"volid": d.volid, "drivename": d.key, "size": d.size or 0,
                              "cdrom": 0, "is_unused": 0})
        return local, per_node

    async def activate_here(self, volids: list[str]) -> list[str]:
        """Activate each volume here; the ones this call activated (all undone if one
        fails)."""
        activated: list[str] = []
        try:
            for volid in volids:
                if await self.storages.activate_volume(volid):
                    activated.append(volid)
        except BaseException:
            await asyncio.shield(self.deactivate_after(None, activated, timeout=10.0))
            raise
        return activated

    async def active_here(self, vm: VmConfig) -> list[str]:
        """The VM's volumes active on this node: what dropping a migration's copy here
        must deactivate."""
        out = []
        for volid in (await self.disk_kinds(vm))[1]:
            try:
                if (await self.storages.volume_state(volid)).active:
                    out.append(volid)
            except Exception:
                pass   # no copy here, or the engine is down: nothing to deactivate
        return out

    async def deactivate_after(self, task: Task | None, volids: list[str],
                               timeout: float = 15.0) -> None:
        """Deactivate volumes once QEMU has closed them (refused while it has them
        open), retrying until `timeout`; a failure is a warning (in the task if there is
        one), not an error: the guest runs elsewhere, or never left, and an active copy
        that no one opens does no harm."""
        for volid in volids:
            name = volume_name(volid)
            deadline = time.monotonic() + timeout
            while True:
                try:
                    st = await self.storages.deactivate_volume(volid)
                    if task is not None:
                        task.log(f"volume {name}: Secondary on {self.node} (peer "
                                 f"{st.peer_role or '?'})")
                    break
                except Exception as exc:
                    if time.monotonic() > deadline:
                        if task is not None:
                            task.warn(f"volume {name}: could not demote on {self.node}: "
                                      f"{exc}")
                        else:
                            log.warning("volume %s: demotion after an aborted migration "
                                        "failed: %s", name, exc)
                        break
                    await asyncio.sleep(0.2)
