"""External metric servers, PVE's `/cluster/metrics` and `/cluster/metrics/server/{id}`
(InfluxDB over UDP or HTTP(S), Graphite over UDP or TCP).

Validates, calls and shapes: the records live in `binome.metrics.servers` (which builds
and checks them and owns their etcd keys); the connection test and the push are
`binome.metrics.push`. The InfluxDB `token` is **write-only**: never returned, never in
an error or the cluster log.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from binome.access.permission import AnyUser
from binome.api.errors import ApiError, ParamError
from binome.api.methods.common import require_quorum
from binome.api.registry import CliSpec, privs, registry
from binome.api.schema import Param
from binome.metrics.push import PushError, check_connection
from binome.metrics.servers import (
    TYPES,
    MetricServers,
    MetricServerSettingsError,
    build_record,
    digest,
    list_entry,
    public_record,
)
from binome.schema import split_list

if TYPE_CHECKING:
    from binome.api.context import RequestContext

AUDIT = privs("Sys.Audit")
MODIFY = privs("Sys.Modify")
ID = Param(type="string", pattern=r"[A-Za-z][A-Za-z0-9_-]+", max_length=64,
           description="The ID of the entry (PVE's pve-configid).")
OPTIONS = {
    "server": Param(type="string", optional=True, format="host-address", max_length=253,
                    description="Server DNS name or IP address."),
    "port": Param(type="integer", optional=True, minimum=1, maximum=65536,
                  description="Server network port [graphite: 2003]."),
    "disable": Param(type="boolean", optional=True, description="Flag to disable the plugin."),
    "mtu": Param(type="integer", optional=True, minimum=512, maximum=65536,
                 description="MTU for metrics transmission over UDP [1500]."),
    "timeout": Param(type="integer", optional=True, minimum=0,
                     description="Timeout in seconds (HTTP for InfluxDB, TCP for "
                                 "Graphite) [1]."),
    "influxdbproto": Param(type="string", optional=True, enum=("udp", "http", "https"),
                           description="InfluxDB: the protocol [udp]."),
    "organization": Param(type="string", optional=True, max_length=256,
                          description="InfluxDB organization (HTTP v2 API) [proxmox]."),
    "bucket": Param(type="string", optional=True, max_length=256,
                    description="InfluxDB bucket/db (HTTP v2 API) [proxmox]."),
    "token": Param(type="string", optional=True, secret=True, max_length=4096,
                   description="InfluxDB access token ('user:password' for the v1 "
                               "compatibility API). Write-only."),
    "api-path-prefix": Param(type="string", optional=True, max_length=256,
                             description="InfluxDB: an API path prefix inserted between "
                                         "'<host>:<port>/' and 'api/v2/'."),
    "max-body-size": Param(type="integer", optional=True, minimum=1,
                           description="InfluxDB: HTTP requests are batched up to this "
                                       "size in bytes [25000000]."),
    "verify-certificate": Param(type="boolean", optional=True,
                                description="InfluxDB: verify the https certificate [1]."),
    "path": Param(type="string", optional=True, max_length=256,
                  pattern=r"[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*",
                  description="Graphite: root graphite path (ex: proxmox.mycluster.mykey) "
                              "[proxmox]."),
    "proto": Param(type="string", optional=True, enum=("udp", "tcp"),
                   description="Graphite: the protocol [udp]."),
}


def _servers(ctx: RequestContext, *, quorum: bool = False) -> MetricServers:
    if quorum:
        require_quorum(ctx)
    store = ctx.services.cluster.store
    if store is None:
        raise ApiError(500, "this node is not part of a cluster")
    return MetricServers(store)


def _build(old: dict[str, Any] | None, params: dict[str, Any],
           delete: list[str]) -> dict[str, Any]:
    settings = {k: v for k, v in params.items() if k in OPTIONS or k == "type"}
    try:
        return build_record(old, settings, delete)
    except MetricServerSettingsError as exc:
        raise ParamError(exc.errors) from None


async def _test(record: dict[str, Any], token: str | None) -> None:
    try:
        await check_connection(record, token)
    except PushError as exc:    # never holds the token
        raise ApiError(500, f"connection test to metric server {record['server']} "
                            f"failed: {exc}") from None


@registry.register(
    "GET", "/cluster/metrics", name="metrics_index",
    permission=AnyUser("nothing to filter: a fixed index"),
    description="Metrics index.", returns={"type": "array", "items": {"type": "object"}},
)
async def metrics_index(ctx: RequestContext, params: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"name": "server"}]


@registry.register(
    "GET", "/cluster/metrics/server", name="metric_server_index", permission=AUDIT,
    description="List configured metric servers.",
    returns={"type": "array", "items": {"type": "object"}},
    cli=CliSpec(("metrics", "server", "list"), formatter="table:id,type,server,port,disable"),
)
async def metric_server_index(ctx: RequestContext, params: dict[str, Any]
                              ) -> list[dict[str, Any]]:
    records = await _servers(ctx).records()
    return [list_entry(sid, rec) for sid, rec in sorted(records.items())]


@registry.register(
    "GET", "/cluster/metrics/server/{id}", name="metric_server_read", permission=AUDIT,
    description="Read metric server configuration (the token is never shown).",
    parameters={"id": ID}, returns={"type": "object"},
    cli=CliSpec(("metrics", "server", "config"), positional=("id",)),
)
async def metric_server_read(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    return public_record(params["id"], await _servers(ctx).record(params["id"]))


@registry.register(
    "POST", "/cluster/metrics/server/{id}", name="metric_server_create", permission=MODIFY,
    description="Create a new external metric server config (the connection is tested "
                "first, as PVE does).",
    parameters={"id": ID, "type": Param(type="string", enum=TYPES,
                                        description="Plugin type."), **OPTIONS},
    cli=CliSpec(("metrics", "server", "add"), positional=("id",)),
)
async def metric_server_create(ctx: RequestContext, params: dict[str, Any]) -> None:
    servers = _servers(ctx, quorum=True)
    sid = params["id"]
    record = _build(None, params, [])
    token = params.get("token")
    await _test(record, token)
    await servers.create(sid, record, token)


@registry.register(
    "PUT", "/cluster/metrics/server/{id}", name="metric_server_update", permission=MODIFY,
    description="Update metric server configuration (the connection is tested again).",
    parameters={"id": ID, **OPTIONS,
                "delete": Param(type="string", optional=True, max_length=4096,
                                description="A list of settings you want to delete."),
                "digest": Param(type="string", optional=True, max_length=64,
                                description="Prevent changes if the current configuration "
                                            "has a different digest.")},
    cli=CliSpec(("metrics", "server", "set"), positional=("id",)),
)
async def metric_server_update(ctx: RequestContext, params: dict[str, Any]) -> None:
    servers = _servers(ctx, quorum=True)
    sid = params["id"]
    delete = split_list(params.get("delete") or "")
    old = await servers.record(sid)
    if params.get("digest") and params["digest"] != digest(old):
        raise ApiError(500, "detected modified configuration - file changed by other user? "
                            "Try again.")
    record = _build(old, params, [d for d in delete if d != "token"])
    drop_token = "token" in delete
    if drop_token and params.get("token") is not None:
        raise ParamError({"delete": "cannot set and delete property 'token' at the same "
                                    "time!"})
    token = params.get("token")
    await _test(record, token if token is not None else
                None if drop_token else await servers.token(sid))
    await servers.replace(sid, old, record, token, drop_token)


@registry.register(
    "DELETE", "/cluster/metrics/server/{id}", name="metric_server_delete", permission=MODIFY,
    description="Remove a metric server (and its token).",
    parameters={"id": ID},
    cli=CliSpec(("metrics", "server", "remove"), positional=("id",)),
)
async def metric_server_delete(ctx: RequestContext, params: dict[str, Any]) -> None:
    await _servers(ctx, quorum=True).remove(params["id"])
