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
