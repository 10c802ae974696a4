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
    # (fenced node, action, result: "confirmed" | "failed") -> fences run by this node
    fences: dict[tuple[str, str, str], Tally] = field(default_factory=dict)
    # (sid, from node, to node) -> recoveries committed by this node's CRM
    recoveries: dict[tuple[str, str, str], Tally] = field(default_factory=dict)
    # sid -> when this node's CRM first saw the service in `fence` (monotonic seconds)
    fence_seen: dict[str, float] = field(default_factory=dict)

    def fence_done(self, node: str, action: str, result: str, seconds: float) -> None:
        self.fences.setdefault((node, action, result), Tally()).add(seconds)

    def services_seen(self, states: dict[str, tuple[str, str]], now: float) -> None:
        """After a committed CRM round: sid -> (state, node). Starts the failover clock
        of a service newly in `fence` (or met in `fence`/`recovery` by a new master)."""
        for sid, (state, _node) in states.items():
            if state in ("fence", "recovery"):
                self.fence_seen.setdefault(sid, now)
        for sid in [s for s in self.fence_seen if s not in states]:
            del self.fence_seen[sid]    # the resource was removed meanwhile

    def recovered(self, sid: str, from_node: str, to_node: str, now: float) -> None:
        """A committed round moved `sid` out of `recovery` onto `to_node`."""
        began = self.fence_seen.pop(sid, now)
        self.recoveries.setdefault((sid, from_node, to_node), Tally()).add(now - began)
