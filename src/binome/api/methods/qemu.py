"""QEMU guest methods: /nodes/{node}/qemu/... and /cluster/nextid, in PVE's shapes.

Synchronous checks (the VM exists, is or is not running, is not a template)
run before a task is started, so a refused request changes nothing and the
client reads PVE's message from the HTTP reason phrase.
"""

from __future__ import annotations

import re
from typing import Any

from binome.access.ops import remove_vm, update_pool
from binome.access.permission import And, AnyUser, Or, Perm
from binome.api.context import RequestContext
from binome.api.errors import ApiError, PermissionDenied, fail, param_error
from binome.api.methods import ha as ha_api
from binome.api.methods.common import NODE, access_change, ha_config_if_clustered
from binome.api.registry import CliSpec, privs, registry
from binome.api.schema import Param
from binome.backup.jobs import BackupJobs, JobError
from binome.cluster.mappings import Mappings
from binome.errors import BinomeError
from binome.guest import cloudinit, monitor, pending
from binome.guest import config as vmconf
from binome.guest.errors import GuestFailure, HotplugProblems
from binome.guest.guests import GuestService
from binome.guest.volume_copy import parse_storage_map
from binome.ha.config import sid_of
from binome.tasks.manager import Task, TaskFailed

VMID = Param(type="integer", minimum=100, maximum=999_999_999, description="The (unique) ID "
             "of the VM.")
VM_PATH = "/vms/{vmid}"
AUDIT = privs("VM.Audit", path=VM_PATH)
POWER = privs("VM.PowerMgmt", path=VM_PATH)
# PVE's update_vm: any VM.Config.* lets one in; each key then needs its own (below)
CONFIG = privs("VM.Config.Disk", "VM.Config.CDROM", "VM.Config.CPU", "VM.Config.Memory",
               "VM.Config.Network", "VM.Config.HWType", "VM.Config.Options",
               "VM.Config.Cloudinit", path=VM_PATH, any=True)
# PVE's check_vm_modify_config_perm (API2/Qemu.pm $cpuoptions, $memoryoptions,
# $hwtypeoptions, $generaloptions, $vmpoweroptions, $diskoptions): the privilege each
# key needs on /vms/<vmid>. Disks, CD-ROMs and NICs are decided by `_key_privs`; keys
# in vmconf.ROOT_ONLY only root@pam may set.
_PVE_KEY_CLASSES = {
    "VM.Config.CPU": ("cores", "cpu", "cpulimit", "cpuunits", "numa", "sockets", "vcpus"),
    "VM.Config.Memory": ("memory", "balloon", "shares"),
    "VM.Config.HWType": ("acpi", "hotplug", "kvm", "machine", "scsihw", "smbios1", "tablet",
                         "vga", "watchdog"),
    "VM.Config.Options": ("agent", "autostart", "bios", "description", "keyboard",
                          "localtime", "migrate_downtime", "migrate_speed", "name", "onboot",
                          "ostype", "protection", "reboot", "startdate", "startup", "tdf",
                          "template", "tags"),
    "VM.PowerMgmt": ("freeze",),
    "VM.Config.Disk": ("boot", "bootdisk", "vmstatestorage"),
}
KEY_PRIVS: dict[str, tuple[str, ...]] = {
    key: (priv,) for priv, keys in _PVE_KEY_CLASSES.items() for key in keys}
KEY_PRIVS.update({
    # a serial socket is hardware (a host device is root's: vmconf.root_only)
    **{f"serial{i}": ("VM.Config.HWType",) for i in range(vmconf.MAX_SERIALS)},
    # binome's direct kernel boot: which code the guest runs, from a storage
    "kernel": ("VM.Config.Disk", "VM.Config.HWType"),
    "initrd": ("VM.Config.Disk", "VM.Config.HWType"),
    "append": ("VM.Config.Disk", "VM.Config.HWType"),
    # PVE: numaN and smp are CPU options, allow-ksm memory, audio0 / rng0 / usbN (spice)
    # hardware, virtiofsN a disk (plus Mapping.Use on the mapping: _check_root_keys)
    **{f"numa{i}": ("VM.Config.CPU",) for i in range(vmconf.MAX_NUMA_NODES)},
    "smp": ("VM.Config.CPU",), "allow-ksm": ("VM.Config.Memory",),
    "audio0": ("VM.Config.HWType",), "rng0": ("VM.Config.HWType",),
    **{f"usb{i}": ("VM.Config.HWType",) for i in range(vmconf.MAX_USB)},
    # a mapped PCI device (a host one is root's): PVE's check_hostpci_perm
    **{f"hostpci{i}": ("VM.Config.HWType",) for i in range(vmconf.MAX_HOSTPCI)},
    **{f"virtiofs{i}": ("VM.Config.Disk",) for i in range(vmconf.MAX_VIRTIOFS)},
    # PVE's $cloudinitoptions and ipconfigN
    **{key: ("VM.Config.Cloudinit",) for key in cloudinit.OPTIONS},
    **{f"ipconfig{i}": ("VM.Config.Cloudinit",) for i in range(cloudinit.MAX_IPCONFIGS)}})
TIMEOUT = Param(type="integer", optional=True, minimum=0, maximum=86400,
                description="Wait at most this many seconds.")
SETTABLE = {k: v for k, v in vmconf.SCHEMA.items() if k not in vmconf.INTERNAL_KEYS}
POOL = Param(optional=True, description="Add the VM to the specified pool.")
# PVE: VM.Allocate on the new VM, or on the pool it is created in
IN_POOL = Perm("/pool/{pool}", ("VM.Allocate",), require_param="pool")


async def _check_pool(ctx: RequestContext, pool: str | None) -> None:
    """PVE's check_pool_exist, before anything is created."""
    if pool and pool not in (await ctx.services.access.config()).pools:
        raise fail(f"pool '{pool}' does not exist")


async def _add_to_pool(ctx: RequestContext, vmid: int, pool: str | None) -> None:
    if pool:
        await access_change(ctx, f"add VM {vmid} to pool '{pool}'",
                            lambda cfg: update_pool(cfg, pool, vms=[vmid]))


def guests(ctx: RequestContext) -> GuestService:
    service = ctx.services.guests
    if service is None:
        raise fail("this node does not host guests (witness)")
    return service


def _config_changes(params: dict[str, Any]) -> dict[str, Any]:
    changes = {k: v for k, v in params.items() if k in SETTABLE}
    try:
        return vmconf.validate_changes(changes)
    except vmconf.ConfigError as exc:
        raise ApiError(400, "Parameter verification failed.", exc.errors) from None


def _start_task(ctx: RequestContext, type_: str, vmid: int, body) -> str:
    return ctx.services.tasks.start(type_, str(vmid), ctx.userid, body)


@registry.register(
    "GET", "/cluster/nextid", name="cluster_nextid",
    permission=AnyUser("PVE: user => 'all'"),
    description="Get the next free VMID (>= 100), or check that a given one is free.",
    parameters={"vmid": Param(type="integer", optional=True, minimum=100,
                              maximum=999_999_999, description="VMID to check.")},
    returns={"type": "string"},
    cli=CliSpec(("vm", "nextid")),
)
async def cluster_nextid(ctx: RequestContext, params: dict[str, Any]) -> str:
    service = guests(ctx)
    if params.get("vmid") is not None:
        if await service.owner(params["vmid"]) is not None:
            raise param_error("vmid", f"VM {params['vmid']} already exists")
        return str(params["vmid"])
    return str(await service.next_free_vmid())


@registry.register(
    "GET", "/nodes/{node}/qemu", name="vm_list",
    permission=AnyUser("only VMs with VM.Audit on /vms/<vmid>"), proxyto="node",
    description="Virtual machine index (per node).",
    parameters={"node": NODE, "full": Param(type="boolean", optional=True, default=False)},
    returns={"type": "array", "items": {"type": "object"}},
    cli=CliSpec(("vm", "list"), formatter="table:vmid,name,status,mem,maxmem,cpus,uptime,pid"),
)
async def vm_list(ctx: RequestContext, params: dict[str, Any]) -> list[dict[str, Any]]:
    service = guests(ctx)
    ev = await ctx.services.access.evaluator()
    out = []
    for vm in await service.list_configs():
        if not ev.check(ctx.userid, f"/vms/{vm.vmid}", ["VM.Audit"]):
            continue
        st = await service.runtime.status(vm.vmid)
        out.append(service._status_entry(vm, st))
    return out


@registry.register(
    "POST", "/nodes/{node}/qemu", name="vm_create",
    permission=Or(privs("VM.Allocate", path=VM_PATH), IN_POOL),
    proxyto="node", description="Create a virtual machine.",
    parameters={"node": NODE, "vmid": VMID, "pool": POOL,
                "start": Param(type="boolean", optional=True, default=False,
                               description="Start the VM once created."),
                "archive": Param(optional=True, max_length=255,
                                 description="The backup volume to restore (STORAGE:backup/"
                                             "NAME)."),
                "storage": Param(optional=True, max_length=64,
                                 pattern=r"[a-z][a-z0-9\-_.]*",
                                 description="Default storage of the restored disks."),
                "unique": Param(type="boolean", optional=True, default=False,
                                description="Assign a unique random ethernet address "
                                            "(restore)."),
                "force": Param(type="boolean", optional=True, default=False,
                               description="Allow to overwrite existing VM (restore)."),
                "live-restore": Param(type="boolean", optional=True, default=False,
                                      description="Start the VM immediately while "
                                                  "restoring in the background."),
                "bwlimit": Param(type="integer", optional=True, minimum=0,
                                 description="Override I/O bandwidth limit (in KiB/s) of "
                                             "the restore (0: none)."),
                **SETTABLE},
    returns={"type": "string", "description": "UPID"},
    cli=(CliSpec(("vm", "create"), positional=("vmid",)),
         CliSpec(("qmrestore",), positional=("archive", "vmid"),
                 help="Restore a backup (POST /nodes/{node}/qemu with archive).")),
)
async def vm_create(ctx: RequestContext, params: dict[str, Any]) -> str:
    service = guests(ctx)
    vmid = params["vmid"]
    if params.get("archive") is not None:
        return await _restore(ctx, service, params)
    for key in ("storage", "unique", "force", "live-restore", "bwlimit"):
        if params.get(key):
            raise param_error(key, "option is only valid with 'archive' (restore)")
    changes = _config_changes(params)
    owner = await service.owner(vmid)
    if owner is not None:
        raise fail(f"unable to create VM {vmid} - VM {vmid} already exists on node '{owner}'")
    # PVE's create_vm: Datastore.AllocateSpace on each new disk's storage, and access to
    # each existing volume attached
    await _check_storage_access(ctx, new_disk_storages(changes))
    await _check_volume_access(ctx, vmid, changes)
    for key, value in changes.items():
        if vmconf.is_drive_key(key):
            disk = vmconf.parse_drive(key, str(value))
            storage_id = disk.options.get("_storage") or disk.storage
            if storage_id:
                try:
                    await service.storages.get(storage_id)
                except BinomeError as exc:
                    raise param_error(key, str(exc)) from None
    await _check_pool(ctx, params.get("pool"))
    await _check_create_privs(ctx, vmid, params.get("pool"), changes, params["start"])

    async def body(task: Task) -> None:
        await service.create(task, vmid, changes, start=params["start"])
        await _add_to_pool(ctx, vmid, params.get("pool"))

    return _start_task(ctx, "qmcreate", vmid, body)


async def _restore(ctx: RequestContext, service: GuestService, params: dict[str, Any]) -> str:
    """PVE's restore branch of create_vm: checks before the task, the work in guest."""
    vmid, archive = params["vmid"], params["archive"]
    conflicting = [k for k in params if k in SETTABLE]
    if conflicting:
        raise param_error(conflicting[0], "option conflicts with option 'archive'")
    storage_id, _, volname = archive.partition(":")
    if not storage_id or not volname.startswith("backup/"):
        raise param_error("archive", f"'{archive}' is not a backup volume "
                                     f"(STORAGE:backup/NAME)")
    try:
        source = await service.storages.get(storage_id)
        source.backup_store()
    except BinomeError as exc:
        raise param_error("archive", str(exc)) from None
    if params.get("storage") is not None:
        try:
            await service.storages.get(params["storage"])
        except BinomeError as exc:
            raise param_error("storage", str(exc)) from None
        await _check_storage_access(ctx, [params["storage"]])
    # PVE's check_volume_access on the archive: VM.Backup on its guest and
    # Datastore.AllocateSpace on its storage, or Datastore.Allocate
    ev = await ctx.services.access.evaluator()
    if not ev.check(ctx.userid, f"/storage/{storage_id}", ["Datastore.Allocate"]):
        if not ev.check(ctx.userid, f"/storage/{storage_id}", ["Datastore.AllocateSpace"]):
            raise PermissionDenied(f"/storage/{storage_id}, Datastore.AllocateSpace")
    owner = await service.owner(vmid)
    if owner is not None:
        if not params["force"]:
            raise fail(f"unable to restore VM {vmid} - VM {vmid} already exists on node "
                       f"'{owner}'")
        if service.runtime.is_running(vmid):
            raise fail(f"unable to restore VM {vmid} - VM is running")
    await _check_pool(ctx, params.get("pool"))

    async def body(task: Task) -> None:
        await service.restore(task, vmid, archive, storage=params.get("storage"),
                              unique=params["unique"], force=params["force"],
                              live=params["live-restore"],
                              bwlimit_kib=params.get("bwlimit") or None)
        await _add_to_pool(ctx, vmid, params.get("pool"))
        if params["start"] and not params["live-restore"]:   # (PVE's: running already)
            await service.start_vm(task, vmid)

    return _start_task(ctx, "qmrestore", vmid, body)


@registry.register(
    "GET", "/nodes/{node}/qemu/{vmid}", name="vm_index", permission=AUDIT, proxyto="node",
    description="Directory index of a VM.",
    parameters={"node": NODE, "vmid": VMID},
    returns={"type": "array"},
)
async def vm_index(ctx: RequestContext, params: dict[str, Any]) -> list[dict[str, str]]:
    await guests(ctx).read(params["vmid"])
    return [{"subdir": s} for s in ("config", "pending", "cloudinit", "status", "clone",
                                    "template", "snapshot",
                                    "resize", "vncproxy", "termproxy", "spiceproxy", "rrddata")]


@registry.register(
    "DELETE", "/nodes/{node}/qemu/{vmid}", name="vm_destroy",
    permission=privs("VM.Allocate", path=VM_PATH), proxyto="node",
    description="Destroy the VM and all used/owned volumes.",
    parameters={"node": NODE, "vmid": VMID,
                "purge": Param(type="boolean", optional=True, default=False,
                               description="Also remove the VM from jobs and HA config."),
                "destroy-unreferenced-disks": Param(
                    type="boolean", optional=True, default=False,
                    description="If set, destroy additionally all disks not referenced in "
                                "the config but with a matching VMID from all enabled "
                                "storages."),
                "skiplock": Param(type="boolean", optional=True, default=False)},
    returns={"type": "string", "description": "UPID"},
    cli=CliSpec(("vm", "destroy"), positional=("vmid",)),
)
async def vm_destroy(ctx: RequestContext, params: dict[str, Any]) -> str:
    service = guests(ctx)
    vmid = params["vmid"]
    vm = await service.read(vmid)
    # PVE's early checks, before the task: a protected VM is refused, nothing changes
    protected = vmconf.protection_error(vm.config, f"can't remove VM {vmid}")
    if protected:
        raise fail(protected)
    # PVE's service_is_configured: an HA resource in any state, ignored included
    ha = ha_config_if_clustered(ctx)
    ha_managed = ha is not None and sid_of(vmid) in await ha.resources()
    if ha_managed and not params["purge"]:
        raise fail(f"unable to remove VM {vmid} - used in HA resources and purge parameter "
                   f"not set.")
    if service.runtime.is_running(vmid):
        raise fail(f"VM {vmid} is running - destroy failed")

    async def body(task: Task) -> None:
        await service.destroy(task, vmid, purge=params["purge"], skiplock=params["skiplock"],
                              destroy_unreferenced=params["destroy-unreferenced-disks"])
        if params["purge"] and ctx.services.cluster.store is not None:
            # PVE: remove_vmid_from_backup_jobs (replication jobs: binome has none)
            task.log(f"purging VM {vmid} from related configurations..")
            try:
                for line in await BackupJobs(ctx.services.cluster.store).remove_vmid(vmid):
                    task.log(line)
            except JobError as exc:
                task.warn(f"could not remove VM {vmid} from backup jobs: {exc}")
            if ha is not None and ha_managed:
                # PVE's delete_service_from_config with purge: the rules naming it too
                try:
                    await ha.remove_resource(sid_of(vmid))
                    await ha.purge_rules_of(sid_of(vmid))
                    task.log(f"NOTE: removed VM {vmid} from HA resource configuration.")
                except BinomeError as exc:
                    task.warn(f"could not remove VM {vmid} from the HA resources: {exc}")
        # PVE's remove_vm_access (run on every destroy): the id may be reused, and a new
        # VM must not inherit the old one's pool or ACL entries
        await access_change(ctx, f"remove VM {vmid} from pools and ACLs",
                            lambda cfg: remove_vm(cfg, vmid))

    return _start_task(ctx, "qmdestroy", vmid, body)


def typed_config(config: dict[str, Any]) -> dict[str, Any]:
    """A config (or a snapshot's section) with PVE's JSON types for the answer."""
    out: dict[str, Any] = {}
    for key, value in cloudinit.masked(config).items():   # the password never leaves
        p = vmconf.SCHEMA.get(key)
        if p is not None and p.type in ("integer", "boolean"):
            try:
                out[key] = int(value)
                continue
            except (TypeError, ValueError):
                pass
        if p is not None and p.type == "number":
            try:
                number = float(value)
                out[key] = int(number) if number.is_integer() else number
                continue
            except (TypeError, ValueError):
                pass
        out[key] = value
    return out


@registry.register(
    "GET", "/nodes/{node}/qemu/{vmid}/status", name="vm_status_index", permission=AUDIT,
    proxyto="node", description="Directory index of the VM's status actions.",
    parameters={"node": NODE, "vmid": VMID}, returns={"type": "array"},
)
async def vm_status_index(ctx: RequestContext, params: dict[str, Any]) -> list[dict[str, str]]:
    await guests(ctx).read(params["vmid"], fresh=False)
    return [{"subdir": s} for s in ("current", "start", "stop", "shutdown", "reboot", "reset",
                                    "suspend", "resume")]


@registry.register(
    "GET", "/nodes/{node}/qemu/{vmid}/config", name="vm_config", permission=AUDIT,
    proxyto="node", description="Get the VM configuration (with its digest).",
    parameters={"node": NODE, "vmid": VMID,
                "current": Param(type="boolean", optional=True, default=False),
                "snapshot": Param(optional=True, format="pve-configid", max_length=40,
                                  description="Fetch config values from given snapshot.")},
    returns={"type": "object"},
    cli=CliSpec(("vm", "config"), positional=("vmid",)),
)
async def vm_config(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    if params.get("snapshot") and params["current"]:
        text = "cannot use 'snapshot' parameter with 'current'"
        raise ApiError(400, "Parameter verification failed.",
                       {"snapshot": text, "current": text})
    if params.get("snapshot"):
        # PVE's load_snapshot_config: the snapshot's section, with the config's digest
        vm = await guests(ctx).read(params["vmid"])
        snap = guests(ctx).snapshots.existing(vm, params["snapshot"])
        return {**typed_config(snap), "digest": vm.digest}
    vm = await guests(ctx).read(params["vmid"])
    # PVE: the values as they will be (pending applied); current=1 ignores pending
    shown = vm.config if params["current"] else pending.merged(vm.config, vm.pending)
    return {**typed_config(shown), "digest": vm.digest}


@registry.register(
    "GET", "/nodes/{node}/qemu/{vmid}/pending", name="vm_pending", permission=AUDIT,
    proxyto="node", description="Get the VM configuration with both current and pending "
                                "values.",
    parameters={"node": NODE, "vmid": VMID},
    returns={"type": "array"},
)
async def vm_pending(ctx: RequestContext, params: dict[str, Any]) -> list[dict[str, Any]]:
    """PVE's rows: key, value (current), pending (new), delete (1, or 2 when forced)."""
    vm = await guests(ctx).read(params["vmid"])
    current = typed_config(vm.config)
    new = typed_config(pending.values(vm.pending))
    out = []
    for row in pending.rows(vm.config, vm.pending):
        key = row["key"]
        if "value" in row:
            row["value"] = current[key]
        if "pending" in row:
            row["pending"] = new[key]
        out.append(row)
    return out


# PVE's $opt_force_description (API2/Qemu.pm)
FORCE_DESCRIPTION = ("Force physical removal. Without this, we simple remove the disk from the "
                     "config file and create an additional configuration entry called "
                     "'unused[n]', which contains the volume ID. Unlink of unused[n] always "
                     "cause physical removal.")
CONFIG_PARAMS = {
    "node": NODE, "vmid": VMID,
    "delete": Param(optional=True, max_length=4096,
                    description="Settings to delete, separated by ',' or ';'."),
    "digest": Param(optional=True, max_length=64,
                    description="Refuse the change if the config digest differs."),
    "revert": Param(optional=True, max_length=4096,
                    description="Revert a pending change (keys separated by ',' or ';')."),
    "force": Param(type="boolean", optional=True, description=FORCE_DESCRIPTION),
    "skiplock": Param(type="boolean", optional=True, default=False),
    "background_delay": Param(type="integer", optional=True, minimum=1, maximum=30),
    **SETTABLE,
}


def _reverts(params: dict[str, Any]) -> list[str]:
    keys = [k.strip() for k in (params.get("revert") or "").replace(";", ",").split(",")
            if k.strip()]
    bad = [k for k in keys if k not in SETTABLE and not vmconf.is_unused_key(k)]
    if bad:
        raise param_error("revert", f"unknown option '{bad[0]}'")
    return keys


def _deletes(params: dict[str, Any]) -> list[str]:
    raw = params.get("delete") or ""
    # PVE: deleting 'cdrom' deletes ide2
    keys = ["ide2" if k.strip() == "cdrom" else k.strip()
            for k in raw.replace(";", ",").split(",") if k.strip()]
    # 'lock' cannot be set, but deleting it is how an admin unlocks a VM whose
    # operation died half-way (PVE: qm unlock)
    # an unused volume (a rollback's leftover) is removed by deleting its key (PVE)
    bad = [k for k in keys if k not in SETTABLE and k != "lock" and not vmconf.is_unused_key(k)]
    if bad:
        raise param_error("delete", f"invalid configuration key '{bad[0]}'")
    return keys


def _check_force(params: dict[str, Any]) -> None:
    if params.get("force") is not None and params.get("delete") is None:
        # PVE's schema: 'force' requires 'delete'
        raise param_error("delete", "missing property - 'force' requires this property")


async def _apply_config(ctx: RequestContext, params: dict[str, Any],
                        task: Task | None = None) -> None:
    changes = _config_changes(params)
    deletes = _deletes(params)
    reverts = _reverts(params)
    both = set(changes) & set(deletes)
    if both:
        raise param_error("delete", f"cannot set and delete '{sorted(both)[0]}' at once")
    for key in sorted(set(reverts) & (set(changes) | set(deletes))):
        raise param_error("revert", f"you can't use '-{key}' and '-revert {key}' at the same "
                                    f"time")
    if not (changes or deletes or reverts):
        raise fail("no options specified")
    await _check_config_privs(ctx, params["vmid"], changes, [*deletes, *reverts])
    # PVE's update_vm_api runs the same $check_storage_access as create
    await _check_storage_access(ctx, new_disk_storages(changes))
    await _check_volume_access(ctx, params["vmid"], changes)
    _check_force(params)
    try:
        await guests(ctx).update(params["vmid"], changes, deletes, params.get("digest"),
                                 task=task, force=bool(params.get("force")), revert=reverts)
    except HotplugProblems as exc:
        # PVE raises the hot-plug errors as parameter errors, after writing the config
        # (in a task: its failure, each error already in the task log)
        if task is not None:
            raise TaskFailed(str(exc)) from None
        raise ApiError(400, "Parameter verification failed.", exc.errors) from None


def _key_privs(key: str, value: Any) -> tuple[str, ...]:
    if vmconf.is_unused_key(key):
        return ("VM.Config.Disk",)
    if key in vmconf.SPECIAL_DRIVES:
        return ("VM.Config.Disk",)
    if vmconf.is_disk_key(key):
        head = str(value).split(",")[0] if value is not None else ""
        if cloudinit.cloudinit_request(head) or cloudinit.is_cloudinit_volid(head):
            return ("VM.Config.CDROM", "VM.Config.Cloudinit")   # PVE: a cloud-init drive
        cdrom = value is not None and "media=cdrom" in str(value)
        return ("VM.Config.CDROM",) if cdrom else ("VM.Config.Disk",)
    if vmconf.is_net_key(key):
        return ("VM.Config.Network",)
    return KEY_PRIVS.get(key, ("VM.Config.Options",))


async def _check_root_keys(ctx: RequestContext, changes: dict[str, Any],
                           deletes: list[str]) -> None:
    """PVE: keys outside its privilege tables (args, affinity, hookscript, vmgenid...) and
    host serial devices are root@pam's alone (a 500 with PVE's text); `startup` changes
    the host's boot sequence, so it also needs Sys.Modify on /. A cluster mapping used
    needs Mapping.Use on it, then it must exist."""
    await _check_privileged_keys(ctx, changes, deletes)
    await _check_mappings(ctx, changes)


async def _check_privileged_keys(ctx: RequestContext, changes: dict[str, Any],
                                 deletes: list[str]) -> None:
    if ctx.userid == "root@pam":
        return
    for key, value in [*changes.items(), *((k, None) for k in deletes)]:
        refused = vmconf.root_only(key, value)
        if refused:
            raise fail(refused)
    ev = None
    for key, value in changes.items():
        used = vmconf.mapping_uses(key, value)
        if used is None:
            continue
        ev = ev or await ctx.services.access.evaluator()
        path = f"/mapping/{used[0]}/{used[1]}"
        if not ev.check(ctx.userid, path, ["Mapping.Use"]):
            raise PermissionDenied(f"{path}, Mapping.Use")
        if re.fullmatch(r"hostpci\d+", key) and "romfile=" in str(value):
            raise param_error(key, "only root@pam can set 'romfile' option")
    if "startup" in changes or "startup" in deletes:
        ev = ev or await ctx.services.access.evaluator()
        if not ev.check(ctx.userid, "/", ["Sys.Modify"]):
            raise PermissionDenied("/, Sys.Modify")


async def _check_mappings(ctx: RequestContext, changes: dict[str, Any]) -> None:
    """A `mapping=`/`dirid=` must name an existing cluster mapping of its type (binome
    checks it when the config is written; the node's entry is checked at start)."""
    store = ctx.services.cluster.store
    errors: dict[str, str] = {}
    for key, value in sorted(changes.items()):
        used = vmconf.mapping_uses(key, value)
        if used is None or store is None:
            continue
        if await Mappings(store, used[0]).record(used[1]) is None:
            errors[key] = f"{used[0]} mapping '{used[1]}' does not exist"
    if errors:
        raise ApiError(400, "Parameter verification failed.", errors)


def new_disk_storages(changes: dict[str, Any]) -> list[str]:
    """The storages PVE's `$check_storage_access` asks Datastore.AllocateSpace on: that of
    each new disk (`STORAGE:SIZE`, not a CD-ROM), in key order, each once."""
    out: list[str] = []
    for key in sorted(changes):
        if not vmconf.is_drive_key(key):
            continue
        try:
            disk = vmconf.parse_drive(key, str(changes[key]))
        except ValueError:
            continue                      # validation reports it
        storage = disk.options.get("_storage")
        if disk.new_size_gib is not None and not disk.is_cdrom and storage \
                and storage not in out:
            out.append(storage)
    return out


def clone_storages(config: dict[str, Any], target: str | None) -> list[str]:
    """PVE's `$check_storage_access_clone`: the storage of each disk of the source (not
    CD-ROMs), or the clone's target `storage` when given, and `vmstatestorage`."""
    out: list[str] = []
    for key in sorted(config):
        if not vmconf.is_disk_key(key):
            continue
        try:
            disk = vmconf.parse_disk(key, str(config[key]))
        except ValueError:
            continue
        if disk.is_cdrom or not disk.volid:
            continue
        storage = target or disk.storage
        if storage and storage not in out:
            out.append(storage)
    if config.get("vmstatestorage") and config["vmstatestorage"] not in out:
        out.append(str(config["vmstatestorage"]))
    return out


# PVE's parse_volname, as far as check_volume_access needs it: the content type by the
# volume name's shape, and the VM owning it (a disk's `vm-N-`/`base-N-`, a backup's
# `vzdump-qemu-N-`)
_SHARED_VOLUME_KINDS = ("iso", "vztmpl", "import")
_IMAGE_OWNER_RE = re.compile(r"(?:^|/)(?:vm|base)-(\d+)-[^/]*$")
_BACKUP_OWNER_RE = re.compile(r"(?:^|/)vzdump-(?:qemu|lxc|openvz)-(\d+)-")


def volume_kind(volname: str) -> tuple[str, int | None]:
    """('iso', None) for 'iso/x.iso', ('images', 100) for '100/vm-100-disk-0.raw' or
    'vm-100-disk-1', ('backup', 100) for 'backup/vzdump-qemu-100-...'."""
    head = volname.split("/", 1)[0]
    if head in (*_SHARED_VOLUME_KINDS, "snippets"):
        return head, None
    if m := _BACKUP_OWNER_RE.search(volname):
        return "backup", int(m.group(1))
    if m := _IMAGE_OWNER_RE.search(volname):
        return "images", int(m.group(1))
    return "images", None


def existing_volumes(changes: dict[str, Any]) -> list[tuple[str, str]]:
    """(key, volid or path) of the values that name an existing volume (not a new disk,
    `none`, a physical `cdrom` or a cloud-init drive to make), the `unusedN` too: what
    PVE's `$check_storage_access` hands to check_volume_access."""
    out: list[tuple[str, str]] = []
    for key in sorted(changes):
        value = str(changes[key])
        if vmconf.is_unused_key(key):
            out.append((key, value.split(",")[0]))
            continue
        if not vmconf.is_drive_key(key):
            continue
        try:
            disk = vmconf.parse_drive(key, value)
        except ValueError:
            continue                      # validation reports it
        volid = disk.volid or value.split(",")[0]
        if disk.new_size_gib is not None or volid in ("", "none", "cdrom") \
                or volid.endswith(":cloudinit"):
            continue
        out.append((key, volid))
    return out


async def _check_volume_access(ctx: RequestContext, vmid: int,
                               changes: dict[str, Any]) -> None:
    """PVE's check_volume_access for each existing volume a create or update attaches,
    before anything changes: without it a VM admin could attach another guest's disk
    (or a host block device) to their own VM and read it. A physical CD drive needs
    `Sys.Console` on `/` (PVE)."""
    if ctx.userid == "root@pam":
        return
    ev = await ctx.services.access.evaluator()
    for key, value in sorted(changes.items()):
        if vmconf.is_drive_key(key) and str(value).split(",")[0] == "cdrom" \
                and not ev.check(ctx.userid, "/", ["Sys.Console"]):
            raise PermissionDenied("/, Sys.Console")
    for key, volid in existing_volumes(changes):
        sid, sep, volname = volid.partition(":")
        if not sep or not sid or volid.startswith("/"):
            raise fail("Only root can pass arbitrary filesystem paths.")
        kind, owner = volume_kind(volname)
        if vmconf.is_unused_key(key) and kind != "images":
            raise fail(f"unable to use volume {volid} - content type needs to be 'images'")
        storage = f"/storage/{sid}"
        if ev.check(ctx.userid, storage, ["Datastore.Allocate"]):
            continue
        if kind in _SHARED_VOLUME_KINDS:
            privs = ["Datastore.AllocateSpace", "Datastore.Audit"]
            if not ev.check(ctx.userid, storage, privs, any=True):
                raise PermissionDenied(f"{storage}, {'|'.join(privs)}")
        elif owner is not None and owner == vmid:
            continue                      # the VM's own volume
        elif kind == "backup" and owner is not None:
            for path, priv in ((storage, "Datastore.AllocateSpace"),
                               (f"/vms/{owner}", "VM.Backup")):
                if not ev.check(ctx.userid, path, [priv]):
                    raise PermissionDenied(f"{path}, {priv}")
        elif kind == "images" and owner is not None:
            for path, priv in ((storage, "Datastore.Audit"), (f"/vms/{owner}", "VM.Config.Disk")):
                if not ev.check(ctx.userid, path, [priv]):
                    raise PermissionDenied(f"{path}, {priv}")
        else:
            raise fail(f"missing privileges to access {volid}")


async def _check_storage_access(ctx: RequestContext, storages: list[str]) -> None:
    """Datastore.AllocateSpace on each storage a disk is allocated on (PVE's 403
    `Permission check failed (/storage/S, Datastore.AllocateSpace)`), before anything
    is looked up or created."""
    if not storages:
        return
    ev = await ctx.services.access.evaluator()
    for storage in storages:
        if not ev.check(ctx.userid, f"/storage/{storage}", ["Datastore.AllocateSpace"]):
            raise PermissionDenied(f"/storage/{storage}, Datastore.AllocateSpace")


async def _check_create_privs(ctx: RequestContext, vmid: int, pool: str | None,
                              changes: dict[str, Any], start: bool) -> None:
    """PVE's create_vm: VM.Allocate lets one in, then every key needs its own privilege
    (check_vm_modify_config_perm with the pool: held on /pool/<pool> or /vms/<vmid>), so
    a VM.Allocate-only role cannot create a VM with a disk, a NIC on any bridge or 64
    cores. `start=1` also needs VM.PowerMgmt: PVE starts the new VM without asking (its
    worker calls vm_start directly), which would let a role without power rights run
    VMs; binome asks, and says so in docs/api-compatibility.md."""
    await _check_root_keys(ctx, changes, [])
    if ctx.userid == "root@pam":
        return
    ev = await ctx.services.access.evaluator()
    wanted = {p for key, value in changes.items() for p in _key_privs(key, value)}
    if start:
        wanted.add("VM.PowerMgmt")
    for priv in sorted(wanted):
        if pool and ev.check(ctx.userid, f"/pool/{pool}", [priv]):
            continue
        if not ev.check(ctx.userid, f"/vms/{vmid}", [priv]):
            raise PermissionDenied(f"/vms/{vmid}, {priv}")


async def _check_config_privs(ctx: RequestContext, vmid: int, changes: dict[str, Any],
                              deletes: list[str]) -> None:
    """Each key needs its own privilege (memory VM.Config.Memory, a disk VM.Config.Disk
    ...), so a role for CD changes cannot swap disks; checked before anything changes."""
    await _check_root_keys(ctx, changes, deletes)
    ev = await ctx.services.access.evaluator()
    wanted = {p for key, value in changes.items() for p in _key_privs(key, value)}
    wanted |= {p for key in deletes for p in _key_privs(key, None)}
    for priv in sorted(wanted):
        if not ev.check(ctx.userid, f"/vms/{vmid}", [priv]):
            raise PermissionDenied(f"/vms/{vmid}, {priv}")


@registry.register(
    "PUT", "/nodes/{node}/qemu/{vmid}/config", name="vm_set_config_sync",
    permission=CONFIG, proxyto="node", description="Set VM options (synchronous).",
    parameters=CONFIG_PARAMS, returns={"type": "null"},
    cli=CliSpec(("vm", "set"), positional=("vmid",)),
)
async def vm_set_config_sync(ctx: RequestContext, params: dict[str, Any]) -> None:
    await _apply_config(ctx, params)


@registry.register(
    "POST", "/nodes/{node}/qemu/{vmid}/config", name="vm_set_config",
    permission=CONFIG, proxyto="node", description="Set VM options (asynchronous: a task).",
    parameters=CONFIG_PARAMS, returns={"type": "string", "description": "UPID"},
)
async def vm_set_config(ctx: RequestContext, params: dict[str, Any]) -> str:
    service = guests(ctx)
    await service.read(params["vmid"])
    # refused before the task, as PVE's checks run before it forks a worker
    _check_force(params)
    await _check_config_privs(ctx, params["vmid"], _config_changes(params), _deletes(params))
    await _check_volume_access(ctx, params["vmid"], _config_changes(params))

    async def body(task: Task) -> None:
        await _apply_config(ctx, params, task)

    return _start_task(ctx, "qmconfig", params["vmid"], body)


@registry.register(
    "PUT", "/nodes/{node}/qemu/{vmid}/unlink", name="vm_unlink",
    permission=privs("VM.Config.Disk", path=VM_PATH), proxyto="node",
    description="Unlink/delete disk images.",
    parameters={"node": NODE, "vmid": VMID,
                "idlist": Param(max_length=4096, description=(
                    "A list of disk IDs you want to delete.")),
                "force": Param(type="boolean", optional=True, description=FORCE_DESCRIPTION)},
    returns={"type": "null"},
    cli=CliSpec(("vm", "unlink"), positional=("vmid",)),
)
async def vm_unlink(ctx: RequestContext, params: dict[str, Any]) -> None:
    """PVE's unlink: update_vm with delete=idlist (drives become unusedN, or are freed
    with force; unusedN are freed)."""
    await _apply_config(ctx, {"node": params["node"], "vmid": params["vmid"],
                              "delete": params["idlist"], "force": params.get("force")})


@registry.register(
    "GET", "/nodes/{node}/qemu/{vmid}/status/current", name="vm_status", permission=AUDIT,
    proxyto="node", description="Get the VM's current status.",
    parameters={"node": NODE, "vmid": VMID}, returns={"type": "object"},
    cli=CliSpec(("vm", "status"), positional=("vmid",)),
)
async def vm_status(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    entry = await guests(ctx).current_status(params["vmid"])
    entry["ha"] = await ha_api.vm_ha_info(ctx, params["vmid"])
    return entry


def _power(action: str, task_type: str, description: str, extra: dict[str, Param],
           cli: str):
    @registry.register(
        "POST", f"/nodes/{{node}}/qemu/{{vmid}}/status/{action}", name=f"vm_{action}",
        permission=POWER, proxyto="node", description=description,
        parameters={"node": NODE, "vmid": VMID, **extra},
        returns={"type": "string", "description": "UPID"},
        cli=CliSpec(("vm", cli), positional=("vmid",)),
    )
    async def handler(ctx: RequestContext, params: dict[str, Any]) -> str:
        service = guests(ctx)
        vmid = params["vmid"]
        if action in HA_ROUTED:
            # an HA guest: the manager starts and stops it (PVE's hastart / hastop)
            await service.read(vmid, fresh=False)
            upid = await ha_api.route_power_action(ctx, vmid, action, params.get("timeout"))
            if upid is not None:
                return upid
        if action == "start":
            await service.check_startable(vmid)
        else:
            # stopping and pausing need no quorum: this node's copy of the config will do
            await service.read(vmid, fresh=False)
            service.require_running(vmid)
        timeout = float(params.get("timeout") or 60)

        reboot_guard = None
        if action == "reboot" and await ha_api.ha_resource(ctx, vmid) is not None:
            # the LRM must not take the stopped half of a reboot for a crash
            reboot_guard = ctx.services.ha

        async def body(task: Task) -> None:
            if reboot_guard is not None:
                with reboot_guard.rebooting(vmid):
                    await service.reboot_vm(task, vmid, timeout)
            elif action == "start":
                await service.start_vm(task, vmid)
            elif action == "stop":
                await service.stop_vm(task, vmid, timeout=float(params.get("timeout") or 10))
            elif action == "shutdown":
                await service.shutdown_vm(task, vmid, timeout, bool(params.get("forceStop")))
            elif action == "reboot":
                await service.reboot_vm(task, vmid, timeout)
            elif action == "reset":
                await service.reset_vm(task, vmid)
            elif action == "suspend":
                await service.suspend_vm(task, vmid)
            elif action == "resume":
                await service.resume_vm(task, vmid)

        return _start_task(ctx, task_type, vmid, body)

    return handler


SKIPLOCK = Param(type="boolean", optional=True, default=False)
HA_ROUTED = ("start", "stop", "shutdown")
_power("start", "qmstart", "Start the virtual machine.",
       {"timeout": TIMEOUT, "skiplock": SKIPLOCK, "machine": Param(optional=True),
        "migratedfrom": Param(format="pve-node", optional=True)}, "start")
_power("stop", "qmstop", "Stop the virtual machine hard (like pulling the power plug).",
       {"timeout": TIMEOUT, "skiplock": SKIPLOCK,
        "keepActive": Param(type="boolean", optional=True),
        "overrule-shutdown": Param(type="boolean", optional=True)}, "stop")
_power("shutdown", "qmshutdown", "Shut the virtual machine down (ACPI power button).",
       {"timeout": TIMEOUT, "skiplock": SKIPLOCK,
        "forceStop": Param(type="boolean", optional=True, default=False,
                           description="Stop hard if the guest does not shut down in time."),
        "keepActive": Param(type="boolean", optional=True)}, "shutdown")
_power("reboot", "qmreboot", "Reboot: shut down, then start again (applies config changes).",
       {"timeout": TIMEOUT}, "reboot")
_power("reset", "qmreset", "Reset the virtual machine (hardware reset).",
       {"skiplock": SKIPLOCK}, "reset")
_power("suspend", "qmpause", "Suspend (pause) the virtual machine.",
       {"skiplock": SKIPLOCK, "todisk": Param(type="boolean", optional=True, default=False),
        "statestorage": Param(optional=True)}, "suspend")
_power("resume", "qmresume", "Resume a paused virtual machine.",
       {"skiplock": SKIPLOCK, "nocheck": Param(type="boolean", optional=True)}, "resume")


@registry.register(
    "POST", "/nodes/{node}/qemu/{vmid}/monitor", name="vm_monitor",
    permission=privs("Sys.Audit", "Sys.Modify", path=VM_PATH, any=True), proxyto="node",
    description="Execute QEMU monitor commands: `help` and `info ...` need no more "
                "privilege; commands that only read the guest or send it input need "
                "Sys.Modify on /; those that change its run state, disks, devices or "
                "migration are root@pam's (binome.guest.monitor).",
    parameters={"node": NODE, "vmid": VMID,
                "command": Param(description="The monitor command.")},
    returns={"type": "string"},
    cli=CliSpec(("vm", "monitor"), positional=("vmid", "command")),
)
async def vm_monitor(ctx: RequestContext, params: dict[str, Any]) -> str:
    command = params["command"]
    try:
        need = monitor.required(command)
        has_modify = need != monitor.MODIFY or (
            await ctx.services.access.evaluator()).check(ctx.userid, "/", ["Sys.Modify"])
        monitor.check(command, ctx.userid, has_modify)
    except monitor.MonitorRefused as exc:
        raise fail(str(exc)) from None
    except PermissionError as exc:
        raise PermissionDenied(str(exc)) from None
    return await guests(ctx).monitor(params["vmid"], command)


@registry.register(
    "POST", "/nodes/{node}/qemu/{vmid}/clone", name="vm_clone",
    permission=And(privs("VM.Clone", path=VM_PATH),
                   Or(privs("VM.Allocate", path="/vms/{newid}"), IN_POOL)),
    proxyto="node",
    description="Create a copy of virtual machine/template.",
    parameters={"node": NODE, "vmid": VMID, "newid": VMID,
                "name": Param(format="pve-node", optional=True, max_length=63),
                "description": Param(optional=True, max_length=8192, extra={"multiline": True}),
                "target": Param(format="pve-node", optional=True),
                "full": Param(type="boolean", optional=True,
                              description="Create a full copy of all disks. This is always "
                                          "done when you clone a normal VM. For VM "
                                          "templates, we try to create a linked clone by "
                                          "default."),
                "storage": Param(optional=True), "format": Param(optional=True,
                                                                  enum=("raw", "qcow2")),
                "pool": Param(optional=True), "snapname": Param(optional=True),
                "bwlimit": Param(type="integer", optional=True, minimum=0,
                                 description="Bandwidth limit of a copy to another node, "
                                             "in KiB/s.")},
    returns={"type": "string", "description": "UPID"},
    cli=CliSpec(("vm", "clone"), positional=("vmid", "newid")),
)
async def vm_clone(ctx: RequestContext, params: dict[str, Any]) -> str:
    service = guests(ctx)
    vmid, newid = params["vmid"], params["newid"]
    target = params.get("target")
    if target == ctx.node:
        target = None
    if target:
        _check_target(ctx, {"target": target})
    source = await service.read(vmid)
    # PVE's clone_vm ($check_storage_access_clone): Datastore.AllocateSpace where each
    # copy is allocated (the target `storage`, else each disk's own)
    snapname = params.get("snapname")
    config = source.config
    if snapname:
        if target:
            raise param_error("snapname", "cloning a snapshot to another node is not "
                                          "supported yet: clone it here, then migrate the copy")
        if snapname not in source.snapshots:
            raise fail(f"snapshot '{snapname}' does not exist")
        config = source.snapshots[snapname]
    full = params.get("full")
    # differs: PVE refuses `storage`/`format` for a template's default (linked) clone;
    # binome makes that clone full, as the parameters ask
    full = bool(full) if full is not None else \
        (True if params.get("storage") or params.get("format") else None)
    if full is False:
        for name in ("storage", "format"):
            if params.get(name) is not None:
                raise fail(f"parameter '{name}' not allowed for linked clones")
    try:
        linked = await service.clone_is_linked(source, full, snapname=snapname,
                                               target=target)
    except GuestFailure as exc:
        raise fail(str(exc)) from None
    await _check_storage_access(ctx, clone_storages(config, params.get("storage")))
    owner = await service.owner(newid)
    if owner is not None:
        raise fail(f"unable to create VM {newid} - VM {newid} already exists on node '{owner}'")
    if target:
        # PVE refuses a VM on local storage ("can't clone VM to node ... (VM uses local
        # storage)"); binome copies its disks there over the cluster network
        if not ctx.services.cluster.node_online(target):
            raise fail(f"target node '{target}' is not online")
        await _check_clone_storages(ctx, config, target, params.get("storage"))
    elif params.get("storage"):
        await _check_clone_storages(ctx, config, ctx.node, params["storage"])
    await _check_pool(ctx, params.get("pool"))

    async def body(task: Task) -> None:
        await service.clone(task, vmid, newid, params.get("name"), target,
                            params.get("storage"), params.get("bwlimit") or None,
                            params.get("format"), snapname, not linked)
        await _add_to_pool(ctx, newid, params.get("pool"))

    return _start_task(ctx, "qmclone", vmid, body)


async def _check_clone_storages(ctx: RequestContext, config: dict[str, Any], target: str,
                                storage: str | None) -> None:
    """A clone to another node: each disk's target storage (`storage`, or the disk's
    own) exists, is enabled on `target` and holds images (PVE's storage_check_enabled
    texts: `storage` is a 400 on that parameter)."""
    storages = {c.storage: c for c in await ctx.services.storages.configs()}
    for sid in clone_storages(config, storage):
        scfg = storages.get(sid)
        bad = (f"storage '{sid}' does not exist" if scfg is None else
               f"storage '{sid}' is not available on node '{target}'"
               if scfg.disable or not scfg.available_on(target) else
               f"storage '{sid}' does not support vm images"
               if "images" not in scfg.content else None)
        if bad:
            if storage:
                raise param_error("storage", bad)
            raise fail(bad)


@registry.register(
    "POST", "/nodes/{node}/qemu/{vmid}/template", name="vm_template",
    permission=privs("VM.Allocate", path=VM_PATH), proxyto="node",
    description="Convert the VM to a template (it can then only be cloned).",
    parameters={"node": NODE, "vmid": VMID,
                "disk": Param(optional=True, pattern=r"(?:virtio|scsi|ide|sata)\d+|efidisk0"
                                                     r"|tpmstate0",
                              description="If you want to convert only 1 disk to base "
                                          "image.")},
    returns={"type": "string", "description": "UPID"},
    cli=CliSpec(("vm", "template"), positional=("vmid",)),
)
async def vm_template(ctx: RequestContext, params: dict[str, Any]) -> str:
    service = guests(ctx)
    vmid = params["vmid"]
    disk = params.get("disk")
    if disk is not None and not vmconf.is_drive_key(disk):
        raise param_error("disk", f"value '{disk}' does not have a value in the enumeration")
    vm = await service.read(vmid)
    # PVE's checks, in its order and texts
    if vm.snapshots:
        raise fail("unable to create template, because VM contains snapshots")
    if vm.config.get("template") and not disk:
        raise fail("you can't convert a template to a template")
    if service.runtime.is_running(vmid):
        raise fail("you can't convert a VM to template if VM is running")

    async def body(task: Task) -> None:
        await service.make_template(task, vmid, disk)

    return _start_task(ctx, "qmtemplate", vmid, body)


@registry.register(
    "PUT", "/nodes/{node}/qemu/{vmid}/sendkey", name="vm_sendkey",
    permission=privs("VM.Console", path=VM_PATH), proxyto="node",
    description="Send key event to virtual machine.",
    parameters={"node": NODE, "vmid": VMID,
                # QEMU monitor key names joined by '-' (ctrl-alt-delete): nothing else
                # may reach the monitor's command line
                "key": Param(pattern=r"[a-z0-9_]+(?:-[a-z0-9_]+)*", max_length=64,
                             description="The key (qemu monitor encoding)."),
                "skiplock": SKIPLOCK},
    returns={"type": "null"},
    cli=CliSpec(("vm", "sendkey"), positional=("vmid", "key")),
)
async def vm_sendkey(ctx: RequestContext, params: dict[str, Any]) -> None:
    await guests(ctx).send_key(params["vmid"], params["key"])


@registry.register(
    "PUT", "/nodes/{node}/qemu/{vmid}/resize", name="vm_resize",
    permission=privs("VM.Config.Disk", path=VM_PATH), proxyto="node",
    description="Extend a disk ('+1G' adds, '8G' sets; shrinking is refused).",
    parameters={"node": NODE, "vmid": VMID,
                "disk": Param(description="The disk key, e.g. virtio0."),
                "size": Param(pattern=r"\+?\d+(?:\.\d+)?[KMGT]?"),
                "digest": Param(optional=True), "skiplock": SKIPLOCK},
    returns={"type": "string", "description": "UPID"},
    cli=CliSpec(("vm", "resize"), positional=("vmid", "disk", "size")),
)
async def vm_resize(ctx: RequestContext, params: dict[str, Any]) -> str:
    service = guests(ctx)
    vmid, key = params["vmid"], params["disk"]
    vm = await service.read(vmid)
    if key not in vm.config or not vmconf.is_disk_key(key):
        raise param_error("disk", f"disk '{key}' does not exist")
    disk = vmconf.parse_disk(key, str(vm.config[key]))
    volid = disk.volid
    if not volid or disk.is_cdrom:
        raise param_error("disk", f"disk '{key}' cannot be resized")
    storage = await service.storages.for_volid(volid)
    current = await storage.size(volid)
    text = params["size"]
    delta = vmconf.parse_size(text.lstrip("+"))
    new_size = current + delta if text.startswith("+") else delta
    if new_size < current:
        raise param_error("size", "shrinking disks is not supported")

    async def body(task: Task) -> None:
        await service.resize_disk(task, vmid, key, new_size)

    return _start_task(ctx, "resize", vmid, body)



# ---------------------------------------------------------------- migration
#
# `qm migrate` (PVE's API shapes): GET .../migrate answers the preconditions,
# POST .../migrate starts task `qmigrate` on the source node (offline: a config
# move; online: a live migration), or, for an HA-managed VM, queues the CRM's
# `migrate` command (task `hamigrate`, as PVE does). POST .../migrate/incoming
# is binome's internal step on the target node, called by the source's task.

MIGRATE = privs("VM.Migrate", path=VM_PATH)
TARGET = Param(format="pve-node", description="Target node.")


def _check_target(ctx: RequestContext, params: dict[str, Any]) -> str:
    """A target that is another guest-hosting member, else a 400 on `target`."""
    target = params["target"]
    records = ctx.services.cluster.node_records
    if target not in records:
        raise param_error("target", f"no such cluster node '{target}'")
    if target == ctx.services.config.name:
        raise param_error("target", "target is local node.")
    if records[target].get("role", "node") != "node":
        raise param_error("target", f"node '{target}' is a witness: it does not host guests")
    return target


@registry.register(
    "GET", "/nodes/{node}/qemu/{vmid}/migrate", name="vm_migrate_precondition",
    permission=MIGRATE, proxyto="node",
    description="Get preconditions for migration: running, allowed and not allowed nodes "
                "(with the reasons), local disks.",
    parameters={"node": NODE, "vmid": VMID,
                "target": Param(format="pve-node", optional=True,
                                description="Check only this target node.")},
    returns={"type": "object"},
    cli=CliSpec(("vm", "migrate-check"), positional=("vmid",)),
)
async def vm_migrate_precondition(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    if params.get("target"):
        _check_target(ctx, params)
    return await guests(ctx).migrate_preconditions(params["vmid"], params.get("target"))


@registry.register(
    "POST", "/nodes/{node}/qemu/{vmid}/migrate", name="vm_migrate",
    permission=MIGRATE, proxyto="node",
    description="Migrate the virtual machine to another node: a stopped VM's config moves; "
                "a running VM is live-migrated with online=1 (its disks must be on "
                "replicated storage held by the target). An HA-managed VM is migrated by "
                "the HA manager.",
    parameters={"node": NODE, "vmid": VMID, "target": TARGET,
                "online": Param(type="boolean", optional=True, default=False,
                                description="Live migration of a running VM."),
                "force": Param(type="boolean", optional=True, default=False,
                               description="Accepted for compatibility (no local resources "
                                           "to override)."),
                "with-local-disks": Param(type="boolean", optional=True, default=False,
                                          description="Live migration of a VM with local "
                                                      "disks: QEMU mirrors them to new "
                                                      "volumes on the target (a stopped "
                                                      "VM's local disks are always "
                                                      "copied)."),
                "targetstorage": Param(optional=True, description="Mapping from source to "
                                       "target storages of the local disks copied "
                                       "(PVE's pve-storage-id-map: 'src:dst,...', one "
                                       "storage id for all, or 1 for the same ids)."),
                "migration_type": Param(optional=True, enum=("secure", "insecure"),
                                        description="Accepted; the state goes over plain "
                                                    "TCP on the cluster network."),
                "migration_network": Param(optional=True,
                                           description="Not supported (cluster network)."),
                "bwlimit": Param(type="integer", optional=True, minimum=0,
                                 maximum=4 * 1024 * 1024 * 1024,
                                 description="Bandwidth limit in KiB/s (0: none).")},
    returns={"type": "string", "description": "UPID"},
    cli=CliSpec(("vm", "migrate"), positional=("vmid", "target")),
)
async def vm_migrate(ctx: RequestContext, params: dict[str, Any]) -> str:
    service = guests(ctx)
    vmid = params["vmid"]
    target = _check_target(ctx, params)
    if params.get("migration_network"):
        raise param_error("migration_network", "not supported by binome")
    storage_map = None
    if params.get("targetstorage"):
        try:
            storage_map = parse_storage_map(str(params["targetstorage"]))
        except ValueError as exc:
            raise param_error("targetstorage", f"failed to parse storage map: {exc}") from None
        # PVE: Datastore.AllocateSpace on each target storage
        await _check_storage_access(ctx, sorted({*storage_map.entries.values(),
                                                 *([storage_map.default]
                                                   if storage_map.default else [])}))
    await service.read(vmid)
    if await ha_api.ha_resource(ctx, vmid) is not None:
        if storage_map is not None:
            raise param_error("targetstorage", "not supported for an HA-managed VM (the "
                              "HA manager moves it)")
        return await _ha_migrate(ctx, vmid, target)
    online = bool(params.get("online"))
    await service.check_migratable(vmid, target, online=online,
                                   with_local_disks=bool(params.get("with-local-disks")),
                                   storage_map=storage_map)

    async def body(task: Task) -> None:
        await service.migrate_vm(task, vmid, target, online=online,
                                 with_local_disks=bool(params.get("with-local-disks")),
                                 bwlimit_kib=params.get("bwlimit") or None,
                                 storage_map=storage_map)

    return _start_task(ctx, "qmigrate", vmid, body)


HA_MIGRATE_TIMEOUT = 600.0


async def _ha_migrate(ctx: RequestContext, vmid: int, target: str) -> str:
    """PVE: `qm migrate` of an HA guest asks the CRM (`migrate vm:N node`) and waits."""
    import asyncio
    import time

    from binome.tasks.manager import TaskFailed

    sid = sid_of(vmid)
    await ha_api.queue_command(ctx, f"migrate {sid} {target}")

    async def body(task: Task) -> None:
        task.log(f"Requesting HA migration for VM {vmid} to node {target}")
        deadline = time.monotonic() + HA_MIGRATE_TIMEOUT
        moving, last = False, None
        while True:
            try:
                sd = await ha_api.ha_service_status(ctx, sid)
            except Exception:   # no quorum for a moment: the deadline still applies
                sd = {}
            state, node = sd.get("state"), sd.get("node")
            if (state, node) != last:
                task.log(f"service {sid}: {state or 'queued'} on {node or '?'}"
                         + (f" ({sd['reason']})" if sd.get("reason") else ""))
                last = (state, node)
            if state in ("migrate", "relocate"):
                moving = True
            elif node == target and state in ("started", "stopped", "request_stop"):
                task.log(f"HA migration of {sid} to {target} done")
                return
            elif state == "error":
                raise TaskFailed(f"HA service {sid} is in error state: "
                                 f"{sd.get('reason') or 'see the HA log'}")
            elif moving:
                raise TaskFailed(f"HA migration of {sid} to {target} failed"
                                 + (f": {sd['reason']}" if sd.get("reason") else
                                    " (see the cluster log)"))
            if time.monotonic() > deadline:
                raise TaskFailed(f"HA migration of {sid} to {target} not done after "
                                 f"{HA_MIGRATE_TIMEOUT:.0f}s (the manager may have refused "
                                 f"it: see the cluster log)")
            await asyncio.sleep(0.5)

    return _start_task(ctx, "hamigrate", vmid, body)


@registry.register(
    "POST", "/nodes/{node}/qemu/{vmid}/migrate/incoming", name="vm_migrate_incoming",
    permission=MIGRATE, proxyto="node",
    description="binome-internal step of a migration on the target node, called by the "
                "source node's task: prepare (start a paused QEMU waiting for the state, "
                "volumes Primary here too), resume (after the switch-over), abort (remove "
                "the paused QEMU, demote), promote (after an offline migration).",
    parameters={"node": NODE, "vmid": VMID,
                "phase": Param(enum=("prepare", "resume", "abort", "promote")),
                "source": Param(format="pve-node", description="The source node."),
                "volumes": Param(optional=True, max_length=65536,
                                 description="prepare: the local volumes' copies here, "
                                             "'old=new,...' (their disks are exported "
                                             "over NBD for the source's mirror jobs).")},
    returns={"type": "object"},
)
async def vm_migrate_incoming(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    service = guests(ctx)
    vmid, source, phase = params["vmid"], params["source"], params["phase"]
    if source == ctx.services.config.name:
        raise param_error("source", "source is the local node")
    if phase == "prepare":
        volids = dict(pair.split("=", 1) for pair in
                      str(params.get("volumes") or "").split(",") if "=" in pair)
        return await service.incoming_prepare(vmid, source, volids or None)
    if phase == "resume":
        return await service.incoming_resume(vmid, source)
    if phase == "abort":
        return await service.incoming_abort(vmid, source)
    return await service.incoming_promote(vmid)


@registry.register(
    "POST", "/nodes/{node}/qemu/{vmid}/migrate/import", name="vm_migrate_import",
    permission=MIGRATE, proxyto="node",
    description="binome-internal step of a migration or clone that copies a stopped "
                "VM's local disks, on the target node, called by the source node's task: "
                "start (allocate a volume on `storage`, export it over NBD for the copy), "
                "finish (the copy is whole: end the export), abort (free the copies), "
                "allocate (a volume a live migration's incoming QEMU receives).",
    parameters={"node": NODE, "vmid": VMID,
                "phase": Param(enum=("start", "finish", "abort", "allocate")),
                "source": Param(format="pve-node", description="The source node."),
                "storage": Param(optional=True, description="Target storage (start)."),
                "size": Param(type="integer", optional=True, minimum=0,
                              description="Volume size in bytes (start)."),
                "format": Param(optional=True, enum=("raw", "qcow2"),
                                description="Wanted format (start)."),
                "name": Param(optional=True, pattern=r"vm-\d+-cloudinit",
                              description="Volume name (start: a cloud-init drive)."),
                "volumes": Param(optional=True, max_length=65536,
                                 description="Volids (finish, abort).")},
    returns={"type": "object"},
)
async def vm_migrate_import(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    if params["source"] == ctx.services.config.name:
        raise param_error("source", "source is the local node")
    volumes = [v for v in str(params.get("volumes") or "").split(",") if v] or None
    return await guests(ctx).import_volume(
        params["phase"], params["vmid"], params["source"], storage=params.get("storage"),
        size=params.get("size"), fmt=params.get("format"), volumes=volumes,
        name=params.get("name"))
