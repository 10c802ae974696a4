"""Live sessions: long-running connections (console websockets) that were authenticated
once, at their start, and must end as soon as the access configuration no longer
allows them. Owns no etcd key: it reads the access generation (repository.GENERATION)
and the snapshot through the AccessService.

Why: an ordinary request is checked when it arrives (AccessService.check_active, the
token verifier, the registry's permission check), so disabling a user cuts them off at
their next request. A console websocket is one request that lasts hours: without this,
a user disabled, expired or deleted, a token deleted, expired or regenerated, or a user
who lost VM.Console would keep typing into the guest.

How:
* `refusal()` is the decision, pure: why a session opened by `authid` under a method's
  permission declaration may not go on now (None: it may).
* `SessionWatch` holds this node's live sessions. While at least one is open it runs a
  monitor that re-decides every session when the access generation moves (an etcd
  watch on that one key: every access change bumps it in its own transaction, on any
  node), when the earliest user or token expiry passes, and every RECHECK seconds in
  case the watch missed something (RETRY seconds while the watch is broken). A refused
  session's `ended()` answers the reason; the session's owner closes the connection.
  With no session open there is no monitor and no watch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from binome.access import permission
from binome.access.evaluator import Evaluator
from binome.access.model import ROOT_USER, AccessConfig, is_tokenid, split_tokenid
from binome.access.permission import Decl
from binome.access.repository import GENERATION

log = logging.getLogger("binome.access.sessions")

RECHECK = 30.0      # seconds between re-decisions while the generation watch is up
RETRY = 2.0         # ... while it is down (no store, etcd unreachable): poll instead
EXPIRY_SLACK = 0.05   # decide just after an expiry, not just before it


@dataclass(frozen=True)
class Grant:
    """What a live session was opened with. `token_secret` is the stored hash of the
    token's secret at the start (not the secret): a regenerated token ends the session."""

    authid: str
    decl: Decl
    params: Mapping[str, Any] = field(default_factory=dict)
    token_secret: str | None = None


def grant_for(config: AccessConfig, authid: str, decl: Decl,
              params: Mapping[str, Any]) -> Grant:
    token = config.tokens.get(authid) if is_tokenid(authid) else None
    return Grant(authid, decl, dict(params), token.secret_hash if token else None)


def _user_refusal(config: AccessConfig, userid: str, now: float) -> str | None:
    if userid == ROOT_USER:
        return None
    user = config.users.get(userid)
    if user is None:
        return f"user '{userid}' was deleted"
    if not user.enable:
        return f"user '{userid}' was disabled"
    if not user.active(now):
        return f"user '{userid}' expired"
    return None


def refusal(ev: Evaluator, grant: Grant, now: float) -> str | None:
    """Why the session may not go on at `now` (a short sentence for the close frame and
    the log, naming no secret), or None. The same rules as a new request: the user
    exists, is enabled and not expired; a token exists, has not expired and is the one
    the session started with; the permission still holds."""
    config = ev.config
    authid = grant.authid
    if is_tokenid(authid):
        userid, _name = split_tokenid(authid)
        if (reason := _user_refusal(config, userid, now)) is not None:
            return reason
        token = config.tokens.get(authid)
        if token is None:
            return f"API token '{authid}' was deleted"
        if not token.active(now):
            return f"API token '{authid}' expired"
        if grant.token_secret is not None and token.secret_hash != grant.token_secret:
            return f"API token '{authid}' was regenerated"
    elif (reason := _user_refusal(config, authid, now)) is not None:
        return reason
    if not permission.check(grant.decl, ev, authid, grant.params):
        return f"permission removed ({permission.denied_text(grant.decl, grant.params)})"
    return None


def expiry(config: AccessConfig, authid: str) -> float | None:
    """When `authid` expires by the configuration as it is (the earliest of its user's
    and its token's expiry), or None if never."""
    userid = split_tokenid(authid)[0] if is_tokenid(authid) else authid
    times: list[float] = []
    user = config.users.get(userid)
    if user is not None and user.expire and userid != ROOT_USER:
        times.append(float(user.expire))
    token = config.tokens.get(authid) if is_tokenid(authid) else None
    if token is not None and token.expire:
        times.append(float(token.expire))
    return min(times) if times else None


class LiveSession:
    """One live session; its owner waits on `ended()` beside its own work."""

    def __init__(self, grant: Grant) -> None:
        self.grant = grant
        self.reason: str | None = None
        self._ended = asyncio.Event()

    def end(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
            self._ended.set()

    async def ended(self) -> str:
        """Wait until the access configuration ends this session; the reason."""
        await self._ended.wait()
        assert self.reason is not None
        return self.reason


@runtime_checkable
class WatchingStore(Protocol):
    """The part of binome.store.client.Store the generation watch uses."""

    def watch_prefixes(self, prefixes: Sequence[str], *, prev_kv: bool = False,
                       timeout: float | None = None
                       ) -> AbstractAsyncContextManager[AsyncIterator[Any]]: ...


class SessionWatch:
    """This node's live sessions and their monitor (see the module docstring)."""

    def __init__(self, evaluator: Callable[[], Awaitable[Evaluator]],
                 store_of: Callable[[], object | None], clock: Callable[[], float], *,
                 recheck: float = RECHECK, retry: float = RETRY) -> None:
        self._evaluator = evaluator
        self._store_of = store_of
        self._clock = clock
        self._recheck = recheck
        self._retry = retry
        self._sessions: set[LiveSession] = set()
        self._poke = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._watching = False
        self._next_expiry: float | None = None

    @property
    def count(self) -> int:
        return len(self._sessions)

    @property
    def watching(self) -> bool:
        """Whether the generation watch is established now (tests, status)."""
        return self._watching

    @contextlib.asynccontextmanager
    async def hold(self, grant: Grant) -> AsyncIterator[LiveSession]:
        """Keep `grant`'s session under watch for the body of the `async with`."""
        session = LiveSession(grant)
        if grant.authid == ROOT_USER:    # root@pam is never disabled nor refused
            yield session
            return
        self._sessions.add(session)
        self._poke.set()      # decide it at once: a change may have come since its login
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._monitor(), name="access-live-sessions")
        try:
            yield session
        finally:
            self._sessions.discard(session)
            self._poke.set()   # the monitor ends with the last session

    async def decide(self) -> None:
        """Re-decide every open session against the current snapshot."""
        ev = await self._evaluator()
        now = self._clock()
        soonest: float | None = None
        for session in list(self._sessions):
            if session.reason is not None:
                continue
            reason = refusal(ev, session.grant, now)
            if reason is not None:
                log.warning("live session of %s ended: %s", session.grant.authid, reason)
                session.end(reason)
                continue
            at = expiry(ev.config, session.grant.authid)
            if at is not None and (soonest is None or at < soonest):
                soonest = at
        self._next_expiry = soonest

    def _pause(self) -> float:
        pause = self._recheck if self._watching else self._retry
        if self._next_expiry is not None:
            pause = min(pause, max(0.0, self._next_expiry - self._clock()) + EXPIRY_SLACK)
        return pause

    async def _monitor(self) -> None:
        watcher = asyncio.create_task(self._watch(), name="access-generation-watch")
        try:
            while self._sessions:
                self._poke.clear()
                try:
                    await self.decide()
                except Exception as exc:   # store unreachable: keep them, decide again soon
                    log.debug("live sessions: cannot read the access configuration (%s)", exc)
                    self._next_expiry = None
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._poke.wait(), self._retry)
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._poke.wait(), self._pause())
        finally:
            # no await from the loop's last test to the end of this task: a session
            # added meanwhile would find a monitor about to end and start none
            watcher.cancel()
            self._watching = False

    async def _watch(self) -> None:
        """Poke the monitor at every access generation change (on any node)."""
        while True:
            store = self._store_of()
            if isinstance(store, WatchingStore):
                try:
                    async with store.watch_prefixes([GENERATION], timeout=self._retry) as events:
                        self._watching = True
                        self._poke.set()       # what changed while there was no watch
                        async for _event in events:
                            self._poke.set()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:       # stream broken: poll until it is back
                    log.debug("access generation watch broken: %s", exc)
                self._watching = False
            await asyncio.sleep(self._retry)
