"""`HaStats`: what this node's CRM did while it was master, counted in memory.

Owns the per-node fence and recovery counts and durations that `binome.metrics` exports
as Prometheus counters. Each node counts only what it did itself (the fences its fencer
ran, the recoveries its CRM committed), so the numbers stay right across a change of
master without any shared state: the cluster total is the sum over the nodes, and a
daemon restart is an ordinary counter reset (`rate()`/`increase()` handle it).
Plain data: no clock of its own, no I/O (callers pass `time.monotonic()` readings).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Tally:
    """A count and the sum of the durations it covers (a Prometheus summary's parts)."""

    count: int = 0
    seconds: float = 0.0

    def add(self, seconds: float) -> None:
        self.count += 1
        self.seconds += max(0.0, seconds)


@dataclass
class HaStats:
    # (node, proof: device | watchdog | manual | shutdown) -> nodes this CRM declared
    # fenced, timed from the first committed round in which it saw the node lost
    fences: dict[tuple[str, str], Tally] = field(default_factory=dict)
    # (target node, action, result: "confirmed" | "failed") -> fence device runs here
    device_runs: dict[tuple[str, str, str], Tally] = field(default_factory=dict)
    # (sid, from node, to node) -> recoveries completed by this node's CRM, timed from
    # the loss of the node the service was on to the service `started` (or, if it is
    # wanted stopped or its start failed, to the end of its `starting`)
    recoveries: dict[tuple[str, str, str], Tally] = field(default_factory=dict)
    # sid -> (from node, to node, loss began): recoveries assigned, not completed yet
    recovering: dict[str, tuple[str, str, float]] = field(default_factory=dict)
    # node -> when this CRM first saw it lost (monotonic seconds), until it is fenced
    lost_at: dict[str, float] = field(default_factory=dict)
    # node -> when the loss it was fenced for began, until it is online again
    fenced_loss_at: dict[str, float] = field(default_factory=dict)

    def device_run(self, node: str, action: str, result: str, seconds: float) -> None:
        self.device_runs.setdefault((node, action, result), Tally()).add(seconds)

    def node_fenced(self, node: str, proof: str, now: float) -> None:
        """A committed round declared `node` fenced, by `proof`."""
        began = self.lost_at.pop(node, now)
        self.fenced_loss_at[node] = began
        self.fences.setdefault((node, proof), Tally()).add(now - began)

    def recovery_assigned(self, sid: str, from_node: str, to_node: str, now: float) -> None:
        """A committed round handed `sid`, lost with `from_node`, to `to_node`."""
        began = self.fenced_loss_at.get(from_node, now)
        self.recovering[sid] = (from_node, to_node, began)

    def services_seen(self, states: dict[str, tuple[str, str]], now: float) -> None:
        """After a committed round: sid -> (state, node). A recovery ends when its service
        leaves `starting`; a service removed meanwhile is forgotten."""
        for sid, (from_node, _to, began) in list(self.recovering.items()):
            if sid not in states:
                del self.recovering[sid]
            elif states[sid][0] != "starting":
                del self.recovering[sid]
                key = (sid, from_node, states[sid][1])
                self.recoveries.setdefault(key, Tally()).add(now - began)

    def nodes_seen(self, lost: dict[str, bool], now: float) -> None:
        """After a committed round: node -> lost and not fenced yet. Starts the clock of a
        newly lost node (or of one a new master finds lost); forgets nodes back online."""
        for node, is_lost in lost.items():
            if is_lost:
                self.lost_at.setdefault(node, now)
            else:
                self.lost_at.pop(node, None)
