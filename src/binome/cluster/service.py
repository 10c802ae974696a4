"""The cluster service of one node: create, join, admit, delnode, expected-votes override,
the etcd member, the node lease and the quorum monitor.

Every change to membership goes through etcd transactions that also bump the
cluster config version. Joining adds the newcomer as an etcd *learner* first
and promotes it only once it has caught up, so a join that fails half-way
never changes the number of votes needed for quorum.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import shutil
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from binome.cluster import pki
from binome.cluster.membership import Membership
from binome.cluster.quorum import MemberView, QuorumView
from binome.config import NodeConfig
from binome.store import keys
from binome.store.client import Store, StoreUnavailable
from binome.store.member import (
    EtcdMember,
    LeadershipPreference,
    MemberSpec,
    PeerHealth,
    witness_transfer_target,
)
from binome.tasks.clusterlog import ClusterLog
from binome.tasks.manager import Task, TaskFailed

log = logging.getLogger("binome.cluster")

JOIN_PROMOTE_TIMEOUT = 60.0
QUORUM_WAIT = 30.0
LEADER_MOVE_TIMEOUT = 5.0   # etcd itself gives up a transfer after an election timeout


class ClusterService:
    def __init__(self, config: NodeConfig, clusterlog: ClusterLog) -> None:
        self.config = config
        self.clusterlog = clusterlog
        self.paths = pki.PkiPaths(config.pki_dir)
        self.membership = Membership.load(config.membership_path)
        self.store: Store | None = None
        self.etcd: EtcdMember | None = None
        self.view = QuorumView()
        self.node_records: dict[str, dict[str, Any]] = {}
        self.cluster_doc: dict[str, Any] = {}
        self.on_tls_change: Callable[[], None] = lambda: None
        self.on_node_stats: Callable[[], dict[str, Any]] = dict
        self._loops: list[asyncio.Task] = []
        self._lease_id: int | None = None
        self._peer_stores: dict[str, Store] = {}
        self._authkey: bytes | None = None
        self._lock = asyncio.Lock()   # one membership change at a time on this node
        self._refreshing = asyncio.Lock()   # one quorum view refresh at a time
        self._etcd_leader_id: int | None = None   # as the local member last saw it

    # ------------------------------------------------------------------ lifecycle
    @property
    def is_member(self) -> bool:
        return self.membership is not None and self.membership.state == "member"

    @property
    def cluster_name(self) -> str | None:
        return self.membership.cluster_name if self.is_member else None

    def _member_spec(self) -> MemberSpec:
        t = self.config.timers
        return MemberSpec(name=self.config.name, data_dir=self.config.etcd_dir,
                          peer_url=self.config.etcd_peer_url,
                          client_url=self.config.etcd_client_url, ca=self.paths.ca_cert,
                          cert=self.paths.node_cert, key=self.paths.node_key,
                          heartbeat_ms=t.etcd_heartbeat_ms, election_ms=t.etcd_election_ms)

    def _new_store(self, url: str | None = None, timeout: float = 5.0) -> Store:
        return Store.for_url(url or self.config.etcd_client_url, ca=self.paths.ca_cert,
                             cert=self.paths.node_cert, key=self.paths.node_key,
                             timeout=timeout)

    async def start(self) -> None:
        """On daemon start: bring back our etcd member and the cluster loops."""
        m = self.membership
        if m is None:
            return
        if m.state != "member":
            log.warning("membership record in state %r: an interrupted create or join; "
                        "discarding it", m.state)
            await self._discard_local_membership()
            return
        await self._start_member(state="existing")
        self._start_loops()

    async def stop(self) -> None:
        lease_id = self._lease_id
        await self._stop_loops()
        if self.store is not None and lease_id is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.store.revoke_lease(lease_id), 1.0)
        for store in [self.store, *self._peer_stores.values()]:
            if store is not None:
                await store.close()
        self._peer_stores = {}
        self.store = None
        self.clusterlog.store = None
        if self.etcd is not None:
            await self.etcd.stop()
            self.etcd = None

    async def _start_member(self, *, state: str, force_new_cluster: bool = False) -> None:
        m = self.membership
        assert m is not None
        self.etcd = EtcdMember(self._member_spec(), self.config.run_dir,
                               self.config.state_dir / "etcd.log")
        await self.etcd.start(initial_cluster=m.initial_cluster, state=state, token=m.token,
                              force_new_cluster=force_new_cluster)
        self.store = self._new_store()
        self.clusterlog.store = self.store

    def _start_loops(self) -> None:
        self._loops = [asyncio.create_task(self._quorum_loop(), name="quorum"),
                       asyncio.create_task(self._lease_loop(), name="lease"),
                       asyncio.create_task(self._leadership_loop(), name="etcd-leadership")]

    async def _discard_local_membership(self) -> None:
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
        (self.config.state_dir / "etcd.log").unlink(missing_ok=True)
        for path in (self.paths.ca_cert, self.paths.node_cert, self.paths.node_key):
            path.unlink(missing_ok=True)
        self.config.membership_path.unlink(missing_ok=True)
        self.membership = None
        self.view = QuorumView()
        self._authkey = None
        self.on_tls_change()

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

    # ------------------------------------------------------------------ loops
    async def _quorum_loop(self) -> None:
        t = self.config.timers
        while True:
            try:
                await self.refresh_view()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("quorum check failed")
            await asyncio.sleep(t.quorum_check_interval)

    async def refresh_view(self) -> QuorumView:
        async with self._refreshing:
            return await self._refresh_view()

    async def _refresh_view(self) -> QuorumView:
        assert self.store is not None
        t = self.config.timers
        was = self.view.quorate if self.view.checked_at else None
        try:
            await self.store.linearizable_probe(timeout=t.quorum_check_timeout)
            quorate = True
        except StoreUnavailable:
            quorate = False
        members = []
        with contextlib.suppress(StoreUnavailable):
            members = await self.store.members(timeout=t.quorum_check_timeout)
        with contextlib.suppress(StoreUnavailable):
            records = await self.store.get_prefix(keys.NODES, serializable=True,
                                                  timeout=t.quorum_check_timeout)
            self.node_records = {e.key[len(keys.NODES):]: e.value for e in records}
        with contextlib.suppress(StoreUnavailable):
            self.cluster_doc = await self.store.get_value(
                keys.CLUSTER, {}, serializable=True, timeout=t.quorum_check_timeout)
        online = await self._probe_members(members)
        by_member = {r.get("member_id"): r for r in self.node_records.values()}
        views = []
        for m in members:
            rec = by_member.get(m.id) or self.node_records.get(m.name) or {}
            views.append(MemberView(
                name=m.name or rec.get("name", "?"), member_id=m.id,
                role=rec.get("role", "unknown"), nodeid=int(rec.get("nodeid", 0)), votes=1,
                online=online.get(m.id, False), is_learner=m.is_learner,
                address=rec.get("cluster_address", "")))
        views.sort(key=lambda v: (v.nodeid or 1 << 30, v.name))
        self.view = QuorumView(quorate=quorate, members=views, checked_at=time.time(),
                               override=self.cluster_doc.get("expected_override"))
        if was is not None and was != quorate:
            await self._quorum_changed(quorate)
        if quorate:
            await self.clusterlog.flush()
        return self.view

    async def fresh_view(self, max_age: float = 0.5) -> QuorumView:
        """The quorum view, refreshed first if older than `max_age` seconds."""
        if self.store is not None and time.time() - self.view.checked_at > max_age:
            await self.refresh_view()
        return self.view

    async def _probe_members(self, members) -> dict[int, bool]:
        t = self.config.timers

        async def probe(m) -> tuple[int, bool]:
            if not m.client_urls:
                return m.id, False
            url = m.client_urls[0]
            store = self._peer_stores.get(url)
            if store is None:
                store = self._new_store(url, timeout=t.quorum_check_timeout)
                self._peer_stores[url] = store
            try:
                status = await store.member_status(timeout=t.quorum_check_timeout)
            except StoreUnavailable:
                # a fresh channel next time: gRPC's reconnect backoff would otherwise
                # keep a returning member "offline" for many seconds
                self._peer_stores.pop(url, None)
                await store.close()
                return m.id, False
            return m.id, status["member_id"] == m.id

        results = await asyncio.gather(*(probe(m) for m in members))
        return dict(results)

    async def _quorum_changed(self, quorate: bool) -> None:
        v = self.view
        if quorate:
            msg = f"quorum regained: {v.total_votes} of {v.expected_votes} votes"
            await self.clusterlog.write(f"node {self.config.name}: {msg}", tag="quorum")
        else:
            msg = (f"quorum lost: {v.total_votes} of {v.expected_votes} votes, "
                   f"{v.quorum} needed")
            await self.clusterlog.write(f"node {self.config.name}: {msg}", tag="quorum",
                                        pri="warning")

    async def _lease_loop(self) -> None:
        t = self.config.timers
        stats_every = max(1, round(5.0 / t.keepalive_interval))
        trim_every = max(1, round(300.0 / t.keepalive_interval))
        n = 0
        while True:
            try:
                await self._keepalive_once(publish_stats=(n % stats_every == 0))
                if n % trim_every == trim_every - 1:
                    await self.clusterlog.trim()
            except asyncio.CancelledError:
                raise
            except StoreUnavailable as exc:
                log.debug("lease keepalive failed: %s", exc)
            except Exception:
                log.exception("lease keepalive failed")
            n += 1
            await asyncio.sleep(t.keepalive_interval)

    async def _keepalive_once(self, publish_stats: bool) -> None:
        assert self.store is not None
        t = self.config.timers
        if self._lease_id is not None:
            ttl = await self.store.refresh_lease(self._lease_id, timeout=t.keepalive_interval)
            if ttl <= 0:
                log.warning("node lease %x expired; granting a new one", self._lease_id)
                self._lease_id = None
        if self._lease_id is None:
            self._lease_id = await self.store.grant_lease(t.lease_ttl)
            await self.store.put(keys.alive(self.config.name),
                                 {"node": self.config.name, "since": time.time()},
                                 lease=self._lease_id)
            publish_stats = True
        if publish_stats:
            await self.store.put(keys.NODE_STATS + self.config.name, self.on_node_stats(),
                                 lease=self._lease_id)

    # ------------------------------------------------------------------ etcd leadership
    async def _leadership_loop(self) -> None:
        """Keep etcd leadership on the witness (docs/ha.md, "etcd leadership").

        Every daemon reads its local member's Status each quorum check interval (which
        also feeds `etcd_leader_name`); only the daemon whose member leads, when it is
        not the witness, looks at the whole cluster and moves leadership with
        MoveLeader - etcd accepts that RPC only from the leader, so two daemons never
        fight over it. When and how often: `store.member.LeadershipPreference`.
        """
        policy = LeadershipPreference()
        peers: dict[str, Store] = {}   # our own channels: the quorum loop closes its own
        try:
            while True:
                try:
                    await self._leadership_once(policy, peers)
                except asyncio.CancelledError:
                    raise
                except StoreUnavailable as exc:
                    self._etcd_leader_id = None
                    log.debug("etcd leadership check failed: %s", exc)
                except Exception:
                    log.exception("etcd leadership check failed")
                await asyncio.sleep(self.config.timers.quorum_check_interval)
        finally:
            self._etcd_leader_id = None
            for store in peers.values():
                await store.close()

    async def _leadership_once(self, policy: LeadershipPreference,
                               peers: dict[str, Store]) -> None:
        assert self.store is not None
        t = self.config.timers
        local = await self.store.member_status(timeout=t.quorum_check_timeout)
        now = time.monotonic()
        me, leader = local["member_id"], local["leader"]
        self._etcd_leader_id = leader or None
        records = {int(r.get("member_id", 0)): r for r in self.node_records.values()}
        witnesses = {mid for mid, r in records.items() if r.get("role") == "witness"}
        held = policy.witness_since is not None
        policy.observe(now, leader in witnesses)
        if held and leader not in witnesses and leader == me:
            log.info("etcd leadership left the witness", extra={
                "leader": self.config.name, "term": local["raft_term"],
                "retry_in_s": round(policy.delay, 1), "quick_losses": policy.quick_losses})
        if leader != me or me in witnesses or not witnesses:
            policy.healthy(now, False)
            return
        members = await self.store.members(timeout=t.quorum_check_timeout)

        async def status(m) -> dict[str, Any] | None:
            if m.id == me:
                return local
            if not m.client_urls:
                return None
            url = m.client_urls[0]
            store = peers.get(url)
            if store is None:
                store = peers[url] = self._new_store(url, timeout=t.quorum_check_timeout)
            try:
                return await store.member_status(timeout=t.quorum_check_timeout)
            except StoreUnavailable:
                # a fresh channel next time (gRPC's reconnect backoff is long)
                peers.pop(url, None)
                await store.close()
                return None

        statuses = await asyncio.gather(*(status(m) for m in members))
        health = [PeerHealth(member_id=m.id, name=m.name,
                             role=records.get(m.id, {}).get("role", "unknown"),
                             state=records.get(m.id, {}).get("state", ""),
                             is_learner=m.is_learner, status=st)
                  for m, st in zip(members, statuses, strict=True)]
        target, why = witness_transfer_target(local, health)
        policy.healthy(time.monotonic(), target is not None)
        if target is None:
            log.debug("etcd leadership stays here: %s", why)
            return
        if not policy.may_move(time.monotonic()):
            return
        to = next((m.name for m in members if m.id == target), f"{target:x}")
        started = time.monotonic()
        try:
            await self.store.move_leader(target, timeout=LEADER_MOVE_TIMEOUT)
        except StoreUnavailable as exc:
            policy.moved(time.monotonic(), ok=False)
            log.log(logging.WARNING if policy.failures == 1 else logging.DEBUG,
                    "etcd leadership transfer to the witness failed", extra={
                        "from": self.config.name, "to": to, "error": str(exc),
                        "failures": policy.failures,
                        "retry_in_s": round(policy.not_before - time.monotonic(), 1)})
            return
        policy.moved(time.monotonic(), ok=True)
        self._etcd_leader_id = target
        log.info("etcd leadership moved to the witness", extra={
            "from": self.config.name, "to": to, "term": local["raft_term"],
            "took_ms": round((time.monotonic() - started) * 1000)})

    def etcd_leader_name(self) -> str | None:
        """The etcd leader as the local member last saw it (None: no leader or unknown)."""
        leader = self._etcd_leader_id
        if not leader:
            return None
        return next((m.name for m in self.view.members if m.member_id == leader),
                    f"{leader:x}")

    # ------------------------------------------------------------------ reads
    @property
    def lease_id(self) -> int | None:
        """This node's live lease (keys bound to it vanish when the node dies)."""
        return self._lease_id

    async def authkey(self) -> bytes | None:
        if self._authkey is None and self.store is not None:
            value = await self.store.get_value(keys.ACCESS_AUTHKEY, serializable=True)
            if value:
                self._authkey = bytes.fromhex(value)
        return self._authkey

    async def get_user(self, userid: str) -> dict[str, Any] | None:
        if self.store is None:
            return None
        return await self.store.get_value(keys.user(userid), serializable=True)

    async def node_stats(self) -> dict[str, dict[str, Any]]:
        if self.store is None:
            return {}
        entries = await self.store.get_prefix(keys.NODE_STATS, serializable=True)
        return {e.key[len(keys.NODE_STATS):]: e.value for e in entries}

    def node_online(self, name: str) -> bool:
        return any(m.name == name and m.online for m in self.view.members)

    def status(self) -> dict[str, Any]:
        """The `pvecm status` picture of this node's view."""
        v = self.view
        warnings = list(v.warnings)
        if self.etcd is not None and self.etcd.removed:
            warnings.insert(0, "this node was removed from the cluster (for example by an "
                               "expected-votes override elsewhere): its etcd member is stopped; "
                               "rejoin with 'binome cluster join ADDRESS --force ...'")
        elif self.etcd is not None and self.etcd.pid is None:
            warnings.insert(0, f"the local etcd member is not running (restarts: "
                               f"{self.etcd.restarts}); see {self.etcd.log_path}")
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

    # ------------------------------------------------------------------ create
    async def create(self, task: Task, name: str, admin_user: str,
                     admin_password_hash: str | None) -> None:
        async with self._lock:
            if self.membership is not None:
                raise TaskFailed(f"this node already belongs to cluster "
                                 f"'{self.membership.cluster_name}'")
            cfg = self.config
            if cfg.role == "witness":
                raise TaskFailed("a witness cannot create a cluster; create it on a node and "
                                 "use 'binome witness join' here")
            task.log(f"creating cluster '{name}' on node {cfg.name}")
            ca_key, ca_cert = pki.create_ca(name)
            node_key = pki.new_key()
            cert = pki.sign_node_cert(ca_key, ca_cert, pki.make_csr(node_key, cfg.name), cfg.name,
                                      self._cert_addresses())
            pki.write_public(self.paths.ca_cert, pki.cert_pem(ca_cert))
            pki.write_private(self.paths.node_key, pki.key_pem(node_key))
            pki.write_public(self.paths.node_cert, pki.cert_pem(cert))
            self.membership = Membership(
                cluster_name=name, state="creating",
                initial_cluster=f"{cfg.name}={cfg.etcd_peer_url}",
                token=f"{name}-{secrets.token_hex(8)}", nodeid=1, role=cfg.role)
            self.membership.save(cfg.membership_path)
            try:
                task.log("starting etcd member (TLS on peer and client URLs)")
                await self._start_member(state="new")
                await self.wait_quorate()
                assert self.store is not None
                status = await self.store.member_status(timeout=5.0)
                now = int(time.time())
                puts: dict[str, Any] = {
                    keys.CLUSTER: {"name": name, "config_version": 1, "created": now,
                                   "created_by": task.user},
                    keys.PKI_CA: {"cert": pki.cert_pem(ca_cert).decode(),
                                  "key": pki.key_pem(ca_key).decode()},
                    keys.ACCESS_AUTHKEY: secrets.token_hex(32),
                    keys.node(cfg.name): self._node_record(1, status["member_id"],
                                                           pki.fingerprint(cert), "member"),
                }
                if admin_password_hash:
                    puts[keys.user(admin_user)] = {"userid": admin_user, "enable": 1,
                                                   "superuser": 1, "password": admin_password_hash,
                                                   "comment": "cluster administrator"}
                if not await self.store.commit({keys.CLUSTER: 0}, puts):
                    raise TaskFailed("etcd already holds a cluster record")
                self.membership.member_id = status["member_id"]
                self.membership.state = "member"
                self.membership.peer_client_urls = (cfg.etcd_client_url,)
                self.membership.save(cfg.membership_path)
            except BaseException:
                task.log("cluster creation failed; removing what was created")
                await self._discard_local_membership()
                raise
            self.on_tls_change()
            await self.refresh_view()
            self._start_loops()
            await self.clusterlog.write(f"cluster '{name}' created on node {cfg.name}",
                                        tag="cluster", user=task.user)
            task.log(f"cluster '{name}' created; config version 1")
            task.log(f"node certificate fingerprint: {pki.fingerprint(cert)}")
            task.log(f"join other nodes with: binome cluster join {cfg.cluster_address} "
                     f"--fingerprint {pki.fingerprint(cert)}")

    def _cert_addresses(self) -> list[str]:
        cfg = self.config
        return [cfg.cluster_address, cfg.replication_address, "127.0.0.1"]

    def _node_record(self, nodeid: int, member_id: int, fingerprint: str,
                     state: str) -> dict[str, Any]:
        cfg = self.config
        return {"name": cfg.name, "nodeid": nodeid, "role": cfg.role, "member_id": member_id,
                "cluster_address": cfg.cluster_address,
                "replication_address": cfg.replication_address, "api_port": cfg.api_port,
                "etcd_client_port": cfg.etcd_client_port, "etcd_peer_port": cfg.etcd_peer_port,
                "fingerprint": fingerprint, "state": state, "joined": int(time.time())}

    def fingerprint(self) -> str:
        path = self.paths.node_cert if self.is_member else self.paths.self_signed_cert
        return pki.fingerprint(pki.load_cert(path.read_bytes()))

    # ------------------------------------------------------------------ join (newcomer side)
    async def join(self, task: Task, address: str, fingerprint: str, user: str, password: str,
                   api_port: int = 8006, force: bool = False, role: str | None = None) -> None:
        async with self._lock:
            if self.membership is not None:
                await self._leave_for_rejoin(task, force)
            cfg = self.config
            role = role or cfg.role
            try:
                fp = pki.normalize_fingerprint(fingerprint)
            except ValueError as exc:
                raise TaskFailed(str(exc)) from None
            host = f"[{address}]" if ":" in address else address
            base = f"https://{host}:{api_port}/api2/json"
            task.log(f"joining cluster through {address} as {role} '{cfg.name}'")
            ssl_pin = aiohttp.Fingerprint(bytes.fromhex(fp.replace(":", "")))
            node_key = pki.new_key()
            csr = pki.make_csr(node_key, cfg.name)
            timeout = aiohttp.ClientTimeout(total=30)
            async with aiohttp.ClientSession(timeout=timeout) as http:
                try:
                    async with http.post(f"{base}/access/ticket", ssl=ssl_pin,
                                         data={"username": user, "password": password}) as r:
                        if r.status == 401:
                            raise TaskFailed(f"authentication failure at {address} as {user}")
                        body = await r.json()
                        if r.status != 200:
                            raise TaskFailed(f"login at {address} failed: {r.status} {r.reason}")
                    ticket = body["data"]["ticket"]
                    csrf = body["data"]["CSRFPreventionToken"]
                    task.log(f"authenticated to {address} as {user}; fingerprint verified")
                    form = {"csr": pki.csr_pem(csr).decode(), "role": role,
                            "cluster_address": cfg.cluster_address,
                            "replication_address": cfg.replication_address,
                            "api_port": str(cfg.api_port),
                            "etcd_client_port": str(cfg.etcd_client_port),
                            "etcd_peer_port": str(cfg.etcd_peer_port),
                            "force": "1" if force else "0"}
                    async with http.post(f"{base}/cluster/config/nodes/{cfg.name}", ssl=ssl_pin,
                                         data=form, headers={
                                             "Cookie": f"PVEAuthCookie={ticket}",
                                             "CSRFPreventionToken": csrf}) as r:
                        body = await r.json(content_type=None)
                        if r.status != 200:
                            errors = "; ".join(f"{k}: {v}" for k, v in
                                               (body.get("errors") or {}).items())
                            raise TaskFailed(f"{address} refused the join: {r.reason}"
                                             + (f" ({errors})" if errors else ""))
                except aiohttp.ServerFingerprintMismatch as exc:
                    raise TaskFailed(f"fingerprint mismatch: {address} presented "
                                     f"{_colon(exc.got.hex())}, expected {fp}") from None
                except aiohttp.ClientError as exc:
                    raise TaskFailed(f"cannot reach {address}:{api_port}: {exc}") from None
            grant = body["data"]
            task.log(f"admitted as etcd learner {grant['member_id']:x} (nodeid "
                     f"{grant['nodeid']}) into cluster '{grant['cluster_name']}'")
            pki.write_public(self.paths.ca_cert, grant["ca_cert"].encode())
            pki.write_private(self.paths.node_key, pki.key_pem(node_key))
            pki.write_public(self.paths.node_cert, grant["cert"].encode())
            self.membership = Membership(
                cluster_name=grant["cluster_name"], state="joining",
                initial_cluster=grant["initial_cluster"], token=grant["token"],
                member_id=grant["member_id"], nodeid=grant["nodeid"], role=role,
                peer_client_urls=tuple(grant["peer_client_urls"]))
            self.membership.save(cfg.membership_path)
            try:
                await self._start_member(state="existing")
                task.log("etcd member started as learner; waiting for it to catch up")
                await self._promote(task, grant["member_id"], grant["peer_client_urls"])
                await self.wait_quorate()
                assert self.store is not None
                await self.store.update(keys.node(cfg.name),
                                        lambda rec: {**(rec or {}), "state": "member"},
                                        bump_config=True)
                self.membership.state = "member"
                self.membership.save(cfg.membership_path)
                if role != cfg.role:
                    cfg.role = role
                    cfg.save()
            except BaseException as exc:
                task.log(f"join failed ({exc}); withdrawing the learner")
                await self._withdraw(grant["member_id"], grant["peer_client_urls"])
                await self._discard_local_membership()
                raise
            self.on_tls_change()
            await self.refresh_view()
            self._start_loops()
            await self.clusterlog.write(f"{role} {cfg.name} joined cluster "
                                        f"'{grant['cluster_name']}'", tag="cluster", user=user)
            task.log(f"{role} {cfg.name} is now a voting member of cluster "
                     f"'{grant['cluster_name']}'")

    async def _leave_for_rejoin(self, task: Task, force: bool) -> None:
        """With --force, drop a membership this node can no longer use (evicted, failed)."""
        assert self.membership is not None
        name = self.membership.cluster_name
        if not force:
            raise TaskFailed(f"this node already belongs to cluster '{name}' (if it was "
                             f"removed from it, rejoin with --force)")
        removed = self.etcd is not None and self.etcd.removed
        if self.is_member and not removed and self.view.quorate:
            raise TaskFailed(f"this node is an active, quorate member of cluster '{name}'; "
                             f"remove it with 'binome cluster delnode' from another node first")
        task.log(f"--force: discarding this node's previous membership of cluster '{name}'")
        await self._stop_loops()
        await self._discard_local_membership()

    async def _stop_loops(self) -> None:
        for loop in self._loops:
            loop.cancel()
        for loop in self._loops:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await loop
        self._loops = []
        self._lease_id = None

    async def _promote(self, task: Task, member_id: int, urls: list[str]) -> None:
        deadline = time.monotonic() + JOIN_PROMOTE_TIMEOUT
        last = ""
        while time.monotonic() < deadline:
            for url in urls:
                store = self._new_store(url, timeout=3.0)
                try:
                    await store.promote(member_id)
                    task.log(f"promoted to voting member (via {url})")
                    return
                except StoreUnavailable as exc:
                    last = str(exc)
                finally:
                    await store.close()
            await asyncio.sleep(0.5)
        raise TaskFailed(f"learner did not catch up within {JOIN_PROMOTE_TIMEOUT:.0f}s: {last}")

    async def _withdraw(self, member_id: int, urls: list[str]) -> None:
        for url in urls:
            store = self._new_store(url, timeout=3.0)
            try:
                await store.remove_member(member_id)
                await store.delete(keys.node(self.config.name))
                return
            except StoreUnavailable:
                continue
            finally:
                await store.close()

    # ------------------------------------------------------------------ admit (existing side)
    async def admit(self, user: str, name: str, csr_pem: str, role: str, cluster_address: str,
                    replication_address: str, api_port: int, etcd_client_port: int,
                    etcd_peer_port: int, force: bool) -> dict[str, Any]:
        if not self.is_member or self.store is None:
            raise TaskFailed("this node is not part of a cluster")
        async with self._lock:
            store = self.store
            try:
                await store.linearizable_probe(timeout=2.0)
            except StoreUnavailable:
                raise TaskFailed("cluster not quorate: cannot admit a new node") from None
            existing = await store.get(keys.node(name))
            members = await store.members()
            if existing is not None:
                old = existing.value
                stale = old.get("state") == "joining" or force
                if not stale:
                    raise TaskFailed(f"node '{name}' already exists in the cluster")
                if any(m.id == old.get("member_id") and not m.is_learner for m in members) \
                        and self.node_online(name):
                    raise TaskFailed(f"node '{name}' is an online voting member")
                with contextlib.suppress(StoreUnavailable):
                    await store.remove_member(int(old.get("member_id", 0)))
                await store.delete(keys.node(name))
            records = [e.value for e in await store.get_prefix(keys.NODES)]
            for rec in records:
                if rec["name"] != name and rec.get("cluster_address") == cluster_address:
                    raise TaskFailed(f"address {cluster_address} is already used by node "
                                     f"'{rec['name']}'")
            ca = await store.get_value(keys.PKI_CA)
            ca_cert = pki.load_cert(ca["cert"].encode())
            ca_key = pki.load_key(ca["key"].encode())
            try:
                csr = pki.x509.load_pem_x509_csr(csr_pem.encode())
            except ValueError:
                raise TaskFailed("invalid certificate signing request") from None
            addresses = list(dict.fromkeys([cluster_address, replication_address, "127.0.0.1"]))
            cert = pki.sign_node_cert(ca_key, ca_cert, csr, name, addresses)
            host = f"[{cluster_address}]" if ":" in cluster_address else cluster_address
            peer_url = f"https://{host}:{etcd_peer_port}"
            member, all_members = await store.add_learner([peer_url])
            initial = ",".join(f"{m.name or name}={m.peer_urls[0]}" for m in all_members
                               if (m.name or m.id == member.id) and m.peer_urls)
            nodeid = max([int(r.get("nodeid", 0)) for r in records] + [0]) + 1
            record = {"name": name, "nodeid": nodeid, "role": role, "member_id": member.id,
                      "cluster_address": cluster_address,
                      "replication_address": replication_address, "api_port": api_port,
                      "etcd_client_port": etcd_client_port, "etcd_peer_port": etcd_peer_port,
                      "fingerprint": pki.fingerprint(cert), "state": "joining",
                      "joined": int(time.time())}
            await store.update(keys.node(name), lambda _old: record, bump_config=True)
            doc = await store.get(keys.CLUSTER)
            if doc is not None and "expected_override" in doc.value:
                # the cluster has grown again: the override no longer describes it
                cleared = {k: v for k, v in doc.value.items() if k != "expected_override"}
                await store.commit({keys.CLUSTER: doc.mod_revision}, {keys.CLUSTER: cleared})
            self.view.checked_at = 0.0   # membership changed: the next reader refreshes
            await self.clusterlog.write(f"admitting {role} {name} ({cluster_address}) as etcd "
                                        f"learner {member.id:x}", tag="cluster", user=user)
            return {
                "cluster_name": self.membership.cluster_name, "ca_cert": ca["cert"],
                "cert": pki.cert_pem(cert).decode(), "initial_cluster": initial,
                "token": self.membership.token, "member_id": member.id, "nodeid": nodeid,
                "peer_client_urls": [u for m in all_members if not m.is_learner
                                     for u in m.client_urls],
            }

    # ------------------------------------------------------------------ delnode
    async def delnode(self, task: Task, name: str) -> None:
        store = self._require_quorate()
        async with self._lock:
            if name == self.config.name:
                raise TaskFailed("cannot remove the local node; run delnode from another node")
            entry = await store.get(keys.node(name))
            if entry is None:
                raise TaskFailed(f"no such cluster node '{name}'")
            if self.node_online(name):
                raise TaskFailed(f"node '{name}' is online; power it off (or stop binomed) "
                                 f"before removing it")
            owned = await store.count_prefix(keys.node_config_prefix(name))
            if owned:
                raise TaskFailed(f"node '{name}' still owns {owned} guest(s); migrate or "
                                 f"destroy them first")
            member_id = int(entry.value.get("member_id", 0))
            if any(m.id == member_id for m in await store.members()):
                task.log(f"removing etcd member {member_id:x}")
                await store.remove_member(member_id)
            for _ in range(10):
                fresh = await store.get(keys.node(name))
                if fresh is None:
                    break
                if await store.commit({keys.node(name): fresh.mod_revision}, None,
                                      [keys.node(name), keys.alive(name)], bump_config=True):
                    break
            await self.clusterlog.write(f"node {name} removed from the cluster", tag="cluster",
                                        user=task.user)
            task.log(f"node '{name}' removed")
        await self.refresh_view()

    def _require_quorate(self) -> Store:
        if not self.is_member or self.store is None:
            raise TaskFailed("this node is not part of a cluster")
        if not self.view.quorate:
            raise TaskFailed("cluster not ready - no quorum?")
        return self.store

    # ------------------------------------------------------------------ expected votes
    async def expected(self, task: Task, votes: int) -> None:
        if not self.is_member or self.store is None:
            raise TaskFailed("this node is not part of a cluster")
        async with self._lock:
            view = await self.refresh_view()
            if view.quorate:
                raise TaskFailed(f"cluster is quorate ({view.total_votes} of "
                                 f"{view.expected_votes} votes); the override is only for a "
                                 f"node that lost quorum")
            if votes != 1:
                raise TaskFailed("only 'expected 1' is supported: the override rebuilds the "
                                 "cluster from this node's copy of the state alone")
            task.log("WARNING: overriding expected votes to 1.")
            task.log("WARNING: this node will form a cluster of its own from its copy of the")
            task.log("WARNING: state. Every other member is evicted and must rejoin with")
            task.log("WARNING: 'binome cluster join --force'. Make sure they are really down:")
            task.log("WARNING: if they are alive on the other side of a partition, you are")
            task.log("WARNING: creating a split brain.")
            assert self.etcd is not None
            await self._stop_loops()
            await self.etcd.stop()
            if self.store is not None:
                await self.store.close()
            try:
                task.log("restarting etcd with --force-new-cluster")
                await self._start_member(state="existing", force_new_cluster=True)
                await self.wait_quorate()
            except BaseException:
                # whatever happened, this node keeps watching quorum and says so
                self._start_loops()
                raise
            assert self.etcd is not None
            self.etcd.clear_force()
            store = self.store
            assert store is not None
            me = await store.member_status(timeout=5.0)
            override = {"votes": votes, "user": task.user, "node": self.config.name,
                        "time": int(time.time())}
            evicted = []
            for entry in await store.get_prefix(keys.NODES):
                rec = entry.value
                if rec["name"] == self.config.name:
                    await store.put(entry.key, {**rec, "member_id": me["member_id"]})
                else:
                    evicted.append(rec["name"])
                    await store.put(entry.key, {**rec, "state": "evicted"})
            await store.update(keys.CLUSTER, lambda doc: {**doc, "expected_override": override},
                               bump_config=True)
            self.membership.member_id = me["member_id"]
            self.membership.save(self.config.membership_path)
            self._start_loops()
            await self.clusterlog.write(
                f"EXPECTED VOTES OVERRIDE: expected votes set to {votes} on node "
                f"{self.config.name}; evicted: {', '.join(evicted) or 'none'}",
                tag="quorum", user=task.user, pri="warning")
            task.log(f"cluster is quorate on {self.config.name} alone; evicted: "
                     f"{', '.join(evicted) or 'none'}")
        await self.refresh_view()

    # ------------------------------------------------------------------ helpers
    def node_address(self, name: str) -> tuple[str, int] | None:
        rec = self.node_records.get(name)
        if rec is None:
            return None
        return rec["cluster_address"], int(rec.get("api_port", 8006))


def _colon(hexdigest: str) -> str:
    h = hexdigest.upper()
    return ":".join(h[i:i + 2] for i in range(0, len(h), 2))
