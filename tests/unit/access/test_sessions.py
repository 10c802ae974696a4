"""Live sessions (console websockets): the decision (`refusal`, `expiry`) over access
snapshots, and `SessionWatch` ending sessions through an AccessService whose store is
an in-memory etcd stand-in with a watch: on a change made by another node (a write to
the store, not through this service), at an expiry, and never for root@pam."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from binome.access import ops
from binome.access.evaluator import Evaluator
from binome.access.model import AccessConfig, User
from binome.access.permission import Perm
from binome.access.repository import AccessRepository
from binome.access.service import AccessService
from binome.access.sessions import Grant, SessionWatch, expiry, grant_for, refusal

CONSOLE = Perm("/vms/{vmid}", ("VM.Console",))
PARAMS = {"vmid": 100, "node": "n1"}
NOW = 1_800_000_000.0


def world(**user: Any) -> AccessConfig:
    cfg = AccessConfig()
    cfg = ops.add_user(cfg, User("alice@pve", **user))
    cfg = ops.add_user(cfg, User("bob@pve"))
    cfg = ops.add_token(cfg, "alice@pve", "tk", "hash-1", privsep=False, now=0)
    cfg = ops.add_token(cfg, "alice@pve", "sep", "hash-2", privsep=True, now=0)
    cfg = ops.modify_acl(cfg, "/vms/100", ["PVEVMUser"], users=["alice@pve"])
    cfg = ops.modify_acl(cfg, "/vms/100", ["PVEVMUser"], tokens=["alice@pve!sep"])
    return cfg


def decide(cfg: AccessConfig, grant: Grant, now: float = NOW) -> str | None:
    return refusal(Evaluator(cfg), grant, now)


def test_an_allowed_session_goes_on() -> None:
    cfg = world()
    for authid in ("alice@pve", "alice@pve!tk", "alice@pve!sep", "root@pam"):
        assert decide(cfg, grant_for(cfg, authid, CONSOLE, PARAMS)) is None, authid


def test_user_disabled_expired_or_deleted_ends_their_sessions_and_tokens() -> None:
    cfg = world()
    grants = [grant_for(cfg, a, CONSOLE, PARAMS) for a in ("alice@pve", "alice@pve!tk")]
    disabled = ops.update_user(cfg, "alice@pve", {"enable": False})
    expired = ops.update_user(cfg, "alice@pve", {"expire": int(NOW) - 1})
    later = ops.update_user(cfg, "alice@pve", {"expire": int(NOW) + 60})
    deleted = ops.delete_user(cfg, "alice@pve")
    for g in grants:
        assert decide(disabled, g) == "user 'alice@pve' was disabled"
        assert decide(expired, g) == "user 'alice@pve' expired"
        assert decide(later, g) is None
        assert decide(later, g, NOW + 60) == "user 'alice@pve' expired"
        assert decide(deleted, g) == "user 'alice@pve' was deleted"


def test_token_deleted_expired_or_regenerated_ends_only_its_sessions() -> None:
    cfg = world()
    token = grant_for(cfg, "alice@pve!tk", CONSOLE, PARAMS)
    user = grant_for(cfg, "alice@pve", CONSOLE, PARAMS)
    assert token.token_secret == "hash-1" and user.token_secret is None
    gone = ops.delete_token(cfg, "alice@pve!tk")
    assert decide(gone, token) == "API token 'alice@pve!tk' was deleted"
    assert decide(gone, user) is None
    short = ops.update_token(cfg, "alice@pve!tk", expire=int(NOW) + 5)
    assert decide(short, token) is None
    assert decide(short, token, NOW + 5) == "API token 'alice@pve!tk' expired"
    regenerated = ops.update_token(cfg, "alice@pve!tk", secret_hash="hash-9")
    assert decide(regenerated, token) == "API token 'alice@pve!tk' was regenerated"
    # a token of root@pam (no user record) is held to the same token rules
    root_cfg = ops.add_token(cfg, "root@pam", "auto", "hash-r", privsep=False, now=0)
    root_token = grant_for(root_cfg, "root@pam!auto", CONSOLE, PARAMS)
    assert decide(root_cfg, root_token) is None
    assert decide(ops.delete_token(root_cfg, "root@pam!auto"), root_token) == \
        "API token 'root@pam!auto' was deleted"


def test_losing_the_permission_ends_the_session() -> None:
    cfg = world()
    alice = grant_for(cfg, "alice@pve", CONSOLE, PARAMS)
    sep = grant_for(cfg, "alice@pve!sep", CONSOLE, PARAMS)
    plain = grant_for(cfg, "alice@pve!tk", CONSOLE, PARAMS)
    revoked = ops.modify_acl(cfg, "/vms/100", ["PVEVMUser"], users=["alice@pve"], delete=True)
    why = "permission removed (/vms/100, VM.Console)"
    assert decide(revoked, alice) == why
    assert decide(revoked, plain) == why            # a non-privsep token is its user
    assert decide(revoked, sep) == why              # privsep: own ACL AND the user's
    audit_only = ops.modify_acl(revoked, "/vms/100", ["PVEAuditor"], users=["alice@pve"])
    assert decide(audit_only, alice) == why
    no_access = ops.modify_acl(cfg, "/vms", ["NoAccess"], users=["alice@pve"])
    assert decide(no_access, alice) is None         # the entry on /vms/100 wins
    blocked = ops.modify_acl(cfg, "/vms/100", ["NoAccess"], users=["alice@pve"])
    assert decide(blocked, alice) == why
    # a session on another VM is judged on that VM
    assert decide(cfg, grant_for(cfg, "alice@pve", CONSOLE, {"vmid": 101})) == \
        "permission removed (/vms/101, VM.Console)"


def test_expiry_is_the_earliest_of_user_and_token() -> None:
    cfg = world(expire=int(NOW) + 100)
    assert expiry(cfg, "alice@pve") == NOW + 100
    assert expiry(cfg, "alice@pve!tk") == NOW + 100
    cfg = ops.update_token(cfg, "alice@pve!tk", expire=int(NOW) + 10)
    assert expiry(cfg, "alice@pve!tk") == NOW + 10
    assert expiry(cfg, "bob@pve") is None
    assert expiry(cfg, "root@pam") is None
    assert expiry(cfg, "gone@pve") is None


# -- the watch, through an AccessService ---------------------------------------------------

@dataclass
class Entry:
    key: str
    value: Any
    mod_revision: int


class WatchedStore:
    """etcd in memory: revisions, the commit compare, and prefix watches."""

    def __init__(self) -> None:
        self.data: dict[str, Entry] = {}
        self.revision = 1
        self.watchers: list[tuple[tuple[str, ...], asyncio.Queue[str]]] = []
        self.watch_calls = 0
        self.gets = 0

    async def get(self, key: str, *, serializable: bool = False) -> Entry | None:
        self.gets += 1
        return self.data.get(key)

    async def get_prefix(self, prefix: str, *, serializable: bool = False) -> list[Entry]:
        return [e for k, e in sorted(self.data.items()) if k.startswith(prefix)]

    async def commit(self, expect: dict[str, int], puts: dict[str, Any] | None = None,
                     deletes: Any = (), *, bump_config: bool = False) -> bool:
        for key, rev in expect.items():
            have = self.data[key].mod_revision if key in self.data else 0
            if have != rev:
                return False
        self.revision += 1
        for key, value in (puts or {}).items():
            self.data[key] = Entry(key, value, self.revision)
        for key in deletes:
            self.data.pop(key, None)
        for key in [*(puts or {}), *deletes]:
            for prefixes, queue in self.watchers:
                if any(key.startswith(p) for p in prefixes):
                    queue.put_nowait(key)
        return True

    @contextlib.asynccontextmanager
    async def watch_prefixes(self, prefixes: Sequence[str], *, prev_kv: bool = False,
                             timeout: float | None = None
                             ) -> AsyncIterator[AsyncIterator[str]]:
        self.watch_calls += 1
        queue: asyncio.Queue[str] = asyncio.Queue()
        watcher = (tuple(prefixes), queue)
        self.watchers.append(watcher)

        async def events() -> AsyncIterator[str]:
            while True:
                yield await queue.get()
        try:
            yield events()
        finally:
            self.watchers.remove(watcher)


async def _setup(store: WatchedStore, **user: Any) -> None:
    """Another node's writes: straight to the store, not through the service under test."""
    await AccessRepository(store).change("root@pam", "setup", lambda c: world(**user))


async def _other_node(store: WatchedStore, op: Any) -> None:
    await AccessRepository(store).change("root@pam", "change", op)


async def _until(cond: Any, timeout: float = 3.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


async def test_a_change_on_another_node_ends_the_session_at_once() -> None:
    store = WatchedStore()
    await _setup(store)
    access = AccessService(lambda: store)
    # a long recheck: only the watch can end it in time
    access.sessions = SessionWatch(access.evaluator, lambda: store, time.time, recheck=600)
    async with access.live_session("alice@pve", CONSOLE, PARAMS) as alice, \
            access.live_session("bob@pve", CONSOLE, PARAMS) as bob:
        await _until(lambda: access.sessions.watching)
        assert alice.reason is None
        assert bob.reason == "permission removed (/vms/100, VM.Console)"  # never had it
        loop = asyncio.get_running_loop()
        began = loop.time()
        await _other_node(store, lambda c: ops.update_user(c, "alice@pve", {"enable": False}))
        assert await asyncio.wait_for(alice.ended(), 2) == "user 'alice@pve' was disabled"
        assert loop.time() - began < 1
    await _until(lambda: not store.watchers)    # the last session gone: no watch left
    assert access.sessions.count == 0


async def test_token_deleted_ends_the_token_session_only() -> None:
    store = WatchedStore()
    await _setup(store)
    access = AccessService(lambda: store)
    access.sessions = SessionWatch(access.evaluator, lambda: store, time.time, recheck=600)
    async with access.live_session("alice@pve!tk", CONSOLE, PARAMS) as token, \
            access.live_session("alice@pve", CONSOLE, PARAMS) as user:
        await _until(lambda: access.sessions.watching)
        await _other_node(store, lambda c: ops.delete_token(c, "alice@pve!tk"))
        assert await asyncio.wait_for(token.ended(), 2) == \
            "API token 'alice@pve!tk' was deleted"
        await asyncio.sleep(0.1)
        assert user.reason is None


async def test_an_expiry_ends_the_session_when_it_passes() -> None:
    store = WatchedStore()
    expire = int(time.time()) + 1
    await _setup(store, expire=expire)
    access = AccessService(lambda: store)
    access.sessions = SessionWatch(access.evaluator, lambda: store, time.time, recheck=600)
    async with access.live_session("alice@pve", CONSOLE, PARAMS) as alice:
        assert await asyncio.wait_for(alice.ended(), 3) == "user 'alice@pve' expired"
        assert time.time() >= expire


async def test_without_a_watch_the_monitor_polls() -> None:
    """A store that cannot watch (or a broken watch): changes still end sessions, at the
    retry pace."""
    store = WatchedStore()
    await _setup(store)
    plain = type("Plain", (), {})()
    for name in ("get", "get_prefix", "commit"):
        setattr(plain, name, getattr(store, name))
    access = AccessService(lambda: plain)
    access.sessions = SessionWatch(access.evaluator, lambda: plain, time.time, recheck=600,
                                   retry=0.2)
    async with access.live_session("alice@pve", CONSOLE, PARAMS) as alice:
        await asyncio.sleep(0.1)
        assert not access.sessions.watching and alice.reason is None
        await _other_node(store, lambda c: ops.delete_user(c, "alice@pve"))
        assert await asyncio.wait_for(alice.ended(), 2) == "user 'alice@pve' was deleted"


async def test_root_sessions_are_never_watched() -> None:
    store = WatchedStore()
    await _setup(store)
    access = AccessService(lambda: store)
    async with access.live_session("root@pam", CONSOLE, PARAMS) as root:
        await asyncio.sleep(0.05)
        assert access.sessions.count == 0 and root.reason is None
        assert store.watch_calls == 0


async def test_a_session_opened_after_the_change_is_ended_at_once() -> None:
    """The request was authenticated before a change the session then missed: the first
    decision happens as it is registered."""
    store = WatchedStore()
    await _setup(store)
    access = AccessService(lambda: store)
    access.sessions = SessionWatch(access.evaluator, lambda: store, time.time, recheck=600)
    await access.config()                        # the snapshot of the request's login
    await _other_node(store, lambda c: ops.update_user(c, "alice@pve", {"enable": False}))
    async with access.live_session("alice@pve", CONSOLE, PARAMS) as alice:
        assert await asyncio.wait_for(alice.ended(), 1) == "user 'alice@pve' was disabled"


@pytest.mark.parametrize("reason", ["x", "é" * 100])
def test_close_reason_fits_a_close_frame(reason: str) -> None:
    from binome.api.methods.console import close_reason

    text = close_reason(reason)
    assert len(text) <= 123 and text.decode().startswith("access revoked: ")
