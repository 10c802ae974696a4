"""Changes to the cluster's membership, as one node runs them: create a cluster, join
one (the newcomer's side), admit a newcomer (the existing member's side), delnode,
the expected-votes override, and the discard of an interrupted create or join.

Every change to membership goes through etcd transactions that also bump the
cluster config version. Joining adds the newcomer as an etcd *learner* first
and promotes it only once it has caught up, so a join that fails half-way
never changes the number of votes needed for quorum. One change at a time on
a node; the monitor's loops (`cluster.monitor`) are stopped and restarted
around a change that replaces the local etcd member.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from typing import Any

import aiohttp

from binome.cluster import pki
from binome.cluster.local_member import LocalMember
from binome.cluster.membership import Membership
from binome.cluster.monitor import ClusterMonitor
from binome.store import keys
from binome.store.client import Store, StoreUnavailable
from binome.tasks.manager import Task, TaskFailed

log = logging.getLogger("binome.cluster")

JOIN_PROMOTE_TIMEOUT = 60.0


class MembershipChanges:
    def __init__(self, local: LocalMember, monitor: ClusterMonitor) -> None:
        self.local = local
        self.monitor = monitor
        self.config = local.config
        self.clusterlog = local.clusterlog
        self._lock = asyncio.Lock()   # one membership change at a time on this node

    async def discard_interrupted(self) -> None:
        """On daemon start, a record left by a create or join that did not finish."""
        m = self.local.membership
        assert m is not None
        log.warning("membership record in state %r: an interrupted create or join; "
                    "discarding it", m.state)
        await self._discard_local_membership()

    async def _discard_local_membership(self) -> None:
        await self.local.discard()
        self.monitor.forget_view()
        self.local.on_tls_change()

    # ------------------------------------------------------------------ create
    async def create(self, task: Task, name: str, admin_user: str,
                     admin_password_hash: str | None) -> None:
        async with self._lock:
            if self.local.membership is not None:
                raise TaskFailed(f"this node already belongs to cluster "
                                 f"'{self.local.membership.cluster_name}'")
            cfg = self.config
            if cfg.role == "witness":
                raise TaskFailed("a witness cannot create a cluster; create it on a node and "
                                 "use 'binome witness join' here")
            task.log(f"creating cluster '{name}' on node {cfg.name}")
            ca_key, ca_cert = pki.create_ca(name)
            node_key = pki.new_key()
            cert = pki.sign_node_cert(ca_key, ca_cert, pki.make_csr(node_key, cfg.name), cfg.name,
                                      self._cert_addresses())
            pki.write_public(self.local.paths.ca_cert, pki.cert_pem(ca_cert))
            pki.write_private(self.local.paths.node_key, pki.key_pem(node_key))
            pki.write_public(self.local.paths.node_cert, pki.cert_pem(cert))
            self.local.membership = Membership(
                cluster_name=name, state="creating",
                initial_cluster=f"{cfg.name}={cfg.etcd_peer_url}",
                token=f"{name}-{secrets.token_hex(8)}", nodeid=1, role=cfg.role)
            self.local.membership.save(cfg.membership_path)
            try:
                task.log("starting etcd member (TLS on peer and client URLs)")
                await self.local.start_member(state="new")
                await self.local.wait_quorate()
                assert self.local.store is not None
                status = await self.local.store.member_status(timeout=5.0)
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
                if not await self.local.store.commit({keys.CLUSTER: 0}, puts):
                    raise TaskFailed("etcd already holds a cluster record")
                self.local.membership.member_id = status["member_id"]
                self.local.membership.state = "member"
                self.local.membership.peer_client_urls = (cfg.etcd_client_url,)
                self.local.membership.save(cfg.membership_path)
            except BaseException:
                task.log("cluster creation failed; removing what was created")
                await self._discard_local_membership()
                raise
            self.local.on_tls_change()
            await self.monitor.refresh_view()
            self.monitor.start_loops()
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


    # ------------------------------------------------------------------ join (newcomer side)
    async def join(self, task: Task, address: str, fingerprint: str, user: str, password: str,
                   api_port: int = 8006, force: bool = False, role: str | None = None) -> None:
        async with self._lock:
            if self.local.membership is not None:
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
            pki.write_public(self.local.paths.ca_cert, grant["ca_cert"].encode())
            pki.write_private(self.local.paths.node_key, pki.key_pem(node_key))
            pki.write_public(self.local.paths.node_cert, grant["cert"].encode())
            self.local.membership = Membership(
                cluster_name=grant["cluster_name"], state="joining",
                initial_cluster=grant["initial_cluster"], token=grant["token"],
                member_id=grant["member_id"], nodeid=grant["nodeid"], role=role,
                peer_client_urls=tuple(grant["peer_client_urls"]))
            self.local.membership.save(cfg.membership_path)
            try:
                await self.local.start_member(state="existing")
                task.log("etcd member started as learner; waiting for it to catch up")
                await self._promote(task, grant["member_id"], grant["peer_client_urls"])
                await self.local.wait_quorate()
                assert self.local.store is not None
                await self.local.store.update(keys.node(cfg.name),
                                              lambda rec: {**(rec or {}), "state": "member"},
                                              bump_config=True)
                self.local.membership.state = "member"
                self.local.membership.save(cfg.membership_path)
                if role != cfg.role:
                    cfg.role = role
                    cfg.save()
            except BaseException as exc:
                task.log(f"join failed ({exc}); withdrawing the learner")
                await self._withdraw(grant["member_id"], grant["peer_client_urls"])
                await self._discard_local_membership()
                raise
            self.local.on_tls_change()
            await self.monitor.refresh_view()
            self.monitor.start_loops()
            await self.clusterlog.write(f"{role} {cfg.name} joined cluster "
                                        f"'{grant['cluster_name']}'", tag="cluster", user=user)
            task.log(f"{role} {cfg.name} is now a voting member of cluster "
                     f"'{grant['cluster_name']}'")

    async def _leave_for_rejoin(self, task: Task, force: bool) -> None:
        """With --force, drop a membership this node can no longer use (evicted, failed)."""
        assert self.local.membership is not None
        name = self.local.membership.cluster_name
        if not force:
            raise TaskFailed(f"this node already belongs to cluster '{name}' (if it was "
                             f"removed from it, rejoin with --force)")
        removed = self.local.etcd is not None and self.local.etcd.removed
        if self.local.is_member and not removed and self.monitor.view.quorate:
            raise TaskFailed(f"this node is an active, quorate member of cluster '{name}'; "
                             f"remove it with 'binome cluster delnode' from another node first")
        task.log(f"--force: discarding this node's previous membership of cluster '{name}'")
        await self.monitor.stop_loops()
        await self._discard_local_membership()


    async def _promote(self, task: Task, member_id: int, urls: list[str]) -> None:
        deadline = time.monotonic() + JOIN_PROMOTE_TIMEOUT
        last = ""
        while time.monotonic() < deadline:
            for url in urls:
                store = self.local.new_store(url, timeout=3.0)
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
            store = self.local.new_store(url, timeout=3.0)
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
        if not self.local.is_member or self.local.store is None:
            raise TaskFailed("this node is not part of a cluster")
        async with self._lock:
            store = self.local.store
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
                        and self.monitor.node_online(name):
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
            self.monitor.view.checked_at = 0.0   # membership changed: the next reader refreshes
            await self.clusterlog.write(f"admitting {role} {name} ({cluster_address}) as etcd "
                                        f"learner {member.id:x}", tag="cluster", user=user)
            return {
                "cluster_name": self.local.member_record().cluster_name, "ca_cert": ca["cert"],
                "cert": pki.cert_pem(cert).decode(), "initial_cluster": initial,
                "token": self.local.member_record().token, "member_id": member.id, "nodeid": nodeid,
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
            if self.monitor.node_online(name):
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
        await self.monitor.refresh_view()

    def _require_quorate(self) -> Store:
        if not self.local.is_member or self.local.store is None:
            raise TaskFailed("this node is not part of a cluster")
        if not self.monitor.view.quorate:
            raise TaskFailed("cluster not ready - no quorum?")
        return self.local.store

    # ------------------------------------------------------------------ expected votes
    async def expected(self, task: Task, votes: int) -> None:
        if not self.local.is_member or self.local.store is None:
            raise TaskFailed("this node is not part of a cluster")
        async with self._lock:
            view = await self.monitor.refresh_view()
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
            assert self.local.etcd is not None
            await self.monitor.stop_loops()
            await self.local.etcd.stop()
            if self.local.store is not None:
                await self.local.store.close()
            try:
                task.log("restarting etcd with --force-new-cluster")
                await self.local.start_member(state="existing", force_new_cluster=True)
                await self.local.wait_quorate()
            except BaseException:
                # whatever happened, this node keeps watching quorum and says so
                self.monitor.start_loops()
                raise
            assert self.local.etcd is not None
            self.local.etcd.clear_force()
            store = self.local.store
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
            record = self.local.member_record()
            record.member_id = me["member_id"]
            record.save(self.config.membership_path)
            self.monitor.start_loops()
            await self.clusterlog.write(
                f"EXPECTED VOTES OVERRIDE: expected votes set to {votes} on node "
                f"{self.config.name}; evicted: {', '.join(evicted) or 'none'}",
                tag="quorum", user=task.user, pri="warning")
            task.log(f"cluster is quorate on {self.config.name} alone; evicted: "
                     f"{', '.join(evicted) or 'none'}")
        await self.monitor.refresh_view()





def _colon(hexdigest: str) -> str:
    h = hexdigest.upper()
    return ":".join(h[i:i + 2] for i in range(0, len(h), 2))
