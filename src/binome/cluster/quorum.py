"""The quorum view (pure): votes, quorum and flags computed from etcd membership and probes.

Quorum is the etcd cluster's majority and nothing else: `quorate` is true only
when a linearizable read succeeded. Votes are informational, counted the way
`pvecm status` shows them: one per voting member (nodes and the witness;
learners that are still joining do not vote).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class MemberView:
    name: str
    member_id: int
    role: str            # node | witness | unknown
    nodeid: int
    votes: int
    online: bool
    is_learner: bool
    address: str


@dataclass
class QuorumView:
    quorate: bool = False
    members: list[MemberView] = field(default_factory=list)
    checked_at: float = 0.0
    override: dict[str, Any] | None = None

    @property
    def expected_votes(self) -> int:
        return sum(m.votes for m in self.members if not m.is_learner)

    @property
    def total_votes(self) -> int:
        return sum(m.votes for m in self.members if not m.is_learner and m.online)

    @property
    def quorum(self) -> int:
        return self.expected_votes // 2 + 1

    @property
    def has_witness(self) -> bool:
        return any(m.role == "witness" and not m.is_learner for m in self.members)

    @property
    def node_count(self) -> int:
        return sum(1 for m in self.members if m.role != "witness" and not m.is_learner)

    @property
    def flags(self) -> list[str]:
        flags = ["Quorate"] if self.quorate else []
        if self.has_witness:
            flags.append("Witness")
        if self.override:
            flags.append("ExpectedOverride")
        return flags

    @property
    def warnings(self) -> list[str]:
        out = []
        if self.node_count == 2 and not self.has_witness:
            out.append("two nodes without a witness: losing either node loses quorum "
                       "(add one with 'binome witness join')")
        if not self.quorate and self.members:
            out.append(f"no quorum: {self.total_votes} of {self.expected_votes} votes, "
                       f"{self.quorum} needed; HA actions and configuration changes are blocked")
        if self.override:
            out.append(f"expected votes were overridden to {self.override.get('votes')} by "
                       f"{self.override.get('user')}; evicted members must rejoin")
        return out


# A node that starts without quorum is joining its peers, not losing them: its etcd
# member waits for the others (they may be booting too). Only past this long without a
# first quorum is that worth an alert.
STARTUP_GRACE = 60.0


class QuorumTransitions:
    """Which quorum checks are announced (cluster log, `quorum-lost`/`-regained` events).

    A loss is announced at the first failed check after a quorate one, or once a node
    that never had quorum since `start` stayed without it for `grace` seconds (a
    daemon starting before its peers is not a loss). A regain is announced only after
    an announced loss: a node whose first checks fail and then succeed says nothing.
    Pure: the caller passes the checks' results and a monotonic clock.
    """

    def __init__(self, grace: float = STARTUP_GRACE) -> None:
        self.grace = grace
        self.lost_announced = False
        self._ever_quorate = False
        self._started: float | None = None

    def start(self, now: float) -> None:
        """The quorum checks (re)start: the startup grace runs from here until a quorum."""
        if self._started is None:
            self._started = now

    def reset(self) -> None:
        """The node left its cluster: whatever it announced of it no longer applies."""
        self.lost_announced = self._ever_quorate = False
        self._started = None

    def observe(self, quorate: bool, now: float) -> str | None:
        """One check's result: "lost", "regained" (to announce) or None."""
        if self._started is None:
            self._started = now
        if quorate:
            self._ever_quorate = True
            if self.lost_announced:
                self.lost_announced = False
                return "regained"
            return None
        if self.lost_announced:
            return None
        if self._ever_quorate or now - self._started >= self.grace:
            self.lost_announced = True
            return "lost"
        return None

    def never_quorate(self) -> bool:
        """No check succeeded since the start (a loss then is "no quorum since start")."""
        return not self._ever_quorate
