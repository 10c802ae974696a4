"""The notification dispatcher: non-blocking emit, storm grouping, retried delivery, status.

HA, fencing and I/O code call `emit(event)` synchronously from the event loop: it only puts
the event in a bounded queue (a full queue drops it and counts the drop), so a slow mail
server can never delay a failover. A worker task gathers events of the same group key within
`group_window` seconds into one message ("one mail for a node failure, not fifty"), finds the
targets with the matchers and delivers to each in its own task, with exponential backoff.
Each delivery (one message to one target) is kept in a bounded history with its outcome:
delivered, retrying or failed, the last attempt's one-line reason and when
(`binome.notify.history`, which keeps it in a file of the node across restarts).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from binome.notify.config import Entry, NotificationConfig
from binome.notify.events import Event, Severity
from binome.notify.history import Delivery, DeliveryHistory
from binome.notify.matching import targets_for
from binome.notify.senders import DeliveryError, Notification

log = logging.getLogger(__name__)
SEVERITY_ORDER = [Severity.INFO, Severity.UNKNOWN, Severity.NOTICE, Severity.WARNING,
                  Severity.ERROR]
SendFn = Callable[[Entry, Notification], Awaitable[None]]
# The configuration at delivery time: a snapshot, or a coroutine reading the store.
ConfigFn = Callable[[], NotificationConfig | Awaitable[NotificationConfig]]


@dataclass
class TargetStatus:
    """What the API shows per target: last outcomes, queue of pending deliveries, counts."""

    last_success: float | None = None
    last_failure: float | None = None
    last_error: str | None = None
    pending: int = 0
    delivered: int = 0
    failed: int = 0
    attempts_failed: int = 0      # failed attempts, retried or not

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def one_line(text: str, limit: int = 300) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[:limit - 1] + "…"


def combine(events: list[Event]) -> Notification:
    """One message for a group: the worst severity, every event's title and text, in order."""
    first = events[0]
    severity = max((e.severity for e in events), key=SEVERITY_ORDER.index)
    if len(events) == 1:
        return Notification(first.title, first.message, severity.value, first.timestamp,
                            dict(first.fields))
    title = f"{first.title} (+{len(events) - 1} related events)"
    parts = [f"{time.strftime('%F %T', time.localtime(e.timestamp))}  {e.title}\n{e.message}"
             for e in events]
    return Notification(title, "\n\n".join(parts), severity.value, first.timestamp,
                        dict(first.fields))


class Dispatcher:
    def __init__(self, config: ConfigFn, send: SendFn, *,
                 queue_size: int = 1000, group_window: float = 5.0, max_attempts: int = 6,
                 first_retry: float = 2.0, max_retry: float = 300.0,
                 history: DeliveryHistory | None = None) -> None:
        self._config = config
        self._send = send
        self._queue: asyncio.Queue[Event] = asyncio.Queue(queue_size)
        self.group_window = group_window
        self.max_attempts = max_attempts
        self.first_retry = first_retry
        self.max_retry = max_retry
        self.dropped = 0
        self.status: dict[str, TargetStatus] = {}
        self.history = history if history is not None else DeliveryHistory()
        self._groups: dict[str, list[Event]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._worker: asyncio.Task[None] | None = None

    def emit(self, event: Event) -> None:
        """Enqueue and return at once; never raises, never waits."""
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped += 1
            if self.dropped in (1, 10, 100) or self.dropped % 1000 == 0:
                log.warning("notification queue full, %d events dropped so far", self.dropped)

    def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Cancel the worker and pending deliveries (pending groups are lost)."""
        tasks = [t for t in [self._worker, *self._tasks] if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._worker = None
        await self.history.close()

    async def drain(self) -> None:
        """Wait until the queue is empty and every group and delivery has finished (tests)."""
        # Polls three sources (queue, groups, deliveries); only tests wait on it.
        while not self._queue.empty() or self._groups or self._tasks:  # noqa: ASYNC110
            await asyncio.sleep(0.01)

    async def _current_config(self) -> NotificationConfig:
        config = self._config()
        if inspect.isawaitable(config):
            return await config
        return config

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self) -> None:
        while True:
            event = await self._queue.get()
            group = self._groups.get(event.group_key)
            if group is not None:
                group.append(event)
                continue
            self._groups[event.group_key] = [event]
            self._spawn(self._flush_later(event.group_key))

    async def _flush_later(self, key: str) -> None:
        await asyncio.sleep(self.group_window)
        events = self._groups.pop(key)
        try:
            config = await self._current_config()
        except Exception as exc:   # the store unreadable even locally: nothing to route by
            self.dropped += len(events)
            log.error("notifications of group %s dropped: configuration unreadable (%s)",
                      key, exc)
            return
        targets: dict[str, Entry] = {}
        for event in events:
            for target in targets_for(config, event):
                targets.setdefault(target.name, target)
        note = combine(events)
        for target in targets.values():
            self.status.setdefault(target.name, TargetStatus()).pending += 1
            record = self.history.new(
                time=time.time(), target=target.name, target_type=target.type,
                title=note.title, severity=note.severity, type=note.fields.get("type", ""),
                events=len(events))
            self._spawn(self._deliver(target, note, record))

    async def _deliver(self, target: Entry, note: Notification, record: Delivery) -> None:
        status = self.status[target.name]
        delay = self.first_retry
        try:
            for attempt in range(1, self.max_attempts + 1):
                record.attempts = attempt
                self.history.changed()
                try:
                    await self._send(target, note)
                except DeliveryError as exc:
                    now = time.time()
                    status.last_failure, status.last_error = now, str(exc)
                    status.attempts_failed += 1
                    record.error, record.updated = one_line(str(exc)), now
                    log.warning("notification '%s' to '%s' failed (attempt %d/%d): %s",
                                note.title, target.name, attempt, self.max_attempts, exc)
                    if attempt == self.max_attempts:
                        status.failed += 1
                        record.status = "failed"
                        self.history.changed()
                        log.error("notification '%s' to '%s' given up", note.title,
                                  target.name)
                        return
                    record.status = "retrying"
                    self.history.changed()
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self.max_retry)
                else:
                    status.last_success = record.updated = time.time()
                    status.delivered += 1
                    record.status = "delivered"
                    self.history.changed()
                    return
        finally:
            status.pending -= 1

    async def test_target(self, name: str, hostname: str) -> None:
        """PVE's targets/{name}/test: one attempt, errors raised to the caller."""
        from binome.notify.events import make_event

        config = await self._current_config()
        target = config.entries.get(name)
        if target is None or target.type == "matcher":
            raise DeliveryError(f"notification target '{name}' does not exist")
        await self._send(target, combine([make_event("test", hostname, target=name)]))
