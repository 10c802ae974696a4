"""A virtual etcd: members, a raft-like leader, quorum per member, leases with TTL, revisions.

The model keeps what HA safety depends on and nothing else:

- **Quorum**: a leader exists only while it reaches a majority of the members
  (itself included); a member is quorate while it reaches the leader. When
  the leader loses its majority, nobody is quorate until a new leader is
  elected `election` ms later among the members that reach a majority
  (first in `preference` order: the daemon keeps leadership on the witness,
  see docs/ha.md). Reachability is symmetric and comes from the world
  (power, cluster links, partitions).
- **Leases**: granted, renewed and revoked only through a quorate member;
  they expire on the leader's clock at `renewal + ttl`. Like etcd without
  lease checkpoints, a new leader extends every lease to at least
  `now + ttl`: expiry can only come later than the holder expects, never
  earlier. Keys attached to a lease vanish with it.
- **Revisions**: one global counter; each key remembers the revision of its
  last change, and a transaction compares key revisions before writing.

Values are stored as JSON text so nobody can mutate a stored document in place.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass
class Lease:
    id: int
    owner: str
    ttl: int           # ms
    expiry: int        # ms, leader clock
    renewed: int       # ms, when the store last saw a renewal (or the grant)


@dataclass
class Key:
    value: str
    mod_revision: int
    lease: int | None


class VirtualEtcd:
    def __init__(self, members: list[str], preference: list[str], election: int,
                 reach: Callable[[str, str], bool], up: Callable[[str], bool],
                 log: Callable[[str, str], None]) -> None:
        self.members = list(members)
        self.preference = list(preference)
        self.election = election
        self._reach = reach
        self._up = up
        self._log = log
        self.leader: str | None = None
        self.electing_since: int | None = None
        self.revision = 1
        self.kv: dict[str, Key] = {}
        self.leases: dict[int, Lease] = {}
        self._next_lease = 1
        self.lease_gone: dict[str, tuple[int, bool]] = {}   # owner -> (when, expired?)
        self._quorate: dict[str, bool] = {}    # cache, valid until invalidate() or a new leader

    # ------------------------------------------------------------ membership and quorum

    def invalidate(self) -> None:
        """The world's topology changed (power, links, partitions): forget cached answers."""
        self._quorate.clear()

    def reach(self, a: str, b: str) -> bool:
        return (a == b and self._up(a)) or (self._up(a) and self._up(b) and self._reach(a, b))

    def can_lead(self, member: str) -> bool:
        return (self._up(member)
                and sum(self.reach(member, m) for m in self.members) > len(self.members) // 2)

    def quorate(self, member: str) -> bool:
        cached = self._quorate.get(member)
        if cached is None:
            cached = self.leader is not None and self.reach(member, self.leader)
            self._quorate[member] = cached
        return cached

    def refresh(self, now: int) -> int | None:
        """Re-evaluate leadership; returns when to call again to finish an election."""
        if self.leader is not None and not self.can_lead(self.leader):
            self._log("warn", f"leader {self.leader} lost its majority; election started")
            self.leader = None
            self.invalidate()
            self.electing_since = now
        if self.leader is not None:
            return None
        candidates = [m for m in self.preference if self.can_lead(m)]
        if not candidates:
            self.electing_since = None
            return None
        if self.electing_since is None:
            self.electing_since = now
        if now - self.electing_since < self.election:
            return self.electing_since + self.election
        self.leader = candidates[0]
        self.invalidate()
        self.electing_since = None
        for lease in self.leases.values():
            lease.expiry = max(lease.expiry, now + lease.ttl)
        self._log("info", f"{self.leader} elected leader")
        return None

    def boot_leader(self) -> None:
        """At time 0 the cluster is already formed: no election delay."""
        candidates = [m for m in self.preference if self.can_lead(m)]
        self.leader = candidates[0] if candidates else None
        self.invalidate()

    # ------------------------------------------------------------ keys

    def get(self, key: str) -> tuple[Any, int]:
        entry = self.kv.get(key)
        if entry is None:
            return None, 0
        return json.loads(entry.value), entry.mod_revision

    def prefix(self, prefix: str) -> dict[str, tuple[Any, int]]:
        return {k: (json.loads(e.value), e.mod_revision)
                for k, e in sorted(self.kv.items()) if k.startswith(prefix)}

    def txn(self, compares: Mapping[str, int], puts: Mapping[str, Any] | None = None,
            deletes: Iterable[str] = (), lease: int | None = None) -> int | None:
        """All-or-nothing: if every key's revision matches (0 = absent), apply; else None."""
        for key, rev in compares.items():
            entry = self.kv.get(key)
            if (entry.mod_revision if entry else 0) != rev:
                return None
        self.revision += 1
        for key, value in (puts or {}).items():
            self.kv[key] = Key(json.dumps(value, sort_keys=True), self.revision, lease)
        for key in deletes:
            self.kv.pop(key, None)
        return self.revision

    def put(self, key: str, value: Any, lease: int | None = None) -> int:
        rev = self.txn({}, {key: value}, lease=lease)
        assert rev is not None
        return rev

    # ------------------------------------------------------------ leases

    def grant(self, owner: str, ttl: int, now: int) -> int:
        lease = Lease(self._next_lease, owner, ttl, now + ttl, now)
        self._next_lease += 1
        self.leases[lease.id] = lease
        self.lease_gone.pop(owner, None)
        return lease.id

    def keepalive(self, lease_id: int, now: int) -> bool:
        lease = self.leases.get(lease_id)
        if lease is None:
            return False
        lease.expiry = max(lease.expiry, now + lease.ttl)
        lease.renewed = now
        return True

    def revoke(self, lease_id: int, now: int) -> None:
        self._drop(lease_id, now, expired=False)

    def expire(self, now: int) -> list[Lease]:
        """Expire due leases (only a leader expires leases); returns them."""
        if self.leader is None:
            return []
        gone = [lease for lease in self.leases.values() if lease.expiry <= now]
        for lease in gone:
            self._drop(lease.id, now, expired=True)
        return gone

    def _drop(self, lease_id: int, now: int, *, expired: bool) -> None:
        lease = self.leases.pop(lease_id, None)
        if lease is None:
            return
        self.lease_gone[lease.owner] = (now, expired)
        attached = [k for k, e in self.kv.items() if e.lease == lease_id]
        if attached:
            self.revision += 1
            for key in attached:
                del self.kv[key]

    def lease_of(self, owner: str) -> Lease | None:
        """The owner's most recently renewed lease (a rebooted node has a new one)."""
        mine = [lease for lease in self.leases.values() if lease.owner == owner]
        return max(mine, key=lambda lease: (lease.renewed, lease.id), default=None)
