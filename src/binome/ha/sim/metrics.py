"""Outages measured in a simulated run: when each guest stopped serving and when it came back.

A guest serves while one instance is in state `running` (booted). An outage
is a period without one after the guest first served, e.g. from a power cut
to the end of the guest's boot on the recovery node.
"""

from __future__ import annotations

from dataclasses import dataclass

from binome.ha.sim.guests import Guests


@dataclass(frozen=True)
class Outage:
    sid: str
    start: float          # seconds
    end: float | None     # None: still down at the end of the run
    before: str | None    # node it served on
    after: str | None     # node it serves on afterwards

    @property
    def duration(self) -> float | None:
        return None if self.end is None else self.end - self.start

    def __str__(self) -> str:
        if self.end is None:
            return f"{self.sid}: down since {self.start:.2f} s (was on {self.before})"
        return (f"{self.sid}: down {self.start:.2f} -> {self.end:.2f} s = "
                f"{self.duration:.2f} s ({self.before} -> {self.after})")


def outages(guests: Guests) -> list[Outage]:
    out = []
    for sid, hist in sorted(guests.history.items()):
        down_at, was = None, None
        for t, node in hist:
            if node is None and down_at is None and was is not None:
                down_at = t
            elif node is not None:
                if down_at is not None and t > down_at:  # a live migration switches at once
                    out.append(Outage(sid, down_at / 1000, t / 1000, was, node))
                down_at = None
                was = node
        if down_at is not None:
            out.append(Outage(sid, down_at / 1000, None, was, None))
    return out
