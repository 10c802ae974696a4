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
from binome.ha.rules import CompiledRules, NodeAffinity
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
    # the HA rules (groups included, as node-affinity rules) compiled for this round
    rules: CompiledRules = field(default_factory=CompiledRules)
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

    def node_affinity(self, sid: str) -> NodeAffinity | None:
        return self.rules.node_affinity.get(sid)

    def partners(self, sid: str, *, current: str | None = None
                 ) -> tuple[dict[str, frozenset[str]], dict[str, int]]:
        """(node -> services there `sid` must be kept apart from, node -> number of services
        there it must run with), from the services' states (upstream's get_resource_affinity:
        a moving service counts on both its nodes, on its target only for `together`).

        A partner leaving `current` (the node `sid` runs on) does not count there: `sid`
        need not move away from a node the other one is already leaving."""
        usable = set(self.placeable())
        separate: dict[str, set[str]] = {}
        together: dict[str, int] = {}
        for csid in sorted(self.rules.negative.get(sid, ())):
            for node in self._used_nodes(csid, usable, leaving=current):
                separate.setdefault(node, set()).add(csid)
        for csid in sorted(self.rules.positive.get(sid, ())):
            used = self._used_nodes(csid, usable)
            if used:
                node = used[-1]   # the target of a move, else its node
                together[node] = together.get(node, 0) + 1
        return {n: frozenset(s) for n, s in separate.items()}, together

    def _used_nodes(self, sid: str, usable: set[str], leaving: str | None = None) -> list[str]:
        sd = self.status.service_status.get(sid)
        if sd is None or sd.state in (ServiceState.STOPPED, ServiceState.REQUEST_START):
            return []
        out = []
        moving = sd.state in (ServiceState.MIGRATE, ServiceState.RELOCATE) and sd.target
        if sd.node in usable and not (moving and sd.node == leaving):
            out.append(sd.node)
        if moving and sd.target in usable:
            out.append(str(sd.target))
        return out

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
        # a running service need not leave a node its partner is leaving; one not yet
        # running must not start where that partner still is (upstream counts both)
        running = sd is not None and sd.state == ServiceState.STARTED and sd.node == current
        separate, together = self.partners(sid, current=current if running else None)
        return select_node(Placement(sid=sid, current=current, online=online,
                                     affinity=self.node_affinity(sid), load=load,
                                     replicas=self.replicas(sid), avoid=avoid, stay=stay,
                                     failback=sid not in self.rules.nofailback,
                                     separate=separate, together=together))

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
