"""Start the volume engine, or re-adopt the one already running (for binomed and tests).

The engine is started in a session of its own (`start_new_session`): signals
for the daemon's process group or terminal never reach it, and it keeps
running when the daemon exits or restarts. A restarted daemon finds it again
through the control socket (`ensure_engine` pings first and only spawns when
nobody answers; the engine's pidfile lock forbids a second engine on the same
state directory). Under systemd the engine belongs in its own unit (or the
daemon's unit needs `KillMode=process`), otherwise stopping the daemon's
cgroup would take the engine down with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from binome.storage.replica.engine import control


@dataclass
class EngineHandle:
    state_dir: Path
    control: str
    pid: int
    adopted: bool                              # found running, not started by us
    process: subprocess.Popen | None = None    # set when we started it (so we can reap it)


def control_path(state_dir: Path) -> str:
    return str(state_dir / "engine.sock")


async def ping(path: str, timeout: float = 2.0) -> dict[str, Any] | None:
    """The engine's ping answer, or None if nothing answers on `path`."""
    try:
        async with asyncio.timeout(timeout):
            return await control.call(path, "ping")
    except (OSError, TimeoutError, ConnectionError, control.ControlError):
        return None


def spawn(state_dir: Path, *, socket_dir: Path | None = None, log_path: Path | None = None,
          python: str = sys.executable, env: dict[str, str] | None = None) -> subprocess.Popen:
    state_dir.mkdir(parents=True, exist_ok=True)
    cmd = [python, "-m", "binome.storage.replica", "--state-dir", str(state_dir)]
    if socket_dir is not None:
        cmd += ["--socket-dir", str(socket_dir)]
    log_path = log_path or state_dir / "engine.log"
    with open(log_path, "ab") as logf:
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                close_fds=True, env=env)


async def ensure_engine(state_dir: Path, *, socket_dir: Path | None = None,
                        timeout: float = 15.0, env: dict[str, str] | None = None) -> EngineHandle:
    """Adopt the running engine of `state_dir`, or start one and wait until it answers."""
    path = control_path(state_dir)
    info = await ping(path)
    if info is not None:
        return EngineHandle(state_dir, path, info["pid"], adopted=True)
    proc = spawn(state_dir, socket_dir=socket_dir, env=env)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"volume engine exited with status {proc.returncode}: "
                               f"{_tail(state_dir / 'engine.log')}")
        info = await ping(path, timeout=1.0)
        if info is not None:
            return EngineHandle(state_dir, path, info["pid"], adopted=False, process=proc)
        await asyncio.sleep(0.02)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    proc.wait()
    raise TimeoutError(f"volume engine did not answer within {timeout:.0f} s")


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie (an adopted engine is not our child to reap)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


async def stop_engine(handle: EngineHandle, timeout: float = 30.0) -> None:
    """SIGTERM the engine (clean detach of every volume), SIGKILL after `timeout`."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(handle.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if handle.process is not None:
            if handle.process.poll() is not None:
                return
        elif not _alive(handle.pid):
            return
        await asyncio.sleep(0.02)
    with contextlib.suppress(ProcessLookupError):
        os.kill(handle.pid, signal.SIGKILL)
    if handle.process is not None:
        handle.process.wait()


def _tail(path: Path, n: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return "(no log)"
