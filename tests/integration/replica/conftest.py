"""Fixtures: a real volume engine process (in a short temp dir: unix socket paths are
limited to 107 bytes) and volumes on it, all stopped and removed even when a test fails."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from binome.storage.replica.engine import control
from binome.storage.replica.node import supervisor
from tests.integration.access.client import Api
from tests.integration.harness import PASSWORD, Cluster
from tests.integration.notify.mailbox import Inbox, free_port, smtp_server

_names = itertools.count(1)


@dataclass
class EngineProc:
    state_dir: Path
    handle: supervisor.EngineHandle

    @property
    def control(self) -> str:
        return self.handle.control

    def call(self, cmd: str, **args: Any) -> Any:
        return control.call_sync(self.control, cmd, **args)

    def stop(self) -> None:
        asyncio.run(supervisor.stop_engine(self.handle))


@dataclass
class Vol:
    name: str
    socket: str
    size: int

    @property
    def uri(self) -> str:
        return f"nbd+unix:///{self.name}?socket={self.socket}"


def require(*tools: str) -> None:
    for tool in tools:
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")


@contextlib.contextmanager
def running_engine() -> Iterator[EngineProc]:
    state = Path(tempfile.mkdtemp(prefix="bnm-", dir="/tmp"))
    proc = None
    try:
        proc = EngineProc(state, asyncio.run(supervisor.ensure_engine(state)))
        yield proc
    finally:
        if proc is not None:
            proc.stop()
        shutil.rmtree(state, ignore_errors=True)


@pytest.fixture(scope="module")
def engine() -> Iterator[EngineProc]:
    with running_engine() as proc:
        yield proc


@pytest.fixture
def fresh_engine() -> Iterator[EngineProc]:
    """An engine of its own, for tests that kill or restart it."""
    with running_engine() as proc:
        yield proc


def make_volume_factory(engine: EngineProc) -> tuple[Callable[..., Vol], list[str]]:
    names: list[str] = []

    def make(size: str | int = "64M", *, primary: bool = True, **kw: Any) -> Vol:
        name = f"v{next(_names)}"
        info = engine.call("create", name=name, size=size, **kw)
        names.append(name)
        engine.call("up", name=name)
        if primary:
            engine.call("primary", name=name, force=True)
        return Vol(name, info["socket"], info["size"])

    return make, names


@pytest.fixture
def volume(engine: EngineProc) -> Iterator[Callable[..., Vol]]:
    make, names = make_volume_factory(engine)
    yield make
    for name in names:
        with contextlib.suppress(control.ControlError, OSError):
            engine.call("down", name=name, force=True)
        with contextlib.suppress(control.ControlError, OSError):
            engine.call("delete", name=name, remove_data=True)


@pytest.fixture
def pair() -> Iterator[Any]:
    """Two engines of their own (tests kill and restart them)."""
    from tests.integration.replica.pairs import Pair

    with running_engine() as a, running_engine() as b:
        yield Pair(a, b)


@pytest.fixture(scope="module")
def mail(vc: Cluster) -> Iterator[tuple[Inbox, Api]]:
    """A real SMTP server receiving the cluster's volume notifications (target `mail`),
    and a target `deadmail` whose server does not listen: its failures must show."""
    api = Api(vc, "admin@pve", PASSWORD)
    with smtp_server() as (inbox, port):
        for name, at in (("mail", port), ("deadmail", free_port())):
            api.ok("POST", "/cluster/notifications/endpoints/smtp", name=name,
                   server="127.0.0.1", port=at, mode="insecure", mailto="ops@example.org",
                   **{"from-address": "binome@example.org"})
        api.ok("POST", "/cluster/notifications/matchers", name="volume-events",
               target=["mail", "deadmail"],
               **{"match-field": ["exact:type=split-brain,replication"]})
        yield inbox, api
