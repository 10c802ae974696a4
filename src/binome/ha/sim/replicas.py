"""Simulated replicated volumes: who holds an UpToDate copy, and how that changes.

Rules (the DRBD-with-quorum semantics of ARCHITECTURE.md, reduced to disk
states; the I/O itself is not simulated):

- the guest's node is the primary and writes continuously;
- a peer that is connected (both nodes up, both replication links up) gets
  every write (protocol C) and stays UpToDate;
- when the primary loses a peer and *holds quorum*, it records the peer as
  Outdated and continues; without quorum its writes are suspended, so the
  peer stays UpToDate (incident 1 of docs/incidents.md made safe: the isolated node cannot
  get ahead of the survivor);
- whenever two replicas are connected and one is UpToDate while the other
  is not, a resync runs for `resync_time`: the target is Inconsistent
  meanwhile, and stays Inconsistent if the link breaks before it finishes.

The recorded state is what `Env.replica_states` returns to the CRM.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

UPTODATE, OUTDATED, INCONSISTENT = "UpToDate", "Outdated", "Inconsistent"


@dataclass
class Resync:
    source: str
    target: str
    done_at: int


class Replicas:
    def __init__(self, volumes: dict[str, dict[str, dict[str, str]]],
                 log: Callable[[str, str], None]) -> None:
        """`volumes`: sid -> volume -> node -> disk state."""
        self._log = log
        self.disks: dict[str, dict[str, str]] = {}
        self.vols_of: dict[str, list[str]] = {}
        self.sid_of: dict[str, str] = {}
        for sid, vols in volumes.items():
            self.vols_of[sid] = sorted(vols)
            for vol, nodes in vols.items():
                self.disks[vol] = dict(nodes)
                self.sid_of[vol] = sid
        self.resyncs: dict[str, Resync] = {}

    def states(self, sid: str) -> dict[str, dict[str, str]]:
        return {vol: dict(self.disks[vol]) for vol in self.vols_of.get(sid, [])}

    def all_uptodate(self, sid: str, node: str) -> bool:
        return all(self.disks[v].get(node) == UPTODATE for v in self.vols_of.get(sid, []))

    def set_state(self, vol: str, node: str, state: str, why: str) -> None:
        old = self.disks[vol].get(node)
        if old != state:
            self.disks[vol][node] = state
            self._log("info", f"{vol} on {node}: {old} -> {state} ({why})")

    def update(self, now: int, primary_of: Callable[[str], str | None],
               connected: Callable[[str, str], bool], quorate: Callable[[str], bool],
               resync_time: int) -> int | None:
        """Apply the rules at `now`; returns the earliest pending resync completion."""
        for vol, disks in sorted(self.disks.items()):
            primary = primary_of(self.sid_of[vol])
            sync = self.resyncs.get(vol)
            if sync is not None:
                if not connected(sync.source, sync.target):
                    del self.resyncs[vol]
                    self._log("warn", f"{vol}: resync {sync.source} -> {sync.target} "
                                      f"interrupted; {sync.target} stays {INCONSISTENT}")
                elif now >= sync.done_at:
                    del self.resyncs[vol]
                    self.set_state(vol, sync.target, UPTODATE, f"resync from {sync.source} done")
            if primary is not None and primary in disks:
                for peer in sorted(disks):
                    if (peer != primary and disks[peer] == UPTODATE
                            and not connected(primary, peer) and quorate(primary)):
                        self.set_state(vol, peer, OUTDATED,
                                       f"{primary} writes without it, holding quorum")
            if vol in self.resyncs:
                continue
            good = [n for n in sorted(disks) if disks[n] == UPTODATE]
            for target in sorted(disks):
                if disks[target] == UPTODATE:
                    continue
                source = next((s for s in good if connected(s, target)), None)
                if source is not None and target != primary:
                    self.set_state(vol, target, INCONSISTENT, f"resync from {source} started")
                    self.resyncs[vol] = Resync(source, target, now + resync_time)
                    break
        return min((s.done_at for s in self.resyncs.values()), default=None)
