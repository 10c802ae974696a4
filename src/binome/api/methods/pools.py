"""Resource pools, PVE 8's /pools API (pve-manager PVE/API2/Pool.pm): list, create,
read, change members, delete, with both the path-style (/pools/{poolid}) and PVE 8's
query-style (PUT/DELETE /pools?poolid=...) variants.

The pool records live in the access configuration (binome.access); this module only
checks members against the cluster (a VM must exist, a storage must be defined) and
the caller's right to hand each touched object to a pool (PVE's check_perm_modify).
"""

from __future__ import annotations

import re
from typing import Any

from binome.access.model import AccessConfig
from binome.access.ops import add_pool, delete_pool, update_pool
from binome.access.permission import AnyUser
from binome.api.context import RequestContext
from binome.api.errors import ApiError, PermissionDenied, param_error
from binome.api.methods.common import access_change
from binome.api.registry import CliSpec, privs, registry
from binome.api.schema import Param
from binome.schema import split_list

POOL_PATH = "/pool/{poolid}"
POOLID = Param(max_length=1024, description="The pool id (up to three levels, 'a/b/c').")
TYPE = Param(optional=True, enum=("qemu", "lxc", "storage"),
             description="Only list members of this type.")
COMMENT = Param(optional=True, max_length=4096)
ALLOCATE = privs("Pool.Allocate", path=POOL_PATH)
UPDATE_PARAMS = {
    "poolid": POOLID, "comment": COMMENT,
    "vms": Param(optional=True, description="List of guest VMIDs (pve-vmid-list)."),
    "storage": Param(optional=True, description="List of storage IDs."),
    "allow-move": Param(type="boolean", optional=True, default=False,
                        description="Allow adding a guest even if already in another pool. "
                                    "The guest will be removed from its current pool."),
    "delete": Param(type="boolean", optional=True, default=False,
                    description="Remove the passed VMIDs and/or storage IDs instead of "
                                "adding them."),
}


def _vmids(text: str | None) -> list[int]:
    out = []
    for item in split_list(text or ""):
        # ASCII digits: isdigit() and int() also take fullwidth digits
        if not re.fullmatch(r"[0-9]{3,9}", item) or not 100 <= int(item) <= 999_999_999:
            raise param_error("vms", f"value '{item}' does not look like a valid VM ID")
        out.append(int(item))
    return out


async def _members(ctx: RequestContext, pool_vms: frozenset[int] | set[int],
                   pool_storage: frozenset[str] | set[str],
                   kind: str | None) -> list[dict[str, Any]]:
    """PVE's member entries: the guest's and storage's /cluster/resources entries."""
    members: list[dict[str, Any]] = []
    if kind in (None, "qemu") and pool_vms and ctx.services.guests is not None:
        for vm in await ctx.services.guests.cluster_vms():
            if vm.get("vmid") in pool_vms:
                members.append(dict(vm))
    if kind in (None, "storage") and pool_storage:
        for cfg in await ctx.services.storages.configs():
            if cfg.storage in pool_storage:
                members.append({"id": f"storage/{ctx.node}/{cfg.storage}", "type": "storage",
                                "storage": cfg.storage, "node": ctx.node,
                                "plugintype": cfg.type, "shared": int(cfg.shared),
                                "content": ",".join(cfg.content)})
    return members


async def _pool_entry(ctx: RequestContext, config: AccessConfig, poolid: str,
                      kind: str | None) -> dict[str, Any]:
    pool = config.pools.get(poolid)
    if pool is None:
        raise ApiError(500, f"pool '{poolid}' does not exist")
    entry: dict[str, Any] = {"poolid": poolid,
                             "members": await _members(ctx, pool.vms, pool.storage, kind)}
    if pool.comment:
        entry["comment"] = pool.comment
    return entry


@registry.register(
    "GET", "/pools", name="pools",
    permission=AnyUser("lists the pools with Pool.Audit or Pool.Allocate on /pool/<id>"),
    description="List pools or get pool configuration.",
    parameters={"poolid": Param(optional=True, max_length=1024), "type": TYPE},
    returns={"type": "array"},
    cli=CliSpec(("pool", "list"), formatter="table:poolid,comment"),
)
async def pools(ctx: RequestContext, params: dict[str, Any]) -> list[dict[str, Any]]:
    ev = await ctx.services.access.evaluator()
    config = ev.config
    poolid = params.get("poolid")
    if params.get("type") and not poolid:
        raise param_error("type", "parameter 'type' requires parameter 'poolid'")

    def visible(p: str) -> bool:
        return ev.check(ctx.userid, f"/pool/{p}", ["Pool.Audit", "Pool.Allocate"], any=True)

    if poolid:
        if poolid not in config.pools:
            raise ApiError(500, f"pool '{poolid}' does not exist")
        if not visible(poolid):
            return []
        return [await _pool_entry(ctx, config, poolid, params.get("type"))]
    out = []
    for pid in sorted(config.pools):
        if visible(pid):
            pool = config.pools[pid]
            out.append({"poolid": pid, **({"comment": pool.comment} if pool.comment else {})})
    return out


@registry.register(
    "POST", "/pools", name="pool_create", permission=ALLOCATE,
    description="Create new pool.",
    parameters={"poolid": POOLID, "comment": COMMENT},
    cli=CliSpec(("pool", "add"), positional=("poolid",)),
)
async def pool_create(ctx: RequestContext, params: dict[str, Any]) -> None:
    poolid, comment = params["poolid"], params.get("comment") or ""
    await access_change(ctx, f"create pool '{poolid}'",
                        lambda cfg: add_pool(cfg, poolid, comment))


@registry.register(
    "GET", "/pools/{poolid}", name="pool_read",
    permission=privs("Pool.Audit", path=POOL_PATH),
    description="Get pool configuration (deprecated in PVE 8, use GET /pools?poolid=).",
    parameters={"poolid": POOLID, "type": TYPE},
    returns={"type": "object"},
)
async def pool_read(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    entry = await _pool_entry(ctx, await ctx.services.access.config(), params["poolid"],
                              params.get("type"))
    entry.pop("poolid")
    return entry


async def _update(ctx: RequestContext, params: dict[str, Any]) -> None:
    poolid = params["poolid"]
    vms = _vmids(params.get("vms"))
    storage = split_list(params.get("storage") or "")
    delete = bool(params.get("delete"))
    ev = await ctx.services.access.evaluator()
    if poolid not in ev.config.pools:
        raise ApiError(500, f"pool '{poolid}' does not exist")
    # PVE's check_perm_modify: who puts an object into a pool (or takes it out) hands
    # its pool's delegates rights on it, so they must be allowed to delegate it.
    for path in [f"/vms/{v}" for v in vms] + [f"/storage/{s}" for s in storage]:
        if not ev.can_modify_permissions(ctx.userid, path):
            raise PermissionDenied(f"{path}, Permissions.Modify")
    if not delete and params.get("allow-move"):
        # PVE 8.1+: taking a VM out of its pool needs Pool.Allocate on that pool too
        for vmid in vms:
            old = ev.config.pool_of_vm(vmid)
            if old and old != poolid and not ev.check(ctx.userid, f"/pool/{old}",
                                                      ["Pool.Allocate"]):
                raise PermissionDenied(f"/pool/{old}, Pool.Allocate")
    if not delete:
        for vmid in vms:
            if ctx.services.guests is None or await ctx.services.guests.owner(vmid) is None:
                raise ApiError(500, f"VM {vmid} does not exist")
        defined = {cfg.storage for cfg in await ctx.services.storages.configs()}
        for sid in storage:
            if sid not in defined:
                raise ApiError(500, f"Storage '{sid}' does not exist")
    comment = params.get("comment")
    await access_change(ctx, f"update pool '{poolid}'", lambda cfg: update_pool(
        cfg, poolid, comment=comment, vms=vms, storage=storage, delete=delete,
        allow_move=bool(params.get("allow-move"))))


@registry.register(
    "PUT", "/pools", name="pool_update",
    permission=ALLOCATE,
    description="Update pool (you also need Permissions.Modify on every object you add or "
                "remove).",
    parameters=UPDATE_PARAMS,
    cli=CliSpec(("pool", "modify"), positional=("poolid",)),
)
async def pool_update(ctx: RequestContext, params: dict[str, Any]) -> None:
    await _update(ctx, params)


@registry.register(
    "PUT", "/pools/{poolid}", name="pool_update_path", permission=ALLOCATE,
    description="Update pool data (deprecated in PVE 8, use PUT /pools).",
    parameters=UPDATE_PARAMS,
)
async def pool_update_path(ctx: RequestContext, params: dict[str, Any]) -> None:
    await _update(ctx, params)


async def _delete(ctx: RequestContext, params: dict[str, Any]) -> None:
    poolid = params["poolid"]
    await access_change(ctx, f"delete pool '{poolid}'", lambda cfg: delete_pool(cfg, poolid))


@registry.register(
    "DELETE", "/pools", name="pool_delete", permission=ALLOCATE,
    description="Delete pool (it must be empty).",
    parameters={"poolid": POOLID},
    cli=CliSpec(("pool", "delete"), positional=("poolid",)),
)
async def pool_delete(ctx: RequestContext, params: dict[str, Any]) -> None:
    await _delete(ctx, params)


@registry.register(
    "DELETE", "/pools/{poolid}", name="pool_delete_path", permission=ALLOCATE,
    description="Delete pool (deprecated in PVE 8, use DELETE /pools).",
    parameters={"poolid": POOLID},
)
async def pool_delete_path(ctx: RequestContext, params: dict[str, Any]) -> None:
    await _delete(ctx, params)
