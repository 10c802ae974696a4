"""A node's options, Wake-on-LAN and local disks, in PVE's shapes (`PVE/API2/NodeConfig.pm`,
`Nodes.pm`'s `wakeonlan`, pve-storage's `API2/Disks.pm` `list`).

`/nodes/{node}/config` reads and changes the node's options, owned by
`binome.cluster.node_config` (one etcd key per node, PVE's file text and digest);
`POST /nodes/{node}/wakeonlan` sends the magic packet from the node handling the
request (not proxied: the target sleeps); `/nodes/{node}/disks/list` reads the node's
block devices (`NodeServices.host.disks`, proxied to the node).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from binome.access.permission import Or
from binome.api.errors import ApiError, ParamError
from binome.api.methods.common import NODE, require_quorum
from binome.api.registry import CliSpec, privs, registry
from binome.api.schema import Param
from binome.cluster import acme, node_config
from binome.cluster.acme import AcmeConfig
from binome.cluster.node_config import NODE_SCHEMA, NodeConfigs
from binome.schema import SchemaError, split_list

if TYPE_CHECKING:
    from binome.api.context import RequestContext

DIGEST = Param(optional=True, max_length=40,
               description="Prevent changes if current configuration file has different "
                           "SHA1 digest. This can be used to prevent concurrent "
                           "modifications.")
RETURNS = {"type": "object", "properties": {
    "digest": DIGEST.json_schema(),
    **{k: p.json_schema() for k, p in sorted(NODE_SCHEMA.items())}}}


def _configs(ctx: RequestContext, *, quorum: bool = False) -> NodeConfigs:
    if quorum:
        require_quorum(ctx)
    store = ctx.services.cluster.store
    if store is None:
        raise ApiError(500, "this node is not part of a cluster")
    return NodeConfigs(store)


@registry.register(
    "GET", "/nodes/{node}/config", name="node_config_get", proxyto="node",
    permission=privs("Sys.Audit"), description="Get node configuration options.",
    parameters={"node": NODE,
                "property": Param(optional=True, enum=node_config.KEYS,
                                  description="Return only a specific property from the "
                                              "node configuration.")},
    returns=RETURNS,
    cli=CliSpec(("node", "config", "get"), positional=("node",),
                help="Show the node's options (description, start-on-boot delay, "
                     "wake-on-LAN...)."),
)
async def node_config_get(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    conf = await _configs(ctx).load(ctx.node)
    prop = params.get("property")
    if prop is not None:
        return {prop: conf.values[prop]} if prop in conf.values else {}
    return conf.answer()


@registry.register(
    "PUT", "/nodes/{node}/config", name="node_config_set", proxyto="node",
    permission=privs("Sys.Modify"), description="Set node configuration options.",
    parameters={"node": NODE,
                "delete": Param(optional=True, max_length=4096,
                                description="A list of settings you want to delete."),
                "digest": DIGEST,
                **NODE_SCHEMA},
    cli=CliSpec(("node", "config", "set"), positional=("node",),
                help="Change the node's options (--delete KEYS removes them)."),
)
async def node_config_set(ctx: RequestContext, params: dict[str, Any]) -> None:
    delete = split_list(params.get("delete") or "")
    bad = [k for k in delete if not node_config.is_configid(k)]
    if bad:
        raise ParamError({"delete": f"invalid configuration ID '{bad[0]}'"})
    changes = {k: v for k, v in params.items() if k in NODE_SCHEMA}
    configs = _configs(ctx, quorum=True)
    # PVE's verify_conf: get_acme_conf, which also refuses a domain on a plugin that
    # does not exist
    plugins = await AcmeConfig(configs.store).plugins()
    try:
        await configs.update(ctx.node, changes, delete, params.get("digest"),
                             check=lambda values: acme.get_acme_conf(values, plugins))
    except SchemaError as exc:
        raise ParamError(exc.errors) from None
    except ValueError as exc:     # a property string the schema check let through
        raise ApiError(400, str(exc)) from None


@registry.register(
    "POST", "/nodes/{node}/wakeonlan", name="node_wakeonlan",
    permission=privs("Sys.PowerMgmt", path="/nodes/{node}"),
    description="Try to wake a node via 'wake on LAN' network packet (sent by the node "
                "handling the request, from its own bind-interface and "
                "broadcast-address settings).",
    parameters={"node": NODE,
                # community.proxmox's proxmox_node sends it (PVE would refuse it)
                "node_name": Param(optional=True, format="pve-node",
                                   description="binome: accepted for community.proxmox's "
                                               "proxmox_node module, which sends it; must "
                                               "be the node of the path.")},
    returns={"type": "string", "format": "mac-addr",
             "description": "MAC address used to assemble the WoL magic packet."},
    cli=CliSpec(("node", "wakeonlan"), positional=("node",),
                help="Wake a sleeping node with a Wake-on-LAN packet from this node."),
)
async def node_wakeonlan(ctx: RequestContext, params: dict[str, Any]) -> str:
    target = params["node"]
    if params.get("node_name") not in (None, target):
        raise ParamError({"node_name": "must be the node of the path"})
    return await node_config.wake(_configs(ctx), target, ctx.node,
                                  ctx.services.cluster.node_records)


DISK = {
    "devpath": {"type": "string", "description": "The device path"},
    "used": {"type": "string", "optional": 1},
    "gpt": {"type": "boolean"},
    "mounted": {"type": "boolean"},
    "size": {"type": "integer"},
    "osdid": {"type": "integer"},
    "osdid-list": {"type": "array", "items": {"type": "integer"}},
    "vendor": {"type": "string", "optional": 1},
    "model": {"type": "string", "optional": 1},
    "serial": {"type": "string", "optional": 1},
    "wwn": {"type": "string", "optional": 1},
    "health": {"type": "string", "optional": 1},
    "parent": {"type": "string", "optional": 1,
               "description": "For partitions only. The device path of the disk the "
                              "partition resides on."},
}


@registry.register(
    "GET", "/nodes/{node}/disks/list", name="node_disks_list", proxyto="node",
    permission=Or(privs("Sys.Audit"), privs("Sys.Audit", path="/nodes/{node}")),
    description="List local disks (lsblk; attached loop devices too; health UNKNOWN: no "
                "smartctl).",
    parameters={"node": NODE,
                "include-partitions": Param(type="boolean", optional=True,
                                            description="Also include partitions."),
                "skipsmart": Param(type="boolean", optional=True,
                                   description="Skip smart checks (binome runs none)."),
                "type": Param(optional=True, enum=("unused", "journal_disks"),
                              description="Only list specific types of disks.")},
    returns={"type": "array", "items": {"type": "object", "properties": DISK}},
    cli=CliSpec(("node", "disks", "list"), positional=("node",),
                formatter="table:devpath,type,size,used,gpt,model,serial,health"),
)
async def node_disks_list(ctx: RequestContext, params: dict[str, Any]) -> list[dict[str, Any]]:
    try:
        return await asyncio.to_thread(ctx.services.host.disks,
                                       bool(params.get("include-partitions")),
                                       params.get("type"))
    except (OSError, ValueError) as exc:
        raise ApiError(500, f"unable to list the disks: {exc}") from None
