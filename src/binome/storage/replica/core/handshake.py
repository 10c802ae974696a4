"""The sync handshake decision (pure, no I/O): DRBD's `drbd_sync_handshake`.

After both sides exchanged UUIDs, flags, bitmap weights and states, this
decides: Connected without resync, WFBitMapS / WFBitMapT (bitmap-based or full
resync, and in which direction), or dropping the connection (StandAlone),
with the handlers to run and DRBD's log lines. `uuid_compare` gives the first
answer; the post-processing (disk-state override, after-sb policies,
discard-my-data, rr-conflict) follows DRBD 8.4's `drbd_sync_handshake` (`drbd_receiver.c`) in order.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from binome.storage.replica.core.splitbrain import (
    AfterSb,
    SplitBrainView,
    recover_0p,
    recover_1p,
    recover_2p,
)
from binome.storage.replica.core.states import ConnState, DiskState
from binome.storage.replica.core.uuids import Comparison, Side, Sync, uuid_compare


class RrConflict(enum.StrEnum):
    DISCONNECT = "disconnect"
    CALL_PRI_LOST = "call-pri-lost"
    VIOLENTLY = "violently"


@dataclass(frozen=True)
class Policies:
    after_sb_0pri: AfterSb = AfterSb.DISCONNECT
    after_sb_1pri: AfterSb = AfterSb.DISCONNECT
    after_sb_2pri: AfterSb = AfterSb.DISCONNECT
    always_asbp: bool = False
    rr_conflict: RrConflict = RrConflict.DISCONNECT


@dataclass(frozen=True)
class NetSettings:
    """What each side announces in P_PROTOCOL; both must agree (receive_protocol)."""

    protocol: str
    after_sb_0pri: AfterSb
    after_sb_1pri: AfterSb
    after_sb_2pri: AfterSb
    allow_two_primaries: bool
    discard_my_data: bool = False
    verify_alg: str = ""
    csums_alg: str = ""


def _convert_after_sb(peer: AfterSb) -> AfterSb:
    """The peer's policy seen from here: its discard-local is our discard-remote."""
    if peer == AfterSb.DISCARD_REMOTE:
        return AfterSb.DISCARD_LOCAL
    if peer == AfterSb.DISCARD_LOCAL:
        return AfterSb.DISCARD_REMOTE
    return peer


def incompatible(mine: NetSettings, theirs: NetSettings) -> str | None:
    """DRBD's "incompatible %s settings" check; None when the two sides may connect."""
    if theirs.protocol != mine.protocol:
        return "incompatible protocol settings"
    for n in (0, 1, 2):
        attr = f"after_sb_{n}pri"
        if _convert_after_sb(getattr(theirs, attr)) != getattr(mine, attr):
            return f"incompatible after-sb-{n}pri settings"
    if theirs.allow_two_primaries != mine.allow_two_primaries:
        return "incompatible allow-two-primaries settings"
    if theirs.discard_my_data and mine.discard_my_data:
        return "incompatible discard-my-data settings"
    # Both sides compute the digests they compare (DRBD: "Different verify-alg settings").
    if theirs.verify_alg != mine.verify_alg:
        return "incompatible verify-alg settings"
    if theirs.csums_alg != mine.csums_alg:
        return "incompatible csums-alg settings"
    return None


@dataclass(frozen=True)
class HandshakeInput:
    me: Side
    peer: Side
    my_disk: DiskState
    peer_disk: DiskState
    my_changes: int                 # my bitmap weight (bits set)
    peer_changes: int
    resolve_conflicts: bool
    discard_my_data: bool = False
    peer_discard_my_data: bool = False
    policies: Policies = field(default_factory=Policies)
    can_demote: bool = True         # this Primary could demote now (no open clients)
    dry_run: bool = False


@dataclass(frozen=True)
class SplitBrain:
    """A split brain this handshake found: resolved (by which policy, which side keeps its
    data) or not (the connection is dropped; the administrator decides)."""

    resolved: bool
    policy: str                     # "after-sb-1pri discard-secondary", "discard-my-data", ...
    primaries: int                  # Primaries at connect time (which after-sb slot applied)
    survivor: str | None = None     # "self" or "peer" when resolved
    # Unresolved here only: the peer's (mirrored) decision was a resync, refused on this
    # side (a Primary that cannot give up its role, rr-conflict, an inconsistent source).
    alone: bool = False


@dataclass(frozen=True)
class HandshakeOutcome:
    conn: ConnState | None          # None: drop the connection and go StandAlone
    result: Sync                    # final decision after post-processing
    full_sync: bool                 # set every bitmap bit before the resync
    comparison: Comparison
    handlers: tuple[str, ...] = ()
    demote: bool = False            # demote this node (call-pri-lost-after-sb won)
    log: tuple[str, ...] = ()
    split_brain: SplitBrain | None = None


def split_brain_record(previous: dict[str, Any] | None, out: HandshakeOutcome, *, me: str,
                       peer: str, me_primary: bool, peer_primary: bool,
                       now: float) -> dict[str, Any] | None:
    """The volume's split-brain status after a handshake (`status()["split_brain"]`).

    `state` is "detected" while a split brain stays unresolved and "resolved" once a
    handshake resolved it: by an after-sb policy, by `discard-my-data`, or by hand another
    way (the next connection needed no split-brain decision, e.g. after an invalidate).
    A repeated detection (the source side retries the connection) keeps the first record:
    `time` identifies one split brain, so the daemon says it once. Both nodes compute the
    same names, so each event can be sent by one of them.
    """
    found = out.split_brain
    if found is None:
        if previous is not None and previous.get("state") == "detected" \
                and out.conn is not None:
            survivor, victim = (me, peer) if out.result > 0 else (peer, me)
            return {**previous, "state": "resolved", "policy": "manual",
                    "survivor": survivor, "victim": victim, "resolved_time": now}
        return previous
    if not found.resolved:
        if previous is not None and previous.get("state") == "detected":
            return previous
        # Who says it: both sides found it unresolved (mirrored decisions), so the first
        # name; or this side alone refused what the peer took for a resolution.
        return {"state": "detected", "policy": found.policy, "time": now,
                "primaries": [n for n, p in ((me, me_primary), (peer, peer_primary)) if p],
                "nodes": sorted((me, peer)),
                "reporter": me if found.alone else min(me, peer)}
    survivor, victim = (me, peer) if found.survivor == "self" else (peer, me)
    detected = previous.get("time") if previous is not None \
        and previous.get("state") == "detected" else now
    return {"state": "resolved", "policy": found.policy, "time": detected,
            "resolved_time": now, "survivor": survivor, "victim": victim,
            "primaries": [n for n, p in ((me, me_primary), (peer, peer_primary)) if p],
            "nodes": sorted((me, peer))}


def _slot_policy(p: Policies, primaries: int) -> str:
    return str((p.after_sb_0pri, p.after_sb_1pri, p.after_sb_2pri)[min(primaries, 2)])


def sync_handshake(h: HandshakeInput) -> HandshakeOutcome:
    log: list[str] = []
    handlers: list[str] = []
    demote = False
    split: SplitBrain | None = None
    cmp = uuid_compare(h.me, h.peer, resolve_conflicts=h.resolve_conflicts)
    log.extend(cmp.messages)
    log.append(f"uuid_compare()={int(cmp.result)} by rule {cmp.rule}")
    hg = int(cmp.result)

    def out(conn: ConnState | None, result: int, full: bool = False) -> HandshakeOutcome:
        found = split
        if found is not None and found.resolved and conn is None:
            # a policy chose a survivor, but the connection is refused after all (rr-conflict,
            # an inconsistent source): the split brain stays
            found = SplitBrain(False, found.policy, found.primaries, alone=True)
        return HandshakeOutcome(conn, Sync(result), full, cmp, tuple(handlers), demote,
                                tuple(log), found)

    if hg == Sync.UNRELATED:
        log.append("Unrelated data, aborting!")
        return out(None, hg)

    mydisk, peer_disk = h.my_disk, h.peer_disk
    if ((mydisk == DiskState.Inconsistent and peer_disk > DiskState.Inconsistent)
            or (peer_disk == DiskState.Inconsistent and mydisk > DiskState.Inconsistent)):
        full = hg == Sync.SPLIT_BRAIN or abs(hg) == 2
        hg = 1 if mydisk > DiskState.Inconsistent else -1
        if full:
            hg *= 2
        log.append(f"Becoming sync {'source' if hg > 0 else 'target'} due to disk states.")

    if (hg == Sync.NONE and (h.my_changes or h.peer_changes)
            and mydisk > DiskState.Inconsistent and peer_disk > DiskState.Inconsistent):
        # Departure from DRBD, which only logs "No resync, but N bits in bitmap!": equal
        # generations with bits set happen when a fenced Primary's peer comes back before
        # the fencing decided (the new generation is deferred), and those bits are writes
        # the peer may lack. Resync them: from the Primary, else from the side with more
        # bits, else by the tie flag (both sides reach the mirrored answer).
        log.append(f"No resync, but {h.my_changes} bits in bitmap!")
        if h.me.primary != h.peer.primary:
            source = h.me.primary
        elif h.my_changes != h.peer_changes:
            source = h.my_changes > h.peer_changes
        else:
            source = h.resolve_conflicts
        hg = 1 if source else -1
        log.append(f"Resyncing the out-of-sync blocks from {'this' if source else 'peer'} node.")

    pcount = int(h.me.primary) + int(h.peer.primary)
    slot = f"after-sb-{pcount}pri"
    if abs(hg) == 100:
        handlers.append("initial-split-brain")
        automatic = hg == Sync.SPLIT_BRAIN_AUTO or h.policies.always_asbp
        split = SplitBrain(False, f"{slot} {_slot_policy(h.policies, pcount)}" if automatic
                           else "none (the histories diverged: no after-sb policy applies "
                                "without always-asbp)", pcount)

    if hg == Sync.SPLIT_BRAIN_AUTO or (hg == Sync.SPLIT_BRAIN and h.policies.always_asbp):
        forced = hg == Sync.SPLIT_BRAIN
        view = SplitBrainView(
            self_was_primary=bool(h.me.gi.bitmap & 1), peer_was_primary=bool(h.peer.gi.bitmap & 1),
            self_changes=h.my_changes, peer_changes=h.peer_changes,
            resolve_conflicts=h.resolve_conflicts, self_primary=h.me.primary)
        p = h.policies
        if pcount == 0:
            rec = recover_0p(p.after_sb_0pri, view)
        elif pcount == 1:
            rec = recover_1p(p.after_sb_1pri, p.after_sb_0pri, view, can_demote=h.can_demote)
        else:
            rec = recover_2p(p.after_sb_2pri, p.after_sb_0pri, view, can_demote=h.can_demote)
        if rec.message:
            log.append(rec.message)
        if rec.handler:
            handlers.append(rec.handler)
            # pri-lost-after-sb: only this losing Primary refuses; the peer resyncs
            split = SplitBrain(False, f"{slot} {_slot_policy(p, pcount)}", pcount, alone=True)
        demote = rec.demote
        hg = int(rec.result)
        if abs(hg) < 100:
            log.append(f"Split-Brain detected, {pcount} primaries, automatically solved. "
                       f"Sync from {'peer' if hg < 0 else 'this'} node")
            split = SplitBrain(True, f"{slot} {_slot_policy(p, pcount)}", pcount,
                               "peer" if hg < 0 else "self")
            if forced:
                log.append("Doing a full sync, since UUIDs where ambiguous.")
                hg *= 2

    if hg == Sync.SPLIT_BRAIN:
        if h.discard_my_data and not h.peer_discard_my_data:
            hg = -1
        if not h.discard_my_data and h.peer_discard_my_data:
            hg = 1
        if abs(hg) < 100:
            log.append("Split-Brain detected, manually solved. "
                       f"Sync from {'peer' if hg < 0 else 'this'} node")
            split = SplitBrain(True, "discard-my-data", pcount, "peer" if hg < 0 else "self")

    if hg == Sync.SPLIT_BRAIN:
        log.append("Split-Brain detected but unresolved, dropping connection!")
        handlers.append("split-brain")
        return out(None, hg)

    if hg > 0 and mydisk <= DiskState.Inconsistent:
        log.append("I shall become SyncSource, but I am inconsistent!")
        return out(None, hg)

    # DRBD deliberately looks at the real role and disk here, not the negotiated disk.
    if hg < 0 and h.me.primary and not demote and h.my_disk >= DiskState.Consistent:
        if h.policies.rr_conflict == RrConflict.VIOLENTLY:
            log.append("Becoming SyncTarget, violating the stable-data assumption")
        else:
            if h.policies.rr_conflict == RrConflict.CALL_PRI_LOST:
                handlers.append("pri-lost")
            log.append("I shall become SyncTarget, but I am primary!")
            return out(None, hg)

    full = abs(hg) >= 2
    if h.dry_run:
        if hg == 0:
            log.append("dry-run connect: No resync, would become Connected immediately.")
        else:
            log.append(f"dry-run connect: Would become "
                       f"{'SyncSource' if hg > 0 else 'SyncTarget'}, doing a "
                       f"{'full' if full else 'bit-map based'} resync.")
        return out(None, hg, full)

    if full:
        log.append("Writing the whole bitmap, full sync required after drbd_sync_handshake.")
    if hg > 0:
        return out(ConnState.WFBitMapS, hg, full)
    if hg < 0:
        return out(ConnState.WFBitMapT, hg, full)
    if h.my_changes:
        log.append(f"No resync, but {h.my_changes} bits in bitmap!")
    return out(ConnState.Connected, hg)
