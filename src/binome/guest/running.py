"""One running guest as the runtime tracks it, and the small process helpers it uses.

Owns `RunningGuest` (a guest's spec, paths, pids, taps, QMP channel, exit watch
and what was requested of it; `record()` is the ``<vmid>.json`` a restarted
daemon re-adopts it from), the durable JSON files of the run directory, the
detached spawn of the QEMU wrapper, the tail of a QEMU log, and `poll_until`
(a /proc condition polled until a deadline). The runtime (`runtime`) decides
what happens to guests; this module only describes one.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from binome import durable
from binome.guest.agent import QgaChannel
from binome.guest.paths import GuestPaths
from binome.guest.process import is_alive
from binome.guest.qmp import QmpChannel
from binome.guest.spec import LaunchSpec

POLL = 0.02   # seconds between two looks at /proc while waiting for a process


@dataclass(eq=False)
class RunningGuest:
    spec: LaunchSpec
    paths: GuestPaths
    taps: list[str]
    pid: int | None = None
    start_ticks: int | None = None
    wrapper_pid: int | None = None
    popen: subprocess.Popen[bytes] | None = None  # set when this process started it
    requested: str | None = None  # "stop" | "shutdown": what we asked QEMU/the guest to do
    argv: list[str] = field(default_factory=list)
    started_at: float = 0.0
    qmp: QmpChannel = field(init=False)
    qga: QgaChannel = field(init=False)
    pidfd: int | None = None
    cpu_sample: tuple[float, int] | None = None  # (monotonic, cpu ticks)
    finalizer: asyncio.Task[str] | None = None
    exited: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.qmp = QmpChannel(self.spec.vmid, self.paths.qmp)
        self.qga = QgaChannel(self.spec.vmid, self.paths.qga)

    @property
    def vmid(self) -> int:
        return self.spec.vmid

    def alive(self) -> bool:
        return self.pid is not None and is_alive(self.pid, self.start_ticks)

    def record(self) -> dict[str, Any]:
        return {
            "vmid": self.vmid,
            "spec": self.spec.to_dict(),
            "argv": self.argv,
            "taps": self.taps,
            "pid": self.pid,
            "start_ticks": self.start_ticks,
            "wrapper_pid": self.wrapper_pid,
            "requested": self.requested,
            "started_at": self.started_at,
        }


def write_json(path: Path, data: dict[str, Any]) -> None:
    durable.write_json(path, data, indent=1)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def spawn_detached(argv: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start ``argv`` with nothing tying it to this process.

    Own session (no signal from our process group or terminal reaches it),
    no inherited descriptors (``close_fds``: QEMU must not hold the API's
    listening socket), cwd "/", output to ``log_path``; no PDEATHSIG.
    """
    with log_path.open("wb") as logf:
        return subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
            start_new_session=True, close_fds=True, cwd="/",
        )


async def poll_until(predicate: Callable[[], bool], timeout: float) -> bool:
    """Poll a /proc condition until true (True) or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(POLL)


def log_tail(path: Path, limit: int = 16384) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - limit))
            return f.read().decode(errors="replace")
    except OSError:
        return ""
