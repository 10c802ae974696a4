"""What an I/O request waits on: `Pending` (the one type) and `Completion` (the fast one).

A write's acknowledgement is either an `asyncio.Future` (local flushes, barriers,
remote reads, tasks) or a `Completion` (a mirrored write's peer ack, whose
callbacks run synchronously). Everything that holds, completes or returns
them (the volume's held completions, the NBD export, the peer link) types them
as `Pending`, the part of `asyncio.Future` both provide.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Generator
from typing import Any, Protocol

log = logging.getLogger("binome.replica.peer")


class Pending(Protocol):
    """The part of `asyncio.Future` an I/O completion offers (a Future or a Completion)."""

    def done(self) -> bool: ...
    def cancelled(self) -> bool: ...
    def exception(self) -> BaseException | None: ...
    def add_done_callback(self, fn: Callable[[Any], object], /) -> None: ...
    def set_result(self, result: Any, /) -> None: ...
    def set_exception(self, exception: BaseException, /) -> None: ...
    def __await__(self) -> Generator[Any, None, Any]: ...


class Completion:
    """A future-like acknowledgement whose done-callbacks run synchronously.

    It quacks like the part of `asyncio.Future` its users touch
    (`add_done_callback`, `done`, `cancelled`, `exception`, `result`,
    `set_result`, `set_exception`) and can be awaited.
    """

    __slots__ = ("_callbacks", "_done", "_exc")

    def __init__(self) -> None:
        self._callbacks: list[Callable[[Completion], Any]] = []
        self._done = False
        self._exc: BaseException | None = None

    def done(self) -> bool:
        return self._done

    def cancelled(self) -> bool:
        return False

    def exception(self) -> BaseException | None:
        return self._exc

    def result(self) -> None:
        if self._exc is not None:
            raise self._exc

    def add_done_callback(self, fn: Callable[[Completion], Any]) -> None:
        if self._done:
            fn(self)
        else:
            self._callbacks.append(fn)

    def set_result(self, _value: Any = None) -> None:
        self._finish(None)

    def set_exception(self, exc: BaseException) -> None:
        self._finish(exc)

    def _finish(self, exc: BaseException | None) -> None:
        if self._done:
            return
        self._done, self._exc = True, exc
        callbacks, self._callbacks = self._callbacks, []
        for fn in callbacks:
            try:
                fn(self)
            except Exception:
                log.exception("completion callback failed")

    def __await__(self) -> Generator[Any, None, None]:
        if not self._done:
            fut = asyncio.get_running_loop().create_future()

            def wake(c: Completion) -> None:
                if not fut.done():
                    fut.set_exception(c._exc) if c._exc else fut.set_result(None)
            self.add_done_callback(wake)
            yield from fut.__await__()
        if self._exc is not None:
            raise self._exc
