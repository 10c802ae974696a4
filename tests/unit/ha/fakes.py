"""An in-memory Env for unit tests of the CRM, the manager and the LRM.

Every field is plain data a test sets directly; every side effect is recorded
in `calls` in order, so tests can assert on what happened and in which order.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from binome.ha.env import Conflict, EnvUnavailable
from binome.ha.model import (
    FenceConfirmation,
    FenceState,
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


@dataclass
class FakeEnv:
    name: str = "n1"
    t: float = 100.0
    is_quorate: bool = True
    nodes: dict[str, NodeInfo] = field(default_factory=lambda: {
        "n1": NodeInfo("n1"), "n2": NodeInfo("n2")})
    status: ManagerStatus = field(default_factory=ManagerStatus)
    revision: int = 1
    lock: bool = True
    resources: dict[str, ResourceConfig] = field(default_factory=dict)
    groups: dict[str, GroupConfig] = field(default_factory=dict)
    rules: dict[str, Any] = field(default_factory=dict)   # the stored rules document
    settings: HaSettings = field(default_factory=HaSettings)
    commands: list[tuple[str, str]] = field(default_factory=list)
    facts: dict[str, NodeFacts] = field(default_factory=dict)
    lrms: dict[str, LrmStatus] = field(default_factory=dict)
    owners: dict[str, str] = field(default_factory=dict)
    replicas: dict[str, dict[str, dict[str, str]]] = field(default_factory=dict)
    fences: dict[str, FenceStatus] = field(default_factory=dict)
    probes: dict[str, FenceStatus] = field(default_factory=dict)
    lock_holder: str | None = None
    confirmations: dict[str, FenceConfirmation] = field(default_factory=dict)
    logs: list[tuple[str, str]] = field(default_factory=list)
    notes: list[tuple[str, dict[str, str | int]]] = field(default_factory=list)
    calls: list[tuple] = field(default_factory=list)
    # LRM side
    lease: LeaseInfo = field(default_factory=lambda: LeaseInfo(True, 99.5))
    own_status: LrmStatus | None = None
    own_revision: int = 0
    watchdog_has_fired: bool = False
    shutdown: str | None = None
    running: set[str] = field(default_factory=set)
    job_table: dict[str, str] = field(default_factory=dict)
    finished: dict[str, LrmResult] = field(default_factory=dict)

    # ------------------------------------------------------------ helpers for tests

    def alive(self, *names: str, renewed: float | None = None) -> None:
        for n in names:
            self.facts[n] = NodeFacts(n, True, last_renewal=self.t if renewed is None else renewed)

    def expired(self, name: str, at: float) -> None:
        self.facts[name] = NodeFacts(name, False, lease_gone_at=at, lease_expired=True)

    def log_text(self) -> str:
        return "\n".join(f"{lvl} {msg}" for lvl, msg in self.logs)

    def _need_quorum(self) -> None:
        if not self.is_quorate:
            raise EnvUnavailable("no quorum")

    # ------------------------------------------------------------ ClusterEnv

    @property
    def node(self) -> str:
        return self.name

    def now(self) -> float:
        return self.t

    def log(self, level: str, message: str) -> None:
        self.logs.append((level, message))

    def notify(self, kind: str, **fields: str | int) -> None:
        self.notes.append((kind, dict(fields)))

    def quorate(self) -> bool:
        return self.is_quorate

    def cluster_nodes(self) -> dict[str, NodeInfo]:
        return dict(self.nodes)

    def read_manager_status(self) -> tuple[ManagerStatus, int]:
        self._need_quorum()
        return ManagerStatus.from_dict(self.status.to_dict()), self.revision

    def read_settings(self) -> HaSettings:
        self._need_quorum()
        return self.settings

    def service_config_node(self, sid: str) -> str | None:
        self._need_quorum()
        return self.owners.get(sid)

    def replica_states(self, sid: str) -> dict[str, dict[str, str]]:
        self._need_quorum()
        return copy.deepcopy(self.replicas.get(sid, {}))

    # ------------------------------------------------------------ CrmEnv

    def try_manager_lock(self) -> bool:
        self._need_quorum()
        return self.lock

    def release_manager_lock(self) -> None:
        self.calls.append(("release_lock",))
        self.lock = False

    def write_manager_status(self, status: ManagerStatus, revision: int,
                             done_commands: Sequence[str] = ()) -> int:
        self._need_quorum()
        if revision != self.revision or not self.lock:
            raise Conflict("stale")
        self.status = ManagerStatus.from_dict(status.to_dict())
        self.revision += 1
        self.commands = [c for c in self.commands if c[0] not in done_commands]
        self.calls.append(("write_manager_status", revision, tuple(done_commands)))
        return self.revision

    def read_resources(self) -> dict[str, ResourceConfig]:
        self._need_quorum()
        return copy.deepcopy(self.resources)

    def read_groups(self) -> dict[str, GroupConfig]:
        self._need_quorum()
        return copy.deepcopy(self.groups)

    def read_rules(self) -> dict[str, Rule]:
        self._need_quorum()
        return decode_rules(copy.deepcopy(self.rules))

    def read_commands(self) -> list[tuple[str, str]]:
        self._need_quorum()
        return list(self.commands)

    def node_facts(self) -> dict[str, NodeFacts]:
        self._need_quorum()
        return dict(self.facts)

    def read_lrm_statuses(self) -> dict[str, LrmStatus]:
        self._need_quorum()
        return copy.deepcopy(self.lrms)

    def move_service_config(self, sid: str, from_node: str, to_node: str) -> None:
        self._need_quorum()
        if self.owners.get(sid) != from_node:
            raise Conflict("moved")
        self.owners[sid] = to_node
        self.calls.append(("move_config", sid, from_node, to_node))

    def fence(self, node: str) -> str:
        self._need_quorum()
        rid = f"{node}#{sum(1 for c in self.calls if c[0] == 'fence') + 1}"
        self.fences[node] = FenceStatus(rid, FenceState.PENDING)
        self.calls.append(("fence", node))
        return rid

    def fence_status(self, node: str) -> FenceStatus | None:
        return self.fences.get(node)

    def fence_confirmations(self) -> dict[str, FenceConfirmation]:
        self._need_quorum()
        return dict(self.confirmations)

    def manager_lock_holder(self) -> str | None:
        return self.name if self.lock else self.lock_holder

    def probe_power(self, node: str) -> str:
        self._need_quorum()
        rid = f"{node}?{sum(1 for c in self.calls if c[0] == 'probe') + 1}"
        self.probes[node] = FenceStatus(rid, FenceState.PENDING)
        self.calls.append(("probe", node))
        return rid

    def power_probe_status(self, node: str) -> FenceStatus | None:
        return self.probes.get(node)

    # ------------------------------------------------------------ LrmEnv

    def own_lease(self) -> LeaseInfo:
        return self.lease

    def read_lrm_status(self) -> tuple[LrmStatus | None, int]:
        self._need_quorum()
        return self.own_status, self.own_revision

    def write_lrm_status(self, status: LrmStatus, revision: int) -> int:
        self._need_quorum()
        if revision != self.own_revision:
            raise Conflict("stale")
        self.own_status = LrmStatus.from_dict(status.to_dict())
        self.own_revision += 1
        self.calls.append(("write_lrm_status", status.watchdog_armed))
        return self.own_revision

    def watchdog_arm(self, deadline: float, sids) -> None:
        self.calls.append(("watchdog_arm", deadline, frozenset(sids)))
        self.watchdog_has_fired = False

    def watchdog_disarm(self) -> None:
        self.calls.append(("watchdog_disarm",))

    def watchdog_fired(self) -> bool:
        return self.watchdog_has_fired

    def shutdown_request(self) -> str | None:
        return self.shutdown

    def shutdown_ready(self) -> None:
        self.calls.append(("shutdown_ready",))

    def running_guests(self) -> set[str]:
        return set(self.running)

    def exec_start(self, sid: str, uid: str) -> None:
        self.calls.append(("start", sid, uid))
        self.job_table[uid] = sid

    def exec_stop(self, sid: str, uid: str) -> None:
        self.calls.append(("stop", sid, uid))
        self.job_table[uid] = sid

    def exec_migrate(self, sid: str, uid: str, target: str) -> None:
        self.calls.append(("migrate", sid, uid, target))
        self.job_table[uid] = sid

    def exec_relocate(self, sid: str, uid: str, target: str) -> None:
        self.calls.append(("relocate", sid, uid, target))
        self.job_table[uid] = sid

    def jobs(self) -> dict[str, str]:
        return dict(self.job_table)

    def collect_results(self) -> dict[str, LrmResult]:
        out, self.finished = self.finished, {}
        for uid in out:
            self.job_table.pop(uid, None)
        return out

    def finish(self, uid: str, result: LrmResult) -> None:
        """Test helper: a job completes."""
        self.finished[uid] = result

    def executed(self, kind: str) -> list[tuple]:
        return [c for c in self.calls if c[0] == kind]
