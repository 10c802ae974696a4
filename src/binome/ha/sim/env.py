"""`SimEnv`: the `ha.env.Env` of one simulated node, over the World and its virtual etcd.

It implements the Env contract the way the etcd adapter must (docs/ha.md):
reads and writes need quorum (else `EnvUnavailable`), documents are JSON in
the store, every write is a compare-and-swap (`Conflict`), manager status
writes also compare the manager lock, which is a key bound to the node's
lease. One `SimEnv` exists per node and daemon (`crm` or `lrm`) so log lines
say who spoke.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING

from binome.ha.env import Conflict, Env, EnvUnavailable
from binome.ha.model import (
    FenceConfirmation,
    FenceStatus,
    GroupConfig,
    HaSettings,
    LeaseInfo,
    LrmResult,
    LrmStatus,
    ManagerStatus,
    NodeFacts,
    NodeInfo,
    ResourceConfig,
)
from binome.ha.rules import Rule, decode_rules
from binome.ha.sim import keys
from binome.ha.sim.clock import ms

if TYPE_CHECKING:
    from binome.ha.sim.world import World


class SimEnv:
    def __init__(self, world: World, node: str, role: str) -> None:
        self.world = world
        self._node = node
        self.role = role
        self._hw = world.nodes[node]

    # ------------------------------------------------------------ ClusterEnv

    @property
    def node(self) -> str:
        return self._node

    def now(self) -> float:
        return self.world.q.now / 1000

    def log(self, level: str, message: str) -> None:
        self.world.log(level, f"{self._node}/{self.role}", message)

    def notify(self, kind: str, **fields: str | int) -> None:
        # kept apart from the log lines, so the golden scenarios' logs do not change
        self.world.notifications.append((self.world.q.now / 1000, self._node, kind,
                                         dict(fields)))

    def quorate(self) -> bool:
        return self.world.etcd.quorate(self._node)

    def _need_quorum(self) -> None:
        if not self.quorate():
            raise EnvUnavailable(f"{self._node}: no quorum")

    def cluster_nodes(self) -> dict[str, NodeInfo]:
        return {n.name: NodeInfo(n.name, watchdog=n.watchdog,
                                 fence_device=n.fence_device is not None)
                for n in self.world.cluster.nodes}

    def read_manager_status(self) -> tuple[ManagerStatus, int]:
        self._need_quorum()
        data, rev = self.world.etcd.get(keys.MANAGER_STATUS)
        return ManagerStatus.from_dict(data), rev

    def read_settings(self) -> HaSettings:
        self._need_quorum()
        return HaSettings.from_dict(self.world.etcd.get(keys.SETTINGS)[0])

    def service_config_node(self, sid: str) -> str | None:
        self._need_quorum()
        return self.world.config_owner(sid)

    def replica_states(self, sid: str) -> dict[str, dict[str, str]]:
        self._need_quorum()
        return self.world.replicas.states(sid)

    # ------------------------------------------------------------ CrmEnv

    def _lock_is_mine(self) -> bool:
        return self.world.holds_lock(self._node)

    def try_manager_lock(self) -> bool:
        self._need_quorum()
        etcd = self.world.etcd
        if self._lock_is_mine():
            return True
        if self._hw.lease_id is None or self._hw.lease_id not in etcd.leases:
            return False
        rev = etcd.txn({keys.MANAGER_LOCK: 0}, {keys.MANAGER_LOCK: self._node},
                       lease=self._hw.lease_id)
        return rev is not None

    def release_manager_lock(self) -> None:
        self._need_quorum()
        if self._lock_is_mine():
            self.world.etcd.txn({}, deletes=[keys.MANAGER_LOCK])
            self.world.wake_all("crm")

    def write_manager_status(self, status: ManagerStatus, revision: int,
                             done_commands: Sequence[str] = ()) -> int:
        self._need_quorum()
        if not self._lock_is_mine():
            raise Conflict("the manager lock is no longer ours")
        etcd = self.world.etcd
        old = ManagerStatus.from_dict(etcd.get(keys.MANAGER_STATUS)[0])
        rev = etcd.txn({keys.MANAGER_STATUS: revision}, {keys.MANAGER_STATUS: status.to_dict()},
                       deletes=done_commands)
        if rev is None:
            raise Conflict("manager status changed since it was read")
        self.world.invariants.manager_status_written(old, status)
        self.world.record_availability(status)
        self.world.wake_all("lrm")
        return rev

    def read_resources(self) -> dict[str, ResourceConfig]:
        self._need_quorum()
        return self.world.resources()

    def read_groups(self) -> dict[str, GroupConfig]:
        self._need_quorum()
        data = self.world.etcd.get(keys.GROUPS)[0] or {}
        return {name: GroupConfig.from_dict(name, g) for name, g in data.items()}

    def read_rules(self) -> dict[str, Rule]:
        self._need_quorum()
        return decode_rules(self.world.etcd.get(keys.RULES)[0] or {})

    def read_commands(self) -> list[tuple[str, str]]:
        self._need_quorum()
        return [(k, v) for k, (v, _rev) in self.world.etcd.prefix(keys.COMMANDS).items()]

    def node_facts(self) -> dict[str, NodeFacts]:
        self._need_quorum()
        etcd = self.world.etcd
        out = {}
        for name in self.world.nodes:
            lease = etcd.lease_of(name)
            if lease is not None:
                # the store's time of the latest renewal (not expiry - TTL: etcd moves
                # expiries forward on a leader change, which would fake a renewal)
                out[name] = NodeFacts(name, True, last_renewal=lease.renewed / 1000)
            else:
                gone = etcd.lease_gone.get(name)
                out[name] = NodeFacts(name, False, lease_gone_at=gone[0] / 1000 if gone else None,
                                      lease_expired=bool(gone and gone[1]))
        return out

    def read_lrm_statuses(self) -> dict[str, LrmStatus]:
        self._need_quorum()
        return {data["node"]: LrmStatus.from_dict(data)
                for data, _rev in self.world.etcd.prefix(keys.LRM).values()}

    def move_service_config(self, sid: str, from_node: str, to_node: str) -> None:
        self._need_quorum()
        if not self._lock_is_mine():
            raise Conflict("the manager lock is no longer ours")
        self.world.invariants.ha_action(self._node, f"move config of {sid}")
        etcd = self.world.etcd
        owner, rev = etcd.get(keys.config(sid))
        if owner != from_node:
            raise Conflict(f"config of {sid} is on {owner}, not {from_node}")
        if from_node != to_node:
            self.world.invariants.recovered(sid, from_node, to_node)
            etcd.txn({keys.config(sid): rev}, {keys.config(sid): to_node})

    def fence(self, node: str) -> str:
        self._need_quorum()
        if not self._lock_is_mine():
            raise Conflict("the manager lock is no longer ours")
        self.world.invariants.ha_action(self._node, f"fence {node}")
        lease = self.world.etcd.lease_of(node)
        return self.world.fence_request(node, self._node,
                                        lease.renewed if lease is not None else None)

    def fence_status(self, node: str) -> FenceStatus | None:
        dev = self.world.nodes[node].fence
        return dev.latest if dev else None

    def manager_lock_holder(self) -> str | None:
        self._need_quorum()
        holder = self.world.etcd.get(keys.MANAGER_LOCK)[0]
        return holder if isinstance(holder, str) else None

    def probe_power(self, node: str) -> str:
        self._need_quorum()
        self.world.invariants.ha_action(self._node, f"probe {node}")
        lease = self.world.etcd.lease_of(node)
        return self.world.probe_request(node, self._node,
                                        lease.renewed if lease is not None else None,
                                        as_master=self._lock_is_mine())

    def power_probe_status(self, node: str) -> FenceStatus | None:
        dev = self.world.nodes[node].fence
        return dev.probe.get(self._node) if dev else None

    def fence_confirmations(self) -> dict[str, FenceConfirmation]:
        self._need_quorum()
        out = {}
        for data, _rev in self.world.etcd.prefix(keys.FENCE_CONFIRM).values():
            conf = FenceConfirmation.from_dict(data)
            out[conf.node] = conf
        return out

    # ------------------------------------------------------------ LrmEnv

    def own_lease(self) -> LeaseInfo:
        hw = self._hw
        valid = hw.lease_id is not None and hw.lease_id in self.world.etcd.leases
        return LeaseInfo(valid, None if hw.renewed_at is None else hw.renewed_at / 1000)

    def read_lrm_status(self) -> tuple[LrmStatus | None, int]:
        self._need_quorum()
        data, rev = self.world.etcd.get(keys.lrm(self._node))
        return (LrmStatus.from_dict(data) if data else None), rev

    def write_lrm_status(self, status: LrmStatus, revision: int) -> int:
        self._need_quorum()
        rev = self.world.etcd.txn({keys.lrm(self._node): revision},
                                  {keys.lrm(self._node): status.to_dict()})
        if rev is None:
            raise Conflict("lrm status changed since it was read")
        self.world.wake_all("crm")
        return rev

    def watchdog_arm(self, deadline: float, sids: Collection[str]) -> None:
        self.world.watchdog_arm(self._hw, ms(deadline), frozenset(sids))

    def watchdog_disarm(self) -> None:
        self._hw.watchdog.armed = False

    def watchdog_fired(self) -> bool:
        return self._hw.watchdog.fired

    def shutdown_request(self) -> str | None:
        return self._hw.shutdown_request

    def shutdown_ready(self) -> None:
        self.world.shutdown_ready(self._hw)

    def running_guests(self) -> set[str]:
        return self.world.guests.running_here(self._node)

    def exec_start(self, sid: str, uid: str) -> None:
        self.world.guests.start(self._hw, sid, uid)

    def exec_stop(self, sid: str, uid: str) -> None:
        self.world.guests.stop(self._hw, sid, uid)

    def exec_migrate(self, sid: str, uid: str, target: str) -> None:
        self.world.guests.migrate(self._hw, sid, uid, target)

    def exec_relocate(self, sid: str, uid: str, target: str) -> None:
        self.world.guests.relocate(self._hw, sid, uid, target)

    def jobs(self) -> dict[str, str]:
        return {uid: job.sid for uid, job in sorted(self._hw.jobs.items())}

    def collect_results(self) -> dict[str, LrmResult]:
        results, self._hw.results = self._hw.results, {}
        return results


# mypy checks here that SimEnv implements the whole Env protocol (the etcd adapter and the
# unit tests' fake are checked in tests/unit/test_env_protocols.py).
_SIM_ENV_IS_AN_ENV: type[Env] = SimEnv
