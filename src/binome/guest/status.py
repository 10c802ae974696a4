"""The status of this node's guests: the watch loop, status entries, the cluster-wide
view, start at host boot (`onboot` VMs in PVE's `startup` order, waiting `up`
seconds after each), and the cluster-log line of a guest that died.

Every `STATUS_PUBLISH_INTERVAL` seconds the watch loop reads the runtime
status of the guests whose config is here, publishes them under
``/binome/vmstatus/<node>`` (bound to the node's lease: the key owned here),
and hands the QEMU processes of VMs owned elsewhere to the migration settler.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from typing import TYPE_CHECKING, Any

from binome import durable
from binome.cluster.node_config import NodeConfigs
from binome.guest import config as vmconf
from binome.guest.configs import VmConfig
from binome.guest.options import parse_startup
from binome.loops import run_periodic
from binome.store import keys
from binome.store.client import StoreUnavailable

if TYPE_CHECKING:
    from binome.guest.context import GuestContext
    from binome.guest.lifecycle import Lifecycle
    from binome.guest.settling import MigrationSettler

log = logging.getLogger("binome.guest")

STATUS_PUBLISH_INTERVAL = 2.0


def startup_key(vm: VmConfig) -> tuple[int, int]:
    """PVE's startall order: by `startup` order (VMs without one last), then by vmid."""
    order = (parse_startup(str(vm.config.get("startup") or "")) or {}).get("order")
    return (order if order is not None else 2**63, vm.vmid)


class GuestStatus:
    def __init__(self, ctx: GuestContext, lifecycle: Lifecycle,
                 settler: MigrationSettler) -> None:
        self.ctx = ctx
        self.lifecycle = lifecycle
        self.settler = settler
        self.last_status: dict[int, dict[str, Any]] = {}

    async def onboot_after_host_boot(self) -> None:
        """Once per host boot (not per daemon restart), start the VMs marked `onboot`."""
        marker = self.ctx.runtime.run_dir / "onboot.bootid"
        try:
            boot_id = open("/proc/sys/kernel/random/boot_id").read().strip()
        except OSError:
            return
        if marker.exists() and marker.read_text().strip() == boot_id:
            return
        await self.ctx.until_quorate(poll=1.0)
        await self.onboot_delay()
        marker.parent.mkdir(parents=True, exist_ok=True)
        durable.write_text(marker, boot_id + "\n")
        for vm in sorted(await self.ctx.configs.list(), key=startup_key):
            if not vm.config.get("onboot") or vm.config.get("template"):
                continue
            if self.ctx.runtime.is_running(vm.vmid):
                continue
            try:
                async with self.ctx.lock(vm.vmid):
                    spec = await self.lifecycle.launch_spec(
                        await self.lifecycle.apply_pending_for_start(
                            await self.lifecycle.check_startable(vm.vmid), None))
                    await self.ctx.runtime.start(spec)
                    self.ctx.believed_running.add(vm.vmid)
                await self.ctx.clusterlog.write(
                    f"VM {vm.vmid} started at boot of node {self.ctx.node}", tag="qemu")
                up = (parse_startup(str(vm.config.get("startup") or "")) or {}).get("up")
                if up:
                    await asyncio.sleep(up)   # PVE's startall: 'up' seconds before the next
            except Exception as exc:
                await self.ctx.clusterlog.write(f"VM {vm.vmid}: start at boot failed: {exc}",
                                            tag="qemu", pri="err")


    async def onboot_delay(self, sleep=asyncio.sleep) -> int:
        """The node's `startall-onboot-delay` (PVE's `pve-startall-delay` before the
        on-boot start-all): waited, logged; the seconds waited."""
        store = self.ctx.cluster.store
        if store is None:
            return 0
        try:
            delay = await NodeConfigs(store).onboot_delay(self.ctx.node)
        except StoreUnavailable:
            return 0
        if delay > 0:
            log.info("Delaying on-boot 'startall' command for %d second(s).", delay)
            await sleep(delay)
        return delay

    async def safe_list(self) -> list[VmConfig]:
        try:
            return await self.ctx.configs.list() if self.ctx.cluster.is_member else []
        except StoreUnavailable:
            return []

    async def on_guest_exit(self, vmid: int, reason: str) -> None:
        """Called by the runtime once per QEMU exit, at once (or at adoption if it died
        while no daemon ran): an exit nobody asked for goes to the cluster log."""
        expected = vmid not in self.ctx.believed_running
        self.ctx.believed_running.discard(vmid)
        if expected or "by request" in reason:
            return
        await self.ctx.clusterlog.write(f"VM {vmid} stopped unexpectedly on node {self.ctx.node}: "
                                    f"{reason}", tag="qemu", pri="warning")

    async def watch_loop(self) -> None:
        """The watch round every `STATUS_PUBLISH_INTERVAL` seconds, while this node is a
        member, until cancelled (etcd unreachable is expected: quorum lost)."""
        async def step() -> None:
            if self.ctx.cluster.is_member:
                await self._watch_once()

        await run_periodic("guest watch", step, STATUS_PUBLISH_INTERVAL, logger=log,
                           quiet=(StoreUnavailable,))

    async def _watch_once(self) -> None:
        statuses: dict[int, dict[str, Any]] = {}
        for vm in await self.ctx.configs.list():
            st = await self.ctx.runtime.status(vm.vmid)
            statuses[vm.vmid] = self.status_entry(vm, st)
            if st.status == "running":
                self.ctx.believed_running.add(vm.vmid)
        self.last_status = statuses
        for vmid in sorted(set(self.ctx.runtime.running()) - set(statuses)):
            if not self.ctx.lock(vmid).locked():    # a migration step holds it: its business
                await self.settler.settle_copy(vmid, at_start=False)
        lease = self.ctx.cluster.lease_id
        if lease is not None and self.ctx.cluster.store is not None:
            with contextlib.suppress(StoreUnavailable):
                await self.ctx.cluster.store.put(keys.VM_STATUS + self.ctx.node,
                                             {str(k): v for k, v in statuses.items()},
                                             lease=lease)

    def status_entry(self, vm: VmConfig, st) -> dict[str, Any]:
        c = vm.config
        entry = {"vmid": vm.vmid, "name": c.get("name", f"VM {vm.vmid}"),
                 "status": st.status, "uptime": st.uptime, "cpu": st.cpu, "mem": st.mem,
                 "maxmem": int(c.get("memory", vmconf.DEFAULTS["memory"])) * 1024 * 1024,
                 "cpus": vmconf.cpu_count(c),
                 "maxdisk": self._maxdisk(c), "disk": 0, "netin": st.netin,
                 "netout": st.netout, "diskread": st.diskread, "diskwrite": st.diskwrite,
                 "template": int(c.get("template", 0) or 0)}
        if st.pid:
            entry["pid"] = st.pid
        if st.qmpstatus:
            entry["qmpstatus"] = st.qmpstatus
        if c.get("lock"):
            entry["lock"] = c["lock"]
        if c.get("tags"):
            entry["tags"] = c["tags"]
        return entry

    @staticmethod
    def _maxdisk(config: dict[str, Any]) -> int:
        total = 0
        for d in vmconf.disks(config):
            if not d.is_cdrom and d.size:
                total += d.size
        return total


    async def current_status(self, vmid: int) -> dict[str, Any]:
        vm = await self.ctx.read(vmid, fresh=False)
        st = await self.ctx.runtime.status(vmid)
        entry = self.status_entry(vm, st)
        entry["ha"] = {"managed": 0}
        # PVE: 1 with an enabled agent (bpg then waits on network-get-interfaces)
        entry["agent"] = 1 if vmconf.agent_settings(vm.config) else 0
        if vm.config.get("vga"):
            vga = vmconf.VGA_FORMAT.parse(str(vm.config["vga"]))
            if re.fullmatch(r"qxl[234]?|virtio.*", str(vga.get("type") or "")):
                entry["spice"] = 1     # PVE: the VGA configuration supports SPICE
        return entry


    async def cluster_vms(self) -> list[dict[str, Any]]:
        """Every VM of the cluster with its status, for /cluster/resources."""
        if self.ctx.cluster.store is None:
            return []
        statuses: dict[str, dict[str, Any]] = {}
        for entry in await self.ctx.cluster.store.get_prefix(keys.VM_STATUS,
                                                             serializable=True):
            statuses[entry.key[len(keys.VM_STATUS):]] = entry.value
        out = []
        for node, vmid, c in await self.ctx.configs.list_all():
            if node == self.ctx.node and vmid in self.last_status:
                st = dict(self.last_status[vmid])
            else:
                st = dict(statuses.get(node, {}).get(str(vmid)) or {})
            if node == self.ctx.node:
                # whether this node's QEMU runs is known now, not only at the next watch
                # round (up to STATUS_PUBLISH_INTERVAL): a guest started or recovered
                # here shows running at once (the web UI's tree during a failover)
                alive = self.ctx.runtime.is_running(vmid)
                if alive and st.get("status") in (None, "stopped", "unknown"):
                    st["status"] = "running"
                elif not alive and st.get("status") == "running":
                    st["status"] = "stopped"
            item = {"id": f"qemu/{vmid}", "type": "qemu", "vmid": vmid, "node": node,
                    "name": c.get("name", f"VM {vmid}"), "status": st.get("status", "unknown"),
                    "template": int(c.get("template", 0) or 0),
                    "maxcpu": vmconf.cpu_count(c),
                    "maxmem": int(c.get("memory", vmconf.DEFAULTS["memory"])) * 1024 * 1024,
                    "maxdisk": self._maxdisk(c), "disk": 0}
            for k in ("cpu", "mem", "uptime", "netin", "netout", "diskread", "diskwrite"):
                item[k] = st.get(k, 0)
            if c.get("tags"):
                item["tags"] = c["tags"]
            if c.get("lock"):
                item["lock"] = c["lock"]
            out.append(item)
        return sorted(out, key=lambda x: x["vmid"])

