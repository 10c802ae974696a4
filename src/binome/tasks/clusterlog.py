"""The cluster log: membership, quorum, fencing, HA and admin events, visible on every node.

Entries live in etcd under /binome/clusterlog/ (bounded). An entry written
while this node has no quorum cannot reach etcd: it is kept in a local pending
queue (and served by this node's /cluster/log meanwhile) and flushed as soon
as quorum returns, so what happened during an outage is never lost. The
queue is also kept in a local file, so it survives a daemon restart.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

from binome import durable
from binome.store import keys

if TYPE_CHECKING:
    from binome.store.client import Store

log = logging.getLogger("binome.clusterlog")

PRI = {"emerg": 0, "alert": 1, "crit": 2, "err": 3, "warning": 4, "notice": 5, "info": 6,
       "debug": 7}
MAX_ENTRIES = 2000


class ClusterLog:
    def __init__(self, node: str, pending_path: Path | None = None) -> None:
        self.node = node
        self.store: Store | None = None
        self.pending: deque[dict[str, Any]] = deque(maxlen=MAX_ENTRIES)
        self.pending_path = pending_path
        self._seq = 0
        self._flushing = asyncio.Lock()
        self._background: set[asyncio.Task[bool]] = set()   # write_behind's flushes
        self._load_pending()

    def _load_pending(self) -> None:
        if self.pending_path is None or not self.pending_path.exists():
            return
        for line in self.pending_path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue   # a line torn by a crash
            if isinstance(entry, dict) and "uid" in entry:
                self.pending.append(entry)

    def _save_pending(self) -> None:
        if self.pending_path is None:
            return
        # Atomic but not fsynced: this rewrite only drops entries etcd already holds,
        # and losing it to a power cut re-sends them under the same uid key (idempotent),
        # while an fsync here would stall the event loop on every cluster-log write.
        durable.write_text(self.pending_path,
                           "".join(json.dumps(e) + "\n" for e in self.pending), sync=False)

    def entry(self, msg: str, *, tag: str = "binome", user: str = "root@pam",
              pri: str = "info") -> dict[str, Any]:
        self._seq += 1
        now = time.time()
        uid = f"{int(now * 1e6):016d}-{self.node}-{self._seq:06d}"
        return {"uid": uid, "time": int(now), "node": self.node, "pid": os.getpid(),
                "tag": tag, "user": user, "pri": PRI[pri], "msg": msg}

    async def write(self, msg: str, **kw: Any) -> dict[str, Any]:
        """Record an event; never raises (a log write must not fail an action)."""
        entry = self._enqueue(msg, **kw)
        await self.flush()
        return entry

    def write_behind(self, msg: str, **kw: Any) -> dict[str, Any]:
        """Record an event now (in the pending queue and its file, as `write`) and send
        it in the background: for a caller on a critical path that must not wait for
        etcd, e.g. a fence-peer holding a volume's lock while the engine's writes are
        suspended (just after a partition heals, the backlog's flush takes seconds)."""
        entry = self._enqueue(msg, **kw)
        task = asyncio.get_running_loop().create_task(self.flush(), name="clusterlog-flush")
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return entry

    def _enqueue(self, msg: str, **kw: Any) -> dict[str, Any]:
        entry = self.entry(msg, **kw)
        level = logging.WARNING if entry["pri"] <= PRI["warning"] else logging.INFO
        log.log(level, "cluster log: %s", msg, extra={"tag": entry["tag"], "user": entry["user"]})
        self.pending.append(entry)
        if self.pending_path is not None:
            with open(self.pending_path, "a") as f:
                f.write(json.dumps(entry) + "\n")
        return entry

    async def flush(self) -> bool:
        async with self._flushing:
            sent = 0
            try:
                while self.pending and self.store is not None:
                    entry = self.pending[0]
                    try:
                        await self.store.put(keys.cluster_log(entry["uid"]), entry)
                    except Exception:
                        return False
                    if self.pending and self.pending[0] is entry:
                        self.pending.popleft()
                        sent += 1
                return not self.pending
            finally:
                if sent:
                    self._save_pending()

    async def trim(self) -> None:
        if self.store is None:
            return
        entries = await self.store.get_prefix(keys.CLUSTER_LOG)
        for old in entries[: max(0, len(entries) - MAX_ENTRIES)]:
            await self.store.delete(old.key)

    async def read(self, max_entries: int = 50, *, severity: str | None = None,
                   tags: frozenset[str] | None = None) -> list[dict[str, Any]]:
        """The newest entries, newest first; only those at `severity` or worse (a PRI
        name) and with one of `tags`, when given (the filter applies before the count)."""
        entries: list[dict[str, Any]] = []
        if self.store is not None:
            # linearizable when quorate (a member that just restarted may lag behind);
            # this member's own copy when not
            for serializable in (False, True):
                try:
                    found = await self.store.get_prefix(keys.CLUSTER_LOG, timeout=1.0,
                                                        serializable=serializable)
                except Exception:
                    continue
                entries = [e.value for e in found]
                break
        seen = {e["uid"] for e in entries}
        entries += [e for e in self.pending if e["uid"] not in seen]
        if severity is not None:
            entries = [e for e in entries if e.get("pri", PRI["info"]) <= PRI[severity]]
        if tags is not None:
            entries = [e for e in entries if e.get("tag") in tags]
        entries.sort(key=lambda e: e["uid"], reverse=True)
        return entries[:max_entries]
