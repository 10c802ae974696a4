"""Helpers for the fence tests: the fake ``fence_*`` agent as a real program, /proc checks."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from binome.fence.agent import AgentFence

FAKE_AGENT = Path(__file__).with_name("fake_fence_agent.py")
PASSWORD = "Fence-s3cret-pw!"  # distinctive, so a leak anywhere is found by substring


@dataclass
class FakeAgent:
    """The fake agent installed as ``fence_fake`` in a directory of its own."""

    dir: Path
    path: Path
    state_file: Path
    record_file: Path

    def records(self) -> list[dict[str, Any]]:
        try:
            lines = self.record_file.read_text().splitlines()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in lines if line.strip()]

    def actions(self) -> list[str]:
        return [r["action"] for r in self.records()]

    def power(self) -> str:
        return self.state_file.read_text().strip() if self.state_file.exists() else "on"

    def device(self, *, password: str | None = PASSWORD, timeout: float = 10.0,
               confirm: bool = True, **options: Any) -> AgentFence:
        opts = {"ip": "192.0.2.10", "username": "admin", "state_file": str(self.state_file),
                "record_file": str(self.record_file), **options}
        return AgentFence("fence_fake", options=opts, password=password, timeout=timeout,
                          confirm=confirm, search_path=str(self.dir))


def install_fake_agent(tmp_path: Path) -> FakeAgent:
    """``fence_fake`` in ``tmp_path/bin`` (mode 0755, this interpreter in its shebang)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    path = bindir / "fence_fake"
    source = FAKE_AGENT.read_text().split("\n", 1)[1]  # drop the repo's generic shebang
    path.write_text(f"#!{sys.executable}\n{source}")
    path.chmod(0o755)
    return FakeAgent(bindir, path, tmp_path / "power", tmp_path / "records.jsonl")


def proc_text(pid: int, name: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/{name}").read_bytes()
    except OSError:
        return b""


def pid_alive(pid: int) -> bool:
    """Alive and not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def kill_quietly(pid: int | None) -> None:
    """SIGKILL a test's own process by pid (cleanup), if it still runs."""
    if pid is not None and pid_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


async def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 10.0,
                     interval: float = 0.01) -> float:
    """Poll ``predicate`` until true; returns the monotonic time it became true."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)
    return time.monotonic()
