"""The guest QEMUs the self-fence supervisor kills, and how it proves who they are.

The fence layer does not import the guest package: it sits beside it, and the
supervisor must keep working whatever the daemon's code does. What it relies on
is the contract the guest runtime publishes in its run directory (``binome.guest``
writes it; ``tests/unit/test_fence_guests.py`` pins the two sides together):

* ``<run_dir>/<vmid>.json``: the runtime's record of the running guest, with
  ``pid`` (QEMU's) and ``start_ticks`` (its start time, clock ticks since boot);
* ``<run_dir>/<vmid>.pid``: QEMU's own ``-pidfile``, and QEMU's command line
  carries ``-pidfile <that path>``.

Process identity comes from ``/proc``: a pid counts only if it is not a zombie,
and, when a start time is known, only if it started then (no pid reuse).
"""

from __future__ import annotations

import itertools
import json
import os
import signal
from pathlib import Path
from typing import Any

__all__ = [
    "guest_pidfile",
    "guest_record",
    "is_alive",
    "is_guest_qemu",
    "kill_guest",
    "proc_cmdline",
]


def guest_record(run_dir: Path, vmid: int) -> Path:
    """The guest runtime's record of guest ``vmid`` (pid and start time)."""
    return run_dir / f"{vmid}.json"


def guest_pidfile(run_dir: Path, vmid: int) -> Path:
    """QEMU's ``-pidfile`` for guest ``vmid``."""
    return run_dir / f"{vmid}.pid"


def _proc_state_and_start(pid: int) -> tuple[str, int] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm may contain spaces and parentheses: split after the last ')'.
    fields = raw.rsplit(")", 1)[1].split()
    return fields[0], int(fields[19])


def is_alive(pid: int, start_ticks: int | None = None) -> bool:
    """Running (not a zombie), and started at ``start_ticks`` if given."""
    st = _proc_state_and_start(pid)
    if st is None or st[0] in ("Z", "X"):
        return False
    return start_ticks is None or st[1] == start_ticks


def proc_cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [a.decode(errors="replace") for a in raw.split(b"\0")[:-1]]


def is_guest_qemu(pid: int, pidfile: Path) -> bool:
    """Whether ``pid`` runs QEMU with ``-pidfile <pidfile>`` (that guest's QEMU)."""
    argv = proc_cmdline(pid)
    if not argv or not Path(argv[0]).name.startswith("qemu-system-"):
        return False
    return any(a == "-pidfile" and b == str(pidfile) for a, b in itertools.pairwise(argv))


def _read_record(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def kill_guest(run_dir: Path, vmid: int) -> dict[str, Any]:
    """SIGKILL guest ``vmid``'s QEMU if it provably is that guest; says what happened.

    Returns ``{"vmid", "result", "pid"?, "detail"?}`` with result ``killed``,
    ``not running`` or ``not killed`` (identity could not be proven).
    """
    pidfile = guest_pidfile(run_dir, vmid)
    rec = _read_record(guest_record(run_dir, vmid))
    if rec is None:
        return {"vmid": vmid, "result": "not running", "detail": "no runtime record"}
    pid, ticks = rec.get("pid"), rec.get("start_ticks")
    if not isinstance(pid, int):
        # The runtime died between spawning QEMU and recording its pid: QEMU's own
        # pidfile names it, trusted only if that process is this guest's QEMU.
        try:
            pid = int(pidfile.read_text().strip())
        except (OSError, ValueError):
            return {"vmid": vmid, "result": "not running", "detail": "no pid recorded"}
        ticks = None
    if not is_alive(pid):
        return {"vmid": vmid, "result": "not running", "pid": pid}
    if isinstance(ticks, int):
        if not is_alive(pid, ticks):
            return {"vmid": vmid, "result": "not killed", "pid": pid,
                    "detail": "pid reused: start time differs from the guest's"}
    elif not is_guest_qemu(pid, pidfile):
        return {"vmid": vmid, "result": "not killed", "pid": pid,
                "detail": "no start time recorded and the pid is not this guest's QEMU"}
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return {"vmid": vmid, "result": "not running", "pid": pid}
    except OSError as exc:
        return {"vmid": vmid, "result": "not killed", "pid": pid, "detail": str(exc)}
    return {"vmid": vmid, "result": "killed", "pid": pid, "start_ticks": ticks}
