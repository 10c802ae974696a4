"""Cluster resource mappings, PVE's `/cluster/mapping` and `/cluster/mapping/{dir,pci,usb}`
(pve-manager's `PVE::API2::Cluster::Mapping::{Dir,PCI,USB}`).

Validates, calls and shapes: the records, their rules and the node checks live in
`binome.cluster.mappings`, which owns their etcd keys. Each type has PVE's own paths
(one registration per type, as the schemas differ), the same permissions (`Mapping.Audit`,
`Mapping.Use`, `Mapping.Modify` on `/mapping/<type>[/<id>]`) and messages; every write is
in the cluster log with the user's name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from binome.access.permission import AnyUser
from binome.api.errors import ApiError
from binome.api.methods.common import require_quorum
from binome.api.registry import CliSpec, privs, registry
from binome.api.schema import Param
from binome.cluster.mappings import (
    MAP_FORMATS,
    TYPES,
    MappingError,
    Mappings,
    build_record,
    check_dir_map_list,
    checks_on_node,
    digest,
)
from binome.schema import split_list

if TYPE_CHECKING:
    from binome.api.context import RequestContext

ID = Param(format="pve-configid", description="The ID of the logical mapping.")
CHECK_NODE = Param(format="pve-node", optional=True, description=(
    "If given, checks the configurations on the given node for correctness, and adds "
    "relevant diagnostics for the devices to the response."))
DELETE = Param(optional=True, max_length=4096,
               pattern=r"[a-z][a-z0-9_-]+([,;\s]+[a-z][a-z0-9_-]+)*[,;\s]*",
               description="A list of settings you want to delete.")
DIGEST = Param(optional=True, max_length=64, description=(
    "Prevent changes if current configuration file has a different digest. This can be "
    "used to prevent concurrent modifications."))
SEE = ("Mapping.Modify", "Mapping.Use", "Mapping.Audit")
_NAMES = {"dir": "directory", "pci": "PCI", "usb": "USB"}


def _option_params(kind: str, *, update: bool) -> dict[str, Param]:
    noun = _NAMES[kind]
    params: dict[str, Param] = {
        "description": Param(optional=True, max_length=4096,
                             description=f"Description of the logical {noun} mapping."),
        # PVE: `map` is required by check_config on create and update alike; the USB
        # schema says so (not optional in its propertyList), PCI's and Dir's do not
        "map": Param(type="array", optional=update and kind != "usb",
                     items=Param(props=MAP_FORMATS[kind]),
                     description="A list of maps for the cluster nodes."),
    }
    if kind == "pci":
        params["mdev"] = Param(type="boolean", optional=True, description=(
            "Marks the device(s) as being capable of providing mediated devices."))
        params["live-migration-capable"] = Param(type="boolean", optional=True, description=(
            "Marks the device(s) as being able to be live-migrated (Experimental)."))
    return params


def _mappings(ctx: RequestContext, kind: str, *, quorum: bool = False) -> Mappings:
    if quorum:
        require_quorum(ctx)
    store = ctx.services.cluster.store
    if store is None:
        raise ApiError(500, "this node is not part of a cluster")
    return Mappings(store, kind)


async def _clusterlog(ctx: RequestContext, message: str) -> None:
    try:
        await ctx.services.clusterlog.write(message, tag="mapping", user=ctx.userid)
    except Exception:   # the cluster log is best effort; the answer is not
        pass


def _settings(kind: str, params: dict[str, Any]) -> dict[str, Any]:
    return {k: params.get(k) for k in _option_params(kind, update=True)}


@registry.register(
    "GET", "/cluster/mapping", name="mapping_index",
    permission=AnyUser("PVE: user => 'all' (a fixed index)"),
    description="List resource types.", returns={"type": "array", "items": {"type": "object"}},
)
async def mapping_index(ctx: RequestContext, params: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"name": kind} for kind in TYPES]


def _register(kind: str) -> None:
    base = f"/cluster/mapping/{kind}"
    noun = _NAMES[kind]
    item_path = f"/mapping/{kind}/{{id}}"

    @registry.register(
        "GET", base, name=f"mapping_{kind}_index", proxyto="check-node",
        permission=AnyUser(f"only entries with Mapping.Modify, Mapping.Use or "
                           f"Mapping.Audit on /mapping/{kind}/<id>"),
        description=f"List {noun} mappings.", parameters={"check-node": CHECK_NODE},
        returns={"type": "array", "items": {"type": "object"}},
        cli=CliSpec(("mapping", kind, "list"), formatter="table:id,description,map"),
    )
    async def index(ctx: RequestContext, params: dict[str, Any]) -> list[dict[str, Any]]:
        node = params.get("check-node")
        local = ctx.services.config.name
        if node == "localhost":
            node = local
        if node is not None and node != local:   # proxied already: never here
            raise ApiError(500, "Wrong node to check" if kind == "usb" else
                           f"wrong node to check - {node} != {local}")
        records = await _mappings(ctx, kind).records()
        ev = await ctx.services.access.evaluator()
        cfg_digest = digest(records)
        out = []
        for mid, record in sorted(records.items()):
            if not ev.check(ctx.userid, f"/mapping/{kind}/{mid}", list(SEE), any=True):
                continue
            entry = {**record, "id": mid, "digest": cfg_digest}
            if node is not None:
                # PVE names the list 'errors' for USB, 'checks' for PCI and Dir
                entry["errors" if kind == "usb" else "checks"] = \
                    checks_on_node(kind, mid, record, node)
            out.append(entry)
        return out

    @registry.register(
        "GET", f"{base}/{{id}}", name=f"mapping_{kind}_get",
        permission=privs(*SEE, path=item_path, any=True),
        description=f"Get {noun} mapping.", parameters={"id": ID},
        returns={"type": "object"},
        cli=CliSpec(("mapping", kind, "config"), positional=("id",)),
    )
    async def get(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
        records = await _mappings(ctx, kind).records()
        record = records.get(params["id"])
        if record is None:
            raise ApiError(500, f"mapping '{params['id']}' not found")
        return {**record, "digest": digest(records)}

    @registry.register(
        "POST", base, name=f"mapping_{kind}_create",
        permission=privs("Mapping.Modify", path=f"/mapping/{kind}"),
        description=f"Create a new {noun} mapping.",
        parameters={"id": ID, **_option_params(kind, update=False)},
        cli=CliSpec(("mapping", kind, "add"), positional=("id",)),
    )
    async def create(ctx: RequestContext, params: dict[str, Any]) -> None:
        mappings = _mappings(ctx, kind, quorum=True)
        mid = params["id"]
        settings = _settings(kind, params)
        try:
            record = build_record(kind, None, settings)
            if kind == "dir":
                check_dir_map_list(record["map"], ctx.services.config.name)
        except MappingError as exc:
            raise ApiError(500, str(exc)) from None
        await mappings.create(mid, record)
        await _clusterlog(ctx, f"{kind} mapping '{mid}' created by {ctx.userid}")

    @registry.register(
        "PUT", f"{base}/{{id}}", name=f"mapping_{kind}_update",
        permission=privs("Mapping.Modify", path=item_path),
        description=f"Update a {noun} mapping.",
        parameters={"id": ID, **_option_params(kind, update=True),
                    "delete": DELETE, "digest": DIGEST},
        cli=CliSpec(("mapping", kind, "set"), positional=("id",)),
    )
    async def update(ctx: RequestContext, params: dict[str, Any]) -> None:
        mappings = _mappings(ctx, kind, quorum=True)
        mid = params["id"]
        delete = split_list(params.get("delete") or "")
        await mappings.update(mid, _settings(kind, params), delete, params.get("digest"),
                              ctx.services.config.name)
        await _clusterlog(ctx, f"{kind} mapping '{mid}' changed by {ctx.userid}")

    @registry.register(
        "DELETE", f"{base}/{{id}}", name=f"mapping_{kind}_delete",
        permission=privs("Mapping.Modify", path=f"/mapping/{kind}"),
        description=f"Remove {noun} mapping.", parameters={"id": ID},
        cli=CliSpec(("mapping", kind, "remove"), positional=("id",)),
    )
    async def delete(ctx: RequestContext, params: dict[str, Any]) -> None:
        mid = params["id"]
        if await _mappings(ctx, kind, quorum=True).remove(mid):
            await _clusterlog(ctx, f"{kind} mapping '{mid}' removed by {ctx.userid}")


for _kind in TYPES:
    _register(_kind)
