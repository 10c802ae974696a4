"""The node's notification runtime: the dispatcher, its configuration read from etcd, the
`emit` every event source calls, and configuration changes with their cluster-log line.

One `NotificationService` per node (every node runs one: see docs/architecture.md,
"Notifications", for which node sends which event). `emit` builds the event from the
catalogue and queues it; it never raises and never waits, so HA, fencing and I/O code
call it inline. The configuration is read when a group of events is delivered (one
range read; without quorum this member's copy, so a node that lost quorum can still
say so), never cached across changes. Like the access service, it takes the store
lazily (`store_of`): a node outside a cluster has none and sends nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from binome.notify.config import NotificationConfig
from binome.notify.dispatch import Dispatcher
from binome.notify.events import EventError, make_event
from binome.notify.history import DeliveryHistory
from binome.notify.repository import Change, NotifyRepository, Snapshot, StoreLike
from binome.notify.senders import DeliveryError, Notification, Sender

log = logging.getLogger("binome.notify")

ChangeLog = Callable[[Change], Awaitable[Any]]
UserEmails = Callable[[], Awaitable[dict[str, str]]]


async def _no_emails() -> dict[str, str]:
    return {}


class NotConfigured(RuntimeError):
    """This node is in no cluster: there is no notification configuration."""


class NotificationService:
    def __init__(self, node: str, store_of: Callable[[], StoreLike | None], *,
                 user_emails: UserEmails = _no_emails, on_change: ChangeLog | None = None,
                 sender: Sender | None = None, group_window: float = 5.0,
                 history_path: Path | None = None) -> None:
        """`history_path`: the file keeping this node's delivery history across restarts
        (`binome.notify.history`); None keeps it in memory only."""
        self.node = node
        self._store_of = store_of
        self._user_emails = user_emails
        self._on_change = on_change
        self.sender = sender or Sender()
        self.dispatcher = Dispatcher(self._config_for_delivery, self._send,
                                     group_window=group_window,
                                     history=DeliveryHistory(history_path))

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        self.dispatcher.start()

    async def stop(self) -> None:
        await self.dispatcher.stop()
        await self.sender.close()

    # -- events --------------------------------------------------------------------------

    def emit(self, kind: str, **data: Any) -> None:
        """Queue a catalogue event raised on this node; never raises, never waits."""
        try:
            self.dispatcher.emit(make_event(kind, self.node, **data))
        except EventError as exc:     # a programming error at the caller: say so, go on
            log.error("notification event dropped: %s", exc)

    # -- configuration -------------------------------------------------------------------

    def _store(self) -> StoreLike:
        store = self._store_of()
        if store is None:
            raise NotConfigured("this node is not part of a cluster")
        return store

    async def snapshot(self) -> Snapshot:
        """The stored configuration (a quorum read) with its digest, for the API."""
        return await NotifyRepository(self._store()).load()

    async def _config_for_delivery(self) -> NotificationConfig:
        store = self._store_of()
        if store is None:
            return NotificationConfig([])   # no cluster: only built-ins, nothing sendable
        repo = NotifyRepository(store)
        try:
            return (await repo.load()).config
        except Exception as exc:   # no quorum: this member's copy (may be stale, not empty)
            log.debug("notification config unreadable with quorum (%s): local copy", exc)
            return (await repo.load(local=True)).config

    async def change(self, actor: str, action: str,
                     operation: Callable[[NotificationConfig], None], *,
                     digest: str | None = None) -> Change:
        """Store a change as `actor` (ConfigError, KeyError, DigestMismatch raise before
        anything is written) and log it to the cluster log naming the actor."""
        change = await NotifyRepository(self._store()).change(actor, action, operation,
                                                              digest=digest)
        if change.changed and self._on_change is not None:
            try:
                await self._on_change(change)
            except Exception:   # stored; a lost log line must not undo it
                log.exception("cluster log of a notification change failed")
        return change

    async def test_target(self, name: str) -> None:
        """PVE's targets/{name}/test: one delivery attempt now; DeliveryError says why."""
        await self.dispatcher.test_target(name, self.node)

    # -- delivery ------------------------------------------------------------------------

    def delivery_counts(self) -> tuple[int, dict[str, dict[str, Any]]]:
        """(events dropped, target -> its counts and last outcomes), for the metrics."""
        return self.dispatcher.dropped, {name: st.as_dict()
                                         for name, st in self.dispatcher.status.items()}

    def history(self) -> list[dict[str, object]]:
        """This node's recent deliveries, newest first (bounded: `history.HISTORY_SIZE`),
        kept across restarts when the service has a history file."""
        return [d.as_dict() for d in reversed(self.dispatcher.history)]

    async def _send(self, target: Any, note: Notification) -> None:
        users = target.options.get("mailto-user") or []
        if users:
            # PVE resolves mailto-user to the users' e-mail addresses at send time
            try:
                emails = await self._user_emails()
            except Exception as exc:
                raise DeliveryError(f"target '{target.name}': users unreadable: {exc}") \
                    from None
            found = [emails[u] for u in users if emails.get(u)]
            options = {**target.options, "mailto-user": [],
                       "mailto": [*target.options.get("mailto", []), *found]}
            target = replace(target, options=options)
        await self.sender.send(target, note)
