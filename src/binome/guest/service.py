"""Guests of one node: configs in etcd, lifecycle through the QEMU runtime, status.

A VM's config lives under its owner node (``/binome/config/nodes/<node>/qemu/
<vmid>.conf``, the text of a PVE .conf file) and its vmid is reserved
cluster-wide (``/binome/vmids/<vmid>``) in the same transaction, so two nodes
can never create the same vmid. Config updates are compare-and-swap on the
config digest. The QEMU processes belong to the runtime and outlive the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from binome.errors import BinomeError
from binome.guest import config as vmconf
from binome.guest.spec import DiskSpec, LaunchSpec, NicSpec
from binome.storage.base import StorageError
from binome.store import keys
from binome.store.client import StoreUnavailable
from binome.tasks.manager import Task, TaskFailed

if TYPE_CHECKING:
    from binome.cluster.service import ClusterService
    from binome.guest.runtime import QemuRuntime
    from binome.storage.manager import StorageManager
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
        self._probe: asyncio.Task | None = None
        runtime.on_exit = self._on_guest_exit
        self.last_status: dict[int, dict[str, Any]] = {}

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
        # decide KVM vs TCG now (the probe boots a guest for a few seconds), not on the
        # first start, which may be an HA recovery where seconds count
        self._probe = asyncio.create_task(self.runtime.accel(), name="accel-probe")

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
        for loop in (self._loop, self._onboot, self._probe):
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
