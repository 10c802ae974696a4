"""The cluster monitor of one node: what it sees of the cluster and what keeps it
visible to the others.

- the quorum view (`QuorumView`): a linearizable probe, the etcd member list, the node
  records, and a probe of each member, refreshed every quorum check interval; a
  change of quorum goes to the cluster log and `on_quorum_change` (which changes are
  announced: `QuorumTransitions`; a daemon starting before its peers has not lost
  quorum), and the log's backlog is flushed when quorate;
- the node lease: kept alive every keepalive interval, with the alive key and the
  node's stats bound to it;
- etcd leadership: moved to the witness when this node's member leads (docs/ha.md,
  "etcd leadership").

It only reads membership (`cluster.local_member`); changes to it are
`cluster.membership_changes`, which stops and restarts these loops around them.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable
from typing import Any

from binome.cluster.local_member import LocalMember
from binome.cluster.quorum import MemberView, QuorumTransitions, QuorumView
from binome.loops import run_periodic, stop_tasks
from binome.store import keys
from binome.store.client import Member, Store, StoreUnavailable
from binome.store.member import LeadershipPreference, PeerHealth, witness_transfer_target

log = logging.getLogger("binome.cluster")

LEADER_MOVE_TIMEOUT = 5.0   # etcd itself gives up a transfer after an election timeout


PROBE_RETRY = 0.1   # seconds between two quorum probes within one check's timeout


async def reaches_quorum(store: Store, timeout: float) -> bool:
    """One linearizable read answered within `timeout` seconds. A read refused at once
    is tried again until then: while etcd hands its leadership over (the leadership
    loop moves it to the preferred member, ~100 ms) the old leader refuses reads
    ("leader changed") rather than waiting, and one such answer must not make a
    quorate cluster report "no quorum" until the next check (seen in CI: `ha add`
    refused with `cluster not ready - no quorum?` just after a cluster formed)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        left = deadline - loop.time()
        if left <= 0:
            return False
        try:
            await store.linearizable_probe(timeout=left)
            return True
        except StoreUnavailable:
            if deadline - loop.time() <= PROBE_RETRY:
                return False
            await asyncio.sleep(PROBE_RETRY)


class ClusterMonitor:
    def __init__(self, local: LocalMember) -> None:
        self.local = local
        self.config = local.config
        self.clusterlog = local.clusterlog
        self.view = QuorumView()
        self.node_records: dict[str, dict[str, Any]] = {}
        self.cluster_doc: dict[str, Any] = {}
        # what the node publishes as its stats (the daemon sets its host summary)
        self.on_node_stats: Callable[[], dict[str, Any]] = dict
        # told of this node's announced quorum changes (quorate, votes, expected, and
        # whether a loss is "no quorum since the daemon started"); must not block
        self.on_quorum_change: Callable[[bool, int, int, bool], None] = lambda *_: None
        self.transitions = QuorumTransitions()
        self._loops: list[asyncio.Task] = []
        self._lease_id: int | None = None
        # the lease of this node's previous daemon, if it crashed while the lease lived
        # (ha.agent.lease_bridge kept it alive since): tried before granting a new one,
        # so the keys bound to it (alive, stats, a master's manager lock) live on
        self.adopt_lease: int | None = None
        self._peer_stores: dict[str, Store] = {}   # the member probes' channels
        self._refreshing = asyncio.Lock()   # one quorum view refresh at a time
        self._etcd_leader_id: int | None = None   # as the local member last saw it

    # ------------------------------------------------------------------ lifecycle
    def start_loops(self) -> None:
        self.transitions.start(time.monotonic())
        self._loops = [asyncio.create_task(self._quorum_loop(), name="quorum"),
                       asyncio.create_task(self._lease_loop(), name="lease"),
                       asyncio.create_task(self._leadership_loop(), name="etcd-leadership")]

    async def stop_loops(self) -> None:
        """Stop the loops; the lease is forgotten (not revoked: its keys expire with it)."""
        await stop_tasks(self._loops)
        self._loops = []
        self._lease_id = None

    async def stop(self) -> None:
        """On daemon stop: the loops, then the lease revoked, the probe channels closed."""
        lease_id = self._lease_id
        await self.stop_loops()
        store = self.local.store
        if store is not None and lease_id is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(store.revoke_lease(lease_id), 1.0)
        for peer in self._peer_stores.values():
            await peer.close()
        self._peer_stores = {}

    def forget_view(self) -> None:
        """The node left its cluster: nothing it saw of it holds any more."""
        self.view = QuorumView()
        self.transitions.reset()

    @property
    def lease_id(self) -> int | None:
        """This node's live lease (keys bound to it vanish when the node dies)."""
        return self._lease_id

    def node_online(self, name: str) -> bool:
        return any(m.name == name and m.online for m in self.view.members)

    # ------------------------------------------------------------------ quorum view
    async def _quorum_loop(self) -> None:
        async def step() -> None:
            await self.refresh_view()

        await run_periodic("quorum check", step, self.config.timers.quorum_check_interval,
                           logger=log)

    async def refresh_view(self) -> QuorumView:
        async with self._refreshing:
            return await self._refresh_view()

    async def _refresh_view(self) -> QuorumView:
        store = self.local.store
        assert store is not None
        t = self.config.timers
        # the view is as old as its first read: a member promoted while the probes ran
        # is not in it, so a reader asking for a view newer than that must not get it
        started = time.time()
        quorate = await reaches_quorum(store, t.quorum_check_timeout)
        members: list[Member] = []
        with contextlib.suppress(StoreUnavailable):
            members = await store.members(timeout=t.quorum_check_timeout)
        with contextlib.suppress(StoreUnavailable):
            records = await store.get_prefix(keys.NODES, serializable=True,
                                             timeout=t.quorum_check_timeout)
            self.node_records = {e.key[len(keys.NODES):]: e.value for e in records}
        with contextlib.suppress(StoreUnavailable):
            self.cluster_doc = await store.get_value(
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
        self.view = QuorumView(quorate=quorate, members=views, checked_at=started,
                               override=self.cluster_doc.get("expected_override"))
        at_start = self.transitions.never_quorate()
        if self.transitions.observe(quorate, time.monotonic()) is not None:
            await self._quorum_changed(quorate, at_start=at_start)
        if quorate:
            await self.clusterlog.flush()
        return self.view

    async def quorate_now(self) -> bool:
        """Whether the local member reaches a quorum now: one linearizable read, nothing
        else. `refresh_view` also asks every member for its status, and a member that
        died or was cut off costs it `quorum_check_timeout` (1 s) each time, so a caller
        that needs only quorum (a promotion's fencing) must not pay for the view."""
        store = self.local.store
        if store is None:
            return False
        return await reaches_quorum(store, self.config.timers.quorum_check_timeout)

    async def fresh_view(self, max_age: float = 0.5) -> QuorumView:
        """The quorum view, refreshed first if its reads began more than `max_age`
        seconds ago (0: after this call). Callers waiting together share one refresh."""
        wanted = time.time() - max_age
        if self.local.store is not None and self.view.checked_at < wanted:
            async with self._refreshing:
                if self.view.checked_at < wanted:   # not done meanwhile by another caller
                    await self._refresh_view()
        return self.view

    async def _probe_members(self, members: list[Member]) -> dict[int, bool]:
        t = self.config.timers

        async def probe(m: Member) -> tuple[int, bool]:
            if not m.client_urls:
                return m.id, False
            url = m.client_urls[0]
            peer = self._peer_stores.get(url)
            if peer is None:
                peer = self.local.new_store(url, timeout=t.quorum_check_timeout)
                self._peer_stores[url] = peer
            try:
                status = await peer.member_status(timeout=t.quorum_check_timeout)
            except StoreUnavailable:
                # a fresh channel next time: gRPC's reconnect backoff would otherwise
                # keep a returning member "offline" for many seconds
                self._peer_stores.pop(url, None)
                await peer.close()
                return m.id, False
            return m.id, status["member_id"] == m.id

        results = await asyncio.gather(*(probe(m) for m in members))
        return dict(results)

    async def _quorum_changed(self, quorate: bool, *, at_start: bool = False) -> None:
        v = self.view
        try:
            self.on_quorum_change(quorate, v.total_votes, v.expected_votes, at_start)
        except Exception:   # a listener's bug must not stop the quorum loop
            log.exception("quorum change listener failed")
        if quorate:
            msg = f"quorum regained: {v.total_votes} of {v.expected_votes} votes"
            await self.clusterlog.write(f"node {self.config.name}: {msg}", tag="quorum")
        else:
            msg = (f"quorum lost: {v.total_votes} of {v.expected_votes} votes, "
                   f"{v.quorum} needed"
                   + (f" (none since binomed started {self.transitions.grace:.0f} s ago)"
                      if at_start else ""))
            await self.clusterlog.write(f"node {self.config.name}: {msg}", tag="quorum",
                                        pri="warning")

    # ------------------------------------------------------------------ node lease
    async def _lease_loop(self) -> None:
        t = self.config.timers
        stats_every = max(1, round(5.0 / t.keepalive_interval))
        trim_every = max(1, round(300.0 / t.keepalive_interval))
        rounds = itertools.count()

        async def step() -> None:
            n = next(rounds)   # counts failed rounds too
            await self._keepalive_once(publish_stats=(n % stats_every == 0))
            if n % trim_every == trim_every - 1:
                await self.clusterlog.trim()

        await run_periodic("lease keepalive", step, t.keepalive_interval, logger=log,
                           quiet=(StoreUnavailable,))

    async def _keepalive_once(self, publish_stats: bool) -> None:
        store = self.local.store
        assert store is not None
        t = self.config.timers
        if self._lease_id is not None:
            ttl = await store.refresh_lease(self._lease_id, timeout=t.keepalive_interval)
            if ttl <= 0:
                log.warning("node lease %x expired; granting a new one", self._lease_id)
                self._lease_id = None
        if self._lease_id is None and self.adopt_lease is not None:
            # unreachable store: raised, and tried again next round with the same lease
            ttl = await store.refresh_lease(self.adopt_lease, timeout=t.keepalive_interval)
            candidate, self.adopt_lease = self.adopt_lease, None
            if ttl > 0:
                self._lease_id = candidate
                log.info("node lease %x of the previous daemon adopted (%d s left)",
                         candidate, ttl)
                publish_stats = True
            else:
                log.info("node lease %x of the previous daemon has expired", candidate)
        if self._lease_id is None:
            self._lease_id = await store.grant_lease(t.lease_ttl)
            await store.put(keys.alive(self.config.name),
                            {"node": self.config.name, "since": time.time()},
                            lease=self._lease_id)
            publish_stats = True
        if publish_stats:
            await store.put(keys.NODE_STATS + self.config.name, self.on_node_stats(),
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

        async def step() -> None:
            try:
                await self._leadership_once(policy, peers)
            except StoreUnavailable:
                self._etcd_leader_id = None
                raise

        try:
            await run_periodic("etcd leadership check", step,
                               lambda: self.config.timers.quorum_check_interval, logger=log,
                               quiet=(StoreUnavailable,))
        finally:
            self._etcd_leader_id = None
            for peer in peers.values():
                await peer.close()

    async def _leadership_once(self, policy: LeadershipPreference,
                               peers: dict[str, Store]) -> None:
        store = self.local.store
        assert store is not None
        t = self.config.timers
        local = await store.member_status(timeout=t.quorum_check_timeout)
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
        members = await store.members(timeout=t.quorum_check_timeout)

        async def status(m: Member) -> dict[str, Any] | None:
            if m.id == me:
                return local
            if not m.client_urls:
                return None
            url = m.client_urls[0]
            peer = peers.get(url)
            if peer is None:
                peer = peers[url] = self.local.new_store(url, timeout=t.quorum_check_timeout)
            try:
                return await peer.member_status(timeout=t.quorum_check_timeout)
            except StoreUnavailable:
                # a fresh channel next time (gRPC's reconnect backoff is long)
                peers.pop(url, None)
                await peer.close()
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
            await store.move_leader(target, timeout=LEADER_MOVE_TIMEOUT)
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
