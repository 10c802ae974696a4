"""The lease keeper's etcd clients: the local member first, another member while it is down.

Owns nothing in etcd; owns which member the `ha-keepalive` thread renews through. A
node's daemon talks to its own etcd member, so a crash of that member alone (its
supervisor restarts it in a second or two, longer under load) used to stop the lease
renewals, and past the self-fence deadline the watchdog power-cycled a node whose
guests, network and peers were all fine. A renewal is just as valid through any
member of the quorum (etcd forwards it to the leader), so after a failed attempt the
keeper renews through the other members' client URLs too, learnt from the member
list while the local member answered, and goes back to the local member after
`RETURN_AFTER` seconds. Safety is unchanged: a node cut off from
the quorum reaches no member at all and its lease expires as before.

After a failed renewal the keeper does not walk the members one at a time: its
retries go to every member at once (`fanout`), over clients kept connected, and the
first member that renews wins (and is kept for `RETURN_AFTER` when it is not the
local one). Walking them cost a switch per dead member tried, each after failures
of its own: the soak caught it (seed 18, fault 14) when renewals had moved to the
witness's member during a degraded link, the witness then died while it led etcd,
and the switches plus the election took the node past its self-fence deadline.
A renewal sent to a member while etcd has no leader waits there for the new one,
so the fan-out also renews as soon as any member hears the new leader.
"""

from __future__ import annotations

import logging
import time

from binome.store.client import Store

log = logging.getLogger("binome.ha")

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
        self._fanout: dict[str, Store] = {}   # url -> a client kept for the fan-out
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

    def fanout(self, current: Store) -> list[Store]:
        """Clients of every known member, `current` first, for a retry sent to all at
        once. Clients other than the local one and `current` are kept between retries
        (connected: no TLS handshake at the moment a member dies)."""
        stores = [current]
        urls = {current.url.rstrip("/")}
        for candidate in (self._local, self._remote):
            if candidate is not None and candidate.url.rstrip("/") not in urls:
                stores.append(candidate)
                urls.add(candidate.url.rstrip("/"))
        template = self._local or current
        for url in self._peers:
            key = url.rstrip("/")
            if key in urls:
                continue
            client = self._fanout.get(key)
            if client is None:
                client = self._fanout[key] = template.clone(url)
            stores.append(client)
            urls.add(key)
        return stores

    async def renewed_through(self, store: Store) -> None:
        """A fan-out retry renewed through `store`: keep using it (as the remote member,
        for RETURN_AFTER, when it is not the local one)."""
        if store is not self._local and store is not self._remote:
            await self._drop_remote()
            self._fanout.pop(store.url.rstrip("/"), None)
            self._remote = store
            self._remote_since = time.monotonic()
            log.warning("%s: lease renewals failing through the local etcd member; "
                        "renewing through %s meanwhile", self.node, store.url)
        await self.succeeded(store)

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

    async def failed(self) -> None:
        """A renewal attempt failed: the next one fans out to every member (`fanout`)."""
        self.failures += 1

    def member_urls(self, own: str) -> list[str]:
        """`own` (this node's member) first, then the others' client URLs as last learnt."""
        return [own, *(u for u in self._peers if u.rstrip("/") != own.rstrip("/"))]

    async def _drop_remote(self) -> None:
        if self._remote is not None:
            await self._remote.close()
            self._remote = None

    async def close(self) -> None:
        await self._drop_remote()
        for client in self._fanout.values():
            await client.close()
        self._fanout.clear()
        if self._local is not None:
            await self._local.close()
        self._local = self._source = None
