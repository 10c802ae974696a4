"""The cluster service of one node: the one object the daemon, the API and the other
services use for everything cluster-wide (is this node a member, is it quorate, who
is online, where is a node, create/join/admit/delnode/expected).

It composes three parts and adds the reads:
- `cluster.local_member.LocalMember`: the membership record, certificates, the local
  etcd member and its store client;
- `cluster.monitor.ClusterMonitor`: the quorum view, the node lease, etcd leadership;
- `cluster.membership_changes.MembershipChanges`: the join/admit protocol, delnode
  and the expected-votes override.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from binome.cluster.local_member import QUORUM_WAIT, LocalMember
from binome.cluster.membership import Membership
from binome.cluster.membership_changes import MembershipChanges
from binome.cluster.monitor import ClusterMonitor
from binome.cluster.pki import PkiPaths
from binome.cluster.quorum import QuorumView
from binome.config import NodeConfig
from binome.store import keys
from binome.store.client import Store
from binome.store.member import EtcdMember
from binome.tasks.clusterlog import ClusterLog
from binome.tasks.manager import Task


class ClusterService:
    def __init__(self, config: NodeConfig, clusterlog: ClusterLog, *,
                 node_stats: Callable[[], dict[str, Any]] = dict,
                 on_tls_change: Callable[[], None] = lambda: None,
                 on_quorum_change: Callable[[bool, int, int, bool], None] = lambda *_: None,
                 ) -> None:
        """`node_stats`: what the node publishes as its stats, bound to its lease;
        `on_tls_change`: called when the node certificate changes (create/join);
        `on_quorum_change`: called, without waiting, when this node loses or regains
        quorum (quorate, votes, expected votes, whether a loss is "none since the daemon
        started"; see `quorum.QuorumTransitions` for which changes are announced)."""
        self.local = LocalMember(config, clusterlog)
        # the parts take their callbacks as attributes; they are set here, once
        self.local.on_tls_change = on_tls_change
        self.monitor = ClusterMonitor(self.local)
        self.monitor.on_node_stats = node_stats
        self.monitor.on_quorum_change = on_quorum_change
        self.changes = MembershipChanges(self.local, self.monitor)

    # ------------------------------------------------------------------ state
    @property
    def config(self) -> NodeConfig:
        return self.local.config

    @property
    def clusterlog(self) -> ClusterLog:
        return self.local.clusterlog

    @property
    def paths(self) -> PkiPaths:
        return self.local.paths

    @property
    def membership(self) -> Membership | None:
        return self.local.membership

    @property
    def store(self) -> Store | None:
        """The client of the local etcd member (None: not a member, or stopped)."""
        return self.local.store

    @property
    def etcd(self) -> EtcdMember | None:
        return self.local.etcd

    @property
    def is_member(self) -> bool:
        return self.local.is_member

    @property
    def cluster_name(self) -> str | None:
        return self.local.cluster_name

    @property
    def view(self) -> QuorumView:
        return self.monitor.view

    @property
    def node_records(self) -> dict[str, dict[str, Any]]:
        """The nodes' records (keys.NODES) as of the last quorum check, by name."""
        return self.monitor.node_records

    @property
    def cluster_doc(self) -> dict[str, Any]:
        return self.monitor.cluster_doc

    @property
    def lease_id(self) -> int | None:
        """This node's live lease (keys bound to it vanish when the node dies)."""
        return self.monitor.lease_id

    def adopt_lease(self, lease_id: int) -> None:
        """Keep the previous daemon's lease if it still lives (see ClusterMonitor)."""
        self.monitor.adopt_lease = lease_id

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """On daemon start: bring back our etcd member and the cluster loops."""
        m = self.local.membership
        if m is None:
            return
        if m.state != "member":
            await self.changes.discard_interrupted()
            return
        await self.local.start_member(state="existing")
        self.monitor.start_loops()

    async def stop(self) -> None:
        await self.monitor.stop()
        await self.local.stop_member()

    async def wait_quorate(self, timeout: float = QUORUM_WAIT) -> None:
        await self.local.wait_quorate(timeout)

    # ------------------------------------------------------------------ membership changes
    async def create(self, task: Task, name: str, admin_user: str,
                     admin_password_hash: str | None) -> None:
        await self.changes.create(task, name, admin_user, admin_password_hash)

    async def join(self, task: Task, address: str, fingerprint: str, user: str, password: str,
                   api_port: int = 8006, force: bool = False, role: str | None = None) -> None:
        await self.changes.join(task, address, fingerprint, user, password, api_port=api_port,
                                force=force, role=role)

    async def admit(self, user: str, name: str, csr_pem: str, role: str, cluster_address: str,
                    replication_address: str, api_port: int, etcd_client_port: int,
                    etcd_peer_port: int, force: bool) -> dict[str, Any]:
        return await self.changes.admit(user, name, csr_pem, role, cluster_address,
                                        replication_address, api_port, etcd_client_port,
                                        etcd_peer_port, force)

    async def delnode(self, task: Task, name: str) -> None:
        await self.changes.delnode(task, name)

    async def expected(self, task: Task, votes: int) -> None:
        await self.changes.expected(task, votes)

    # ------------------------------------------------------------------ reads
    async def refresh_view(self) -> QuorumView:
        return await self.monitor.refresh_view()

    async def fresh_view(self, max_age: float = 0.5) -> QuorumView:
        """The quorum view, refreshed first if older than `max_age` seconds."""
        return await self.monitor.fresh_view(max_age)

    async def quorate_now(self) -> bool:
        """One linearizable read: quorum now (see `ClusterMonitor.quorate_now`)."""
        return await self.monitor.quorate_now()

    def etcd_leader_name(self) -> str | None:
        """The etcd leader as the local member last saw it (None: no leader or unknown)."""
        return self.monitor.etcd_leader_name()

    def node_online(self, name: str) -> bool:
        return self.monitor.node_online(name)

    def node_address(self, name: str) -> tuple[str, int] | None:
        rec = self.node_records.get(name)
        if rec is None:
            return None
        return rec["cluster_address"], int(rec.get("api_port", 8006))

    def fingerprint(self) -> str:
        return self.local.fingerprint()

    async def authkey(self) -> bytes | None:
        return await self.local.authkey()

    async def node_stats(self) -> dict[str, dict[str, Any]]:
        if self.store is None:
            return {}
        entries = await self.store.get_prefix(keys.NODE_STATS, serializable=True)
        return {e.key[len(keys.NODE_STATS):]: e.value for e in entries}

    def status(self) -> dict[str, Any]:
        """The `pvecm status` picture of this node's view."""
        v = self.view
        etcd = self.etcd
        warnings = list(v.warnings)
        if etcd is not None and etcd.removed:
            warnings.insert(0, "this node was removed from the cluster (for example by an "
                               "expected-votes override elsewhere): its etcd member is stopped; "
                               "rejoin with 'binome cluster join ADDRESS --force ...'")
        elif etcd is not None and etcd.pid is None:
            warnings.insert(0, f"the local etcd member is not running (restarts: "
                               f"{etcd.restarts}); see {etcd.log_path}")
        return {
            "name": self.cluster_name,
            "config_version": int(self.cluster_doc.get("config_version", 0)),
            "transport": "etcd (raft) over mutual TLS",
            "nodes": v.node_count,
            "expected_votes": v.expected_votes,
            "total_votes": v.total_votes,
            "quorum": v.quorum,
            "quorate": v.quorate,
            "flags": v.flags,
            "witness": v.has_witness,
            "warnings": warnings,
            "checked_at": v.checked_at,
            "local": self.config.name,
            "members": [
                {"nodeid": m.nodeid, "name": m.name, "votes": 0 if m.is_learner else m.votes,
                 "role": m.role, "online": m.online, "learner": m.is_learner,
                 "ip": m.address, "local": m.name == self.config.name,
                 "member_id": f"{m.member_id:x}"}
                for m in v.members
            ],
        }
