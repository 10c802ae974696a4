"""Generation identifiers (DRBD's "UUIDs") and `uuid_compare` (pure, no I/O).

A volume's history is a tuple of 64-bit values: `current`, `bitmap` (0 while in
sync), `history[0]`, `history[1]`. The lowest bit of `current` is 1 while the
node is Primary; every comparison masks it out. `uuid_compare` is a faithful
port of DRBD 8.4's `drbd_uuid_compare` (`drbd_receiver.c`, its numbered rules),
including its rule numbers, so logs read like DRBD's:
"uuid_compare()=-1 by rule 50".

Differences from DRBD, on purpose:
- no protocol-version answers (-1091, -1096, rule 41's feature check): both
  sides are always this implementation;
- the fix-ups DRBD applies in place (rules 34, 35, 51, 71) are returned as
  corrected tuples for the caller to persist, so the function stays pure.

Randomness is injected (`rand64`), so a simulator can replay runs.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field

UUID_JUST_CREATED = 4
UUID_NEW_BM_OFFSET = 1 << 48
_MASK64 = (1 << 64) - 1
_ROLE_BIT = 1


def _m(v: int) -> int:
    """Mask out the role bit, as every DRBD comparison does."""
    return v & ~_ROLE_BIT & _MASK64


@dataclass(frozen=True)
class GenerationIds:
    current: int = UUID_JUST_CREATED
    bitmap: int = 0
    history: tuple[int, int] = (0, 0)

    def __str__(self) -> str:
        return (f"{self.current:016X}:{self.bitmap:016X}:"
                f"{self.history[0]:016X}:{self.history[1]:016X}")

    def to_list(self) -> list[int]:
        return [self.current, self.bitmap, self.history[0], self.history[1]]

    @classmethod
    def from_list(cls, values: list[int]) -> GenerationIds:
        return cls(values[0], values[1], (values[2], values[3]))

    # --- transitions (drbd_main.c) -------------------------------------------------

    def with_role(self, primary: bool) -> GenerationIds:
        """Set or clear the role bit of `current` (drbd_set_role)."""
        cur = self.current | _ROLE_BIT if primary else self.current & ~_ROLE_BIT
        return GenerationIds(cur, self.bitmap, self.history)

    def new_current(self, rand64: Callable[[], int], *, primary: bool) -> GenerationIds:
        """Start a new generation (drbd_uuid_new_current): bitmap <- current, new current.

        The old current keeps its role bit in the bitmap UUID: that is how
        `discard-younger-primary` later knows who was Primary at the split.
        """
        val = rand64() & _MASK64
        cur = val | _ROLE_BIT if primary else val & ~_ROLE_BIT
        return GenerationIds(cur, self.current, self.history)

    def _push_history(self, value: int) -> tuple[int, int]:
        return (value, self.history[0])

    def set_bitmap(self, value: int) -> GenerationIds:
        """drbd_uuid_set_bm: 0 rotates the bitmap UUID into history; else set it."""
        if value == 0:
            if self.bitmap == 0:
                return self
            return GenerationIds(self.current, 0, self._push_history(self.bitmap))
        return GenerationIds(self.current, value & ~_ROLE_BIT, self.history)

    def start_resync_as_source(self, rand64: Callable[[], int]) -> tuple[GenerationIds, int]:
        """The source's new bitmap UUID, sent as P_SYNC_UUID (drbd_gen_and_send_sync_uuid).

        The old bitmap UUID goes to history; the new one is old + 2^48, or random
        when there was none, so rules 51/71 can recognise a lost P_SYNC_UUID.
        """
        uuid = self.bitmap
        if uuid and uuid != UUID_JUST_CREATED:
            uuid = (uuid + UUID_NEW_BM_OFFSET) & _MASK64
        else:
            uuid = rand64() & _MASK64
        history = self._push_history(self.bitmap) if self.bitmap else self.history
        return GenerationIds(self.current, uuid, history), uuid

    def adopt_sync_uuid(self, sync_uuid: int, *, primary: bool) -> GenerationIds:
        """The target adopts the sync UUID as current, bitmap UUID 0 (receive_sync_uuid)."""
        cur = sync_uuid | _ROLE_BIT if primary else sync_uuid & ~_ROLE_BIT
        return GenerationIds(cur, 0, self.history)

    def finish_resync_as_target(self, source: GenerationIds, *, primary: bool) -> GenerationIds:
        """Resync end on the target: copy the source's tuple, then rotate the bitmap UUID out."""
        cur = source.current | _ROLE_BIT if primary else source.current & ~_ROLE_BIT
        return GenerationIds(cur, source.bitmap, source.history).set_bitmap(0)

    def finish_resync_as_source(self) -> GenerationIds:
        return self.set_bitmap(0)


class Sync(enum.IntEnum):
    """DRBD's handshake result ("hg"); positive means this node is the sync source."""

    SPLIT_BRAIN_AUTO = 100
    SOURCE_FULL = 2
    SOURCE_BITMAP = 1
    NONE = 0
    TARGET_BITMAP = -1
    TARGET_FULL = -2
    SPLIT_BRAIN = -100
    UNRELATED = -1000


class UuidFlags(enum.IntFlag):
    """Flags sent with the UUIDs in the handshake (P_UUIDS uuid[UI_FLAGS])."""

    DISCARD_MY_DATA = 1
    CRASHED_PRIMARY = 2
    INCONSISTENT = 4
    SKIP_INITIAL_SYNC = 8


@dataclass(frozen=True)
class Side:
    """What `uuid_compare` needs of one side."""

    gi: GenerationIds
    primary: bool = False
    crashed_primary: bool = False


@dataclass(frozen=True)
class Comparison:
    result: Sync
    rule: int
    self_gi: GenerationIds            # possibly corrected (rules 34, 71)
    peer_gi: GenerationIds            # possibly corrected (rules 35, 51)
    messages: tuple[str, ...] = field(default=())


def uuid_compare(me: Side, peer: Side, *, resolve_conflicts: bool) -> Comparison:
    """DRBD's drbd_uuid_compare. `resolve_conflicts` is the fixed per-connection tie flag."""
    s, p = me.gi, peer.gi
    self_cur, peer_cur = _m(s.current), _m(p.current)

    def done(result: Sync, rule: int, sg: GenerationIds = s, pg: GenerationIds = p,
             *msgs: str) -> Comparison:
        return Comparison(result, rule, sg, pg, tuple(msgs))

    if self_cur == UUID_JUST_CREATED and peer_cur == UUID_JUST_CREATED:
        return done(Sync.NONE, 10)
    if self_cur in (UUID_JUST_CREATED, 0) and peer_cur != UUID_JUST_CREATED:
        return done(Sync.TARGET_FULL, 20)
    if self_cur != UUID_JUST_CREATED and peer_cur in (UUID_JUST_CREATED, 0):
        return done(Sync.SOURCE_FULL, 30)

    if self_cur == peer_cur:
        if p.bitmap == 0 and s.bitmap != 0:
            if _m(s.bitmap) == _m(p.history[0]) and _m(s.history[0]) == _m(p.history[1]):
                fixed = GenerationIds(s.current, 0, (s.bitmap, s.history[0]))
                return done(Sync.SOURCE_BITMAP, 34, fixed, p,
                            "was SyncSource, missed the resync finished event, corrected myself")
            return done(Sync.SOURCE_BITMAP, 36, s, p,
                        "was SyncSource (peer failed to write sync_uuid)")
        if s.bitmap == 0 and p.bitmap != 0:
            if _m(s.history[0]) == _m(p.bitmap) and _m(s.history[1]) == _m(p.history[0]):
                fixed = GenerationIds(p.current, 0, (p.bitmap, p.history[0]))
                return done(Sync.TARGET_BITMAP, 35, s, fixed,
                            "was SyncTarget, peer missed the resync finished event, "
                            "corrected peer")
            return done(Sync.TARGET_BITMAP, 37, s, p, "was SyncTarget (failed to write sync_uuid)")
        # Common power [off|failure]: rct bit 0 = I crashed as Primary, bit 1 = the peer did.
        rct = (1 if me.crashed_primary else 0) + (2 if peer.crashed_primary else 0)
        if rct == 0:
            return done(Sync.NONE, 40)
        if me.primary or peer.primary:
            if me.primary and peer.primary:
                return done(Sync.SPLIT_BRAIN, 41, s, p,
                            "Equivalent unrotated UUIDs, but both are primary. "
                            "Can not resolve this.")
            return done(Sync.SOURCE_BITMAP if me.primary else Sync.TARGET_BITMAP, 41)
        if rct == 1:
            return done(Sync.SOURCE_BITMAP, 40)
        if rct == 2:
            return done(Sync.TARGET_BITMAP, 40)
        return done(Sync.TARGET_BITMAP if resolve_conflicts else Sync.SOURCE_BITMAP, 40)

    if self_cur == _m(p.bitmap):
        return done(Sync.TARGET_BITMAP, 50)

    if self_cur == _m(p.history[0]):
        if (_m(p.history[0]) + UUID_NEW_BM_OFFSET) & _MASK64 == _m(p.bitmap):
            # The last P_SYNC_UUID did not get through: undo the peer's resync start.
            fixed = GenerationIds(p.current, p.history[0], (p.history[1], p.history[1]))
            return done(Sync.TARGET_BITMAP, 51, s, fixed, "Lost last syncUUID packet, corrected")

    if self_cur in (_m(p.history[0]), _m(p.history[1])):
        return done(Sync.TARGET_FULL, 60)

    if _m(s.bitmap) == peer_cur:
        return done(Sync.SOURCE_BITMAP, 70)

    if _m(s.history[0]) == peer_cur:
        if (_m(s.history[0]) + UUID_NEW_BM_OFFSET) & _MASK64 == _m(s.bitmap):
            fixed = GenerationIds(s.current, s.history[0], (s.history[1], s.history[1]))
            return done(Sync.SOURCE_BITMAP, 71, fixed, p,
                        "Last syncUUID did not get through, corrected")

    if peer_cur in (_m(s.history[0]), _m(s.history[1])):
        return done(Sync.SOURCE_FULL, 80)

    if _m(s.bitmap) == _m(p.bitmap) and _m(s.bitmap) != 0:
        return done(Sync.SPLIT_BRAIN_AUTO, 90)

    if {_m(s.history[0]), _m(s.history[1])} & {_m(p.history[0]), _m(p.history[1])}:
        return done(Sync.SPLIT_BRAIN, 100)

    return done(Sync.UNRELATED, 100)
