"""Event-driven HA rounds: which etcd changes wake the rounds early, and the debounce.

Pure (no I/O): `HaAgent._watch_loop` feeds it the events of one etcd watch
over `WATCH_PREFIXES` (what `EtcdEnv.refresh()` reads) and wakes the round
loop when `Debouncer` says so. The periodic round (`manager_round`) stays the
fallback: a missed or dropped event only delays a decision to the next
periodic round, and a woken round reads its snapshot and writes exactly as a
periodic one (linearizable range, compare-and-swap), so the watch can make
the HA manager faster, never less safe.
"""

from __future__ import annotations

import math

from binome.storage import placement
from binome.store import keys
from binome.store.client import WatchEvent

# Everything a round's snapshot reads (EtcdEnv.refresh): the HA keys, the guest
# owners, the volumes' placement facts (the CRM's recovery placement).
WATCH_PREFIXES = (keys.HA, keys.VMIDS, *placement.PREFIXES)

DEBOUNCE_WINDOW = 0.03   # events this close together make one wake-up
MIN_WAKE_GAP = 0.1       # at most 10 watch-triggered wake-ups per second


def wakes_rounds(ev: WatchEvent) -> bool:
    """Whether this change may let a round decide something new (needs prev_kv events).

    Every node rewrites its heartbeat key at each renewal (every
    `keepalive_interval`): such a put is only a sign of life, and the CRM
    counts renewals on its periodic rounds anyway. What matters is the key
    vanishing (its lease expired or was revoked: the node is lost) or coming
    back / changing lease (the node is back).
    """
    key = ev.key
    if key.startswith(keys.HA_HEARTBEAT):
        return ev.kind == "delete" or ev.prev is None or ev.prev.lease != ev.lease
    if placement.is_placement_key(key):
        return placement.change_matters(key, ev.kind, ev.value,
                                        ev.prev.value if ev.prev is not None else None,
                                        had_prev=ev.prev is not None)
    return key.startswith(WATCH_PREFIXES)


class Debouncer:
    """When to wake the rounds for a burst of relevant events (times in seconds, any clock).

    The first event of a burst schedules one wake-up `window` later; the events
    until then join it. Wake-ups are at least `min_gap` apart, so even a key
    rewritten in a tight loop costs at most 1/min_gap extra rounds per second.
    """

    def __init__(self, window: float = DEBOUNCE_WINDOW, min_gap: float = MIN_WAKE_GAP) -> None:
        self.window = window
        self.min_gap = min_gap
        self.pending_at: float | None = None
        self.last_fired = -math.inf

    def event(self, now: float) -> float | None:
        """A relevant event at `now`: the time to wake at, or None if one is scheduled."""
        if self.pending_at is not None:
            return None
        self.pending_at = max(now + self.window, self.last_fired + self.min_gap)
        return self.pending_at

    def fired(self, now: float) -> None:
        """The scheduled wake-up happened (or was dropped: then call `reset`)."""
        self.pending_at = None
        self.last_fired = now

    def reset(self) -> None:
        """Forget a scheduled wake-up that will not happen (the watch was re-created)."""
        self.pending_at = None
