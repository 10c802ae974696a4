"""The node's access runtime: the current access snapshot and its evaluator, login and
token authentication, and every access change (stored by the repository, then logged).

This is what the API holds: handlers and the registry's permission check ask it, never
the store. One `AccessService` per node; it takes the store lazily (`store_of`) because
a node outside a cluster has none, and then knows only root@pam.

Freshness: every authenticated request reads one key, the access generation (bumped by
every change, in the change's own transaction), and rebuilds the snapshot when it
moved. So a user disabled, a token deleted or an ACL removed on any node takes effect
on the next request everywhere, at the price of one etcd read per request. Long-lived
connections (console websockets) are held with `live_session` instead: sessions.py
watches that key and ends them within moments of such a change, or at an expiry.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from binome.access.evaluator import Evaluator
from binome.access.model import ROOT_USER, AccessConfig, TfaUser, ValidationError, split_userid
from binome.access.permission import Decl
from binome.access.ratelimit import LoginRateLimiter
from binome.access.repository import GENERATION, AccessRepository, Change, Snapshot, StoreLike
from binome.access.secrets import verify_secret
from binome.access.sessions import LiveSession, SessionWatch, grant_for
from binome.access.tokens import TokenAuthError, TokenVerifier, parse_token_header

log = logging.getLogger("binome.access")

PamCheck = Callable[[str, str], Awaitable[bool]]
ChangeLog = Callable[[Change], Awaitable[Any]]


class AuthRefused(Exception):
    """Login or token refused; the message is safe to show (no secret, no detail that
    tells a guesser which part was wrong)."""


@dataclass(frozen=True)
class _Cached:
    store: object
    generation: int
    snapshot: Snapshot
    evaluator: Evaluator


_EMPTY = Snapshot(AccessConfig(), {}, 0)


class AccessService:
    def __init__(self, store_of: Callable[[], StoreLike | None], *,
                 on_change: ChangeLog | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self._store_of = store_of
        self._on_change = on_change
        self._clock = clock
        self._cached: _Cached | None = None
        self.limiter = LoginRateLimiter()
        self._tokens = TokenVerifier()
        self.sessions = SessionWatch(self.evaluator, store_of, clock)

    # -- the current snapshot ------------------------------------------------------------

    async def snapshot(self) -> Snapshot:
        return (await self._current()).snapshot

    async def evaluator(self) -> Evaluator:
        return (await self._current()).evaluator

    async def config(self) -> AccessConfig:
        return (await self._current()).snapshot.config

    async def _current(self) -> _Cached:
        store = self._store_of()
        if store is None:
            if self._cached is None or self._cached.store is not None:
                self._cached = _Cached(None, 0, _EMPTY, Evaluator(_EMPTY.config))
            return self._cached
        try:
            entry = await store.get(GENERATION)
            local = False
        except Exception as exc:   # no quorum (or etcd unreachable): see below
            # Without quorum a node must still answer its administrator (status, the
            # cluster log, why nothing moves): read this member's copy, which is at worst
            # the configuration as it was when quorum was lost; changes are refused
            # anyway (they need a quorate commit). If even that fails, keep the last
            # snapshot this node read.
            log.debug("access generation unreadable (%s): reading the local copy", exc)
            try:
                entry = await store.get(GENERATION, serializable=True)
                local = True
            except Exception:
                if self._cached is not None and self._cached.store is store:
                    return self._cached
                raise
        generation = entry.mod_revision if entry is not None else 0
        cached = self._cached
        if cached is not None and cached.store is store and cached.generation == generation \
                and generation != 0:
            return cached
        snap = await AccessRepository(store).load(local=local)
        cached = _Cached(store, snap.generation, snap, Evaluator(snap.config))
        self._cached = cached
        return cached

    # -- authentication ----------------------------------------------------------------

    async def check_active(self, userid: str) -> None:
        """Refuse a ticket whose user is gone, disabled or expired (checked per request,
        as PVE does, so disabling a user cuts them off at once)."""
        if userid == ROOT_USER:
            return
        user = (await self.config()).users.get(userid)
        if user is None:
            raise AuthRefused(f"user '{userid}' does not exist")
        if not user.active(self._clock()):
            raise AuthRefused(f"user '{userid}' is disabled or expired")

    async def authenticate_token(self, header: str) -> str | None:
        """The token id a `PVEAPIToken=...` Authorization header proves, or None if the
        header is no token header. Raises AuthRefused on any failure."""
        try:
            parsed = parse_token_header(header)
            if parsed is None:
                return None
            tokenid, secret = parsed
            return self._tokens.authenticate(await self.config(), tokenid, secret,
                                             self._clock())
        except TokenAuthError as exc:
            log.warning("API token refused: %s", exc)
            raise AuthRefused("authentication failure") from None

    async def verify_password(self, userid: str, password: str, pam: PamCheck) -> bool:
        """Whether `password` is `userid`'s password in its realm (no rate limiting here:
        the login method applies `limiter` around it)."""
        try:
            name, realm = split_userid(userid)
        except ValidationError:
            return False
        cfg = await self.config()
        user = cfg.users.get(userid)
        if userid != ROOT_USER:
            if user is None or not user.active(self._clock()):
                return False
        if realm == "pve":
            return bool(user and user.password_hash
                        and verify_secret(user.password_hash, password))
        if realm == "pam":
            return await pam(name, password)
        realm_cfg = cfg.realms.get(realm)
        if realm_cfg is None or realm_cfg.type not in ("ldap", "ad") or user is None:
            return False  # openid has no password; an LDAP user must be synced or added first
        # imported here: ldap3 is needed only by nodes that have an LDAP realm
        from binome.access.ldap import LdapClient, LdapError
        try:
            return await LdapClient(realm_cfg).check_password(name, password)
        except LdapError as exc:
            log.warning("LDAP realm %s: %s", realm, exc)   # the text carries no secret
            return False

    @contextlib.asynccontextmanager
    async def live_session(self, authid: str, decl: Decl, params: Mapping[str, Any]
                           ) -> AsyncIterator[LiveSession]:
        """Watch a long-lived connection (a console websocket) opened by `authid` under
        the permission `decl` with `params`: `ended()` answers once the user or token is
        disabled, expired, deleted or regenerated, or the permission is gone (sessions.py).
        The caller closes its connection then."""
        grant = grant_for(await self.config(), authid, decl, params)
        async with self.sessions.hold(grant) as session:
            yield session

    # -- changes -----------------------------------------------------------------------

    async def change(self, actor: str, action: str,
                     operation: Callable[[AccessConfig], AccessConfig]) -> Change:
        """Apply a pure change as `actor`; store it (one CAS, config-version bump) and
        hand it to `on_change` (the cluster log, naming the actor). Bad input raises
        before anything is written."""
        store = self._store_of()
        if store is None:
            raise AuthRefused("this node is not in a cluster: no access configuration")
        change = await AccessRepository(store).change(actor, action, operation)
        if change.changed and self._on_change is not None:
            try:
                await self._on_change(change)
            except Exception:    # the change is stored; a lost log line must not undo it
                log.exception("cluster log of an access change failed")
        return change

    async def tfa_states(self) -> dict[str, TfaUser]:
        """Users' TFA states as stored now (lock-out counters move at each login without
        a generation bump, so the cached snapshot's may be stale); the snapshot's copy
        when there is no store or it cannot answer."""
        store = self._store_of()
        if store is not None:
            for local in (False, True):    # without quorum: this member's copy
                try:
                    return await AccessRepository(store).load_tfa(local=local)
                except Exception:          # etcd away: the snapshot's copy
                    continue
            log.warning("TFA states: the store did not answer; using the snapshot")
        return dict((await self.config()).tfa)

    def now(self) -> float:
        return self._clock()
