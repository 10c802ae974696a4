"""QEMU as a detached process: the exit wrapper, /proc inspection, exit reasons.

Detaching. QEMU must outlive the daemon, and a daemon that starts later must
still learn *how* a guest ended. ``-daemonize`` gives the first but loses the
exit status (QEMU is nobody's child). So each guest runs under a tiny
``/bin/sh`` wrapper started in its own session (``setsid``, stdin from
/dev/null, no PDEATHSIG, no inherited descriptors): the wrapper is QEMU's
parent, waits for it, and writes QEMU's exit status to ``<vmid>.exitcode``
(atomically, via rename) and then deletes the guest's taps. Killing or
restarting the daemon does not touch the wrapper's session. The status
follows the shell's convention: ``0..127`` is an exit code, ``128+N`` means
killed by signal N (QEMU never exits with a code above 127 itself).

Exit reasons are classified from, in order: what the runtime asked for
(``stop``/``shutdown`` recorded in the guest's state file before acting, so
it survives a daemon restart), the wrapper's exit status, the SHUTDOWN event
QEMU sent over QMP if a daemon was connected, and QEMU's log (QEMU prints
"terminating on signal N" when a catchable signal made it quit with 0).

Liveness and identity come from /proc: a pid is "ours" only if it is not a
zombie, its start time matches the one recorded at start (no pid reuse), and
its cmdline is a QEMU with this guest's ``-pidfile`` argument.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "CLK_TCK",
    "ProcStat",
    "classify_exit",
    "is_alive",
    "is_our_qemu",
    "proc_cmdline",
    "proc_rss",
    "proc_stat",
    "process_uptime",
    "read_exitcode",
    "wrapper_argv",
]

CLK_TCK = os.sysconf("SC_CLK_TCK")

# $1: exit status file; $2: taps to delete; the rest: the QEMU argv.
# No `exec`: the shell must stay QEMU's parent to collect its status.
WRAPPER_SCRIPT = r"""
status_file=$1; taps=$2; shift 2
"$@"
rc=$?
echo "$rc" > "$status_file.tmp" && mv -f "$status_file.tmp" "$status_file"
for tap in $taps; do ip link del dev "$tap" 2>/dev/null; done
exit 0
"""


def wrapper_argv(vmid: int, exitcode: Path, taps: list[str], qemu_argv: list[str]) -> list[str]:
    """argv running ``qemu_argv`` under the exit wrapper (``$0`` names the VM for ``ps``)."""
    return ["/bin/sh", "-c", WRAPPER_SCRIPT, f"binome-vm-{vmid}", str(exitcode), " ".join(taps),
            *qemu_argv]


@dataclass(frozen=True)
class ProcStat:
    state: str
    ppid: int
    cpu_ticks: int  # utime + stime
    start_ticks: int  # since boot


def proc_stat(pid: int) -> ProcStat | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm may contain spaces and parentheses: split after the last ')'.
    fields = raw.rsplit(")", 1)[1].split()
    return ProcStat(
        state=fields[0],
        ppid=int(fields[1]),
        cpu_ticks=int(fields[11]) + int(fields[12]),
        start_ticks=int(fields[19]),
    )


def is_alive(pid: int, start_ticks: int | None = None) -> bool:
    """Running (not a zombie), and started at ``start_ticks`` if given."""
    st = proc_stat(pid)
    if st is None or st.state in ("Z", "X"):
        return False
    return start_ticks is None or st.start_ticks == start_ticks


def proc_cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [a.decode(errors="replace") for a in raw.split(b"\0")[:-1]]


def is_our_qemu(pid: int, pidfile: Path) -> bool:
    """Whether ``pid`` runs QEMU with ``-pidfile <pidfile>`` (our guest for that vmid)."""
    argv = proc_cmdline(pid)
    if not argv or not Path(argv[0]).name.startswith("qemu-system-"):
        return False
    return any(a == "-pidfile" and b == str(pidfile) for a, b in itertools.pairwise(argv))


def proc_rss(pid: int) -> int:
    """Resident set size in bytes (0 if unknown)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def process_uptime(start_ticks: int) -> float:
    """Seconds since a process started (from its start time in ticks since boot)."""
    since_boot = float(Path("/proc/uptime").read_text().split()[0])
    return max(0.0, since_boot - start_ticks / CLK_TCK)


def read_exitcode(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


_TERM_RE = re.compile(r"terminating on signal (\d+)")
_ERR_RE = re.compile(r"qemu-system-\w+: (.*)")


def _last_error(log_text: str) -> str:
    for line in reversed(log_text.splitlines()):
        m = _ERR_RE.search(line)
        if m:
            return m.group(1).strip()
    return ""


def classify_exit(
    status: int | None, *, requested: str | None, qmp_reason: str | None, log_text: str
) -> str:
    """One line saying why QEMU ended, for status(), the task log and the cluster log.

    ``status`` is the wrapper's (None: unknown), ``requested`` is ``"stop"``,
    ``"shutdown"``, ``"migrated"`` (the source after a live migration) or None,
    ``qmp_reason`` the last SHUTDOWN event's reason.
    """
    if requested == "stop":
        return "stopped by request"
    if requested == "migrated":   # the source QEMU after a live migration handed over
        return "migrated away (source stopped by request)"
    if status is None:
        return "QEMU exited (exit status unknown: its wrapper is gone)"
    if status > 128:
        sig = status - 128
        return f"QEMU exited unexpectedly (killed by signal {sig}, {_signal_name(sig)})"
    if status != 0:
        err = _last_error(log_text)
        return f"QEMU exited with status {status}" + (f": {err}" if err else "")
    if requested == "shutdown":
        return "shut down by request (guest powered off)"
    if qmp_reason == "guest-shutdown":
        return "guest powered off"
    if qmp_reason == "host-qmp-quit":
        return "QEMU quit by a QMP client"
    m = _TERM_RE.search(log_text)
    if m or qmp_reason == "host-signal":
        sig = int(m.group(1)) if m else 0
        return f"QEMU terminated by signal {sig} ({_signal_name(sig)})" if sig else \
            "QEMU terminated by a signal"
    if qmp_reason == "guest-panic":
        return "guest panicked"
    return "guest powered off"
