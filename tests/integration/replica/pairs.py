"""Helpers for tests with two real engines replicating over loopback TCP (`pair` fixture
in conftest.py): volume pairs, status polling, NBD writes, engine logs."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from binome.lab.nbd_client import NbdClient
from tests.integration.replica.conftest import EngineProc

MiB = 1 << 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Pair:
    a: EngineProc
    b: EngineProc

    def create(self, name: str = "r0", size: str = "16M", a: dict | None = None,
               b: dict | None = None, up: bool = True, **common: Any) -> None:
        pa, pb = free_port(), free_port()
        base = {"secret": "s3cret", "connect_int": 0.1, **common}
        self.a.call("create", name=name, size=size, node="alpha", peer_node="beta",
                    address=f"127.0.0.1:{pa}", peer_address=f"127.0.0.1:{pb}",
                    **{**base, **(a or {})})
        self.b.call("create", name=name, size=size, node="beta", peer_node="alpha",
                    address=f"127.0.0.1:{pb}", peer_address=f"127.0.0.1:{pa}",
                    **{**base, **(b or {})})
        if up:
            self.a.call("up", name=name)
            self.b.call("up", name=name)

    def data(self, engine: EngineProc, name: str = "r0") -> bytes:
        return (engine.state_dir / "volumes" / name / "data.img").read_bytes()

    def identical(self, name: str = "r0") -> bool:
        return self.data(self.a, name) == self.data(self.b, name)


def wait_for(engine: EngineProc, pred: Callable[[dict], bool], name: str = "r0",
             timeout: float = 20) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        st = engine.call("status", name=name)
        if pred(st):
            return st
        assert time.monotonic() < deadline, f"timed out; last status: {st}"
        time.sleep(0.02)


def connected(st: dict) -> bool:
    return st["cstate"] == "Connected"


def standalone(st: dict) -> bool:
    return st["cstate"] == "StandAlone"


def in_sync(st: dict) -> bool:
    return st["cstate"] == "Connected" and st["disk"] == st["peer_disk"] == "UpToDate"


def synced_pair(pair: Pair, **kw: Any) -> None:
    pair.create(**kw)
    wait_for(pair.a, connected)
    pair.a.call("primary", name="r0", force=True)
    wait_for(pair.a, in_sync)
    wait_for(pair.b, in_sync)


async def nbd_writes(sock: str, writes: list[tuple[int, bytes]], *, flush: bool = True) -> None:
    c = await NbdClient.connect(sock, "r0")
    try:
        await asyncio.gather(*(c.write(off, data) for off, data in writes))
        if flush:
            await c.flush()
    finally:
        await c.close()


def log_of(engine: EngineProc) -> str:
    return (engine.state_dir / "engine.log").read_text()
