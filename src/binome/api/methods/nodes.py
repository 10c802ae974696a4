"""Node methods: the node list, one node's status, and the node part of /cluster/resources."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from binome.access.permission import AnyUser
from binome.api.context import RequestContext
from binome.api.methods.common import NODE, RRD_PARAMS, ha_config_if_clustered
from binome.api.registry import CliSpec, privs, registry
from binome.api.schema import Param
from binome.errors import BinomeError


async def node_entries(ctx: RequestContext) -> list[dict[str, Any]]:
    services = ctx.services
    cluster = services.cluster
    cfg = services.config
    if not cluster.is_member:
        return [{"node": cfg.name, "status": "online", "level": "", "id": f"node/{cfg.name}",
                 "type": "node", "ssl_fingerprint": cluster.fingerprint(),
                 **services.host.summary()}]
    stats = await cluster.node_stats()
    out = []
    for name, rec in sorted(cluster.node_records.items()):
        if rec.get("role") == "witness":
            continue
        online = cluster.node_online(name)
        entry: dict[str, Any] = {"node": name, "status": "online" if online else "offline",
                                 "level": "", "id": f"node/{name}", "type": "node",
                                 "ssl_fingerprint": rec.get("fingerprint", "")}
        if name == cfg.name:
            entry.update(services.host.summary())
        elif online and name in stats:
            entry.update(stats[name])
        out.append(entry)
    return out


# what PVE's extract_node_stats keeps for a node the caller may not audit
NODE_PUBLIC = ("node", "status", "id", "type", "level", "ssl_fingerprint")


async def _node_auditor(ctx: RequestContext) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """PVE lists every node, with its usage only to whom has Sys.Audit on /nodes/<node>."""
    ev = await ctx.services.access.evaluator()

    def shown(entry: dict[str, Any]) -> dict[str, Any]:
        if ev.check(ctx.userid, f"/nodes/{entry['node']}", ["Sys.Audit"]):
            return entry
        return {k: v for k, v in entry.items() if k in NODE_PUBLIC}
    return shown


@registry.register(
    "GET", "/nodes", name="list_nodes",
    permission=AnyUser("every node; usage only with Sys.Audit on /nodes/<node>"),
    description="Cluster node index (witnesses host no guests and are not listed).",
    returns={"type": "array", "items": {"type": "object"}},
    cli=CliSpec(("node", "list"), formatter="table:node,status,cpu,maxcpu,mem,maxmem,uptime"),
)
async def list_nodes(ctx: RequestContext, params: dict[str, Any]) -> list[dict[str, Any]]:
    shown = await _node_auditor(ctx)
    return [shown(e) for e in await node_entries(ctx)]


@registry.register(
    "GET", "/nodes/{node}/status", name="node_status", permission=privs("Sys.Audit",
                                                                       path="/nodes/{node}"),
    description="Read node status: CPU, memory, load, uptime, versions.",
    parameters={"node": NODE}, proxyto="node",
    returns={"type": "object"},
    cli=CliSpec(("node", "status"), positional=("node",)),
)
async def node_status(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    return ctx.services.host.status()


async def _hastates(ctx: RequestContext) -> dict[int, str]:
    """vmid -> PVE's `hastate`: the CRM state if it has one, else the requested state."""
    config = ha_config_if_clustered(ctx)
    return {} if config is None else await config.hastates()


@registry.register(
    "GET", "/cluster/resources", name="cluster_resources",
    permission=AnyUser("VMs with VM.Audit, storages with Datastore.Audit, pools with "
                       "Pool.Audit; node usage with Sys.Audit"),
    description="Resources index (cluster wide): guests, nodes, and this node's storages.",
    parameters={"type": Param(optional=True, enum=("vm", "storage", "node", "sdn"),
                              description="Resource type.")},
    returns={"type": "array", "items": {"type": "object"}},
    cli=CliSpec(("cluster", "resources"), formatter="table:id,type,node,status"),
)
async def cluster_resources(ctx: RequestContext, params: dict[str, Any]) -> list[dict[str, Any]]:
    kind = params.get("type")
    ev = await ctx.services.access.evaluator()
    access = ev.config
    out: list[dict[str, Any]] = []
    if kind in (None, "vm") and ctx.services.guests is not None:
        vms = [vm for vm in await ctx.services.guests.cluster_vms()
               if ev.check(ctx.userid, f"/vms/{vm['vmid']}", ["VM.Audit"])]
        hastates = await _hastates(ctx) if vms else {}
        for vm in vms:
            if vm["vmid"] in hastates:
                vm["hastate"] = hastates[vm["vmid"]]
            pool = access.pool_of_vm(vm["vmid"])
            if pool:
                vm["pool"] = pool
        out += vms
    if kind in (None, "node"):
        shown = await _node_auditor(ctx)
        for n in await node_entries(ctx):
            out.append({k: v for k, v in shown(n).items() if k != "ssl_fingerprint"})
    if kind in (None, "storage"):
        for cfg in await ctx.services.storages.configs():
            if not cfg.available_on(ctx.node) or not ev.check(
                    ctx.userid, f"/storage/{cfg.storage}", ["Datastore.Audit"]):
                continue
            try:
                status = await (await ctx.services.storages.get(cfg.storage)).status()
            except BinomeError:
                continue
            out.append({"id": f"storage/{ctx.node}/{cfg.storage}", "type": "storage",
                        "storage": cfg.storage, "node": ctx.node, "plugintype": cfg.type,
                        "status": "available", "shared": int(cfg.shared),
                        "content": ",".join(cfg.content), "disk": status["used"],
                        "maxdisk": status["total"]})
    if kind is None:
        # PVE lists the pools the caller may audit as `type: pool` entries
        for poolid in sorted(access.pools):
            if ev.check(ctx.userid, f"/pool/{poolid}", ["Pool.Audit"]):
                out.append({"id": f"/pool/{poolid}", "type": "pool", "pool": poolid})
    return out


@registry.register(
    "GET", "/nodes/{node}/rrddata", name="node_rrddata",
    permission=privs("Sys.Audit", path="/nodes/{node}"), proxyto="node",
    description="Node usage statistics over time (cpu, memory, network, load).",
    parameters={"node": NODE, **RRD_PARAMS}, returns={"type": "array"},
)
async def node_rrddata(ctx: RequestContext, params: dict[str, Any]) -> list[dict[str, Any]]:
    return await ctx.services.rrd.fetch_node(params["timeframe"], params["cf"])


@registry.register(
    "GET", "/nodes/{node}/qemu/{vmid}/rrddata", name="vm_rrddata",
    permission=privs("VM.Audit", path="/vms/{vmid}"), proxyto="node",
    description="VM usage statistics over time (cpu, memory, disk and network rates).",
    parameters={"node": NODE, "vmid": Param(type="integer", minimum=100), **RRD_PARAMS},
    returns={"type": "array"},
)
async def vm_rrddata(ctx: RequestContext, params: dict[str, Any]) -> list[dict[str, Any]]:
    if ctx.services.guests is not None:
        await ctx.services.guests.read(params["vmid"])
    return await ctx.services.rrd.fetch_guest(params["vmid"], params["timeframe"], params["cf"])
