"""After-split-brain recovery policies (pure, no I/O): DRBD's `drbd_asb_recover_0p/1p/2p`.

The policy for the number of Primaries *at connect time* picks a victim, or
gives up (`Sync.SPLIT_BRAIN`, i.e. disconnect). Results use the handshake's
sign convention: +1 "I am the sync source" (the peer is the victim), -1 "I am
the target" (I am the victim). "Changes" are the bits set in each side's
bitmap since the split; the role bit of the bitmap UUID tells who was Primary
when the split happened.

`discard-node-NAME` is resolved per side into `discard-local` or
`discard-remote` (DRBD's ASB_DISCARD_LOCAL/REMOTE). Demoting a losing Primary
for `call-pri-lost-after-sb` is the caller's job: it says whether demotion is
possible (`can_demote`), and the result says what to do.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from binome.storage.replica.core.uuids import Sync


class AfterSb(enum.StrEnum):
    DISCONNECT = "disconnect"
    DISCARD_YOUNGER_PRIMARY = "discard-younger-primary"
    DISCARD_OLDER_PRIMARY = "discard-older-primary"
    DISCARD_ZERO_CHANGES = "discard-zero-changes"
    DISCARD_LEAST_CHANGES = "discard-least-changes"
    DISCARD_LOCAL = "discard-local"
    DISCARD_REMOTE = "discard-remote"
    CONSENSUS = "consensus"
    DISCARD_SECONDARY = "discard-secondary"
    CALL_HELPER = "call-pri-lost-after-sb"
    VIOLENTLY = "violently-as0p"


ALLOWED_0PRI = frozenset({AfterSb.DISCONNECT, AfterSb.DISCARD_YOUNGER_PRIMARY,
                          AfterSb.DISCARD_OLDER_PRIMARY, AfterSb.DISCARD_ZERO_CHANGES,
                          AfterSb.DISCARD_LEAST_CHANGES, AfterSb.DISCARD_LOCAL,
                          AfterSb.DISCARD_REMOTE})
ALLOWED_1PRI = frozenset({AfterSb.DISCONNECT, AfterSb.CONSENSUS, AfterSb.VIOLENTLY,
                          AfterSb.DISCARD_SECONDARY, AfterSb.CALL_HELPER})
ALLOWED_2PRI = frozenset({AfterSb.DISCONNECT, AfterSb.VIOLENTLY, AfterSb.CALL_HELPER})
_ALLOWED = {0: ALLOWED_0PRI, 1: ALLOWED_1PRI, 2: ALLOWED_2PRI}


def parse_policy(text: str, primaries: int, *, my_name: str, peer_name: str) -> AfterSb:
    """Parse an `after-sb-Npri` keyword; `discard-node-NAME` becomes local/remote.

    Raises ValueError for a keyword that is unknown or not valid in this slot
    (DRBD accepts those and logs "Configuration error." at connect time; we
    refuse them when the volume is configured).
    """
    if text.startswith("discard-node-"):
        name = text.removeprefix("discard-node-")
        if name == my_name:
            policy = AfterSb.DISCARD_LOCAL
        elif name == peer_name:
            policy = AfterSb.DISCARD_REMOTE
        else:
            raise ValueError(f"after-sb-{primaries}pri: {text}: no node named {name!r}")
    else:
        try:
            policy = AfterSb(text)
        except ValueError:
            raise ValueError(f"after-sb-{primaries}pri: unknown policy {text!r}") from None
        if policy in (AfterSb.DISCARD_LOCAL, AfterSb.DISCARD_REMOTE):
            raise ValueError(f"after-sb-{primaries}pri: use discard-node-NAME")
    if policy not in _ALLOWED[primaries]:
        raise ValueError(f"after-sb-{primaries}pri: {text} is not valid with "
                         f"{primaries} primaries")
    return policy


@dataclass(frozen=True)
class SplitBrainView:
    """What the policies look at, seen from this node."""

    self_was_primary: bool      # role bit of my bitmap UUID (Primary when the split happened)
    peer_was_primary: bool
    self_changes: int           # bits set in my bitmap
    peer_changes: int
    resolve_conflicts: bool     # fixed per-connection tie flag (opposite on the two nodes)
    self_primary: bool = False  # role now


@dataclass(frozen=True)
class Recovery:
    result: Sync                # SOURCE_BITMAP, TARGET_BITMAP or SPLIT_BRAIN (disconnect)
    demote: bool = False        # this Primary lost and must demote now
    handler: str | None = None  # handler to run ("pri-lost-after-sb")
    message: str | None = None


def _tie(v: SplitBrainView) -> Sync:
    return Sync.TARGET_BITMAP if v.resolve_conflicts else Sync.SOURCE_BITMAP


def recover_0p(policy: AfterSb, v: SplitBrainView) -> Recovery:
    """after-sb-0pri (drbd_asb_recover_0p), including DRBD's fall-through chain."""
    if policy not in ALLOWED_0PRI:
        return Recovery(Sync.SPLIT_BRAIN, message="Configuration error.")
    if policy == AfterSb.DISCONNECT:
        return Recovery(Sync.SPLIT_BRAIN)
    if policy == AfterSb.DISCARD_LOCAL:
        return Recovery(Sync.TARGET_BITMAP)
    if policy == AfterSb.DISCARD_REMOTE:
        return Recovery(Sync.SOURCE_BITMAP)
    me, peer = v.self_was_primary, v.peer_was_primary
    message = None
    if policy == AfterSb.DISCARD_YOUNGER_PRIMARY:
        # The younger primary was Secondary at the split (role bit 0) and was promoted later.
        if not me and peer:
            return Recovery(Sync.TARGET_BITMAP)
        if me and not peer:
            return Recovery(Sync.SOURCE_BITMAP)
    if policy in (AfterSb.DISCARD_YOUNGER_PRIMARY, AfterSb.DISCARD_OLDER_PRIMARY):
        if not me and peer:
            return Recovery(Sync.SOURCE_BITMAP)
        if me and not peer:
            return Recovery(Sync.TARGET_BITMAP)
        message = ("Discard younger/older primary did not find a decision\n"
                   "Using discard-least-changes instead")
    # discard-zero-changes (also the first fallback of younger/older).
    if v.self_changes == 0 and v.peer_changes == 0:
        return Recovery(_tie(v), message=message)
    if v.peer_changes == 0:
        return Recovery(Sync.SOURCE_BITMAP, message=message)
    if v.self_changes == 0:
        return Recovery(Sync.TARGET_BITMAP, message=message)
    if policy == AfterSb.DISCARD_ZERO_CHANGES:
        return Recovery(Sync.SPLIT_BRAIN, message=message)
    # discard-least-changes: the side with fewer changes loses.
    if v.self_changes < v.peer_changes:
        return Recovery(Sync.TARGET_BITMAP, message=message)
    if v.self_changes > v.peer_changes:
        return Recovery(Sync.SOURCE_BITMAP, message=message)
    return Recovery(_tie(v), message=message)


def _pri_lost(hg: Recovery, *, must_demote: bool, can_demote: bool) -> Recovery:
    """call-pri-lost-after-sb: a losing Primary demotes, or runs the handler and disconnects."""
    if not must_demote:
        return hg
    if can_demote:
        return Recovery(hg.result, demote=True, message="Successfully gave up primary role.")
    return Recovery(Sync.SPLIT_BRAIN, handler="pri-lost-after-sb")


def recover_1p(policy: AfterSb, policy_0p: AfterSb, v: SplitBrainView, *,
               can_demote: bool) -> Recovery:
    """after-sb-1pri (drbd_asb_recover_1p)."""
    if policy not in ALLOWED_1PRI:
        return Recovery(Sync.SPLIT_BRAIN, message="Configuration error.")
    if policy == AfterSb.DISCONNECT:
        return Recovery(Sync.SPLIT_BRAIN)
    if policy == AfterSb.DISCARD_SECONDARY:
        return Recovery(Sync.SOURCE_BITMAP if v.self_primary else Sync.TARGET_BITMAP)
    hg = recover_0p(policy_0p, v)
    if policy == AfterSb.CONSENSUS:
        # Only accept the 0pri verdict when it makes the Secondary the victim.
        if hg.result == Sync.TARGET_BITMAP and not v.self_primary:
            return hg
        if hg.result == Sync.SOURCE_BITMAP and v.self_primary:
            return hg
        return Recovery(Sync.SPLIT_BRAIN)
    if policy == AfterSb.VIOLENTLY:
        return hg
    return _pri_lost(hg, must_demote=hg.result == Sync.TARGET_BITMAP and v.self_primary,
                     can_demote=can_demote)


def recover_2p(policy: AfterSb, policy_0p: AfterSb, v: SplitBrainView, *,
               can_demote: bool) -> Recovery:
    """after-sb-2pri (drbd_asb_recover_2p)."""
    if policy not in ALLOWED_2PRI:
        return Recovery(Sync.SPLIT_BRAIN, message="Configuration error.")
    if policy == AfterSb.DISCONNECT:
        return Recovery(Sync.SPLIT_BRAIN)
    hg = recover_0p(policy_0p, v)
    if policy == AfterSb.VIOLENTLY:
        return hg
    return _pri_lost(hg, must_demote=hg.result == Sync.TARGET_BITMAP, can_demote=can_demote)
