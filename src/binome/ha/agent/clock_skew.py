"""Clock skew between the nodes, estimated by the CRM from the HA heartbeats they write.

Owns nothing in etcd. Every heartbeat (`/binome/ha/heartbeat/<node>`) carries its
writer's wall clock (`time`); the CRM, when it first sees a new heartbeat, takes its own
wall clock. Their difference is the reading delay (>= 0: up to a round) plus the skew of
the two clocks; the smallest difference of the last `SAMPLES` is the skew plus the
shortest delay (tens of ms), a slight overestimate of a clock behind and an exact enough
figure of one ahead. HA itself only uses monotonic clocks (leases, watchdog deadlines),
but logs, the availability history and certificates use wall clocks: a node beyond
`THRESHOLD` is reported once (the master's notification, `clock-skew`), again only after
it came back below half the threshold.
"""

from __future__ import annotations

from collections import deque

THRESHOLD = 1.0     # seconds
SAMPLES = 30
MIN_SAMPLES = 5


class SkewEstimator:
    def __init__(self, threshold: float = THRESHOLD, samples: int = SAMPLES) -> None:
        self.threshold = threshold
        self._samples: dict[str, deque[float]] = {}
        self._samples_kept = samples
        self._reported: set[str] = set()

    def observe(self, node: str, sent_wall: float, seen_wall: float) -> None:
        """A new heartbeat of `node`, written at its `sent_wall`, seen here at `seen_wall`."""
        self._samples.setdefault(node, deque(maxlen=self._samples_kept)).append(
            seen_wall - sent_wall)

    def skew(self, node: str) -> float | None:
        """Seconds the node's clock is behind this one's (negative: ahead); None until
        enough heartbeats were seen."""
        samples = self._samples.get(node)
        if samples is None or len(samples) < MIN_SAMPLES:
            return None
        return min(samples)

    def forget(self, node: str) -> None:
        """The node went away: its next life starts a fresh estimate (and may report)."""
        self._samples.pop(node, None)

    def alerts(self) -> list[tuple[str, float]]:
        """Nodes newly beyond the threshold, with their skew."""
        out = []
        for node in sorted(self._samples):
            skew = self.skew(node)
            if skew is None:
                continue
            if abs(skew) > self.threshold and node not in self._reported:
                self._reported.add(node)
                out.append((node, skew))
            elif abs(skew) < self.threshold / 2:
                self._reported.discard(node)
        return out
