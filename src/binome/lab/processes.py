"""Processes the lab starts inside its hosts: each in its own session (so one process
group, "the node's process tree"), signalled by group and recognised by pid plus start
time, never by name.

`binome.lab.topology` spawns them and records them in the lab's state file;
`binome.lab.control` and cleanup use `start_time` to tell a live owner from a reused pid.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["LabError", "LabProcess", "group_members", "killpg", "start_time", "wait_until"]


class LabError(RuntimeError):
    """A lab operation failed (the message carries the failing command and its stderr)."""


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (to detect pid reuse)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group, found through /proc."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(entry.name))
    return members


def killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


class LabProcess:
    """A process tree started inside a host: its own session, so one process group.

    Signals go to the whole group (the "node's process tree"), never by name.
    """

    def __init__(
        self, popen: subprocess.Popen[bytes], argv: Sequence[str], netns: str,
        log_path: Path | None,
    ) -> None:
        self._popen = popen
        self.pid = popen.pid
        self.pgid = popen.pid  # start_new_session: the leader's pid is the group id
        self.argv = list(argv)
        self.netns = netns
        self.log_path = log_path
        self.start_time = start_time(self.pid)
        self._gone = False

    def __repr__(self) -> str:
        return f"LabProcess(pid={self.pid}, netns={self.netns!r}, argv={self.argv!r})"

    @property
    def returncode(self) -> int | None:
        """The group leader's exit status (None while it runs)."""
        return self._popen.poll()

    def alive(self) -> bool:
        """Whether any process of the group still runs (zombies do not count)."""
        if self._gone:
            return False
        self._popen.poll()  # reap the leader if it exited
        if group_members(self.pgid):
            return True
        self._gone = True  # remembered, so a later reuse of the pgid cannot fool us
        return False

    def signal(self, sig: int) -> None:
        """Send a signal to the whole group (SIGSTOP/SIGCONT for pause drills)."""
        if self.alive():
            killpg(self.pgid, sig)

    def terminate(self, timeout: float = 10.0) -> None:
        """SIGTERM the group, wait up to ``timeout``, then SIGKILL what is left."""
        if not self.alive():
            return
        killpg(self.pgid, signal.SIGTERM)
        killpg(self.pgid, signal.SIGCONT)  # a stopped process must run to see SIGTERM
        if not self._wait_gone(timeout):
            self.kill()

    def kill(self) -> None:
        """SIGKILL the whole group at once ("power off") and wait until it is gone."""
        if not self.alive():
            return
        killpg(self.pgid, signal.SIGKILL)
        if not self._wait_gone(5.0):
            raise LabError(f"{self!r}: group {self.pgid} survived SIGKILL")

    def _wait_gone(self, timeout: float) -> bool:
        return wait_until(lambda: not self.alive(), timeout)


# --- hosts -----------------------------------------------------------------------------
