"""This node's notification delivery history: the newest deliveries, bounded, kept in a file.

Owns one file of the node's state directory (`notify-history.json`), nothing in etcd.
Each entry is one message to one target and how its delivery went (`Delivery`). The
history is local on purpose: it is about what *this* node sent (each event is sent by one
node), and it must be writable exactly when the cluster is in trouble, without quorum;
an etcd write per delivery would also load the cluster store for a diagnostic. The API
gathers every node's history into the cluster-wide view.

The file holds the newest `HISTORY_SIZE` entries and is rewritten whole (atomically,
`binome.durable`), at most every `SAVE_DELAY` seconds, off the event loop, and once more
at stop: it stays small (tens of kB) and a notification storm costs one write per second.
A delivery that had not ended when binomed stopped (or crashed) is read back as
`interrupted`: its message is not kept, so it is not retried by the next daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from binome import durable

log = logging.getLogger(__name__)

#: deliveries kept per node (the newest; each is one message to one target)
HISTORY_SIZE = 200
#: the longest a change waits before it is written (a storm: one write per delay)
SAVE_DELAY = 1.0
FILE_NAME = "notify-history.json"
FORMAT = 1
UNFINISHED = ("pending", "retrying")
INTERRUPTED = "binomed stopped before the delivery ended; not retried"


@dataclass
class Delivery:
    """One message to one target and how its delivery went (the API's history entry)."""

    id: int
    time: float                   # when the message was routed to the target
    target: str
    target_type: str
    title: str
    severity: str
    type: str                     # the event type field (fencing, split-brain, ...)
    events: int                   # events grouped into this message
    status: str = "pending"       # pending | retrying | delivered | failed | interrupted
    attempts: int = 0
    error: str | None = None      # the last failed attempt's one-line reason
    updated: float | None = None  # when the status last changed

    def as_dict(self) -> dict[str, object]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    def interrupt(self) -> None:
        """Its daemon stopped before the delivery ended (it is not retried)."""
        if self.status in UNFINISHED:
            self.status = "interrupted"
            self.error = f"{self.error}; {INTERRUPTED}" if self.error else INTERRUPTED


_FIELDS = {f.name for f in fields(Delivery)}


def _entry(raw: object) -> Delivery | None:
    if not isinstance(raw, dict) or not _FIELDS >= set(raw):
        return None
    try:
        rec = Delivery(**raw)
    except TypeError:
        return None
    rec.interrupt()   # written while it ran: the daemon that sent it is gone
    return rec


class DeliveryHistory:
    """The newest deliveries, oldest first; `path` None keeps them in memory only."""

    def __init__(self, path: Path | None = None, size: int = HISTORY_SIZE,
                 save_delay: float = SAVE_DELAY) -> None:
        self.path = path
        self.save_delay = save_delay
        self._records: deque[Delivery] = deque(maxlen=size)
        self._save_task: asyncio.Task[None] | None = None
        if path is not None:
            self._records.extend(self._load(path))
        self._next_id = max((r.id for r in self._records), default=0) + 1

    @staticmethod
    def _load(path: Path) -> list[Delivery]:
        try:
            doc = json.loads(path.read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            # a diagnostic, not state: start afresh rather than refuse to start
            log.warning("notification history %s unreadable (%s): starting empty", path, exc)
            return []
        raw = doc.get("deliveries") if isinstance(doc, dict) else None
        out = [rec for rec in map(_entry, raw if isinstance(raw, list) else []) if rec]
        if isinstance(raw, list) and len(out) != len(raw):
            log.warning("notification history %s: %d malformed entries skipped", path,
                        len(raw) - len(out))
        return out

    def __iter__(self) -> Iterator[Delivery]:
        return iter(self._records)

    def __reversed__(self) -> Iterator[Delivery]:
        return reversed(self._records)

    def __len__(self) -> int:
        return len(self._records)

    def new(self, **values: object) -> Delivery:
        """Record a delivery about to start, with the next id."""
        rec = Delivery(self._next_id, **values)   # type: ignore[arg-type]
        self._next_id += 1
        self._records.append(rec)
        self.changed()
        return rec

    def changed(self) -> None:
        """A record was added or changed: write the file within `save_delay` seconds."""
        if self.path is None or self._save_task is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:   # no loop (a synchronous caller): written at the next change
            return
        self._save_task = loop.create_task(self._save_later(), name="notify-history-save")

    async def _save_later(self) -> None:
        try:
            await asyncio.sleep(self.save_delay)
        finally:
            self._save_task = None
        await asyncio.to_thread(self._write, self._document())

    def _document(self) -> dict[str, object]:
        return {"format": FORMAT, "deliveries": [r.as_dict() for r in self._records]}

    def _write(self, doc: dict[str, object]) -> None:
        assert self.path is not None
        try:
            durable.write_json(self.path, doc, indent=None)
        except OSError as exc:   # a full disk must not stop notifications
            log.warning("notification history not saved to %s: %s", self.path, exc)

    async def close(self) -> None:
        """At stop: unfinished deliveries are interrupted; the file gets the final state."""
        task, self._save_task = self._save_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for rec in self._records:
            rec.interrupt()
        if self.path is not None:
            await asyncio.to_thread(self._write, self._document())
