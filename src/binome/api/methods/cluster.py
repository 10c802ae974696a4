"""Cluster methods: status, create, join info, join, admit, delnode, expected votes, cluster
log."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from binome.access.permission import AnyUser
from binome.access.secrets import hash_secret
from binome.api.context import RequestContext
from binome.api.errors import ApiError, fail
from binome.api.methods.common import NODE
from binome.api.registry import CliSpec, privs, registry
from binome.api.schema import Param
from binome.tasks.clusterlog import PRI
from binome.tasks.manager import Task

AUDIT = privs("Sys.Audit")
MODIFY = privs("Sys.Modify")
ADMIN_USER = "admin@pve"


def cluster_status_entries(ctx: RequestContext) -> list[dict[str, Any]]:
    cluster = ctx.services.cluster
    cfg = ctx.services.config
    if not cluster.is_member:
        return [{"type": "node", "id": f"node/{cfg.name}", "name": cfg.name, "nodeid": 0,
                 "ip": cfg.cluster_address, "local": 1, "online": 1, "level": "",
                 "role": cfg.role, "votes": 0}]
    s = cluster.status()
    entries: list[dict[str, Any]] = [{
        "type": "cluster", "id": "cluster", "name": s["name"], "nodes": s["nodes"],
        "quorate": int(s["quorate"]), "version": s["config_version"],
        "expected_votes": s["expected_votes"], "total_votes": s["total_votes"],
        "quorum": s["quorum"], "flags": " ".join(s["flags"]), "transport": s["transport"],
        "witness": int(s["witness"]), "warnings": s["warnings"],
        # binome addition: the etcd leader as this node's member sees it ("": none)
        "etcd_leader": cluster.etcd_leader_name() or "",
    }]
    for m in s["members"]:
        entries.append({
            "type": "witness" if m["role"] == "witness" else "node",
            "id": f"{'witness' if m['role'] == 'witness' else 'node'}/{m['name']}",
            "name": m["name"], "nodeid": m["nodeid"], "ip": m["ip"], "local": int(m["local"]),
            "online": int(m["online"]), "level": "", "votes": m["votes"], "role": m["role"],
            "learner": int(m["learner"]),
        })
    return entries


@registry.register(
    "GET", "/cluster/status", name="cluster_status", permission=AUDIT,
    description="Cluster status: the cluster (name, config version, votes, quorum) and members.",
    returns={"type": "array", "items": {"type": "object"}},
    cli=(CliSpec(("cluster", "status"), formatter="cluster_status"),
         CliSpec(("witness", "status"), formatter="witness_status")),
)
async def cluster_status(ctx: RequestContext, params: dict[str, Any]) -> list[dict[str, Any]]:
    # read after the request arrived, as `pvecm status` reads corosync: a status asked
    # right after a join must show the new member
    await ctx.services.cluster.fresh_view(max_age=0)
    return cluster_status_entries(ctx)


@registry.register(
    "GET", "/cluster/config/nodes", name="cluster_nodes", permission=AUDIT,
    description="Cluster member nodes (and witness) with their addresses and votes.",
    returns={"type": "array", "items": {"type": "object"}},
    cli=CliSpec(("cluster", "nodes"), formatter="cluster_nodes"),
)
async def cluster_nodes(ctx: RequestContext, params: dict[str, Any]) -> list[dict[str, Any]]:
    cluster = ctx.services.cluster
    if not cluster.is_member:
        return []
    await cluster.fresh_view()
    out = []
    for name, rec in sorted(cluster.node_records.items(),
                            key=lambda kv: kv[1].get("nodeid", 0)):
        out.append({"node": name, "name": name, "nodeid": rec.get("nodeid"),
                    "quorum_votes": 0 if rec.get("state") != "member" else 1,
                    "ring0_addr": rec.get("cluster_address"),
                    "replication_addr": rec.get("replication_address"),
                    "role": rec.get("role"), "state": rec.get("state"),
                    "online": int(cluster.node_online(name)),
                    "ssl_fingerprint": rec.get("fingerprint")})
    return out


@registry.register(
    "GET", "/cluster/config/join", name="cluster_join_info", permission=AUDIT,
    description="Get information needed to join this cluster over the connected node.",
    parameters={"node": Param(format="pve-node", optional=True,
                              description="The node for which the joinee gets the nodeinfo "
                                          "(default: the connected node).")},
    returns={"type": "object", "properties": {
        "nodelist": {"type": "array", "items": {"type": "object", "properties": {
            "name": {"type": "string"}, "nodeid": {"type": "integer"},
            "ring0_addr": {"type": "string"}, "quorum_votes": {"type": "integer"},
            "pve_addr": {"type": "string"}, "pve_fp": {"type": "string"}}}},
        "preferred_node": {"type": "string"}, "totem": {"type": "object"},
        "config_digest": {"type": "string"}}},
    cli=CliSpec(("cluster", "join-info"), formatter="json"),
)
async def cluster_join_info(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    cluster = ctx.services.cluster
    if not cluster.is_member:
        raise ApiError(424, "node is not in a cluster, no join info available!")
    await cluster.fresh_view()
    nodename = params.get("node") or ctx.node
    records = cluster.node_records
    if nodename not in records:
        raise fail(f"unknown node '{nodename}'")
    nodelist = [{"name": name, "nodeid": rec.get("nodeid"),
                 "quorum_votes": 0 if rec.get("state") != "member" else 1,
                 "ring0_addr": rec.get("cluster_address"),
                 "pve_addr": rec.get("cluster_address"), "pve_fp": rec.get("fingerprint")}
                for name, rec in sorted(records.items(), key=lambda kv: kv[1].get("nodeid", 0))]
    # no corosync.conf: the digest is over the member list a joiner is shown
    digest = hashlib.sha1(json.dumps(nodelist, sort_keys=True).encode()).hexdigest()
    return {"nodelist": nodelist, "preferred_node": nodename,
            "totem": {"cluster_name": cluster.cluster_name}, "config_digest": digest}


@registry.register(
    "POST", "/cluster/config", name="cluster_create", permission=MODIFY,
    description="Create a new cluster with this node as its first member.",
    parameters={
        "clustername": Param(format="pve-cluster-name", cli_positional=True,
                             description="The name of the cluster."),
        "password": Param(optional=True, secret=True,
                          description=f"Password of the cluster administrator {ADMIN_USER}."),
    },
    returns={"type": "string", "description": "UPID"},
    cli=CliSpec(("cluster", "create"), positional=("clustername",)),
)
async def cluster_create(ctx: RequestContext, params: dict[str, Any]) -> str:
    cluster = ctx.services.cluster
    if cluster.membership is not None:
        raise fail(f"this node already belongs to cluster '{cluster.membership.cluster_name}'")
    password = params.get("password")
    if password is not None and len(password) < 8:
        from binome.api.errors import param_error
        raise param_error("password", "must be at least 8 characters long")
    hashed = hash_secret(password) if password else None
    name = params["clustername"]

    async def body(task: Task) -> None:
        await cluster.create(task, name, ADMIN_USER, hashed)
        if hashed:
            task.log(f"cluster administrator: {ADMIN_USER}")

    return ctx.services.tasks.start("clustercreate", name, ctx.userid, body)


@registry.register(
    "POST", "/cluster/config/join", name="cluster_join", permission=MODIFY,
    description="Join this node to an existing cluster, through one of its nodes.",
    parameters={
        "hostname": Param(format="address", description="Address of a node of the cluster."),
        "fingerprint": Param(format="fingerprint",
                             description="SHA-256 fingerprint of that node's certificate."),
        "password": Param(secret=True, description="Password of the user on that node."),
        "user": Param(optional=True, default="root@pam", format="pve-userid",
                      description="User to authenticate as on that node."),
        "port": Param(type="integer", optional=True, default=8006, minimum=1, maximum=65535,
                      description="API port of that node."),
        "role": Param(optional=True, enum=("node", "witness"),
                      description="Join as a node or as a witness (default: configured role)."),
        "force": Param(type="boolean", optional=True, default=False,
                       description="Replace a stale record of this node (failed earlier join) "
                                   "and discard this node's own membership if it was evicted."),
    },
    returns={"type": "string", "description": "UPID"},
    cli=(CliSpec(("cluster", "join"), positional=("hostname",)),
         CliSpec(("witness", "join"), positional=("hostname",), fixed=(("role", "witness"),))),
)
async def cluster_join(ctx: RequestContext, params: dict[str, Any]) -> str:
    cluster = ctx.services.cluster
    cfg = ctx.services.config
    if cluster.membership is not None and not params["force"]:
        raise fail(f"this node already belongs to cluster '{cluster.membership.cluster_name}'"
                   f" (if it was removed from it, rejoin with --force, API: force=1)")

    async def body(task: Task) -> None:
        await cluster.join(task, params["hostname"], params["fingerprint"], params["user"],
                           params["password"], api_port=params["port"], force=params["force"],
                           role=params.get("role"))

    return ctx.services.tasks.start("clusterjoin", cfg.name, ctx.userid, body)


@registry.register(
    "POST", "/cluster/config/nodes/{node}", name="cluster_addnode", permission=MODIFY,
    description="Admit a node: sign its certificate and add it to etcd as a learner "
                "(called by the joining node).",
    parameters={
        "node": NODE,
        "csr": Param(description="PEM certificate signing request of the node's key.",
                     max_length=8192, extra={"multiline": True}),
        "role": Param(optional=True, default="node", enum=("node", "witness")),
        "cluster_address": Param(format="ip"),
        "replication_address": Param(format="ip"),
        "api_port": Param(type="integer", optional=True, default=8006, minimum=1,
                          maximum=65535),
        "etcd_client_port": Param(type="integer", optional=True, default=2379, minimum=1,
                                  maximum=65535),
        "etcd_peer_port": Param(type="integer", optional=True, default=2380, minimum=1,
                                maximum=65535),
        "force": Param(type="boolean", optional=True, default=False),
    },
    returns={"type": "object"},
)
async def cluster_addnode(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    from binome.tasks.manager import TaskFailed

    try:
        return await ctx.services.cluster.admit(
            ctx.userid, params["node"], params["csr"], params["role"],
            params["cluster_address"], params["replication_address"], params["api_port"],
            params["etcd_client_port"], params["etcd_peer_port"], params["force"])
    except TaskFailed as exc:
        raise fail(str(exc)) from None


@registry.register(
    "DELETE", "/cluster/config/nodes/{node}", name="cluster_delnode", permission=MODIFY,
    description="Remove a node from the cluster (it must be offline and own no guests).",
    parameters={"node": NODE},
    returns={"type": "string", "description": "UPID"},
    cli=CliSpec(("cluster", "delnode"), positional=("node",)),
)
async def cluster_delnode(ctx: RequestContext, params: dict[str, Any]) -> str:
    name = params["node"]

    async def body(task: Task) -> None:
        await ctx.services.cluster.delnode(task, name)

    return ctx.services.tasks.start("clusterdelnode", name, ctx.userid, body)


@registry.register(
    "POST", "/cluster/config/expected", name="cluster_expected", permission=MODIFY,
    description="Emergency override of expected votes on a node that lost quorum: it forms "
                "a cluster of its own from its copy of the state; other members must rejoin.",
    parameters={
        "expected": Param(type="integer", minimum=1, description="Expected votes."),
        "confirm": Param(type="boolean", optional=True, default=False,
                         description="Must be 1: you have checked the other nodes are down."),
    },
    returns={"type": "string", "description": "UPID"},
    cli=CliSpec(("cluster", "expected"), positional=("expected",),
                fixed=(("confirm", "1"),),
                confirm="This forms a cluster from THIS node alone. If the other nodes are "
                        "alive behind a partition, you create a split brain."),
)
async def cluster_expected(ctx: RequestContext, params: dict[str, Any]) -> str:
    if not params["confirm"]:
        from binome.api.errors import param_error
        raise param_error("confirm", "the expected votes override must be confirmed (confirm=1)")
    votes = params["expected"]

    async def body(task: Task) -> None:
        await ctx.services.cluster.expected(task, votes)

    return ctx.services.tasks.start("clusterexpected", str(votes), ctx.userid, body)


@registry.register(
    "GET", "/cluster/log", name="cluster_log",
    permission=AnyUser("without Sys.Syslog on / only one's own entries (PVE)"),
    description="Read the cluster log (newest first).",
    parameters={"max": Param(type="integer", optional=True, default=50, minimum=1,
                             maximum=5000, description="Maximum number of entries."),
                # binome-specific filters (PVE's cluster log has none)
                "severity": Param(optional=True, enum=tuple(PRI),
                                  description="binome: only entries at this severity or "
                                              "worse (e.g. 'warning': warning, err, crit, "
                                              "alert, emerg)."),
                "tag": Param(optional=True, pattern=r"[a-z][a-z0-9_-]*(,[a-z][a-z0-9_-]*)*",
                             max_length=256,
                             description="binome: only entries of these types, a comma "
                                         "separated list of tags (quorum, cluster, qemu, "
                                         "volume, access, binome, ...).")},
    returns={"type": "array", "items": {"type": "object"}},
    cli=CliSpec(("cluster", "log"), formatter="cluster_log"),
)
async def cluster_log(ctx: RequestContext, params: dict[str, Any]) -> list[dict[str, Any]]:
    filters: dict[str, Any] = {"severity": params.get("severity"),
                               "tags": frozenset(params["tag"].split(","))
                               if params.get("tag") else None}
    ev = await ctx.services.access.evaluator()
    if ev.check(ctx.userid, "/", ["Sys.Syslog"]):
        return await ctx.services.clusterlog.read(params["max"], **filters)
    # PVE's get_cluster_log($user): read more, keep the caller's own lines
    user = ev.owner_of(ctx.userid)
    entries = await ctx.services.clusterlog.read(5000, **filters)
    return [e for e in entries if e.get("user") in (user, ctx.userid)][:params["max"]]
