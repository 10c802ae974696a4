"""The lease keeper's etcd clients: the local member first, another member while it is down.

Owns nothing in etcd; owns which member the `ha-keepalive` thread renews through. A
node's daemon talks to its own etcd member, so a crash of that member alone (its
supervisor restarts it in a second or two, longer under load) used to stop the lease
renewals, and past the self-fence deadline the watchdog power-cycled a node whose
guests, network and peers were all fine. A renewal is just as valid through any
member of the quorum (etcd forwards it to the leader), so after `SWITCH_AFTER`
failed attempts in a row the keeper renews through the other members' client URLs,
learnt from the member list while the local member answered, and goes back to the
local member after `RETURN_AFTER` seconds. Safety is unchanged: a node cut off from
the quorum reaches no member at all and its lease expires as before.
"""

from __future__ import annotations

import logging
import time

from binome.store.client import Store

log = logging.getLogger("binome.ha")

SWITCH_AFTER = 2        # failed renewals in a row (0.2 s apart) before another member;
                        # one that hung until its timeout counts for both (a frozen
                        # member costs a full timeout per attempt, a dead one nothing)
RETURN_AFTER = 10.0     # seconds on another member before trying the local one again
PEERS_REFRESH = 30.0    # seconds between member-list reads through the local member
PEERS_TIMEOUT = 1.0


class KeeperLink:
    """Which etcd member the keeper renews through. Used from the keeper's own loop only."""

    def __init__(self, node: str) -> None:
        self.node = node
        self._source: Store | None = None     # the daemon's client of the local member
        self._local: Store | None = None      # the keeper's clone of it
        self._remote: Store | None = None     # a clone to another member, while in use
        self._remote_since = 0.0
        self._peers: list[str] = []           # other members' client URLs
        self._peers_at = -PEERS_REFRESH
        self._next_peer = 0
        self.failures = 0

    async def store(self, source: Store | None) -> Store | None:
        """The client to renew through now (`source`: the daemon's current client of its
        local member; a new one, after the cluster service replaced it, is cloned)."""
        if source is not self._source:
            await self.close()
            self._source = source
            self._local = source.clone() if source is not None else None
        if self._remote is not None:
            if time.monotonic() - self._remote_since < RETURN_AFTER:
                return self._remote
            log.info("%s: lease renewals go back to the local etcd member", self.node)
            await self._drop_remote()
        return self._local

    async def succeeded(self, store: Store) -> None:
        self.failures = 0
        if store is self._local and time.monotonic() - self._peers_at >= PEERS_REFRESH:
            self._peers_at = time.monotonic()
            try:
                members = await store.members(timeout=PEERS_TIMEOUT)
            except Exception as exc:   # the renewal worked; the list can wait
                log.debug("%s: member list for the lease keeper: %s", self.node, exc)
                return
            own = store.url
            self._peers = [url for m in members if not m.is_learner
                           for url in m.client_urls[:1] if url.rstrip("/") != own]

    async def failed(self, *, hung: bool = False) -> None:
        """A renewal attempt failed (`hung`: only at its timeout): after SWITCH_AFTER in
        a row, try the next member."""
        self.failures += SWITCH_AFTER if hung else 1
        if self.failures < SWITCH_AFTER or not self._peers or self._local is None:
            return
        await self._drop_remote()
        url = self._peers[self._next_peer % len(self._peers)]
        self._next_peer += 1
        self._remote = self._local.clone(url)
        self._remote_since = time.monotonic()
        self.failures = 0
        log.warning("%s: lease renewals failing through the local etcd member; renewing "
                    "through %s meanwhile", self.node, url)

    def member_urls(self, own: str) -> list[str]:
        """`own` (this node's member) first, then the others' client URLs as last learnt."""
        return [own, *(u for u in self._peers if u.rstrip("/") != own.rstrip("/"))]

    async def _drop_remote(self) -> None:
        if self._remote is not None:
            await self._remote.close()
            self._remote = None

    async def close(self) -> None:
        await self._drop_remote()
        if self._local is not None:
            await self._local.close()
        self._local = self._source = None
