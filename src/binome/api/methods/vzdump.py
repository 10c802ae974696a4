"""Backup methods: `POST /nodes/{node}/vzdump`; a storage volume's attributes (`GET`), their
update and its deletion (`.../content/{volume}`, backups and other volumes).

The job and the backup format belong to `binome.guest.backups` (through the node's
`GuestService`) and to the storage's datastore; this module validates PVE's vzdump
parameters, checks the permissions PVE checks and starts the task.
"""

from __future__ import annotations

import shlex
from typing import Any

from binome.access.permission import AnyUser
from binome.api.context import RequestContext
from binome.api.errors import ApiError, PermissionDenied, fail, param_error
from binome.api.methods.common import NODE
from binome.api.methods.qemu import guests
from binome.api.methods.storage import STORAGE_ID
from binome.api.methods.storage_content import free_volume
from binome.api.registry import CliSpec, privs, registry
from binome.api.schema import Param
from binome.backup.prune import PruneError, parse_prune_backups
from binome.errors import BinomeError
from binome.guest.backups import MODES
from binome.guest.guests import VzdumpOptions
from binome.storage.base import Storage, StorageError, split_volid
from binome.tasks.manager import Task

VMID_LIST = Param(optional=True, max_length=4096, pattern=r"[\d\s,;]+",
                  description="The ID of the guest system you want to backup (a list).")
VZDUMP_PARAMS = {
    "node": NODE,
    "vmid": VMID_LIST,
    "all": Param(type="boolean", optional=True, default=False,
                 description="Backup all known guest systems on this host."),
    "exclude": Param(optional=True, max_length=4096, pattern=r"[\d\s,;]+",
                     description="Exclude specified guest systems (implies --all)."),
    "mode": Param(optional=True, enum=MODES, default="snapshot", description="Backup mode."),
    "storage": Param(optional=True, pattern=STORAGE_ID.pattern, max_length=64,
                     description="Store resulting file to this storage."),
    "compress": Param(optional=True, enum=("0", "1", "gzip", "lzo", "zstd"), default="0",
                      description="Accepted for compatibility: chunks are always zstd-"
                                  "compressed when that makes them smaller."),
    "notes-template": Param(optional=True, max_length=1024,
                            description="Notes of the backups, with {{cluster}}, "
                                        "{{guestname}}, {{node}} and {{vmid}}."),
    "protected": Param(type="boolean", optional=True, default=False,
                       description="Mark the backups as protected."),
    "prune-backups": Param(optional=True, max_length=256,
                           description="Retention options (keep-last=3,keep-daily=7...) "
                                       "applied after the backup when 'remove' is set."),
    "remove": Param(type="boolean", optional=True, default=True,
                    description="Prune older backups according to 'prune-backups'."),
    "bwlimit": Param(type="integer", optional=True, minimum=0, default=0,
                     description="Limit I/O bandwidth (in KiB/s)."),
}


def _vmids(name: str, text: str | None) -> list[int] | None:
    if text is None:
        return None
    out = []
    for part in text.replace(";", ",").replace(" ", ",").split(","):
        if not part:
            continue
        vmid = int(part)
        if not 100 <= vmid <= 999_999_999:
            raise param_error(name, f"value '{part}' does not look like a valid VM ID")
        if vmid not in out:
            out.append(vmid)
    if not out:
        raise param_error(name, "empty list of VM IDs")
    return out


async def _backup_storage(ctx: RequestContext, wanted: str | None) -> str:
    """The storage the job writes to: the one given, or the first with content backup."""
    manager = ctx.services.storages
    if wanted is not None:
        try:
            storage = await manager.get(wanted)
            storage.backup_store()
        except BinomeError as error:
            raise param_error("storage", str(error)) from None
        return wanted
    for cfg in await manager.configs():
        if "backup" in cfg.content and cfg.available_on(ctx.node) and not cfg.disable:
            return cfg.storage
    raise param_error("storage", "no storage with content 'backup' on this node")


def _command_line(params: dict[str, Any]) -> str:
    """The job as a `vzdump` command line, for the first line of the log."""
    words = [params["vmid"].replace(",", " ")] if params.get("vmid") else []
    for key in ("all", "exclude", "mode", "storage", "compress", "protected", "bwlimit",
                "prune-backups", "notes-template"):
        value = params.get(key)
        if value in (None, False, 0, "0"):
            continue
        words.append(f"--{key} {1 if value is True else shlex.quote(str(value))}")
    return " ".join(words)


@registry.register(
    "POST", "/nodes/{node}/vzdump", name="vzdump",
    permission=AnyUser("VM.Backup on each guest and Datastore.AllocateSpace on the "
                       "storage (checked by the method)"),
    proxyto="node", description="Create backup.",
    parameters=VZDUMP_PARAMS, returns={"type": "string", "description": "UPID"},
    cli=CliSpec(("vzdump",), positional=("vmid",)),
)
async def vzdump(ctx: RequestContext, params: dict[str, Any]) -> str:
    service = guests(ctx)
    vmids = _vmids("vmid", params.get("vmid"))
    exclude = _vmids("exclude", params.get("exclude")) or []
    if params["all"] and vmids is not None:
        raise ApiError(400, "Parameter verification failed.",
                       {"all": "option conflicts with option 'vmid'"})
    if exclude and vmids is not None:   # PVE: exclude implies all
        raise param_error("exclude", "option conflicts with option 'vmid'")
    if not params["all"] and not exclude and vmids is None:
        raise param_error("vmid", "property is missing and it is not optional (or give "
                                  "'all')")
    for needs_storage in ("notes-template", "protected"):
        if params.get(needs_storage) and params.get("storage") is None:
            raise param_error(needs_storage, "option requires option 'storage'")
    prune = None
    if params.get("prune-backups") is not None and params["remove"]:
        try:
            prune = parse_prune_backups(params["prune-backups"])
        except PruneError as error:
            raise param_error("prune-backups", str(error)) from None
        if prune.keeps_all():
            prune = None
    storage = await _backup_storage(ctx, params.get("storage"))
    ev = await ctx.services.access.evaluator()
    if not ev.check(ctx.userid, f"/storage/{storage}", ["Datastore.AllocateSpace"]):
        raise PermissionDenied(f"/storage/{storage}, Datastore.AllocateSpace")
    selected = await service.selected(vmids, exclude)
    for vmid in selected:
        if not ev.check(ctx.userid, f"/vms/{vmid}", ["VM.Backup"]):
            raise PermissionDenied(f"/vms/{vmid}, VM.Backup")
        owner = await service.owner(vmid)
        if owner is None:
            raise fail(f"unable to find configuration file for VM {vmid}")
        if owner != ctx.node:
            raise fail(f"VM {vmid} is on node '{owner}', not '{ctx.node}'")
    if not selected:
        raise fail("no guests to back up on this node")
    options = VzdumpOptions(
        storage=storage, mode=params["mode"], notes_template=params.get("notes-template"),
        protected=params["protected"], prune=prune, bwlimit_kib=params["bwlimit"],
        command_line=_command_line({**params, "storage": storage}))

    async def body(task: Task) -> None:
        await service.backup_job(task, selected, options)

    task_id = str(selected[0]) if len(selected) == 1 else ""
    return ctx.services.tasks.start("vzdump", task_id, ctx.userid, body)


async def _backup_volume(ctx: RequestContext, params: dict[str, Any]) -> tuple[str, str, Storage]:
    """The volume named by `storage` + `volume` (a full volid or a name on the storage),
    its name and its storage, once the caller may change it: Datastore.Allocate on the
    storage, or for a backup VM.Backup on its guest (PVE's check_volume_access)."""
    volume = params["volume"]
    volid = volume if ":" in volume else f"{params['storage']}:{volume}"
    storage_id, volname = split_volid(volid)
    if params.get("storage") not in (None, storage_id):
        raise param_error("volume", f"volume is not on storage '{params['storage']}'")
    storage = await ctx.services.storages.get(storage_id)
    ev = await ctx.services.access.evaluator()
    if not ev.check(ctx.userid, f"/storage/{storage_id}", ["Datastore.Allocate"]):
        vmid = _backup_vmid(volname)
        if vmid is None or not ev.check(ctx.userid, f"/vms/{vmid}", ["VM.Backup"]):
            raise PermissionDenied(f"/storage/{storage_id}, Datastore.Allocate")
    return volid, volname, storage


def _volume_id(params: dict[str, Any]) -> tuple[str, str]:
    """PVE's real_volume_id: `volume` is a full volid, or a name on `storage`."""
    volume = params["volume"]
    if ":" not in volume and not params.get("storage"):
        raise param_error("storage", "storage ID missing")
    volid = volume if ":" in volume else f"{params['storage']}:{volume}"
    storage_id, volname = split_volid(volid)
    if params.get("storage") not in (None, storage_id):
        raise param_error("volume", f"volume is not on storage '{params['storage']}'")
    return volid, volname


async def _check_read_access(ctx: RequestContext, storage_id: str, volname: str) -> None:
    """PVE's check_volume_access (no owner VM given): ISO images and templates to who
    may see the storage, a guest's disk to who may see the storage and configure the
    guest's disks, a backup to who may back the guest up, the rest to its administrator."""
    ev = await ctx.services.access.evaluator()
    store = f"/storage/{storage_id}"

    def need(path: str, *names: str, any_: bool = False) -> None:
        if not ev.check(ctx.userid, path, list(names), any=any_):
            raise PermissionDenied(f"{path}, {', '.join(names)}")

    vmid = _backup_vmid(volname)
    if volname.split("/", 1)[0] in ("iso", "vztmpl", "import"):
        need(store, "Datastore.AllocateSpace", "Datastore.Audit", any_=True)
    elif vmid is not None:
        need(store, "Datastore.AllocateSpace")
        need(f"/vms/{vmid}", "VM.Backup")
    elif volname[:1].isdigit() and "/" in volname:     # an image: VMID/NAME
        need(store, "Datastore.Audit")
        need(f"/vms/{volname.split('/', 1)[0]}", "VM.Config.Disk")
    else:
        need(store, "Datastore.Allocate")


@registry.register(
    "GET", "/nodes/{node}/storage/{storage}/content/{volume}", name="storage_volume_info",
    permission=AnyUser("PVE's check_volume_access on the volume"), proxyto="node",
    description="Get volume attributes.",
    parameters={"node": NODE, "storage": Param(optional=True, pattern=STORAGE_ID.pattern),
                "volume": Param(max_length=1024, description="Volume identifier")},
    returns={"type": "object", "properties": {
        "path": {"type": "string"}, "size": {"type": "integer"}, "used": {"type": "integer"},
        "format": {"type": "string"}, "notes": {"type": "string", "optional": 1},
        "protected": {"type": "boolean", "optional": 1}}},
    cli=CliSpec(("storage", "volume-info"), positional=("storage", "volume")),
)
async def storage_volume_info(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    volid, volname = _volume_id(params)
    storage_id = volid.split(":", 1)[0]
    await _check_read_access(ctx, storage_id, volname)
    try:
        storage = await ctx.services.storages.get(storage_id)
        entry = next((v for v in await storage.list() if v["volid"] == volid), None)
    except StorageError as error:
        raise fail(str(error)) from None
    if entry is None:
        # PVE's text when volume_size_info finds nothing there
        raise fail(f"volume_size_info on '{volid}' failed - no format")
    try:
        path = storage.source(volid).source
    except StorageError:
        path = volid        # a backup of binome's format: a datastore snapshot, no one file
    out: dict[str, Any] = {"path": path, "size": int(entry.get("size") or 0),
                           "used": int(entry.get("used", entry.get("size")) or 0),
                           "format": entry["format"]}
    if entry.get("notes"):
        out["notes"] = entry["notes"]
    if "protected" in entry:
        out["protected"] = int(bool(entry["protected"]))
    return out


@registry.register(
    "DELETE", "/nodes/{node}/storage/{storage}/content/{volume}", name="storage_volume_delete",
    permission=privs("Datastore.Allocate", "Datastore.AllocateSpace",
                     path="/storage/{storage}", any=True),
    proxyto="node",
    description="Delete volume (backups: Datastore.AllocateSpace and VM.Backup on the "
                "guest suffice; protected backups are refused).",
    parameters={"node": NODE, "storage": Param(optional=True, pattern=STORAGE_ID.pattern),
                "volume": Param(max_length=1024, description="Volume identifier."),
                "delay": Param(type="integer", optional=True, minimum=1, maximum=30,
                               description="Accepted; the deletion runs as a task.")},
    returns={"type": "string", "description": "UPID"},
    cli=CliSpec(("storage", "free"), positional=("storage", "volume")),
)
async def storage_volume_delete(ctx: RequestContext, params: dict[str, Any]) -> str:
    volid, volname, storage = await _backup_volume(ctx, params)
    if not volname.startswith("backup/"):
        # images, ISO images, templates, snippets: storage_content (refuses a VM's disk)
        return await free_volume(ctx, volid, storage)
    listed = {v["volid"]: v for v in await storage.list("backup")}
    if volid not in listed:
        raise fail(f"volume '{volid}' does not exist")
    if listed[volid].get("protected"):
        raise fail(f"cannot remove protected archive '{volname}'")

    async def body(task: Task) -> None:
        try:
            await storage.free(volid)
        except StorageError as error:
            raise BinomeError(str(error)) from None
        task.log(f"Removed volume '{volid}'")

    return ctx.services.tasks.start("imgdel", "", ctx.userid, body)


@registry.register(
    "PUT", "/nodes/{node}/storage/{storage}/content/{volume}", name="storage_volume_update",
    permission=privs("Datastore.Allocate", "Datastore.AllocateSpace",
                     path="/storage/{storage}", any=True),
    proxyto="node",
    description="Update volume attributes (backups: notes, protected; with "
                "Datastore.AllocateSpace also VM.Backup on the guest).",
    parameters={"node": NODE, "storage": Param(optional=True, pattern=STORAGE_ID.pattern),
                "volume": Param(max_length=1024, description="Volume identifier."),
                "notes": Param(optional=True, max_length=1024,
                               description="The new notes."),
                "protected": Param(type="boolean", optional=True,
                                   description="Protection status.")},
    returns={"type": "null"},
    cli=CliSpec(("storage", "update"), positional=("storage", "volume")),
)
async def storage_volume_update(ctx: RequestContext, params: dict[str, Any]) -> None:
    volid, volname, storage = await _backup_volume(ctx, params)
    if not volname.startswith("backup/"):
        raise param_error("volume", "only backup volumes have notes and protection")
    try:
        await storage.set_backup_attributes(volid, notes=params.get("notes"),
                                            protected=params.get("protected"))
    except StorageError as error:
        raise fail(str(error)) from None


def _backup_vmid(volname: str) -> int | None:
    parts = volname.split("-")
    if volname.startswith("backup/vzdump-") and len(parts) > 2 and parts[2].isdigit():
        return int(parts[2])
    return None
