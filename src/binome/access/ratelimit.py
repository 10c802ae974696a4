"""Login rate limiting per user and per source address, time injected (pure).

A sliding window of recent failures: after `user_limit` failures for one user id, or
`source_limit` from one address, within `window` seconds, further attempts are refused
until the oldest counted failure leaves the window. A success clears the user's count
(not the source's: one good password must not reset an address spraying many users).
Counts live in the memory of the node that answered: an attacker spreading over nodes
gets at most the node count times the limit, which stays small.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass
class LoginRateLimiter:
    user_limit: int = 5
    source_limit: int = 20
    window: float = 300.0
    _users: dict[str, deque[float]] = field(default_factory=dict)
    _sources: dict[str, deque[float]] = field(default_factory=dict)

    def _prune(self, table: dict[str, deque[float]], key: str, now: float) -> deque[float]:
        q = table.get(key)
        if q is None:
            return deque()
        while q and q[0] <= now - self.window:
            q.popleft()
        if not q:
            del table[key]
        return q

    def retry_after(self, userid: str, source: str, now: float) -> float:
        """Seconds the caller must wait before trying again; 0 if it may try now."""
        wait = 0.0
        for table, key, limit in ((self._users, userid.lower(), self.user_limit),
                                  (self._sources, source, self.source_limit)):
            q = self._prune(table, key, now)
            if len(q) >= limit:
                wait = max(wait, q[len(q) - limit] + self.window - now)
        return wait

    def failure(self, userid: str, source: str, now: float) -> None:
        self._users.setdefault(userid.lower(), deque()).append(now)
        self._sources.setdefault(source, deque()).append(now)

    def success(self, userid: str) -> None:
        self._users.pop(userid.lower(), None)

    def message(self, wait: float) -> str:
        return f"too many failed logins, try again in {int(wait) + 1} seconds"

    def prune(self, now: float) -> None:
        """Forget windows that emptied (call now and then so memory stays bounded)."""
        for table in (self._users, self._sources):
            for key in list(table):
                self._prune(table, key, now)
