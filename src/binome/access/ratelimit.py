"""Login rate limiting per user and per source address, time injected (pure).

A sliding window of recent failures: after `user_limit` failures for one user id, or
failures for `source_limit` distinct user ids from one address, within `window` seconds,
further attempts are refused until the oldest counted failure leaves the window. The
source limit stops an address spraying many users; guesses at one user are the user
limit's job (so a client retrying one user does not lock its whole address out). A
success clears the user's count (not the source's: one good password must not reset an
address spraying many users).
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
    # source -> user id -> time of that user's last failure from the source: the source
    # limit counts *distinct* users (spraying), the user limit counts guesses per user
    _sources: dict[str, dict[str, float]] = field(default_factory=dict)

    def _prune(self, table: dict[str, deque[float]], key: str, now: float) -> deque[float]:
        q = table.get(key)
        if q is None:
            return deque()
        while q and q[0] <= now - self.window:
            q.popleft()
        if not q:
            del table[key]
        return q

    def _prune_source(self, source: str, now: float) -> list[float]:
        users = self._sources.get(source)
        if users is None:
            return []
        for userid, at in list(users.items()):
            if at <= now - self.window:
                del users[userid]
        if not users:
            del self._sources[source]
        return sorted(users.values())

    def retry_after(self, userid: str, source: str, now: float) -> float:
        """Seconds the caller must wait before trying again; 0 if it may try now."""
        wait = 0.0
        q = self._prune(self._users, userid.lower(), now)
        if len(q) >= self.user_limit:
            wait = q[len(q) - self.user_limit] + self.window - now
        times = self._prune_source(source, now)
        if len(times) >= self.source_limit:
            wait = max(wait, times[len(times) - self.source_limit] + self.window - now)
        return wait

    def failure(self, userid: str, source: str, now: float) -> None:
        self._users.setdefault(userid.lower(), deque()).append(now)
        self._sources.setdefault(source, {})[userid.lower()] = now

    def success(self, userid: str) -> None:
        self._users.pop(userid.lower(), None)

    def message(self, wait: float) -> str:
        return f"too many failed logins, try again in {int(wait) + 1} seconds"

    def prune(self, now: float) -> None:
        """Forget windows that emptied (call now and then so memory stays bounded)."""
        for key in list(self._users):
            self._prune(self._users, key, now)
        for source in list(self._sources):
            self._prune_source(source, now)
