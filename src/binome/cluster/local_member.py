"""This node's side of its cluster membership: the membership record on disk
(cluster.json), the node's certificates, the local etcd member process and the
store client that talks to it.

It starts, stops and discards these; it decides nothing about membership (that is
`cluster.membership_changes`) and watches nothing (that is `cluster.monitor`).
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Callable

from binome.cluster import pki
from binome.cluster.membership import Membership
from binome.config import NodeConfig
from binome.store import keys
from binome.store.client import Store, StoreUnavailable
from binome.store.member import EtcdMember, MemberSpec
from binome.tasks.clusterlog import ClusterLog
from binome.tasks.manager import TaskFailed

QUORUM_WAIT = 30.0


class LocalMember:
    def __init__(self, config: NodeConfig, clusterlog: ClusterLog) -> None:
        self.config = config
        self.clusterlog = clusterlog
        self.paths = pki.PkiPaths(config.pki_dir)
        self.membership = Membership.load(config.membership_path)
        self.store: Store | None = None
        self.etcd: EtcdMember | None = None
        # the daemon reloads its API's TLS context: the node certificate changed
        self.on_tls_change: Callable[[], None] = lambda: None
        self._authkey: bytes | None = None

    @property
    def is_member(self) -> bool:
        return self.membership is not None and self.membership.state == "member"

    @property
    def cluster_name(self) -> str | None:
        return self.membership.cluster_name if self.membership is not None and self.is_member \
            else None

    def member_record(self) -> Membership:
        """The membership record of a node that has one (callers checked `is_member`)."""
        if self.membership is None:
            raise TaskFailed("this node is not a cluster member")
        return self.membership

    def member_spec(self) -> MemberSpec:
        t = self.config.timers
        return MemberSpec(name=self.config.name, data_dir=self.config.etcd_dir,
                          peer_url=self.config.etcd_peer_url,
                          client_url=self.config.etcd_client_url, ca=self.paths.ca_cert,
                          cert=self.paths.node_cert, key=self.paths.node_key,
                          heartbeat_ms=t.etcd_heartbeat_ms, election_ms=t.etcd_election_ms)

    def new_store(self, url: str | None = None, timeout: float = 5.0) -> Store:
        """A client of the local member (or of the member at `url`), with this node's cert."""
        return Store.for_url(url or self.config.etcd_client_url, ca=self.paths.ca_cert,
                             cert=self.paths.node_cert, key=self.paths.node_key,
                             timeout=timeout)

    async def start_member(self, *, state: str, force_new_cluster: bool = False) -> None:
        """Start the local etcd member from the membership record, and a client of it."""
        m = self.membership
        assert m is not None
        self.etcd = EtcdMember(self.member_spec(), self.config.run_dir, self.config.etcd_log)
        await self.etcd.start(initial_cluster=m.initial_cluster, state=state, token=m.token,
                              force_new_cluster=force_new_cluster)
        self.store = self.new_store()
        self.clusterlog.store = self.store

    async def stop_member(self) -> None:
        """Close the client and stop the etcd member (the membership record stays)."""
        if self.store is not None:
            await self.store.close()
        self.store = None
        self.clusterlog.store = None
        if self.etcd is not None:
            await self.etcd.stop()
            self.etcd = None

    async def discard(self) -> None:
        """Forget this node's membership: member, its data, certificates and record."""
        if self.etcd is not None:
            await self.etcd.stop()
            self.etcd = None
        if self.store is not None:
            await self.store.close()
            self.store = None
        self.clusterlog.store = None
        shutil.rmtree(self.config.etcd_dir, ignore_errors=True)
        # the old member's log could hold a "removed" marker that a new member must not
        # inherit
        self.config.etcd_log.unlink(missing_ok=True)
        for rotated in self.config.etcd_log.parent.glob(self.config.etcd_log.name + ".*"):
            rotated.unlink(missing_ok=True)
        for path in (self.paths.ca_cert, self.paths.node_cert, self.paths.node_key):
            path.unlink(missing_ok=True)
        self.config.membership_path.unlink(missing_ok=True)
        self.membership = None
        self._authkey = None

    async def wait_quorate(self, timeout: float = QUORUM_WAIT) -> None:
        assert self.store is not None
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                await self.store.linearizable_probe(timeout=1.0)
                return
            except StoreUnavailable as exc:
                last = exc
                await asyncio.sleep(0.2)
        raise TaskFailed(f"etcd did not become quorate within {timeout:.0f}s: {last}")

    async def authkey(self) -> bytes | None:
        """The cluster's ticket-signing key (cached: it never changes within a cluster)."""
        if self._authkey is None and self.store is not None:
            value = await self.store.get_value(keys.ACCESS_AUTHKEY, serializable=True)
            if value:
                self._authkey = bytes.fromhex(value)
        return self._authkey

    def fingerprint(self) -> str:
        path = self.paths.node_cert if self.is_member else self.paths.self_signed_cert
        return pki.fingerprint(pki.load_cert(path.read_bytes()))
