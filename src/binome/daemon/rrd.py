"""Resource usage time series (RRD-like, bounded) for the node and its guests.

Like PVE's rrdcached data: per timeframe a fixed number of slots, each the
average (and max) of the samples that fell in it, so memory stays bounded
however long the node runs. Counters (network and disk bytes) are stored as
rates per second. Kept in memory: a restarted daemon starts new series.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("binome.rrd")

# timeframe -> (seconds per slot, slots kept), as PVE's RRA definitions
TIMEFRAMES: dict[str, tuple[int, int]] = {
    "hour": (60, 70), "day": (1800, 70), "week": (10800, 70), "month": (43200, 70),
    "year": (604800, 70),
}
COUNTERS = ("netin", "netout", "diskread", "diskwrite")


@dataclass
class _Slot:
    sums: dict[str, float] = field(default_factory=dict)
    maxs: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)   # per key: counters lack a first rate


class Series:
    """One resource's series across every timeframe."""

    def __init__(self) -> None:
        self._slots: dict[str, dict[int, _Slot]] = {tf: {} for tf in TIMEFRAMES}
        self._last_counters: tuple[float, dict[str, float]] | None = None

    def add(self, values: dict[str, float], now: float | None = None) -> None:
        now = time.time() if now is None else now
        sample = {k: float(v) for k, v in values.items() if k not in COUNTERS}
        counters = {k: float(values[k]) for k in COUNTERS if k in values}
        if counters:
            if self._last_counters is not None:
                then, old = self._last_counters
                dt = now - then
                if dt > 0:
                    for k, v in counters.items():
                        if k in old and v >= old[k]:
                            sample[k] = (v - old[k]) / dt
            self._last_counters = (now, counters)
        for tf, (step, keep) in TIMEFRAMES.items():
            slots = self._slots[tf]
            start = int(now // step) * step
            slot = slots.get(start)
            if slot is None:
                slot = slots[start] = _Slot()
                while len(slots) > keep:
                    # the oldest slot goes, even if the clock stepped back
                    del slots[min(slots)]
            for k, v in sample.items():
                slot.sums[k] = slot.sums.get(k, 0.0) + v
                slot.maxs[k] = max(slot.maxs.get(k, v), v)
                slot.counts[k] = slot.counts.get(k, 0) + 1

    def fetch(self, timeframe: str, cf: str = "AVERAGE") -> list[dict[str, Any]]:
        out = []
        slots = self._slots[timeframe]
        for start in sorted(slots):
            slot = slots[start]
            point: dict[str, Any] = {"time": start}
            for k in slot.sums:
                point[k] = slot.maxs[k] if cf == "MAX" else slot.sums[k] / slot.counts[k]
            out.append(point)
        return out


class RrdStore:
    def __init__(self) -> None:
        self.node = Series()
        self.guests: dict[int, Series] = {}

    def guest(self, vmid: int) -> Series:
        return self.guests.setdefault(vmid, Series())


async def sample_forever(store: RrdStore, node_sample: Callable[[], dict[str, float]],
                         guest_samples: Callable[[], dict[int, dict[str, Any]]],
                         interval: float = 10.0) -> None:
    while True:
        with contextlib.suppress(Exception):
            store.node.add(node_sample())
            for vmid, st in guest_samples().items():
                store.guest(vmid).add({k: v for k, v in st.items()
                                       if k in ("cpu", "mem", "maxmem", "maxcpu", "cpus",
                                                "disk", "maxdisk", *COUNTERS)
                                       and isinstance(v, (int, float))})
        await asyncio.sleep(interval)
