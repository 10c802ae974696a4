"""The simulator's virtual clock: a priority queue of events in integer milliseconds.

Integer milliseconds keep every run bit-for-bit reproducible (no float
accumulation); ties are broken by insertion order, so the same inputs always
give the same interleaving.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


def ms(seconds: float) -> int:
    return round(seconds * 1000)


@dataclass(order=True)
class _Event:
    time: int
    seq: int
    fn: Callable[..., Any] = field(compare=False)
    args: tuple[Any, ...] = field(compare=False, default=())


class EventQueue:
    def __init__(self) -> None:
        self.now = 0
        self._heap: list[_Event] = []
        self._seq = 0

    def at(self, time: int, fn: Callable[..., Any], *args: Any) -> None:
        self._seq += 1
        heapq.heappush(self._heap, _Event(max(time, self.now), self._seq, fn, args))

    def after(self, delay: int, fn: Callable[..., Any], *args: Any) -> None:
        self.at(self.now + delay, fn, *args)

    def next_time(self) -> int | None:
        return self._heap[0].time if self._heap else None

    def pop(self) -> _Event:
        event = heapq.heappop(self._heap)
        self.now = event.time
        return event
