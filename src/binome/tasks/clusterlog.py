"""The cluster log: membership, quorum, fencing, HA and admin events, visible on every node.

Entries live in etcd under /binome/clusterlog/ (bounded). An entry written
while this node has no quorum cannot reach etcd: it is kept in a local pending
queue (and served by this node's /cluster/log meanwhile) and flushed as soon
as quorum returns, so what happened during an outage is never lost.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from binome.store import keys

if TYPE_CHECKING:
    from binome.store.client import Store

log = logging.getLogger("binome.clusterlog")

PRI = {"emerg": 0, "alert": 1, "crit": 2, "err": 3, "warning": 4, "notice": 5, "info": 6,
       "debug": 7}
MAX_ENTRIES = 2000


class ClusterLog:
    def __init__(self, node: str) -> None:
        self.node = node
        self.store: Store | None = None
        self.pending: deque[dict[str, Any]] = deque(maxlen=MAX_ENTRIES)
        self._seq = 0
        self._flushing = asyncio.Lock()

    def entry(self, msg: str, *, tag: str = "binome", user: str = "root@pam",
              pri: str = "info") -> dict[str, Any]:
        self._seq += 1
        now = time.time()
        uid = f"{int(now * 1e6):016d}-{self.node}-{self._seq:06d}"
        return {"uid": uid, "time": int(now), "node": self.node, "pid": os.getpid(),
                "tag": tag, "user": user, "pri": PRI[pri], "msg": msg}

    async def write(self, msg: str, **kw: Any) -> dict[str, Any]:
        """Record an event; never raises (a log write must not fail an action)."""
        entry = self.entry(msg, **kw)
        level = logging.WARNING if entry["pri"] <= PRI["warning"] else logging.INFO
        log.log(level, "cluster log: %s", msg, extra={"tag": entry["tag"], "user": entry["user"]})
        self.pending.append(entry)
        await self.flush()
        return entry

    async def flush(self) -> bool:
        async with self._flushing:
            while self.pending and self.store is not None:
                entry = self.pending[0]
                try:
                    await self.store.put(keys.cluster_log(entry["uid"]), entry)
                except Exception:
                    return False
                if self.pending and self.pending[0] is entry:
                    self.pending.popleft()
            return not self.pending

    async def trim(self) -> None:
        if self.store is None:
            return
        entries = await self.store.get_prefix(keys.CLUSTER_LOG)
        for old in entries[: max(0, len(entries) - MAX_ENTRIES)]:
            await self.store.delete(old.key)

    async def read(self, max_entries: int = 50) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = []
        if self.store is not None:
            try:
                entries = [e.value for e in await self.store.get_prefix(keys.CLUSTER_LOG,
                                                                         serializable=True)]
            except Exception:
                entries = []
        seen = {e["uid"] for e in entries}
        entries += [e for e in self.pending if e["uid"] not in seen]
        entries.sort(key=lambda e: e["uid"], reverse=True)
        return entries[:max_entries]
