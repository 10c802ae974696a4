"""Guests of one node: configs in etcd, lifecycle through the QEMU runtime, status.

A VM's config lives under its owner node (``/binome/config/nodes/<node>/qemu/
<vmid>.conf``, the text of a PVE .conf file) and its vmid is reserved
cluster-wide (``/binome/vmids/<vmid>``) in the same transaction, so two nodes
can never create the same vmid. Config updates are compare-and-swap on the
config digest. The QEMU processes belong to the runtime and outlive the daemon.

Migration (`migrate_vm`, the source's side, and `incoming_*`, the target's):
an offline migration moves the config and the vmid owner in one transaction;
a live one starts a paused incoming QEMU on the target (its replicated
volumes made Primary there too: dual-primary), streams the state, and at
completion moves the config, stops the source, resumes the target and
demotes the source's volumes. Until the config has moved, the source is
the guest and the target only a paused copy that any failure removes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from binome.errors import BinomeError
from binome.guest import config as vmconf
from binome.guest.errors import GuestError
from binome.guest.spec import DiskSpec, LaunchSpec, NicSpec
from binome.storage.base import StorageError
from binome.store import keys
from binome.store.client import StoreUnavailable
from binome.tasks.manager import Task, TaskFailed

if TYPE_CHECKING:
    from binome.cluster.cluster import ClusterService
    from binome.guest.runtime import QemuRuntime
    from binome.storage.manager import StorageManager
    from binome.storage.replica.service import VolumeService
    from binome.tasks.clusterlog import ClusterLog

log = logging.getLogger("binome.guest")

STATUS_PUBLISH_INTERVAL = 2.0


class GuestFailure(BinomeError):
    """A guest operation refused or failed; the message is PVE's text where one exists."""


def conf_missing(node: str, vmid: int) -> GuestFailure:
    return GuestFailure(f"Configuration file 'nodes/{node}/qemu-server/{vmid}.conf' does not "
                        f"exist")


@dataclass
class VmConfig:
    vmid: int
    node: str
    config: dict[str, Any]
    digest: str
    revision: int


class GuestService:
    def __init__(self, node: str, cluster: ClusterService, storages: StorageManager,
                 runtime: QemuRuntime, clusterlog: ClusterLog) -> None:
        self.node = node
        self.cluster = cluster
        self.storages = storages
        self.runtime = runtime
        self.clusterlog = clusterlog
        self._locks: dict[int, asyncio.Lock] = {}
        self._believed_running: set[int] = set()
        self._loop: asyncio.Task | None = None
        self._onboot: asyncio.Task | None = None
        self._settle: asyncio.Task | None = None
        self._probe: asyncio.Task | None = None
        runtime.on_exit = self._on_guest_exit
        self.last_status: dict[int, dict[str, Any]] = {}
        self.volumes: VolumeService | None = None   # set by the daemon (replicated disks)
        self._incoming: dict[int, dict[str, Any]] = {}   # target side of live migrations

    def lock(self, vmid: int) -> asyncio.Lock:
        return self._locks.setdefault(vmid, asyncio.Lock())

    @property
    def store(self):
        if self.cluster.store is None:
            raise GuestFailure("this node is not part of a cluster: create or join one first")
        return self.cluster.store

    # ------------------------------------------------------------------ lifecycle of the service
    async def start(self) -> None:
        # guests found dead at adoption were running when the daemon went away
        self._believed_running = {vm.vmid for vm in await self._safe_list()}
        adopted = await self.runtime.adopt()
        self._believed_running = set(adopted)
        if adopted:
            log.info("re-adopted running guests: %s", ", ".join(map(str, adopted)))
        self._loop = asyncio.create_task(self._watch_loop(), name="guest-watch")
        self._onboot = asyncio.create_task(self._onboot_after_host_boot(), name="onboot")
        self._settle = asyncio.create_task(self._settle_migrations(), name="settle-migrations")
        # decide KVM vs TCG now (the probe boots a guest for a few seconds), not on the
        # first start, which may be an HA recovery where seconds count
        self._probe = asyncio.create_task(self.runtime.accel(), name="accel-probe")

    async def _settle_migrations(self) -> None:
        """Finish what a previous life of this daemon left of live migrations.

        binomed may die (crash, SIGKILL, host OOM) while it drives a migration
        as its source or serves one as its target; QEMU runs on without it. Once
        quorate, with the config read by quorum as the only arbiter of where a
        guest may run:
        - a VM of this node still locked `migrate`: its task died with the
          daemon. The migration is cancelled and the guest runs on here (a
          completed one too: the switch-over never happened, so the target
          never resumed), the other nodes drop their incoming copy, the lock goes.
        - a paused copy here of a VM owned elsewhere: either the source of a
          migration that switched over (its QEMU must never run again) or the
          target of one that was abandoned. It is stopped, and volumes promoted
          for it demoted; a migration still in progress (owner locked `migrate`)
          is left to its source, which will resume or abort it.
        - an incoming copy here, of a VM now owned here, complete but paused: the
          source switched over and could not reach us to resume it. It is resumed.
        Each action is in the cluster log with its reason."""
        while not (self.cluster.is_member and self.cluster.view.quorate):  # noqa: ASYNC110
            await asyncio.sleep(0.5)
        try:
            for vm in await self.list_configs():
                if vm.config.get("lock") == "migrate":
                    await self._settle_source(vm.vmid)
            for vmid in self.runtime.running():
                await self._settle_copy(vmid)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("settling interrupted migrations failed")

    async def _settle_source(self, vmid: int) -> None:
        from binome.guest.remote import node_call

        async with self.lock(vmid):
            vm = await self.read(vmid)
            if vm.config.get("lock") != "migrate":
                return
            running = self.runtime.is_running(vmid)
            what = "stopped"
            if running:
                await self.runtime.cancel_migration(vmid)
                what = "running"
            _local, replicated = await self._disk_kinds(vm)
            for node in self._migration_nodes():
                try:
                    await node_call(self.cluster, node, "POST",
                                    f"/nodes/{node}/qemu/{vmid}/migrate/incoming",
                                    {"phase": "abort", "source": self.node}, timeout=30)
                except BinomeError as exc:
                    log.warning("VM %s: dropping the incoming copy on %s failed: %s "
                                "(it stops it itself when its binomed runs)", vmid, node, exc)
            if not running and replicated:
                # an offline migration demotes before it moves the config
                try:
                    await self._promote_here(replicated)
                except Exception as exc:
                    log.warning("VM %s: volumes not made Primary again: %s", vmid, exc)
            await self._set_lock(vm, None)
        await self.clusterlog.write(
            f"VM {vmid}: migration interrupted by a binomed restart on {self.node}: "
            f"cancelled, the VM stays on {self.node} ({what}), lock removed", tag="qemu",
            pri="warning")

    async def _settle_copy(self, vmid: int, *, at_start: bool = True) -> None:
        """A QEMU here that a migration may have left behind (see _settle_migrations).
        Also run every watch round (`at_start` False) for the copies of VMs owned
        elsewhere: an incoming copy whose source node went offline can never complete
        (its source died with the host, or a restarted source aborts it), and would
        block the guest's recovery here; it is stopped (it never ran guest code)."""
        async with self.lock(vmid):
            if not self.runtime.is_running(vmid):
                return
            if at_start and vmid in self._incoming:
                return
            owner = await self.owner(vmid)
            if owner == self.node and (not at_start or vmid in self._incoming):
                return
            try:
                runstate, migration, incoming = await self.runtime.migration_state(vmid)
            except GuestError:
                return
            if owner == self.node:
                if incoming and runstate == "paused" and migration in (None, "completed"):
                    await self._resume_handed_over(vmid)
                return
            if runstate not in ("inmigrate", "paused", "postmigrate", "finish-migrate"):
                if runstate == "running" and at_start:
                    await self.clusterlog.write(
                        f"VM {vmid} runs on {self.node} but its config is on "
                        f"{owner or 'no node'}: left running, check which copy is right",
                        tag="qemu", pri="err")
                return
            source_gone = False
            conf: VmConfig | None = None
            if owner is not None:
                with contextlib.suppress(BinomeError):
                    conf = await self.read(vmid, node=owner)
                if conf is None:
                    return     # the config is moving (a switch-over): look again later
                if conf.config.get("lock") == "migrate":
                    # in progress: its source resumes or aborts this copy, unless it is gone
                    source_gone = runstate == "inmigrate" and not self.cluster.node_online(owner)
                    if not source_gone:
                        return
                elif not at_start:
                    return     # between rounds only the case above: a live flow may race
            elif not at_start:
                return
            if await self.owner(vmid) != owner:
                return         # switched over meanwhile: this copy may be the guest now
            replicated: list[str] = []
            if conf is not None:
                with contextlib.suppress(Exception):
                    replicated = await self._volumes_primary_here(conf)
            self._believed_running.discard(vmid)
            self._incoming.pop(vmid, None)
            await self.runtime.stop(vmid, timeout=5.0, requested="migrated")
            await self._demote_after(None, replicated, timeout=10.0)
        if source_gone:
            why = (f"incoming migration from {owner}, which went offline before it "
                   f"completed")
        else:
            side = "source" if runstate in ("postmigrate", "finish-migrate") else "target"
            why = f"the {side} of a migration a binomed restart interrupted"
        await self.clusterlog.write(
            f"VM {vmid}: paused copy on {self.node} stopped ({why}); the VM belongs to "
            f"{owner or 'no node'}", tag="qemu", pri="warning")

    async def _resume_handed_over(self, vmid: int) -> None:
        """Our incoming copy completed and the config moved here, but the source could
        not reach this daemon to resume it: resume it (the source never resumes a guest
        whose config moved away, so this is the only copy that may run)."""
        vm = await self.read(vmid)
        if vm.config.get("lock"):
            return
        await self.runtime.resume(vmid)
        self._believed_running.add(vmid)
        with contextlib.suppress(GuestError):
            await self.runtime.announce(vmid)
        await self.clusterlog.write(
            f"VM {vmid}: resumed on {self.node}: its migration here had switched over but "
            f"the guest was not resumed (binomed restarted)", tag="qemu", pri="warning")

    async def _onboot_after_host_boot(self) -> None:
        """Once per host boot (not per daemon restart), start the VMs marked `onboot`."""
        marker = self.runtime.run_dir / "onboot.bootid"
        try:
            boot_id = open("/proc/sys/kernel/random/boot_id").read().strip()
        except OSError:
            return
        if marker.exists() and marker.read_text().strip() == boot_id:
            return
        while not (self.cluster.is_member and self.cluster.view.quorate):  # noqa: ASYNC110
            await asyncio.sleep(1.0)
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(boot_id + "\n")
        for vm in await self.list_configs():
            if not vm.config.get("onboot") or vm.config.get("template"):
                continue
            if self.runtime.is_running(vm.vmid):
                continue
            try:
                async with self.lock(vm.vmid):
                    spec = await self.launch_spec(await self.check_startable(vm.vmid))
                    await self.runtime.start(spec)
                    self._believed_running.add(vm.vmid)
                await self.clusterlog.write(f"VM {vm.vmid} started at boot of node {self.node}",
                                            tag="qemu")
            except Exception as exc:
                await self.clusterlog.write(f"VM {vm.vmid}: start at boot failed: {exc}",
                                            tag="qemu", pri="err")

    async def stop(self) -> None:
        for loop in (self._loop, self._onboot, self._probe, self._settle):
            if loop is not None:
                loop.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await loop
        await self.runtime.close()

    async def _safe_list(self) -> list[VmConfig]:
        try:
            return await self.list_configs() if self.cluster.is_member else []
        except StoreUnavailable:
            return []

    async def _on_guest_exit(self, vmid: int, reason: str) -> None:
        """Called by the runtime once per QEMU exit, at once (or at adoption if it died
        while no daemon ran): an exit nobody asked for goes to the cluster log."""
        expected = vmid not in self._believed_running
        self._believed_running.discard(vmid)
        if expected or "by request" in reason:
            return
        await self.clusterlog.write(f"VM {vmid} stopped unexpectedly on node {self.node}: "
                                    f"{reason}", tag="qemu", pri="warning")

    async def _watch_loop(self) -> None:
        while True:
            try:
                if self.cluster.is_member:
                    await self._watch_once()
            except asyncio.CancelledError:
                raise
            except StoreUnavailable as exc:
                log.debug("guest watch: %s", exc)
            except Exception:
                log.exception("guest watch failed")
            await asyncio.sleep(STATUS_PUBLISH_INTERVAL)

    async def _watch_once(self) -> None:
        statuses: dict[int, dict[str, Any]] = {}
        for vm in await self.list_configs():
            st = await self.runtime.status(vm.vmid)
            statuses[vm.vmid] = self._status_entry(vm, st)
            if st.status == "running":
                self._believed_running.add(vm.vmid)
        self.last_status = statuses
        for vmid in sorted(set(self.runtime.running()) - set(statuses)):
            if not self.lock(vmid).locked():    # a migration step holds it: its business
                await self._settle_copy(vmid, at_start=False)
        lease = self.cluster.lease_id
        if lease is not None and self.cluster.store is not None:
            with contextlib.suppress(StoreUnavailable):
                await self.cluster.store.put(keys.VM_STATUS + self.node,
                                             {str(k): v for k, v in statuses.items()},
                                             lease=lease)

    def _status_entry(self, vm: VmConfig, st) -> dict[str, Any]:
        c = vm.config
        entry = {"vmid": vm.vmid, "name": c.get("name", f"VM {vm.vmid}"),
                 "status": st.status, "uptime": st.uptime, "cpu": st.cpu, "mem": st.mem,
                 "maxmem": int(c.get("memory", vmconf.DEFAULTS["memory"])) * 1024 * 1024,
                 "cpus": int(c.get("cores", 1)) * int(c.get("sockets", 1)),
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

    # ------------------------------------------------------------------ configs
    async def read(self, vmid: int, node: str | None = None, *, fresh: bool = True) -> VmConfig:
        """The VM's config. `fresh` (a quorum read) is required before starting a guest or
        changing its config: a node cut off from the cluster may hold a stale copy of a
        config that was moved away by a recovery. Stop, status and console use this node's
        own copy (`fresh=False`) so they keep working without quorum."""
        node = node or self.node
        entry = await self.store.get(keys.vm_conf(node, vmid), serializable=not fresh)
        if entry is None:
            raise conf_missing(node, vmid)
        text = str(entry.value)
        return VmConfig(vmid, node, vmconf.parse_conf(text), vmconf.digest(text),
                        entry.mod_revision)

    async def list_configs(self, node: str | None = None) -> list[VmConfig]:
        node = node or self.node
        if self.cluster.store is None:
            return []
        prefix = keys.CONFIG_NODES + f"{node}/qemu/"
        out = []
        for entry in await self.store.get_prefix(prefix, serializable=True):
            name = entry.key[len(prefix):]
            if not name.endswith(".conf") or not name[:-5].isdigit():
                continue
            text = str(entry.value)
            out.append(VmConfig(int(name[:-5]), node, vmconf.parse_conf(text),
                                vmconf.digest(text), entry.mod_revision))
        return sorted(out, key=lambda v: v.vmid)

    async def owner(self, vmid: int) -> str | None:
        value = await self.store.get_value(keys.vmid(vmid))
        return value["node"] if value else None

    async def next_free_vmid(self, start: int = 100) -> int:
        used = {int(e.key[len(keys.VMIDS):]) for e in await self.store.get_prefix(keys.VMIDS)}
        vmid = start
        while vmid in used:
            vmid += 1
        return vmid

    async def _write(self, vm: VmConfig, new: dict[str, Any]) -> VmConfig:
        text = vmconf.format_conf(new)
        ok = await self.store.commit({keys.vm_conf(vm.node, vm.vmid): vm.revision},
                                     {keys.vm_conf(vm.node, vm.vmid): text})
        if not ok:
            raise GuestFailure(f"VM {vm.vmid}: configuration changed concurrently; try again")
        return await self.read(vm.vmid, vm.node)

    async def update(self, vmid: int, changes: dict[str, Any], delete: list[str],
                     digest: str | None, *, task: Task | None = None) -> VmConfig:
        """Apply config changes; `digest` (if given) must match the current config."""
        async with self.lock(vmid):
            vm = await self.read(vmid)
            if digest and digest != vm.digest:
                raise GuestFailure("detected modified configuration - file changed by other "
                                   "user? Try again.")
            if vm.config.get("lock") and "lock" not in delete:
                raise GuestFailure(f"VM is locked ({vm.config['lock']})")
            if vm.config.get("template") and any(vmconf.is_disk_key(k) for k in changes):
                raise GuestFailure("you can't change disks of a template")
            new = dict(vm.config)
            for key in delete:
                if key not in new:
                    continue
                if vmconf.is_disk_key(key) and self.runtime.is_running(vmid):
                    raise GuestFailure(f"cannot remove disk {key} of a running VM")
                new.pop(key)
            allocated = []
            try:
                for key, value in changes.items():
                    if vmconf.is_disk_key(key):
                        value, vol = await self._materialize_disk(vmid, key, str(value))
                        if vol:
                            allocated.append(vol)
                            if task:
                                task.log(f"{key}: allocated {vol}")
                    new[key] = value
                vmconf.check_boot_devices(new)
                return await self._write(vm, new)
            except BaseException:
                for vol in allocated:
                    with contextlib.suppress(Exception):
                        await (await self.storages.for_volid(vol)).free(vol)
                raise

    async def _materialize_disk(self, vmid: int, key: str, value: str) -> tuple[str, str | None]:
        """'local:4' -> allocate 4 GiB and return the volume's config value."""
        disk = vmconf.parse_disk(key, value)
        if disk.new_size_gib is None:
            if disk.volid:
                storage = await self.storages.for_volid(disk.volid)
                storage.source(disk.volid)   # raises if it does not exist
            return value, None
        options = dict(disk.options)
        storage_id = options.pop("_storage")
        fmt = options.pop("format", "raw")
        storage = await self.storages.get(storage_id)
        size = int(disk.new_size_gib * (1 << 30))
        volid = await storage.alloc(vmid, size, fmt)
        options["size"] = vmconf.format_size(size)
        return ",".join([volid, *(f"{k}={v}" for k, v in options.items())]), volid

    # ------------------------------------------------------------------ create / destroy
    async def create(self, task: Task, vmid: int, settings: dict[str, Any],
                     start: bool = False) -> None:
        store = self.store
        conf_key = keys.vm_conf(self.node, vmid)
        placeholder = vmconf.format_conf({"lock": "create"})
        if not await store.commit({keys.vmid(vmid): 0, conf_key: 0},
                                  {keys.vmid(vmid): {"node": self.node},
                                   conf_key: placeholder}):
            owner = await self.owner(vmid)
            raise TaskFailed(f"unable to create VM {vmid} - VM {vmid} already exists on node "
                             f"'{owner}'")
        allocated: list[str] = []
        try:
            config: dict[str, Any] = {}
            for key, value in settings.items():
                if vmconf.is_disk_key(key):
                    value, vol = await self._materialize_disk(vmid, key, str(value))
                    if vol:
                        allocated.append(vol)
                        task.log(f"{key}: allocated {vol}")
                config[key] = value
            config.setdefault("smbios1", f"uuid={uuid.uuid4()}")
            if "boot" not in config:
                order = vmconf.boot_order(config)
                if order:
                    config["boot"] = "order=" + ";".join(order)
            vmconf.check_boot_devices(config)
            vm = await self.read(vmid)
            await self._write(vm, config)
        except BaseException as exc:
            task.log(f"creation failed ({exc}); removing what was created")
            for vol in allocated:
                with contextlib.suppress(Exception):
                    await (await self.storages.for_volid(vol)).free(vol)
            with contextlib.suppress(Exception):
                await store.commit({}, None, [keys.vmid(vmid), conf_key])
            raise
        task.log(f"VM {vmid} created on node {self.node}")
        if start:
            await self.start_vm(task, vmid)

    async def destroy(self, task: Task, vmid: int, purge: bool = False,
                      skiplock: bool = False) -> None:
        async with self.lock(vmid):
            vm = await self.read(vmid)
            if self.runtime.is_running(vmid):
                raise TaskFailed(f"VM {vmid} is running - destroy failed")
            if vm.config.get("lock") and vm.config["lock"] != "create" and not skiplock:
                raise TaskFailed(f"VM is locked ({vm.config['lock']})")
            for disk in vmconf.disks(vm.config):
                if not disk.volid or disk.is_cdrom:
                    continue
                if f"-{vmid}-disk-" not in disk.volid:
                    task.log(f"{disk.key}: {disk.volid} is not owned by VM {vmid}; kept")
                    continue
                try:
                    await (await self.storages.for_volid(disk.volid)).free(disk.volid)
                    task.log(f"{disk.key}: removed {disk.volid}")
                except StorageError as exc:
                    task.warn(f"{disk.key}: could not remove {disk.volid}: {exc}")
            await self.store.commit({keys.vm_conf(self.node, vmid): vm.revision}, None,
                                    [keys.vm_conf(self.node, vmid), keys.vmid(vmid)])
            self._believed_running.discard(vmid)
            task.log(f"VM {vmid} destroyed{' (purged)' if purge else ''}")

    # ------------------------------------------------------------------ runtime operations
    async def launch_spec(self, vm: VmConfig) -> LaunchSpec:
        c = vm.config
        disks = []
        for d in vmconf.disks(c):
            if not d.volid:
                continue   # empty cdrom drive
            storage = await self.storages.for_volid(d.volid)
            src = storage.source(d.volid)
            disks.append(DiskSpec(bus=d.bus, index=d.index, source=src.source,
                                  format=src.format, readonly=d.is_cdrom,
                                  cache=d.options.get("cache", "none")))
        nics = [NicSpec(index=n.index, model=n.model, mac=n.mac, bridge=n.bridge, tag=n.tag)
                for n in vmconf.nets(c)]
        kernel = initrd = None
        if c.get("kernel"):
            kernel = (await self.storages.for_volid(c["kernel"])).source(c["kernel"]).source
        if c.get("initrd"):
            initrd = (await self.storages.for_volid(c["initrd"])).source(c["initrd"]).source
        smbios = vmconf.parse_property_string(str(c.get("smbios1", "")))
        vga = str(c.get("vga", "std")).split(",", 1)[0]
        return LaunchSpec(vmid=vm.vmid, name=str(c.get("name", f"vm{vm.vmid}")),
                          memory_mb=int(c.get("memory", vmconf.DEFAULTS["memory"])),
                          cores=int(c.get("cores", 1)), sockets=int(c.get("sockets", 1)),
                          cpu=str(c.get("cpu", "qemu64")), disks=tuple(disks), nics=tuple(nics),
                          boot=tuple(vmconf.boot_order(c)), kernel=kernel, initrd=initrd,
                          append=c.get("append"), vga=vga, uuid=smbios.get("uuid"))

    async def check_startable(self, vmid: int) -> VmConfig:
        vm = await self.read(vmid)
        if vm.config.get("template"):
            raise GuestFailure("you can't start a vm if it's a template")
        if vm.config.get("lock"):
            raise GuestFailure(f"VM is locked ({vm.config['lock']})")
        if self.runtime.is_running(vmid):
            raise GuestFailure(f"VM {vmid} already running")
        return vm

    async def start_vm(self, task: Task, vmid: int) -> None:
        async with self.lock(vmid):
            vm = await self.check_startable(vmid)
            spec = await self.launch_spec(vm)
            pid = await self.runtime.start(spec)
            self._believed_running.add(vmid)
            task.log(f"VM {vmid} started (pid {pid})")

    def require_running(self, vmid: int) -> None:
        if not self.runtime.is_running(vmid):
            raise GuestFailure(f"VM {vmid} not running")

    async def shutdown_vm(self, task: Task, vmid: int, timeout: float, force_stop: bool) -> None:
        async with self.lock(vmid):
            await self.read(vmid, fresh=False)
            self.require_running(vmid)
            self._believed_running.discard(vmid)
            task.log(f"requesting shutdown of VM {vmid} (timeout {timeout:.0f}s)")
            try:
                await self.runtime.shutdown(vmid, timeout=timeout, force_stop=force_stop)
            except BaseException:
                if self.runtime.is_running(vmid):
                    self._believed_running.add(vmid)
                raise
            task.log(f"VM {vmid} is stopped")

    async def stop_vm(self, task: Task, vmid: int, timeout: float = 10.0) -> None:
        async with self.lock(vmid):
            await self.read(vmid, fresh=False)
            self.require_running(vmid)
            self._believed_running.discard(vmid)
            await self.runtime.stop(vmid, timeout=timeout)
            task.log(f"VM {vmid} stopped (hard)")

    async def reboot_vm(self, task: Task, vmid: int, timeout: float) -> None:
        await self.shutdown_vm(task, vmid, timeout, force_stop=False)
        await self.start_vm(task, vmid)

    async def reset_vm(self, task: Task, vmid: int) -> None:
        async with self.lock(vmid):
            await self.read(vmid)
            self.require_running(vmid)
            await self.runtime.reset(vmid)
            task.log(f"VM {vmid} reset")

    async def suspend_vm(self, task: Task, vmid: int) -> None:
        async with self.lock(vmid):
            await self.read(vmid, fresh=False)
            self.require_running(vmid)
            await self.runtime.suspend(vmid)
            task.log(f"VM {vmid} paused")

    async def resume_vm(self, task: Task, vmid: int) -> None:
        async with self.lock(vmid):
            await self.read(vmid, fresh=False)
            self.require_running(vmid)
            await self.runtime.resume(vmid)
            task.log(f"VM {vmid} resumed")

    async def current_status(self, vmid: int) -> dict[str, Any]:
        vm = await self.read(vmid, fresh=False)
        st = await self.runtime.status(vmid)
        entry = self._status_entry(vm, st)
        entry["ha"] = {"managed": 0}
        entry["agent"] = 0
        return entry

    # ------------------------------------------------------------------ clone / template
    async def clone(self, task: Task, vmid: int, newid: int, name: str | None,
                    target: str | None) -> None:
        if target and target != self.node:
            raise TaskFailed("clone to another node is not supported yet; clone here, then "
                             "migrate")
        async with self.lock(vmid):
            vm = await self.read(vmid)
            if self.runtime.is_running(vmid) and not vm.config.get("template"):
                raise TaskFailed(f"VM {vmid} is running: full clone of a running VM is not "
                                 f"supported yet (stop it, or clone from a template)")
            source = dict(vm.config)
        store = self.store
        conf_key = keys.vm_conf(self.node, newid)
        if not await store.commit({keys.vmid(newid): 0, conf_key: 0},
                                  {keys.vmid(newid): {"node": self.node},
                                   conf_key: vmconf.format_conf({"lock": "clone"})}):
            raise TaskFailed(f"unable to create VM {newid} - VM {newid} already exists on node "
                             f"'{await self.owner(newid)}'")
        copied: list[str] = []
        try:
            new: dict[str, Any] = {}
            for key, value in source.items():
                if key in ("template", "lock", "smbios1"):
                    continue
                if vmconf.is_disk_key(key):
                    disk = vmconf.parse_disk(key, str(value))
                    if disk.volid and not disk.is_cdrom:
                        storage = await self.storages.for_volid(disk.volid)
                        volid = await storage.copy(disk.volid, newid)
                        copied.append(volid)
                        task.log(f"{key}: copied {disk.volid} to {volid}")
                        value = ",".join([volid, *(f"{k}={v}" for k, v in disk.options.items())])
                elif vmconf.is_net_key(key):
                    nic = vmconf.parse_net(key, str(value))
                    value = vmconf.NetEntry(nic.key, nic.index, nic.model, vmconf.random_mac(),
                                            nic.bridge, nic.tag, nic.options).format()
                new[key] = value
            new["name"] = name or f"Copy-of-VM-{source.get('name', vmid)}"[:63]
            new["smbios1"] = f"uuid={uuid.uuid4()}"
            await self._write(await self.read(newid), new)
        except BaseException as exc:
            task.log(f"clone failed ({exc}); removing what was created")
            for vol in copied:
                with contextlib.suppress(Exception):
                    await (await self.storages.for_volid(vol)).free(vol)
            with contextlib.suppress(Exception):
                await store.commit({}, None, [keys.vmid(newid), conf_key])
            raise
        task.log(f"VM {vmid} cloned to VM {newid}")

    async def make_template(self, task: Task, vmid: int) -> None:
        async with self.lock(vmid):
            vm = await self.read(vmid)
            if self.runtime.is_running(vmid):
                raise TaskFailed(f"VM {vmid} is running: shut it down before converting it to "
                                 f"a template")
            if vm.config.get("template"):
                raise TaskFailed(f"VM {vmid} is already a template")
            await self._write(vm, {**vm.config, "template": 1})
            task.log(f"VM {vmid} converted to a template")

    # ------------------------------------------------------------------ cluster-wide view
    async def cluster_vms(self) -> list[dict[str, Any]]:
        """Every VM of the cluster with its status, for /cluster/resources."""
        if self.cluster.store is None:
            return []
        store = self.store
        statuses: dict[str, dict[str, Any]] = {}
        for entry in await store.get_prefix(keys.VM_STATUS, serializable=True):
            statuses[entry.key[len(keys.VM_STATUS):]] = entry.value
        out = []
        for entry in await store.get_prefix(keys.CONFIG_NODES, serializable=True):
            rest = entry.key[len(keys.CONFIG_NODES):]
            node, _, tail = rest.partition("/qemu/")
            if not tail.endswith(".conf") or not tail[:-5].isdigit():
                continue
            vmid = int(tail[:-5])
            c = vmconf.parse_conf(str(entry.value))
            if node == self.node and vmid in self.last_status:
                st = dict(self.last_status[vmid])
            else:
                st = dict(statuses.get(node, {}).get(str(vmid)) or {})
            item = {"id": f"qemu/{vmid}", "type": "qemu", "vmid": vmid, "node": node,
                    "name": c.get("name", f"VM {vmid}"), "status": st.get("status", "unknown"),
                    "template": int(c.get("template", 0) or 0),
                    "maxcpu": int(c.get("cores", 1)) * int(c.get("sockets", 1)),
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

    # ------------------------------------------------------------------ migration
    def _migration_nodes(self) -> list[str]:
        """The other nodes that can host guests (not witnesses), sorted."""
        return sorted(n for n, rec in self.cluster.node_records.items()
                      if n != self.node and rec.get("role", "node") == "node"
                      and rec.get("state", "member") == "member")

    async def _disk_kinds(self, vm: VmConfig) -> tuple[list[dict[str, Any]], list[str]]:
        """(local disks in PVE's shape, replicated volume names) of a VM's disks."""
        local: list[dict[str, Any]] = []
        replicated: list[str] = []
        for d in vmconf.disks(vm.config):
            if not d.volid or d.is_cdrom:
                continue   # ISO images and kernels must exist on the target: checked there
            storage = await self.storages.for_volid(d.volid)
            if storage.config.type == "replicated":
                replicated.append(storage.volname(d.volid))   # type: ignore[attr-defined]
            elif not storage.config.shared:
                local.append({"volid": d.volid, "drivename": d.key, "size": d.size or 0,
                              "cdrom": 0, "is_unused": 0})
        return local, replicated

    async def _replica_problem(self, name: str, target: str, online: bool) -> str | None:
        """Why `target` cannot take volume `name` now (None: it can)."""
        from binome.storage.replica.service import VolumeFailure, effective_disk_states

        if self.volumes is None:
            return "replicated storage is not available on this node"
        try:
            view = await self.volumes.cluster_view(name)
        except VolumeFailure as exc:
            return str(exc)
        if target not in view["config"].get("nodes", {}):
            holders = ", ".join(sorted(view["config"].get("nodes", {})))
            return f"volume {name} has no copy on {target} (replicated between {holders})"
        disk = effective_disk_states(view).get(target, "DUnknown")
        if disk != "UpToDate":
            return f"the copy of volume {name} on {target} is {disk}, not UpToDate"
        if online:
            # the live link is what dual-primary writes go through: ask our engine
            try:
                st = await self.volumes.call("status", name=name)
            except Exception as exc:   # engine down, volume not up ...
                return f"volume {name}: {exc}"
            if st.get("cstate") != "Connected" or st.get("peer_disk") != "UpToDate":
                return (f"volume {name} is {st.get('cstate')} (peer disk "
                        f"{st.get('peer_disk')}) here: live migration needs it Connected "
                        f"with both copies UpToDate")
        return None

    async def migrate_preconditions(self, vmid: int, target: str | None = None
                                    ) -> dict[str, Any]:
        """PVE's `GET .../migrate`: running, allowed_nodes, not_allowed_nodes, local_disks."""
        vm = await self.read(vmid)
        running = self.runtime.is_running(vmid)
        local, replicated = await self._disk_kinds(vm)
        allowed: list[str] = []
        not_allowed: dict[str, Any] = {}
        for node in self._migration_nodes():
            if target is not None and node != target:
                continue
            problems = []
            if not self.cluster.node_online(node):
                problems.append(f"node '{node}' is not online")
            bad: list[str] = []
            for name in replicated:
                why = await self._replica_problem(name, node, running)
                if why:
                    problems.append(why)
                    bad.append(name)
            if problems:
                not_allowed[node] = {"unavailable_storages": sorted(
                    {v.split(":", 1)[0] for v in _volids(vm, bad)}), "reasons": problems}
            else:
                allowed.append(node)
        return {"running": int(running), "allowed_nodes": allowed,
                "not_allowed_nodes": not_allowed, "local_disks": local,
                "local_resources": [], "mapped-resources": [],
                "replicated_volumes": replicated}

    async def check_migratable(self, vmid: int, target: str, *, online: bool,
                               with_local_disks: bool = False) -> VmConfig:
        """The refusals of a migration request, before any task starts (PVE's texts)."""
        vm = await self.read(vmid)
        if vm.config.get("lock"):
            raise GuestFailure(f"VM is locked ({vm.config['lock']})")
        if vm.config.get("template") and self.runtime.is_running(vmid):
            raise GuestFailure("you can't migrate a running template")
        if self.runtime.is_running(vmid) and not online:
            raise GuestFailure("can't migrate running VM without --online")
        if not self.cluster.node_online(target):
            raise GuestFailure(f"target node '{target}' is not online")
        local, replicated = await self._disk_kinds(vm)
        if local:
            disks = ", ".join(f"{d['drivename']} ({d['volid']})" for d in local)
            if with_local_disks:
                raise GuestFailure(f"migration of local disks is not implemented: {disks}; "
                                   f"move them to replicated storage first")
            raise GuestFailure(f"can't migrate VM {vmid} with local disks: {disks} (binome "
                               f"migrates VMs whose disks are on replicated storage)")
        running = self.runtime.is_running(vmid)
        for name in replicated:
            why = await self._replica_problem(name, target, running)
            if why:
                raise GuestFailure(f"can't migrate VM {vmid} to {target}: {why}")
        return vm

    async def _move_config(self, vm: VmConfig, target: str) -> None:
        """The switch-over: config and vmid owner to `target`, lock removed, in one
        transaction conditioned on the source config, the owner and an absent target
        config. If etcd does not answer, the owner is read again to learn the outcome."""
        store = self.store
        src_key, dst_key, own_key = (keys.vm_conf(self.node, vm.vmid),
                                     keys.vm_conf(target, vm.vmid), keys.vmid(vm.vmid))
        owner = await store.get(own_key)
        if owner is None or (owner.value or {}).get("node") != self.node:
            raise GuestFailure(f"VM {vm.vmid}: this node is not its owner; not moved")
        new = {k: v for k, v in vm.config.items() if k != "lock"}
        text = vmconf.format_conf(new)
        try:
            ok = await store.commit({src_key: vm.revision, own_key: owner.mod_revision,
                                     dst_key: 0},
                                    {dst_key: text, own_key: {**owner.value, "node": target}},
                                    [src_key])
        except StoreUnavailable:
            ok = None
        if ok is None:   # unknown outcome: ask again (with quorum) before deciding anything
            for _ in range(10):
                try:
                    now = await store.get_value(own_key)
                    ok = (now or {}).get("node") == target
                    break
                except StoreUnavailable:
                    await asyncio.sleep(1.0)
            else:
                raise GuestFailure(f"VM {vm.vmid}: cluster store unavailable: cannot tell "
                                   f"whether the config moved to {target}")
        if not ok:
            raise GuestFailure(f"VM {vm.vmid}: config changed while migrating; not moved")

    async def _set_lock(self, vm: VmConfig, lock: str | None) -> VmConfig:
        new = dict(vm.config)
        if lock:
            new["lock"] = lock
        else:
            new.pop("lock", None)
        return await self._write(vm, new)

    async def _demote_after(self, task: Task | None, names: list[str],
                            timeout: float = 15.0) -> None:
        """Demote volumes once QEMU's NBD connections are gone (a demotion is refused
        while the device is open); a failure is a warning (in the task if there is
        one), not an error: the guest runs elsewhere, or never left, and a Primary
        that no one opens does no harm."""
        if self.volumes is None:
            return
        for name in names:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    st = await self.volumes.demote(name)
                    if task is not None:
                        task.log(f"volume {name}: Secondary on {self.node} (peer "
                                 f"{st.get('peer_role', '?')})")
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

    async def migrate_vm(self, task: Task, vmid: int, target: str, *, online: bool,
                         with_local_disks: bool = False, bwlimit_kib: int | None = None
                         ) -> None:
        """Move VM `vmid` to `target`: a config move if stopped, a live migration if
        running (needs `online`). Runs on the source node, as task `qmigrate`.
        `bwlimit_kib`: migration bandwidth limit in KiB/s (None: the runtime's)."""
        started = time.monotonic()
        address = (self.cluster.node_address(target) or ("?", 0))[0]
        async with self.lock(vmid):
            vm = await self.check_migratable(vmid, target, online=online,
                                             with_local_disks=with_local_disks)
            _local, replicated = await self._disk_kinds(vm)
            running = self.runtime.is_running(vmid)
            task.log(f"starting migration of VM {vmid} to node '{target}' ({address})")
            if online and not running:
                task.log("VM isn't running. Doing offline migration instead.")
            vm = await self._set_lock(vm, "migrate")
            try:
                if running:
                    await self._live_migrate(task, vm, target, replicated, bwlimit_kib)
                else:
                    await self._offline_migrate(task, vm, target, replicated)
            except BaseException as exc:
                task.log(f"migration aborted: {exc}")
                with contextlib.suppress(Exception):
                    current = await self.read(vmid)     # still ours: unlock it
                    if current.config.get("lock") == "migrate":
                        await self._set_lock(current, None)
                raise
        elapsed = time.monotonic() - started
        task.log(f"migration finished successfully (duration {_hms(elapsed)})")

    async def _offline_migrate(self, task: Task, vm: VmConfig, target: str,
                               replicated: list[str]) -> None:
        from binome.guest.remote import node_call

        # a stopped guest's volumes are Primary here; the target's copy is UpToDate
        await self._demote_after(task, replicated, timeout=5.0)
        await self._move_config(vm, target)
        task.log(f"VM {vm.vmid}: config moved to node '{target}'")
        if replicated:
            # make the guest startable there at once (a start does not promote by itself)
            try:
                await node_call(self.cluster, target, "POST",
                                f"/nodes/{target}/qemu/{vm.vmid}/migrate/incoming",
                                {"phase": "promote", "source": self.node})
                task.log(f"volumes {', '.join(replicated)}: Primary on {target}")
            except BinomeError as exc:
                task.warn(f"could not make the volumes Primary on {target}: {exc} "
                          f"(promote them there before starting the VM)")

    async def _live_migrate(self, task: Task, vm: VmConfig, target: str,
                            replicated: list[str], bwlimit_kib: int | None) -> None:
        from binome.guest.remote import node_call

        vmid = vm.vmid
        path = f"/nodes/{target}/qemu/{vmid}/migrate/incoming"

        async def target_abort() -> None:
            try:
                await node_call(self.cluster, target, "POST", path,
                                {"phase": "abort", "source": self.node})
            except BinomeError as exc:
                task.warn(f"cleanup on {target} failed: {exc}")

        task.log(f"starting VM {vmid} on remote node '{target}'")
        try:
            prep = await node_call(self.cluster, target, "POST", path,
                                   {"phase": "prepare", "source": self.node}, timeout=90)
        except BaseException:
            await asyncio.shield(target_abort())
            raise
        uri = str(prep["uri"])
        for name in prep.get("promoted") or []:
            task.log(f"volume {name}: Primary on {target} too (dual-primary)")
        task.log(f"migration listens on {uri}")
        task.log(f"starting online/live migration on {uri}")
        defaults = runtime_defaults()
        bandwidth = bwlimit_kib * 1024 if bwlimit_kib else defaults["max_bandwidth"]
        task.log(f"set migration capabilities: auto-converge, events; downtime limit "
                 f"{defaults['downtime_ms']} ms, bandwidth limit {bandwidth // 1024} KiB/s")
        last = [0.0]

        def progress(info: dict[str, Any]) -> None:
            now = time.monotonic()
            if now - last[0] < 1.0:
                return
            last[0] = now
            ram = info.get("ram") or {}
            task.log(f"migration status: {info.get('status')} (transferred "
                     f"{ram.get('transferred', 0)}, remaining {ram.get('remaining', 0)}), "
                     f"total {ram.get('total', 0)})")

        try:
            info = await self.runtime.migrate_out(vmid, uri, on_progress=progress,
                                                  max_bandwidth=bandwidth)
        except BaseException:
            # migrate_out has cancelled the migration: the source runs on
            await asyncio.shield(target_abort())
            raise
        completed_at = time.monotonic()
        ram = info.get("ram") or {}
        mbps = float(ram.get("mbps") or 0.0)
        qemu_downtime = int(info.get("downtime") or 0)
        task.log(f"migration status: completed (transferred {ram.get('transferred', 0)}, "
                 f"total {ram.get('total', 0)}, {mbps / 8:.1f} MB/s)")
        # switch-over: the source is paused (postmigrate), the target paused (-S)
        try:
            await self._move_config(vm, target)
        except BaseException as exc:
            try:
                now_owner: str | None = await self.owner(vmid)
            except Exception:
                now_owner = None
            if now_owner == self.node:
                task.log(f"switch-over failed ({exc}); resuming VM {vmid} here")
                await asyncio.shield(self.runtime.resume(vmid))
                await asyncio.shield(target_abort())
                raise
            if now_owner is None:
                # resuming either side could make two running copies: leave both paused
                task.log(f"switch-over failed ({exc}) and the owner of VM {vmid} cannot be "
                         f"read: VM left paused on {self.node} and {target}")
                raise
            if now_owner != target or isinstance(exc, asyncio.CancelledError):
                raise
            task.log(f"switch-over reported an error ({exc}) but VM {vmid} belongs to "
                     f"{target} now: going on")
        task.log(f"VM {vmid}: config moved to node '{target}'")
        self._believed_running.discard(vmid)
        await self.runtime.stop(vmid, requested="migrated")
        resumed_err: BaseException | None = None
        for attempt in range(3):
            try:
                await node_call(self.cluster, target, "POST", path,
                                {"phase": "resume", "source": self.node})
                resumed_err = None
                break
            except BinomeError as exc:
                resumed_err = exc
                task.warn(f"resume on {target} failed (attempt {attempt + 1}): {exc}")
                await asyncio.sleep(1.0)
        switch_ms = int((time.monotonic() - completed_at) * 1000)
        if resumed_err is not None:
            raise GuestFailure(f"VM {vmid} was handed over to {target} but could not be "
                               f"resumed there: {resumed_err}")
        task.log(f"VM {vmid} resumed on node '{target}'")
        task.log(f"migration downtime: {qemu_downtime} ms (QEMU stop-and-copy) + "
                 f"{switch_ms} ms (switch-over: config move, source stop, target resume)")
        await self._demote_after(task, replicated)

    # -- the target's side (POST .../migrate/incoming, called by the source node) ----
    async def _promote_here(self, names: list[str]) -> list[str]:
        """Make each volume Primary here; the ones this call promoted."""
        promoted: list[str] = []
        if not names:
            return promoted
        if self.volumes is None:
            raise GuestFailure("replicated storage is not available on this node")
        try:
            for name in names:
                st = await self.volumes.call("status", name=name)
                if st.get("role") == "Primary":
                    continue
                await self.volumes.promote(name)
                promoted.append(name)
        except BaseException:
            await asyncio.shield(self._demote_after(None, promoted, timeout=10.0))
            raise
        return promoted

    async def incoming_prepare(self, vmid: int, source: str) -> dict[str, Any]:
        """Start a paused QEMU waiting for the state of VM `vmid` from `source`."""
        async with self.lock(vmid):
            vm = await self.read(vmid, node=source)
            if vm.config.get("lock") != "migrate":
                raise GuestFailure(f"VM {vmid} is not being migrated from {source}")
            if self.runtime.is_running(vmid):
                raise GuestFailure(f"VM {vmid} already running on {self.node}")
            _local, replicated = await self._disk_kinds(vm)
            promoted = await self._promote_here(replicated)
            try:
                spec = await self.launch_spec(vm)
                await self.runtime.start(spec, incoming=True)
                uri = await self.runtime.listen_incoming(vmid,
                                                         self.cluster.config.cluster_address)
            except BaseException:
                await asyncio.shield(self._drop_incoming(vmid, promoted))
                raise
            self._incoming[vmid] = {"source": source, "promoted": promoted,
                                    "since": time.time()}
            log.info("VM %s: incoming migration from %s on %s", vmid, source, uri)
            return {"uri": uri, "promoted": promoted}

    async def _volumes_primary_here(self, vm: VmConfig) -> list[str]:
        """The VM's replicated volumes whose copy here is Primary: what dropping a
        migration's copy here must demote."""
        return [name for name in (await self._disk_kinds(vm))[1]
                if await self._primary_here(name)]

    async def _primary_here(self, name: str) -> bool:
        if self.volumes is None:
            return False
        try:
            return (await self.volumes.call("status", name=name)).get("role") == "Primary"
        except Exception:
            return False   # no copy here, or the engine is down: nothing to demote

    async def _drop_incoming(self, vmid: int, promoted: list[str]) -> None:
        if self.runtime.is_running(vmid):
            with contextlib.suppress(Exception):
                await self.runtime.stop(vmid, timeout=5.0)
        await self._demote_after(None, promoted, timeout=10.0)

    async def incoming_resume(self, vmid: int, source: str) -> dict[str, Any]:
        """After the switch-over: the config is here now; run the received guest."""
        async with self.lock(vmid):
            if vmid not in self._incoming and self.runtime.is_running(vmid):
                # adopted after a restart of this daemon: maybe already resumed by it
                runstate, _migration, _incoming = await self.runtime.migration_state(vmid)
                if runstate == "running":
                    await self.read(vmid)
                    return {"status": "running"}
            await self.runtime.wait_incoming(vmid)
            await self.read(vmid)          # quorum read: the config must be ours now
            await self.runtime.resume(vmid)
            self._believed_running.add(vmid)
            self._incoming.pop(vmid, None)
            try:
                await self.runtime.announce(vmid)
            except GuestError as exc:
                log.warning("VM %s: announce after migration failed: %s", vmid, exc)
            log.info("VM %s: migrated here from %s and resumed", vmid, source)
            return {"status": "running"}

    async def incoming_abort(self, vmid: int, source: str) -> dict[str, Any]:
        """Remove what `incoming_prepare` made, unless the guest is ours by now."""
        async with self.lock(vmid):
            if await self.owner(vmid) == self.node:
                raise GuestFailure(f"VM {vmid} belongs to {self.node} now; not aborting")
            info = self._incoming.pop(vmid, None) or {}
            promoted = list(info.get("promoted") or [])
            if not info:
                # daemon restarted meanwhile: every volume of the VM Primary here goes back
                with contextlib.suppress(Exception):
                    promoted = await self._volumes_primary_here(
                        await self.read(vmid, node=source))
            await self._drop_incoming(vmid, promoted)
            return {"status": "stopped"}

    async def incoming_promote(self, vmid: int) -> dict[str, Any]:
        """After an offline migration: the VM's replicated volumes Primary here."""
        async with self.lock(vmid):
            vm = await self.read(vmid)
            _local, replicated = await self._disk_kinds(vm)
            return {"promoted": await self._promote_here(replicated)}


def runtime_defaults() -> dict[str, Any]:
    from binome.guest import runtime

    return {"downtime_ms": runtime.MIGRATE_DOWNTIME_MS,
            "max_bandwidth": runtime.MIGRATE_MAX_BANDWIDTH}


def _volids(vm: VmConfig, names: list[str]) -> list[str]:
    out = []
    for d in vmconf.disks(vm.config):
        if d.volid and any(d.volid.endswith(":" + n) for n in names):
            out.append(d.volid)
    return out


def _hms(seconds: float) -> str:
    s = round(seconds)
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"
