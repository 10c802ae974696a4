"""`EtcdEnv`: the `ha.env.Env` of one daemon (CRM or LRM) of one node, over etcd.

The CRM and the LRM are synchronous; etcd is async. The adapter is a
*snapshot-then-act* wrapper (docs/ha.md section 8):

1. `await refresh()` reads, in one linearizable range, every key under
   `/binome/ha/` plus the guest owners (`/binome/vmids/`); if that fails the
   node has no quorum and every read of the round raises `EnvUnavailable`;
   the CRM side also takes the manager lock here (a key created with this
   node's lease, `create_revision == 0`);
2. the synchronous round runs against the snapshot; writes are queued;
3. `await commit()` applies them as etcd transactions with the
   compare-and-swap rules of `ha/env.py`: the manager status (with the
   config moves and the deletion of consumed commands, all in one
   transaction) compares the status revision read *and* the manager lock
   key's revision and lease; an LRM status compares its own revision. A
   config move's parts come from `guest.configs.plan_move`, the one
   definition of a move.

Node liveness: each node's HA service rewrites `/binome/ha/heartbeat/<node>`
(bound to its lease) after every successful lease renewal; the CRM takes
the local time at which it first *saw* a new revision of that key as
`last_renewal` (never later in reality than what it reports, so `fence_delay`
is never shortened). The key vanishing means the lease is gone: expired,
unless the node wrote `/binome/ha/released/<node>` for that lease first.

Volumes: the CRM's snapshot also ranges over `storage.placement.PREFIXES` (today
the replicated volumes' records, fencing marks and every node's published state)
and reads them with `storage.placement.replica_snapshot` (a copy recorded
Outdated is Outdated whatever its node last said); `replica_states(sid)` answers
from it. HA knows no storage backend's keys.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Any

from binome.fence.devices import device_nodes
from binome.guest import configs
from binome.ha.agent.clock_skew import SkewEstimator
from binome.ha.agent.fencer import Guard
from binome.ha.config import decode_commands, decode_groups, decode_resources, decode_settings
from binome.ha.env import Conflict, EnvUnavailable
from binome.ha.model import (
    FenceConfirmation,
    FenceProof,
    FenceStatus,
    GroupConfig,
    HaSettings,
    LeaseInfo,
    LrmResult,
    LrmStatus,
    ManagerStatus,
    NodeFacts,
    NodeInfo,
    NodeState,
    ResourceConfig,
    ServiceState,
)
from binome.ha.rules import Rule, decode_rules
from binome.storage import placement
from binome.store import keys
from binome.store.client import LeasedEntry, Store, StoreUnavailable

if TYPE_CHECKING:
    from binome.ha.agent.agent import HaAgent


log = logging.getLogger("binome.ha")

Raw = LeasedEntry

# what `recovery` hands a service to once a node took it over (transitions._recovery)
RECOVERED_STATES = (ServiceState.STARTING, ServiceState.REQUEST_STOP, ServiceState.STARTED)
# the reason `nodes.fence_nodes` gives a node it declares fenced -> the proof's name
FENCED_BY = {f"fenced by {proof}": str(proof) for proof in FenceProof}


def vmid_of(sid: str) -> int | None:
    kind, _, rest = sid.partition(":")
    if kind == "vm" and rest.isdigit():
        return int(rest)
    return None


class LivenessTracker:
    """The CRM's view of every node's heartbeat key, in its own monotonic clock."""

    def __init__(self) -> None:
        # node -> (mod revision, first seen at, lease id)
        self.seen: dict[str, tuple[int, float, int]] = {}
        self.gone: dict[str, tuple[float, bool]] = {}  # node -> (seen gone at, expired)
        # node -> when its latest renewal was first seen, kept after the node is lost:
        # its last sign of life, where the availability history starts its outages
        self.last_renewal: dict[str, float] = {}
        self.clocks = SkewEstimator()   # the nodes' wall clocks compared with this one

    def observe(self, now: float, heartbeats: dict[str, Raw], released: dict[str, Raw],
                wall: float | None = None) -> None:
        wall = time.time() if wall is None else wall
        for node, raw in heartbeats.items():
            self.gone.pop(node, None)
            old = self.seen.get(node)
            if old is None or old[0] != raw.mod_revision:
                self.seen[node] = (raw.mod_revision, now, raw.lease)
                self.last_renewal[node] = now
                sent = raw.value.get("time") if isinstance(raw.value, dict) else None
                if isinstance(sent, int | float) and old is not None:
                    # (not the first sight: that one may have been written long ago)
                    self.clocks.observe(node, float(sent), wall)
        for node in list(self.seen):
            if node not in heartbeats:
                rel = released.get(node)
                # released: the node announced the revoke of exactly the lease it had
                expired = not (rel and isinstance(rel.value, dict)
                               and rel.value.get("lease") == self.seen[node][2])
                self.gone[node] = (now, expired)
                del self.seen[node]
                self.clocks.forget(node)

    def facts(self, node: str, heartbeats: dict[str, Raw]) -> NodeFacts:
        if node in heartbeats and node in self.seen:
            return NodeFacts(node, True, last_renewal=self.seen[node][1])
        gone = self.gone.get(node)
        if gone is not None:
            return NodeFacts(node, False, lease_gone_at=gone[0], lease_expired=gone[1])
        return NodeFacts(node, False)


class EtcdEnv:
    """One daemon's Env (`role` is `crm` or `lrm`); see the module docstring."""

    def __init__(self, hub: HaAgent, role: str) -> None:
        self.hub = hub
        self.role = role
        self._ok = False
        self._entries: dict[str, Raw] = {}
        self._owners: dict[int, str] = {}
        # vmid -> volume -> node -> effective disk state (CRM snapshot only)
        self._replicas: dict[int, dict[str, dict[str, str]]] = {}
        self._lock_mine = False
        # queued writes
        self._status_write: tuple[ManagerStatus, int, list[str]] | None = None
        self._moves: list[tuple[int, str, str]] = []
        self._lock_release = False
        self._lrm_write: LrmStatus | None = None
        # notifications of this round's decisions: sent only once they are committed
        self._notes: list[tuple[str, dict[str, str | int]]] = []
        self._committed: ManagerStatus | None = None
        # the LRM's CAS: tokens handed to the Lrm, the real revision compared in etcd
        self._lrm_token = 0
        self._lrm_real = 0
        self.liveness = LivenessTracker()

    # ------------------------------------------------------------ snapshot / commit

    async def refresh(self) -> bool:
        """Read the round's snapshot; False (and every read unavailable) without quorum.

        A prefix read here must also be in `ha.agent.wake.WATCH_PREFIXES`, or its
        changes wait for the next periodic round."""
        hub = self.hub
        store = hub.store
        self._ok = False
        self._status_write, self._moves, self._lrm_write = None, [], None
        self._lock_release = False
        self._notes = []
        self._committed = None
        if store is None:
            return False
        timeout = hub.io_timeout
        try:
            entries, _rev = await store.range_leased(keys.HA, timeout)
            if self.role == "crm":
                entries = await self._take_lock(store, entries, timeout)
            vmids, _ = await store.range_leased(keys.VMIDS, timeout)
            volumes: list[Raw] = []
            if self.role == "crm":
                for prefix in placement.PREFIXES:
                    entries_of_prefix, _ = await store.range_leased(prefix, timeout)
                    volumes += entries_of_prefix
        except StoreUnavailable:
            return False
        self._entries = {e.key: e for e in entries}
        self._owners = {}
        for e in vmids:
            tail = e.key[len(keys.VMIDS):]
            if tail.isdigit() and isinstance(e.value, dict) and e.value.get("node"):
                self._owners[int(tail)] = e.value["node"]
        self._replicas = placement.replica_snapshot(volumes)
        lock = self._entries.get(keys.HA_MANAGER_LOCK)
        self._lock_mine = bool(lock and lock.value == hub.node and hub.lease_id
                               and lock.lease == hub.lease_id)
        if self.role == "crm":
            self.liveness.observe(self.now(), self._prefix(keys.HA_HEARTBEAT),
                                  self._prefix(keys.HA_RELEASED))
        self._ok = True
        return True

    async def _take_lock(self, store: Store, entries: list[Raw], timeout: float) -> list[Raw]:
        hub = self.hub
        if (any(e.key == keys.HA_MANAGER_LOCK for e in entries) or not hub.lease_id
                or not hub.lease_valid):
            return entries
        rev = await store.txn([(keys.HA_MANAGER_LOCK, "create", 0)],
                        {keys.HA_MANAGER_LOCK: (hub.node, hub.lease_id)}, (), timeout)
        if rev is None:
            return entries
        return [*entries, Raw(keys.HA_MANAGER_LOCK, hub.node, rev, hub.lease_id)]

    async def commit(self) -> list[str]:
        """Apply the queued writes; returns what was refused (Conflict messages)."""
        store = self.hub.store
        errors: list[str] = []
        if store is None:
            return errors
        timeout = self.hub.io_timeout
        notes, self._notes = self._notes, []
        try:
            if self._status_write is not None or self._moves:
                if await self._commit_crm(store, timeout, errors):
                    # the decisions are the cluster's now: announce them, once (a lost
                    # compare-and-swap or an unknown outcome announces nothing; the next
                    # master decides again from what was stored)
                    for kind, fields in notes:
                        self.hub.notify(kind, **fields)
            if self._lock_release:
                lock = self._entries.get(keys.HA_MANAGER_LOCK)
                if lock is not None and self._lock_mine:
                    await store.txn([(keys.HA_MANAGER_LOCK, "mod", lock.mod_revision)], {},
                              [keys.HA_MANAGER_LOCK], timeout)
            if self._lrm_write is not None:
                key = keys.ha_lrm(self.hub.node)
                rev = await store.txn([(key, "mod", self._lrm_real)],
                                {key: (self._lrm_write.to_dict(), 0)}, (), timeout)
                if rev is None:
                    self._lrm_token = -1   # the Lrm's next write fails: it re-reads
                    errors.append("lrm status changed since it was read")
                else:
                    self._lrm_real = rev
        except StoreUnavailable as exc:
            errors.append(f"store unavailable: {exc}")
            if self._lrm_write is not None:
                self._lrm_token = -1
        finally:
            self._status_write, self._moves, self._lrm_write = None, [], None
            self._lock_release = False
        return errors

    async def _commit_crm(self, store: Store, timeout: float, errors: list[str]) -> bool:
        """The manager status and config moves in one transaction; True if committed."""
        lock = self._entries.get(keys.HA_MANAGER_LOCK)
        if lock is None or not self._lock_mine:
            errors.append("the manager lock is no longer ours")
            return False
        compare = [(keys.HA_MANAGER_LOCK, "mod", lock.mod_revision)]
        puts: dict[str, tuple[Any, int]] = {}
        deletes: list[str] = []
        for vmid, src, dst in self._moves:
            # one move's parts (guest.configs); an unknown outcome of this transaction
            # is resolved by the next round's quorum snapshot of the owners
            try:
                move = await configs.plan_move(store, vmid, src, dst)
            except configs.MoveRefused:
                errors.append(f"config of vm:{vmid} is not on {src}")
                return False
            compare += move.compare
            puts.update(move.puts)
            deletes += move.deletes
        if self._status_write is not None:
            status, revision, done = self._status_write
            compare.append((keys.HA_MANAGER_STATUS, "mod", revision))
            puts[keys.HA_MANAGER_STATUS] = (status.to_dict(), 0)
            deletes += done
        rev = await store.txn(compare, puts, deletes, timeout)
        if rev is None:
            errors.append("manager status, lock or a guest config changed since it was read")
            return False
        if self._status_write is not None:
            self._committed = self._status_write[0]
            try:
                self._count_ha_events(self._status_write[0])
            except Exception:   # counting for the metrics must never fail a CRM round
                log.exception("HA metrics: counting the round's events failed")
        return True

    def _count_ha_events(self, written: ManagerStatus) -> None:
        """After a committed status: the fences and failovers this round completed, for
        the metrics (`HaStats`: counted by the master that committed them). A loss, its
        fence and the recovery may all happen within one round: they are told apart by
        comparing the committed document with the one the round read."""
        before = ManagerStatus.from_dict(self._value(keys.HA_MANAGER_STATUS, {}))
        now, stats = time.monotonic(), self.hub.stats
        fenced_now = set()
        for node, rec in written.node_status.items():
            proof = FENCED_BY.get(rec.reason or "")
            old = before.node_status.get(node)
            if proof is not None and (old is None or (old.reason, old.since)
                                      != (rec.reason, rec.since)):
                stats.node_fenced(node, proof, now)
                fenced_now.add(node)
        for sid, sd in written.service_status.items():
            old_sd = before.service_status.get(sid)
            if (old_sd is not None and sd.state in RECOVERED_STATES
                    and (old_sd.state in (ServiceState.FENCE, ServiceState.RECOVERY)
                         or old_sd.node in fenced_now)):
                stats.recovery_assigned(sid, old_sd.node, sd.node, now)
        stats.services_seen({sid: (str(sd.state), sd.node)
                             for sid, sd in written.service_status.items()}, now)
        stats.nodes_seen({n: r.state in (NodeState.UNKNOWN, NodeState.FENCE)
                          and FENCED_BY.get(r.reason or "") is None
                          for n, r in written.node_status.items()}, now)
        for node, rec in written.node_status.items():
            if rec.state == NodeState.ONLINE:
                stats.fenced_loss_at.pop(node, None)

    # ------------------------------------------------------------ helpers

    def _need(self) -> None:
        if not self._ok:
            raise EnvUnavailable(f"{self.hub.node}: no quorum")

    def _value(self, key: str, default: Any = None) -> Any:
        raw = self._entries.get(key)
        return default if raw is None or raw.value is None else raw.value

    def _prefix(self, prefix: str) -> dict[str, Raw]:
        return {k[len(prefix):]: r for k, r in self._entries.items() if k.startswith(prefix)}

    # ------------------------------------------------------------ ClusterEnv

    @property
    def node(self) -> str:
        return self.hub.node

    def now(self) -> float:
        return time.monotonic()

    def log(self, level: str, message: str) -> None:
        self.hub.log(level, f"{self.hub.node}/{self.role}", message)

    def notify(self, kind: str, **fields: str | int) -> None:
        self._notes.append((kind, fields))

    def quorate(self) -> bool:
        return self._ok

    def cluster_nodes(self) -> dict[str, NodeInfo]:
        fence = device_nodes(self._entries)
        return {name: NodeInfo(name, watchdog=True, fence_device=name in fence)
                for name in self.hub.guest_nodes()}

    def read_manager_status(self) -> tuple[ManagerStatus, int]:
        self._need()
        raw = self._entries.get(keys.HA_MANAGER_STATUS)
        if raw is None:
            return ManagerStatus(), 0
        return ManagerStatus.from_dict(raw.value), raw.mod_revision

    def read_settings(self) -> HaSettings:
        self._need()
        return decode_settings(self._value(keys.HA_SETTINGS))

    def service_config_node(self, sid: str) -> str | None:
        self._need()
        vmid = vmid_of(sid)
        return None if vmid is None else self._owners.get(vmid)

    def replica_states(self, sid: str) -> dict[str, dict[str, str]]:
        self._need()
        vmid = vmid_of(sid)
        vols = self._replicas.get(vmid) if vmid is not None else None
        return {vol: dict(nodes) for vol, nodes in (vols or {}).items()}

    # ------------------------------------------------------------ CrmEnv

    def try_manager_lock(self) -> bool:
        self._need()
        return self._lock_mine

    def release_manager_lock(self) -> None:
        self._need()
        self._lock_release = True

    def write_manager_status(self, status: ManagerStatus, revision: int,
                             done_commands: Sequence[str] = ()) -> int:
        self._need()
        if not self._lock_mine:
            raise Conflict("the manager lock is no longer ours")
        raw = self._entries.get(keys.HA_MANAGER_STATUS)
        if revision != (raw.mod_revision if raw else 0):
            raise Conflict("manager status changed since it was read")
        self._status_write = (ManagerStatus.from_dict(status.to_dict()), revision,
                              list(done_commands))
        return revision

    def read_resources(self) -> dict[str, ResourceConfig]:
        self._need()
        return decode_resources(self._value(keys.HA_RESOURCES, {}))

    def read_groups(self) -> dict[str, GroupConfig]:
        self._need()
        return decode_groups(self._value(keys.HA_GROUPS, {}))

    def read_rules(self) -> dict[str, Rule]:
        self._need()
        return decode_rules(self._value(keys.HA_RULES, {}))

    def read_commands(self) -> list[tuple[str, str]]:
        self._need()
        return decode_commands((k, r.value) for k, r in self._entries.items())

    def node_facts(self) -> dict[str, NodeFacts]:
        self._need()
        beats = self._prefix(keys.HA_HEARTBEAT)
        return {n: self.liveness.facts(n, beats) for n in self.hub.guest_nodes()}

    def read_lrm_statuses(self) -> dict[str, LrmStatus]:
        self._need()
        out = {}
        for node, raw in self._prefix(keys.HA_LRM).items():
            if isinstance(raw.value, dict):
                out[node] = LrmStatus.from_dict(raw.value)
        return out

    def move_service_config(self, sid: str, from_node: str, to_node: str) -> None:
        self._need()
        if not self._lock_mine:
            raise Conflict("the manager lock is no longer ours")
        vmid = vmid_of(sid)
        if vmid is None or self._owners.get(vmid) != from_node:
            raise Conflict(f"config of {sid} is on {self._owners.get(vmid or -1)}, "
                           f"not {from_node}")
        if from_node != to_node:
            self._moves.append((vmid, from_node, to_node))
            self._owners[vmid] = to_node   # the rest of the round sees the move

    def fence(self, node: str) -> str:
        self._need()
        lock = self._entries.get(keys.HA_MANAGER_LOCK)
        if not self._lock_mine or lock is None:
            raise Conflict("the manager lock is no longer ours")
        # what this decision was taken on: the fencer re-checks both before it acts
        beat = self._entries.get(keys.ha_heartbeat(node))
        return self.hub.fencer.request(node, Guard(
            lock.mod_revision, beat.mod_revision if beat is not None else None))

    def manager_lock_holder(self) -> str | None:
        lock = self._entries.get(keys.HA_MANAGER_LOCK) if self._ok else None
        return lock.value if lock is not None and isinstance(lock.value, str) else None

    def probe_power(self, node: str) -> str:
        self._need()
        lock = self._entries.get(keys.HA_MANAGER_LOCK)
        beat = self._entries.get(keys.ha_heartbeat(node))
        # what the decision was taken on: the fencer re-checks it around the status read
        return self.hub.fencer.probe(
            node, lock.mod_revision if self._lock_mine and lock is not None else None,
            beat.mod_revision if beat is not None else None,
            beat.lease if beat is not None else None)

    def power_probe_status(self, node: str) -> FenceStatus | None:
        return self.hub.fencer.probe_status(node)

    def committed_status(self) -> ManagerStatus | None:
        """The manager status as committed: what this round's commit wrote, else what the
        snapshot read (None without quorum). For the availability history."""
        if self._committed is not None:
            return self._committed
        if not self._ok:
            return None
        return ManagerStatus.from_dict(self._value(keys.HA_MANAGER_STATUS, {}))

    def availability_target(self) -> float | None:
        return decode_settings(self._value(keys.HA_SETTINGS)).availability_target \
            if self._ok else None

    def availability_targets(self) -> dict[str, float]:
        """The services' own availability targets (a resource option), by sid."""
        if not self._ok:
            return {}
        return {sid: res.availability_target for sid, res in self.read_resources().items()
                if res.availability_target is not None}

    def lock_revision(self) -> int | None:
        """The manager lock's revision when this node held it in the last snapshot."""
        lock = self._entries.get(keys.HA_MANAGER_LOCK)
        return lock.mod_revision if self._ok and self._lock_mine and lock else None

    def fence_records(self) -> dict[str, object]:
        """`/binome/ha/fence_requests/<node>` as of the last snapshot (the fencer's debts)."""
        if not self._ok:
            return {}
        return {node: raw.value for node, raw in self._prefix(keys.HA_FENCE_REQUESTS).items()}

    def fence_status(self, node: str) -> FenceStatus | None:
        return self.hub.fencer.status(node)

    def fence_confirmations(self) -> dict[str, FenceConfirmation]:
        """`binome fence NODE --confirm-off` (api/methods/fence.py); malformed ones are ignored."""
        self._need()
        out = {}
        for node, raw in self._prefix(keys.HA_FENCE_CONFIRM).items():
            try:
                out[node] = FenceConfirmation.from_dict(raw.value)
            except (KeyError, TypeError, ValueError, AttributeError):
                continue
        return out

    # ------------------------------------------------------------ LrmEnv

    def own_lease(self) -> LeaseInfo:
        return LeaseInfo(self.hub.lease_valid, self.hub.renewed_at)

    def read_lrm_status(self) -> tuple[LrmStatus | None, int]:
        self._need()
        raw = self._entries.get(keys.ha_lrm(self.hub.node))
        self._lrm_real = raw.mod_revision if raw else 0
        self._lrm_token = max(self._lrm_token, 0) + 1
        status = LrmStatus.from_dict(raw.value) if raw and isinstance(raw.value, dict) else None
        return status, self._lrm_token

    def write_lrm_status(self, status: LrmStatus, revision: int) -> int:
        self._need()
        if revision != self._lrm_token or self._lrm_token <= 0:
            raise Conflict("lrm status changed since it was read")
        self._lrm_write = status
        self._lrm_token += 1
        return self._lrm_token

    def watchdog_arm(self, deadline: float, sids: Collection[str]) -> None:
        self.hub.watchdog_arm(deadline, sids)

    def watchdog_disarm(self) -> None:
        self.hub.watchdog_disarm()

    def watchdog_fired(self) -> bool:
        return self.hub.watchdog_fired()

    def shutdown_request(self) -> str | None:
        return self.hub.shutdown_request()   # logind, or systemd asked on SIGTERM

    def shutdown_ready(self) -> None:
        self.hub.shutdown_ready()

    def resources_doc(self) -> dict[str, Any]:
        """The raw resource configs of the last snapshot (extra keys included)."""
        return dict(self._value(keys.HA_RESOURCES, {}) or {})

    def ha_sids(self) -> set[str]:
        return set(self._value(keys.HA_RESOURCES, {}) or {})

    def running_guests(self) -> set[str]:
        managed = self.ha_sids() if self._ok else None
        # a guest rebooted through the API counts as running between its stop and start
        return self.hub.executor.running(managed) | {
            f"vm:{v}" for v in self.hub.rebooting_vmids if f"vm:{v}" in (managed or ())}

    def exec_start(self, sid: str, uid: str) -> None:
        self.hub.executor.start(sid, uid, self._owners.get(vmid_of(sid) or -1))

    def exec_stop(self, sid: str, uid: str) -> None:
        self.hub.executor.stop(sid, uid)

    def exec_migrate(self, sid: str, uid: str, target: str) -> None:
        self.hub.executor.migrate(sid, uid, target)

    def exec_relocate(self, sid: str, uid: str, target: str) -> None:
        self.hub.executor.relocate(sid, uid, target)

    def jobs(self) -> dict[str, str]:
        return self.hub.executor.jobs()

    def collect_results(self) -> dict[str, LrmResult]:
        return self.hub.executor.collect()

