"""The activity log (pure, no I/O): which extents may hold writes not known to the peer.

DRBD's AL: the volume is cut into extents (4 MiB by default); at most
`nr_slots` of them (`al-extents`, default 1237) are "hot". A write may only be
submitted once every extent it touches is hot *on disk*: making a cold extent
hot is an AL transaction, written and flushed before the data. After a crash
the bitmap bits of every hot extent are set (`apply-al`), so a crashed Primary
resyncs only its hot extents, not the whole device.

Hot extents are kept in LRU order. Making one hot when the log is full evicts
the least recently used extent with no I/O in flight; the bitmap pages of an
evicted extent must be durable before the transaction that evicts it (the
caller does that, `Transaction.evicted` says which).

This class only decides. The I/O side (`meta.MetaFile` and `volume.Volume`)
writes the transactions, groups concurrent ones into one commit and wakes the
writes waiting for them.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

EMPTY = 0xFFFFFFFF               # an unused slot in the on-disk table


@dataclass(frozen=True)
class Transaction:
    table: tuple[int, ...]       # the complete slot table to persist
    added: frozenset[int]        # extents made hot
    evicted: frozenset[int]      # extents made cold (flush their bitmap pages first)


class ActivityLog:
    def __init__(self, nr_slots: int = 1237, extent_shift: int = 22,
                 table: list[int] | None = None) -> None:
        if nr_slots < 1:
            raise ValueError("the activity log needs at least one slot")
        self.nr_slots = nr_slots
        self.extent_shift = extent_shift
        self._slots: list[int] = [EMPTY] * nr_slots
        self._lru: OrderedDict[int, int] = OrderedDict()   # extent -> slot, oldest first
        self._refs: dict[int, int] = {}
        if table:
            for slot, ext in enumerate(table[:nr_slots]):
                if ext != EMPTY and ext not in self._lru:
                    self._slots[slot] = ext
                    self._lru[ext] = slot

    @property
    def extent_size(self) -> int:
        return 1 << self.extent_shift

    def extents_of(self, offset: int, length: int) -> tuple[int, int]:
        shift = self.extent_shift
        return offset >> shift, (offset + max(length, 1) - 1) >> shift

    def hot(self) -> list[int]:
        return list(self._lru)

    def is_hot(self, extent: int) -> bool:
        return extent in self._lru

    def table(self) -> tuple[int, ...]:
        return tuple(self._slots)

    def begin(self, first: int, last: int) -> bool:
        """Start I/O on extents first..last if all are hot (then True); else change nothing."""
        lru = self._lru
        if first == last:
            if first not in lru:
                return False
            lru.move_to_end(first)
            refs = self._refs
            refs[first] = refs.get(first, 0) + 1
            return True
        rng = range(first, last + 1)
        if any(e not in lru for e in rng):
            return False
        for e in rng:
            lru.move_to_end(e)
            self._refs[e] = self._refs.get(e, 0) + 1
        return True

    def end(self, first: int, last: int) -> None:
        """I/O on extents first..last finished."""
        refs = self._refs
        for e in range(first, last + 1):
            n = refs[e] - 1
            if n:
                refs[e] = n
            else:
                del refs[e]

    def in_use(self, extent: int) -> bool:
        return extent in self._refs

    def prepare(self, wanted: set[int]) -> Transaction | None:
        """A transaction making as many `wanted` extents hot as the free/evictable slots allow.

        Extents with I/O in flight are never evicted, nor are the wanted ones.
        The victims stop being hot at once (a new write to one waits for a later
        transaction), so no bit can be set in them after their bitmap pages are
        flushed. None when nothing can be done now (all slots busy): retry after
        some I/O ends. Only one transaction may be prepared at a time.
        """
        cold = sorted(e for e in wanted if e not in self._lru)
        if not cold:
            return None
        slots = list(self._slots)
        free = [i for i, e in enumerate(slots) if e == EMPTY]
        victims = (e for e in self._lru if e not in self._refs and e not in wanted)
        added: list[int] = []
        evicted: list[int] = []
        for ext in cold:
            if free:
                slot = free.pop()
            else:
                victim = next(victims, None)
                if victim is None:
                    break
                slot = self._lru[victim]
                evicted.append(victim)
            slots[slot] = ext
            added.append(ext)
        if not added:
            return None
        for ext in evicted:
            del self._lru[ext]
        return Transaction(tuple(slots), frozenset(added), frozenset(evicted))

    def commit(self, tx: Transaction) -> None:
        """The transaction is durable: apply it."""
        self._slots = list(tx.table)
        for slot, ext in enumerate(self._slots):
            if ext in tx.added:
                self._lru[ext] = slot
                self._lru.move_to_end(ext)

    def clear(self) -> None:
        """Forget every hot extent (after the bitmap covering them was written)."""
        if self._refs:
            raise RuntimeError("cannot clear the activity log with I/O in flight")
        self._slots = [EMPTY] * self.nr_slots
        self._lru.clear()
