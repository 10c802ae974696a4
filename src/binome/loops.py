"""Supervised periodic loops: the one way a daemon runs a job again and again.

Owns the discipline shared by the background jobs of binomed (the cluster's quorum
check, lease keepalive and etcd-leadership check; the guest status publisher; the HA
heartbeat, rounds and watch): run one step, survive its failure, pause, repeat, until
cancelled.

- Cancellation always goes through: a step's CancelledError is never swallowed, and
  `stop_tasks` cancels a set of loops until they are really done.
- A failure never ends the loop. Expected failures (`quiet`, e.g. etcd unreachable
  while quorum is lost) are logged at debug level, one line each. Any other failure is
  logged once with its traceback; the same failure again in a row gets one line, at
  warning level on its 2nd, 4th, 8th... occurrence and at debug level otherwise, and
  the first success after it says how many there were. A step failing every second
  for hours thus fills no log with tracebacks.
- The pause: the regular `interval` after each step, counted from the step's end, or
  from its start with `fixed_rate`; a step may return its own pause instead; after a
  failure, the `backoff` pause if one is given. An optional `wake` event cuts a pause
  short (a watch saw a change: run the step now).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """The pause after consecutive failures: `initial`, then times `factor`, at most `maximum`.

    `run_periodic` resets it after a successful step; a long-running step may also
    reset it itself (a watch that was established, then broke).
    """

    initial: float
    maximum: float
    factor: float = 2.0
    _next: float | None = field(default=None, init=False, repr=False)

    def failed(self) -> float:
        """The pause after one more failure."""
        pause = self.initial if self._next is None else self._next
        self._next = min(self.maximum, pause * self.factor)
        return pause

    def reset(self) -> None:
        self._next = None


class FailureLog:
    """Logs a step's failures without a traceback storm (module docstring)."""

    def __init__(self, what: str, logger: logging.Logger) -> None:
        self.what = what
        self.logger = logger
        self._signature: tuple[type[BaseException], str] | None = None
        self.repeats = 0

    def failed(self, exc: BaseException) -> None:
        signature = (type(exc), str(exc))
        if signature != self._signature:
            self._signature, self.repeats = signature, 1
            self.logger.error("%s failed", self.what, exc_info=exc)
            return
        self.repeats += 1
        # warning at 2, 4, 8, ...: visible, yet logarithmic in the outage's length
        power_of_two = self.repeats & (self.repeats - 1) == 0
        self.logger.log(logging.WARNING if power_of_two else logging.DEBUG,
                        "%s failed again (%d times in a row): %s: %s", self.what,
                        self.repeats, type(exc).__name__, exc)

    def succeeded(self) -> None:
        if self._signature is not None:
            self.logger.info("%s works again after %d failure(s)", self.what, self.repeats)
        self._signature, self.repeats = None, 0


async def run_periodic(
    what: str,
    step: Callable[[], Awaitable[float | None]],
    interval: float | Callable[[], float],
    *,
    logger: logging.Logger,
    quiet: tuple[type[Exception], ...] = (),
    backoff: Backoff | None = None,
    fixed_rate: bool = False,
    min_pause: float = 0.0,
    wake: asyncio.Event | None = None,
    stop_when: Callable[[], bool] | None = None,
) -> None:
    """Run `step` forever (until cancelled, or until `stop_when()` is true).

    `what` names the job in log lines ("quorum check" gives "quorum check failed").
    `interval` is in seconds, or a callable read before each pause. `step` returns None
    for the regular pause, or a number of seconds to pause this time. Exceptions in
    `quiet` are expected (logged at debug); others go through `FailureLog`. `wake` is
    cleared before each step and ends the pause that follows when set.
    """
    failures = FailureLog(what, logger)
    while stop_when is None or not stop_when():
        began = time.monotonic()
        if wake is not None:
            wake.clear()
        pause: float | None = None
        try:
            pause = await step()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if isinstance(exc, quiet):
                logger.debug("%s failed: %s", what, exc)
            else:
                failures.failed(exc)
            if backoff is not None:
                pause = backoff.failed()
        else:
            failures.succeeded()
            if backoff is not None:
                backoff.reset()
        if pause is None:
            pause = interval() if callable(interval) else interval
            if fixed_rate:
                pause -= time.monotonic() - began
        await sleep_or_wake(max(min_pause, pause), wake)


async def sleep_or_wake(pause: float, wake: asyncio.Event | None = None) -> None:
    """Sleep `pause` seconds, or less if `wake` is (or gets) set.

    Waits with `asyncio.wait`, not `wait_for`: Python 3.11's wait_for may swallow a
    cancellation that races with the event firing, and the loop would then run on.
    """
    if wake is None:
        await asyncio.sleep(pause)
        return
    if wake.is_set():
        return
    waiter = asyncio.ensure_future(wake.wait())
    try:
        await asyncio.wait({waiter}, timeout=pause)
    finally:
        waiter.cancel()


async def stop_tasks(tasks: Iterable[asyncio.Task], *, attempts: int = 50,
                     poll: float = 0.2) -> None:
    """Cancel `tasks` until they are done (at most `attempts` rounds of `poll` seconds).

    One cancel() is not always enough: a task may swallow a cancellation (see
    `sleep_or_wake`) or be cancelled between two awaits of a cleanup. Their outcome,
    a failure included, is collected so that asyncio logs no "never retrieved" error.
    """
    tasks = list(tasks)
    for _ in range(attempts):
        pending = [t for t in tasks if not t.done()]
        if not pending:
            break
        for t in pending:
            t.cancel()
        await asyncio.wait(pending, timeout=poll)
    for t in tasks:
        if t.done() and not t.cancelled():
            t.exception()
