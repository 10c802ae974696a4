"""One manager round's view of the world, and the helpers every transition uses.

`Manager.round` reads everything once into a `RoundContext`; the node and
service state machines (`ha.nodes`, `ha.transitions`) then work on it and on
the `ManagerStatus` it holds, which the manager writes back at the end with
a compare-and-swap. Keeping the reads in one place makes a round a function
of one snapshot: what the log says was decided is what the snapshot showed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from binome.ha.env import CrmEnv
from binome.ha.model import (
    ACTIVE_STATES,
    FenceConfirmation,
    GroupConfig,
    HaSettings,
    LrmMode,
    LrmResult,
    LrmStatus,
    ManagerStatus,
    NodeFacts,
    NodeInfo,
    NodeState,
    ResourceConfig,
    ServiceState,
    ServiceStatus,
)
from binome.ha.scheduler import Choice, Placement, select_node
from binome.ha.timers import HaTimers

#: Service states that count against a node's load (the node runs or will run it).
_LOADED = ACTIVE_STATES | {ServiceState.REQUEST_START, ServiceState.FREEZE}


@dataclass
class RoundContext:
    env: CrmEnv
    timers: HaTimers
    now: float
    status: ManagerStatus
    resources: dict[str, ResourceConfig]
    groups: dict[str, GroupConfig]
    settings: HaSettings
    nodes: dict[str, NodeInfo]
    facts: dict[str, NodeFacts]
    lrms: dict[str, LrmStatus]
    master_since: float = 0.0
    # the administrator's power-off confirmations (`ha.nodes.manual_confirmation` checks them)
    confirmations: dict[str, FenceConfirmation] = field(default_factory=dict)
    # nodes whose fence device read their chassis off after their last renewal (`ha.probe`)
    powered_off: dict[str, str] = field(default_factory=dict)
    _replicas: dict[str, dict[str, dict[str, str]]] = field(default_factory=dict)

    # ------------------------------------------------------------ reads

    def node_state(self, node: str) -> NodeState | None:
        rec = self.status.node_status.get(node)
        return rec.state if rec else None

    def lrm(self, node: str) -> LrmStatus | None:
        return self.lrms.get(node)

    def lrm_mode(self, node: str) -> LrmMode:
        lrm = self.lrms.get(node)
        return lrm.mode if lrm else LrmMode.ACTIVE

    def daemon_restart(self, node: str) -> bool:
        """The node's binomed is restarting (host up): its services must be frozen."""
        lrm = self.lrms.get(node)
        return bool(lrm and lrm.mode == LrmMode.RESTART and lrm.daemon_restart)

    def result(self, node: str, uid: str) -> LrmResult | None:
        lrm = self.lrms.get(node)
        return lrm.results.get(uid) if lrm and uid else None

    def job_running(self, node: str, uid: str) -> bool:
        lrm = self.lrms.get(node)
        return bool(lrm and uid in lrm.jobs)

    def replicas(self, sid: str) -> dict[str, dict[str, str]]:
        if sid not in self._replicas:
            self._replicas[sid] = self.env.replica_states(sid)
        return self._replicas[sid]

    def group_of(self, sid: str) -> GroupConfig | None:
        cfg = self.resources.get(sid)
        return self.groups.get(cfg.group) if cfg and cfg.group else None

    def placeable(self) -> list[str]:
        """Nodes that may receive services now: online, not in maintenance, not shutting down."""
        return sorted(n for n in self.nodes
                      if self.node_state(n) == NodeState.ONLINE
                      and self.lrm_mode(n) == LrmMode.ACTIVE)

    def load(self) -> dict[str, int]:
        load: dict[str, int] = {}
        for sd in self.status.service_status.values():
            if sd.state in _LOADED:
                load[sd.node] = load.get(sd.node, 0) + 1
            if sd.target and sd.state in (ServiceState.MIGRATE, ServiceState.RELOCATE):
                load[sd.target] = load.get(sd.target, 0) + 1
        return load

    def place(self, sid: str, *, current: str | None, stay: bool,
              avoid: frozenset[str] = frozenset(), exclude: str | None = None) -> Choice:
        online = [n for n in self.placeable() if n != exclude]
        load = self.load()
        sd = self.status.service_status.get(sid)
        if sd is not None and sd.state in _LOADED and sd.node in load:
            # the service itself must not make its current node look busier than the others
            load[sd.node] -= 1
        return select_node(Placement(sid=sid, current=current, group=self.group_of(sid),
                                     online=online, load=load, replicas=self.replicas(sid),
                                     avoid=avoid, stay=stay))

    # ------------------------------------------------------------ writes (to the status)

    def new_uid(self) -> str:
        uid = f"u{self.status.next_uid}"
        self.status.next_uid += 1
        return uid

    def log(self, level: str, message: str) -> None:
        self.env.log(level, message)

    def change(self, sid: str, sd: ServiceStatus, state: ServiceState, *,
               node: str | None = None, target: str | None = None,
               new_uid: bool = True, reason: str | None = None, why: str = "") -> None:
        """Move a service to `state` (a new command uid unless it is a refinement)."""
        old_state, old_node = sd.state, sd.node
        if node is not None:
            sd.node = node
        sd.target = target
        sd.state = state
        sd.since = self.now
        sd.reason = reason
        sd.frozen_by = None   # a freeze sets it after the change
        if new_uid:
            sd.uid = self.new_uid()
        where = sd.node if sd.node == old_node else f"{old_node} -> {sd.node}"
        if target:
            where = f"{where} -> {target}"
        suffix = f": {why}" if why else ""
        self.log("info", f"service {sid}: {old_state} -> {state} ({where}){suffix}")
        if state == ServiceState.ERROR and old_state != ServiceState.ERROR:
            self.env.notify("ha-error", sid=sid, node=sd.node, error=reason or why)

    def set_reason(self, sid: str, sd: ServiceStatus, reason: str | None,
                   level: str = "warn") -> None:
        """Record why a service waits; logged once per distinct reason."""
        if reason != sd.reason:
            sd.reason = reason
            if reason:
                self.log(level, f"service {sid}: {sd.state} waits: {reason}")
