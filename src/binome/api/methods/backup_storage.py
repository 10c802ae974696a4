"""Management of the backups on a storage: PVE's `prunebackups` (GET: the dry run, DELETE:
the prune task) and binome's extensions `verify` and `gc` of the storage's deduplicated
backup datastore (PBS's verify and garbage collection, as tasks `verify` and
`garbage_collection`).

Validates, calls and shapes: the prune selection is `binome.backup.prune`'s (PVE's
semantics), verify and GC are the datastore's (`binome.backup.datastore`), the listing
and removal of backups the storage's.
"""

from __future__ import annotations

import asyncio
from typing import Any

from binome.access.permission import AnyUser
from binome.api.context import RequestContext
from binome.api.errors import PermissionDenied, fail, param_error
from binome.api.methods.common import NODE
from binome.api.methods.storage import STORAGE_ID
from binome.api.registry import CliSpec, privs, registry
from binome.api.schema import Param
from binome.backup.datastore import DatastoreError, SnapshotRef
from binome.backup.dumpstore import DumpStore, ref_of_name
from binome.backup.prune import (
    Mark,
    PruneError,
    PruneOptions,
    format_prune_backups,
    mark_backup_list,
    parse_prune_backups,
)
from binome.backup.remote import RemoteDumpStore
from binome.errors import BinomeError
from binome.storage.base import Storage, StorageError, split_volid
from binome.tasks.manager import Task, TaskFailed

PRUNE_PARAMS = {
    "node": NODE,
    "storage": Param(pattern=STORAGE_ID.pattern, max_length=64, description="Storage ID."),
    "prune-backups": Param(optional=True, max_length=256,
                           description="Use these retention options instead of those from "
                                       "the storage configuration (binome's storages have "
                                       "none yet: required)."),
    "type": Param(optional=True, enum=("qemu", "lxc"),
                  description="Either 'qemu' or 'lxc'. Only consider backups for guests "
                              "of this type."),
    "vmid": Param(type="integer", optional=True, minimum=100, maximum=999_999_999,
                  description="Only consider backups for this guest."),
}


async def _storage(ctx: RequestContext, storage_id: str) -> Storage:
    try:
        storage = await ctx.services.storages.get(storage_id)
        storage.backup_store()
    except BinomeError as error:
        raise param_error("storage", str(error)) from None
    return storage


def _options(params: dict[str, Any]) -> PruneOptions:
    text = params.get("prune-backups")
    if text is None:   # PVE falls back on the storage's; binome's storages have none yet
        raise fail(f"no prune-backups options configured for storage '{params['storage']}'")
    try:
        return parse_prune_backups(text)
    except PruneError as error:
        raise param_error("prune-backups", str(error)) from None


async def _marks(ctx: RequestContext, params: dict[str, Any]) -> list[dict[str, Any]]:
    storage = await _storage(ctx, params["storage"])
    listing = await storage.list("backup", params.get("vmid"))
    if params.get("type"):
        listing = [e for e in listing if (e.get("subtype") or "qemu") == params["type"]]
    return mark_backup_list(listing, _options(params))


@registry.register(
    "GET", "/nodes/{node}/storage/{storage}/prunebackups", name="prunebackups_dryrun",
    permission=privs("Datastore.Audit", "Datastore.AllocateSpace", path="/storage/{storage}",
                     any=True),
    proxyto="node",
    description="Get prune information for backups. NOTE: this is only a preview and might "
                "not be what a subsequent prune call does if backups are removed/added in "
                "the meantime.",
    parameters=PRUNE_PARAMS, returns={"type": "array", "items": {"type": "object"}},
    cli=CliSpec(("storage", "prune-backups-list"), positional=("storage",),
                formatter="table:volid,type,vmid,ctime,mark"),
)
async def prunebackups_dryrun(ctx: RequestContext, params: dict[str, Any]
                              ) -> list[dict[str, Any]]:
    return await _marks(ctx, params)


@registry.register(
    "DELETE", "/nodes/{node}/storage/{storage}/prunebackups", name="prunebackups",
    permission=AnyUser("You need the 'Datastore.Allocate' privilege on the storage (or if a "
                       "VM ID is specified, 'Datastore.AllocateSpace' and 'VM.Backup' for "
                       "the VM)."),
    proxyto="node",
    description="Prune backups. Only those using the standard naming scheme are considered.",
    parameters={**PRUNE_PARAMS, "prune-backups": Param(
        max_length=256, description="Use these retention options instead of those from the "
                                    "storage configuration.")},
    returns={"type": "string", "description": "UPID"},
    cli=CliSpec(("storage", "prune-backups"), positional=("storage",)),
)
async def prunebackups(ctx: RequestContext, params: dict[str, Any]) -> str:
    storage_id = params["storage"]
    storage = await _storage(ctx, storage_id)
    options = _options(params)
    ev = await ctx.services.access.evaluator()
    vmid = params.get("vmid")
    if vmid is not None:
        if not ev.check(ctx.userid, f"/storage/{storage_id}", ["Datastore.AllocateSpace"]):
            raise PermissionDenied(f"/storage/{storage_id}, Datastore.AllocateSpace")
        if not ev.check(ctx.userid, f"/vms/{vmid}", ["VM.Backup"]):
            raise PermissionDenied(f"/vms/{vmid}, VM.Backup")
    elif not ev.check(ctx.userid, f"/storage/{storage_id}", ["Datastore.Allocate"]):
        raise PermissionDenied(f"/storage/{storage_id}, Datastore.Allocate")

    async def body(task: Task) -> None:
        task.log(f"prune backups of storage '{storage_id}' with retention: "
                 f"{format_prune_backups(options)}")
        if options.keeps_all():
            task.log("retention keeps all backups: nothing to prune")
            return
        failed = 0
        for entry in await _marks(ctx, params):     # again: the listing may have changed
            if entry["mark"] != str(Mark.REMOVE):
                continue
            task.log(f"removing backup '{entry['volid']}'")
            try:
                await storage.free(entry["volid"])
            except StorageError as error:
                failed += 1
                task.log(f"error when removing backup '{entry['volid']}' - {error}")
        if failed:
            raise TaskFailed("error pruning backups - check log")

    task_id = f"{vmid}@{storage_id}" if vmid is not None else storage_id
    return ctx.services.tasks.start("prunebackups", task_id, ctx.userid, body)


async def _datastore(ctx: RequestContext, storage_id: str) -> DumpStore | RemoteDumpStore:
    return (await _storage(ctx, storage_id)).backup_store()


def _refs(store: DumpStore | RemoteDumpStore, params: dict[str, Any]) -> list[SnapshotRef]:
    volume = params.get("volume")
    if volume is None:
        vmid = params.get("vmid")
        return store.snapshots("vm", None if vmid is None else str(vmid))
    volid = volume if ":" in volume else f"{store.storage_id}:{volume}"
    storage_id, volname = split_volid(volid)
    if storage_id != store.storage_id or not volname.startswith("backup/"):
        raise param_error("volume", f"volume is not a backup on storage '{store.storage_id}'")
    try:
        ref = ref_of_name(volname[len("backup/"):])
    except DatastoreError as error:
        raise param_error("volume", str(error)) from None
    if ref not in store.snapshots():
        raise fail(f"volume '{volid}' does not exist")
    return [ref]


@registry.register(
    "POST", "/nodes/{node}/storage/{storage}/verify", name="backup_verify",
    permission=privs("Datastore.Allocate", path="/storage/{storage}"),
    proxyto="node",
    description="binome extension (PBS's verify): re-read every chunk of the storage's "
                "binome backups (or of one backup, or of one guest's) and check its "
                "digest; a backup with a bad or missing chunk is marked failed.",
    parameters={"node": NODE, "storage": PRUNE_PARAMS["storage"],
                "volume": Param(optional=True, max_length=1024,
                                description="Only this backup (volume id)."),
                "vmid": Param(type="integer", optional=True, minimum=100,
                              maximum=999_999_999,
                              description="Only the backups of this guest.")},
    returns={"type": "string", "description": "UPID"},
    cli=CliSpec(("storage", "verify"), positional=("storage",)),
)
async def backup_verify(ctx: RequestContext, params: dict[str, Any]) -> str:
    store = await _datastore(ctx, params["storage"])
    refs = await asyncio.to_thread(_refs, store, params)   # a backup server: network

    async def body(task: Task) -> None:
        failed = await asyncio.to_thread(store.verify_backups, refs, task.log)
        if failed:
            raise TaskFailed("verification failed - please check the log for details")

    return ctx.services.tasks.start("verify", store.storage_id, ctx.userid, body)


@registry.register(
    "POST", "/nodes/{node}/storage/{storage}/gc", name="backup_gc",
    permission=privs("Datastore.Allocate", path="/storage/{storage}"),
    proxyto="node",
    description="binome extension (PBS's garbage collection): remove the chunks no backup "
                "of the storage references any more (those a running backup may use are "
                "kept).",
    parameters={"node": NODE, "storage": PRUNE_PARAMS["storage"]},
    returns={"type": "string", "description": "UPID"},
    cli=CliSpec(("storage", "gc"), positional=("storage",)),
)
async def backup_gc(ctx: RequestContext, params: dict[str, Any]) -> str:
    store = await _datastore(ctx, params["storage"])

    async def body(task: Task) -> None:
        try:
            await asyncio.to_thread(store.collect_garbage, task.log)
        except (DatastoreError, OSError) as error:
            raise TaskFailed(f"garbage collection failed: {error}") from None

    return ctx.services.tasks.start("garbage_collection", store.storage_id, ctx.userid, body)
