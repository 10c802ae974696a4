"""Storage methods: definitions (/storage), per-node status and content.

Definitions are written by `binome.storage.definitions`, read through the node's
`StorageManager`; this module validates, calls and shapes.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from binome.access.permission import AnyUser
from binome.api.context import RequestContext
from binome.api.errors import fail, param_error
from binome.api.methods.common import NODE, RRD_PARAMS, storage_definitions
from binome.api.methods.storage_keys import push_encryption_key
from binome.api.registry import CliSpec, privs, registry
from binome.api.schema import Param
from binome.backup.crypt import AUTOGEN, CryptError, load_key, new_key_file
from binome.errors import BinomeError
from binome.guest.configs import VmConfigs
from binome.storage.backup_server import ENCRYPTION_KEY
from binome.storage.backup_server import OPTIONS as BACKUP_SERVER_OPTIONS
from binome.storage.base import CONTENT_TYPES, StorageError
from binome.storage.definitions import definition_record, volume_storage
from binome.storage.manager import BACKENDS

STORAGE_ID = Param(pattern=r"[a-z][a-z0-9\-_.]*", max_length=64, description="Storage ID.")
AUDIT = privs("Datastore.Audit", "Datastore.AllocateSpace", path="/storage/{storage}",
              any=True)
VISIBLE = ("Datastore.Audit", "Datastore.AllocateSpace")
# content types anyone who sees the storage may list (PVE's check_volume_access)
SHARED_CONTENT = ("iso", "vztmpl", "import", "snippets")


async def _visible(ctx: RequestContext) -> Callable[[str], bool]:
    """PVE lists a storage to whom has Datastore.Audit or .AllocateSpace on it."""
    ev = await ctx.services.access.evaluator()
    return lambda sid: ev.check(ctx.userid, f"/storage/{sid}", VISIBLE, any=True)


def _manager(ctx: RequestContext):
    return ctx.services.storages


@registry.register(
    "GET", "/storage", name="storage_index",
    permission=AnyUser("only storages with Datastore.Audit or Datastore.AllocateSpace"),
    description="Storage definitions.",
    parameters={"type": Param(optional=True, description="Only storages of this type.")},
    returns={"type": "array"},
    cli=CliSpec(("storage", "list"), formatter="table:storage,type,content,path,shared"),
)
async def storage_index(ctx: RequestContext, params: dict[str, Any]) -> list[dict[str, Any]]:
    configs = await _manager(ctx).configs()
    visible = await _visible(ctx)
    return [c.to_api() for c in configs
            if params.get("type") in (None, c.type) and visible(c.storage)]


@registry.register(
    "POST", "/storage", name="storage_create",
    permission=privs("Datastore.Allocate", path="/storage"),
    description="Define a storage: 'dir', 'replicated' or 'binome-backup' (a binome backup "
                "server: server, datastore, username (token id), password (token secret) "
                "and fingerprint; optionally encryption-key).",
    parameters={"storage": STORAGE_ID,
                "type": Param(enum=tuple(BACKENDS), description="Storage type."),
                "path": Param(optional=True, pattern=r"/[^\0]*", max_length=4096),
                "content": Param(optional=True, max_length=256,
                                 format="pve-storage-content-list",
                                 description="Content types, e.g. images,iso (default; "
                                             "'backup' for binome-backup)."),
                "nodes": Param(optional=True, max_length=1024),
                "shared": Param(type="boolean", optional=True, default=False),
                "disable": Param(type="boolean", optional=True, default=False),
                "server": Param(optional=True, max_length=253,
                                pattern=r"[A-Za-z0-9.:\[\]-]+",
                                description="Backup server address (binome-backup)."),
                "port": Param(type="integer", optional=True, minimum=1, maximum=65535,
                              description="Backup server port (default 8007)."),
                "datastore": Param(optional=True, max_length=64,
                                   pattern=r"[A-Za-z0-9][A-Za-z0-9_-]*",
                                   description="Datastore name on the backup server."),
                "username": Param(optional=True, max_length=128,
                                  pattern=r"[A-Za-z0-9._-]+@[A-Za-z0-9._-]+![A-Za-z0-9._-]+",
                                  description="API token id on the backup server "
                                              "(user@realm!name)."),
                "password": Param(optional=True, secret=True, max_length=256,
                                  description="The token's secret (write-only: stored "
                                              "apart from the definition, never shown)."),
                "fingerprint": Param(optional=True, max_length=128,
                                     pattern=r"([A-Fa-f0-9]{2}:){31}[A-Fa-f0-9]{2}",
                                     description="SHA-256 fingerprint of the backup "
                                                 "server's certificate (pinned)."),
                "encryption-key": Param(optional=True, secret=True, max_length=4096,
                                        extra={"multiline": True},   # a key file's JSON
                                        description="Client-side encryption of the "
                                                    "backups (binome-backup): 'autogen' "
                                                    "for a new key, or a key file's "
                                                    "content. Write-only: kept in a "
                                                    "root-only file on this node; the "
                                                    "definition shows its fingerprint.")},
    cli=CliSpec(("storage", "add"), positional=("storage",)),
)
async def storage_create(ctx: RequestContext, params: dict[str, Any]) -> None:
    definitions = storage_definitions(ctx)
    backup_server = params["type"] == "binome-backup"
    content_text = params.get("content") or ("backup" if backup_server else "images,iso")
    content = [c for c in content_text.split(",") if c]
    options: dict[str, Any] = {}
    secret = None
    key_text: str | None = None
    if params["type"] == "dir" and not params.get("path"):
        raise param_error("path", "property is missing and it is not optional")
    if backup_server:
        for name in ("server", "datastore", "username", "password", "fingerprint"):
            if not params.get(name):
                raise param_error(name, "property is missing and it is not optional")
        if params.get("path"):
            raise param_error("path", "a binome-backup storage has no path")
        if content != ["backup"]:
            raise param_error("content", "a binome-backup storage holds content 'backup' "
                                         "only")
        options = {name: params[name] for name in BACKUP_SERVER_OPTIONS if name in params}
        options["fingerprint"] = options["fingerprint"].upper()
        secret = params["password"]
        if params.get("encryption-key"):
            key_text = params["encryption-key"].strip()
            try:
                if key_text == AUTOGEN:
                    key_text, crypt = new_key_file()
                else:
                    crypt = load_key(key_text)
            except CryptError as exc:
                raise param_error("encryption-key", str(exc)) from None
            options[ENCRYPTION_KEY] = crypt.fingerprint
    else:
        for name in (*BACKUP_SERVER_OPTIONS, "password", "encryption-key"):
            if name in params:
                raise param_error(name, f"not an option of storage type '{params['type']}'")
    await definitions.create(definition_record(
        params["storage"], params["type"], path=params.get("path", ""), content=content,
        nodes=params.get("nodes", ""), shared=params["shared"] or backup_server,
        disable=params["disable"], options=options), secret)
    if key_text is not None:
        # after the definition: a taken storage ID never overwrites another's key
        _manager(ctx).save_encryption_key(params["storage"], key_text)
        await push_encryption_key(ctx, params["storage"], key_text)


UPDATE_PARAMS: dict[str, Param] = {
    "storage": STORAGE_ID,
    "content": Param(optional=True, max_length=256, format="pve-storage-content-list",
                     description="Allowed content types."),
    "nodes": Param(optional=True, max_length=1024,
                   pattern=r"[a-zA-Z0-9]([a-zA-Z0-9\-]*[a-zA-Z0-9])?"
                           r"(,[a-zA-Z0-9]([a-zA-Z0-9\-]*[a-zA-Z0-9])?)*",
                   description="List of nodes for which the storage configuration applies."),
    "shared": Param(type="boolean", optional=True,
                    description="Indicate that this is a single storage with the same "
                                "contents on all nodes."),
    "disable": Param(type="boolean", optional=True, description="Flag to disable the "
                                                                "storage."),
    "server": Param(optional=True, max_length=253, pattern=r"[A-Za-z0-9.:\[\]-]+",
                    description="Backup server address (binome-backup)."),
    "port": Param(type="integer", optional=True, minimum=1, maximum=65535,
                  description="Backup server port."),
    "datastore": Param(optional=True, max_length=64, pattern=r"[A-Za-z0-9][A-Za-z0-9_-]*",
                       description="Datastore name on the backup server."),
    "username": Param(optional=True, max_length=128,
                      pattern=r"[A-Za-z0-9._-]+@[A-Za-z0-9._-]+![A-Za-z0-9._-]+",
                      description="API token id on the backup server."),
    "password": Param(optional=True, secret=True, max_length=256,
                      description="The token's secret (write-only)."),
    "fingerprint": Param(optional=True, max_length=128,
                         pattern=r"([A-Fa-f0-9]{2}:){31}[A-Fa-f0-9]{2}",
                         description="SHA-256 fingerprint of the backup server's "
                                     "certificate."),
    "delete": Param(optional=True, max_length=4096,
                    pattern=r"[a-z][a-z0-9\-]*(?:[,; ]+[a-z][a-z0-9\-]*)*[,; ]*",
                    description="A list of settings you want to delete."),
    "digest": Param(optional=True, max_length=64, pattern=r"[a-fA-F0-9]{40,64}",
                    description="Prevent changes if current configuration file has a "
                                "different digest. This can be used to prevent concurrent "
                                "modifications."),
}
_UPDATABLE = tuple(k for k in UPDATE_PARAMS if k not in ("storage", "delete", "digest",
                                                          "password"))


@registry.register(
    "GET", "/storage/{storage}", name="storage_read",
    permission=privs("Datastore.Allocate", path="/storage/{storage}"),
    description="Read storage configuration.",
    parameters={"storage": STORAGE_ID}, returns={"type": "object"},
    cli=CliSpec(("storage", "config"), positional=("storage",)),
)
async def storage_read(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    cfg = await _manager(ctx).config(params["storage"])
    digest = await storage_definitions(ctx).digest()
    return {**cfg.to_api(), "digest": digest}


@registry.register(
    "PUT", "/storage/{storage}", name="storage_update",
    permission=privs("Datastore.Allocate", path="/storage"),
    description="Update storage configuration (type and path are fixed; 'delete' resets "
                "options to their defaults).",
    parameters=UPDATE_PARAMS,
    returns={"type": "object"},
    cli=CliSpec(("storage", "set"), positional=("storage",)),
)
async def storage_update(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    definitions = storage_definitions(ctx)
    storage_id = params["storage"]
    cfg = await _manager(ctx).config(storage_id)
    delete = [d for d in re.split(r"[,; ]+", params.get("delete") or "") if d]
    changes = {k: params[k] for k in _UPDATABLE if params.get(k) is not None}
    secret = params.get("password")
    if secret is not None and cfg.type != "binome-backup":
        raise param_error("password", f"not an option of storage type '{cfg.type}'")
    if "content" in changes:
        content = [c for c in changes["content"].split(",") if c]
        if not content:
            raise param_error("content", "value must not be empty")
        changes["content"] = ",".join(dict.fromkeys(content))
    if "fingerprint" in changes:
        changes["fingerprint"] = changes["fingerprint"].upper()
    if "nodes" in changes:
        known = set(ctx.services.cluster.node_records) | {ctx.node}
        unknown = [n for n in changes["nodes"].split(",") if n not in known]
        if unknown:
            raise param_error("nodes", f"no such cluster node '{unknown[0]}'")
    # the built-in `local` has no stored record until its first change; stored without
    # a path, it stays each node's own <state-dir>/storage/local (StorageManager.configs)
    base = definition_record("local", "dir", content=_manager(ctx).default_local().content) \
        if storage_id == "local" else None
    try:
        await definitions.update(storage_id, changes, delete, digest=params.get("digest"),
                                 base=base, secret=secret)
    except StorageError as exc:
        raise fail(f"update storage failed: {exc}") from None
    return {"storage": storage_id, "type": cfg.type}


@registry.register(
    "DELETE", "/storage/{storage}", name="storage_delete",
    permission=privs("Datastore.Allocate", path="/storage"),
    description="Delete storage configuration (refused while a VM's config names a volume "
                "on it). The volumes themselves are left in place.",
    parameters={"storage": STORAGE_ID},
    cli=CliSpec(("storage", "remove"), positional=("storage",)),
)
async def storage_delete(ctx: RequestContext, params: dict[str, Any]) -> None:
    definitions = storage_definitions(ctx)
    storage_id = params["storage"]
    await _manager(ctx).config(storage_id)        # "storage 'x' does not exist"
    users = VmConfigs(ctx.node, lambda: ctx.services.cluster.store)

    async def in_use() -> str | None:
        vmids = sorted({vmid for volid, vmids in (await users.volume_users()).items()
                        if volume_storage(volid) == storage_id for vmid in vmids})
        if vmids:
            return (f"can't remove storage - storage is used by VM "
                    f"{', '.join(map(str, vmids))}")
        return None

    if storage_id == "local" and "local" not in await definitions.records():
        raise fail("delete storage failed: 'local' is every node's built-in storage")
    try:
        await definitions.remove(storage_id, in_use=in_use)
    except StorageError as exc:
        raise fail(f"delete storage failed: {exc}") from None


@registry.register(
    "GET", "/nodes/{node}/storage", name="node_storage",
    permission=AnyUser("only storages with Datastore.Audit or Datastore.AllocateSpace"),
    proxyto="node", description="Storage status on this node.",
    parameters={"node": NODE, "content": Param(optional=True, enum=CONTENT_TYPES),
                "storage": Param(optional=True)},
    returns={"type": "array"},
    cli=CliSpec(("storage", "status"), formatter="table:storage,type,active,total,used,avail"),
)
async def node_storage(ctx: RequestContext, params: dict[str, Any]) -> list[dict[str, Any]]:
    manager = _manager(ctx)
    visible = await _visible(ctx)
    out = []
    for cfg in await manager.configs():
        if not cfg.available_on(ctx.node) or not visible(cfg.storage):
            continue
        if params.get("storage") not in (None, cfg.storage):
            continue
        if params.get("content") and params["content"] not in cfg.content:
            continue
        try:
            status = await (await manager.get(cfg.storage)).status()
        except BinomeError:
            status = {"active": 0, "enabled": 0, "total": 0, "used": 0, "avail": 0}
        out.append({"storage": cfg.storage, "type": cfg.type, "content": ",".join(cfg.content),
                    "shared": int(cfg.shared), **status})
    return out


@registry.register(
    "GET", "/nodes/{node}/storage/{storage}/status", name="node_storage_status",
    permission=AUDIT, proxyto="node", description="Status of one storage on this node.",
    parameters={"node": NODE, "storage": STORAGE_ID}, returns={"type": "object"},
)
async def node_storage_status(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    manager = _manager(ctx)
    cfg = await manager.config(params["storage"])
    status = await (await manager.get(cfg.storage)).status()
    return {"storage": cfg.storage, "type": cfg.type, "content": ",".join(cfg.content),
            "shared": int(cfg.shared), **status}


@registry.register(
    "GET", "/nodes/{node}/storage/{storage}/rrddata", name="node_storage_rrddata",
    permission=privs("Datastore.Audit", path="/storage/{storage}"), proxyto="node",
    description="Storage usage over time (total, used), as this node sees it.",
    parameters={"node": NODE, "storage": STORAGE_ID, **RRD_PARAMS}, returns={"type": "array"},
)
async def node_storage_rrddata(ctx: RequestContext,
                               params: dict[str, Any]) -> list[dict[str, Any]]:
    await _manager(ctx).config(params["storage"])      # an unknown storage is an error
    return await ctx.services.rrd.fetch_storage(params["storage"], params["timeframe"],
                                                params["cf"])


@registry.register(
    "GET", "/nodes/{node}/storage/{storage}/content", name="node_storage_content",
    permission=AUDIT, proxyto="node", description="List the volumes of a storage.",
    parameters={"node": NODE, "storage": STORAGE_ID,
                "content": Param(optional=True, enum=CONTENT_TYPES),
                "vmid": Param(type="integer", optional=True, minimum=100)},
    returns={"type": "array"},
    cli=CliSpec(("storage", "content"), positional=("storage",),
                formatter="table:volid,content,format,size,vmid"),
)
async def node_storage_content(ctx: RequestContext,
                               params: dict[str, Any]) -> list[dict[str, Any]]:
    storage = await _manager(ctx).get(params["storage"])
    volumes = await storage.list(params.get("content"), params.get("vmid"))
    ev = await ctx.services.access.evaluator()
    if ev.check(ctx.userid, f"/storage/{params['storage']}", ["Datastore.Allocate"]):
        return volumes
    # PVE's check_volume_access: a guest's disks only to who may see that guest, backups
    # to who may back it up; templates and ISO images to anyone who sees the storage
    out = []
    for vol in volumes:
        vmid = vol.get("vmid")
        content = vol.get("content")
        if content in SHARED_CONTENT:
            out.append(vol)
        elif content == "backup" and vmid is not None:
            if ev.check(ctx.userid, f"/storage/{params['storage']}",
                        ["Datastore.AllocateSpace"]) and \
                    ev.check(ctx.userid, f"/vms/{vmid}", ["VM.Backup"]):
                out.append(vol)
        elif vmid is not None and ev.check(ctx.userid, f"/vms/{vmid}", ["VM.Audit"]):
            out.append(vol)
    return out
