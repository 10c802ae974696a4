"""Self-fence supervisor: kills a node's HA guests when its daemon stops renewing in time.

Owns the node-local half of the watchdog guarantee the CRM relies on when it recovers
a lost node's guests without a fence device: *the guests of a node whose lease can
have expired are already dead*. Two parts live here:

* the **supervisor**, a separate long-lived process (``python -m
  binome.fence.watchdog --state FILE --pidfile FILE``), and
* :class:`Watchdog`, the daemon's asyncio client that starts it, arms it after
  every successful lease renewal, disarms it, and reads its status.

Protocol. The daemon owns the *state file* and rewrites it atomically (temp file +
rename) after each successful renewal::

    {"armed": true, "deadline": <CLOCK_MONOTONIC seconds>, "vmids": [100, 101],
     "qemu_run_dir": "/run/binome/qemu", "written_at": <monotonic>, "writer_pid": 1234}

where ``deadline`` = the monotonic time the renewal request was *sent* + the
self-fence deadline (see ``docs/fencing.md`` for why "sent", and the timer
relations). The supervisor owns the *report file* (``<state>.report`` unless given)
and rewrites it, atomically too, on every event (start, arm, each new deadline,
disarm, fire, re-arm after a fire, a later kill): ``{"pid", "armed", "fired", "at",
"deadline", "late", "killed": [...], "skipped": [...], "hardware", ...}``.
``CLOCK_MONOTONIC`` is one clock for every process of the machine, so the daemon's
deadline means the same instant to the supervisor.

Supervisor behaviour:

* It re-reads the state file every ``--interval`` (0.1 s), and sleeps no later than
  the deadline, so it fires within milliseconds of it, not within a tick.
* Armed and past the deadline, it **fires**: every listed guest's QEMU, identified by
  the pid *and* start time recorded in ``<qemu_run_dir>/<vmid>.json`` by the guest
  runtime (``binome.guest.runtime``), is SIGKILLed by pid. A pid whose start time
  differs (reused by another process) is never killed; a record without a start time
  is only trusted if ``/proc/<pid>/cmdline`` is a QEMU with this guest's ``-pidfile``.
  The exit wrapper is left alone so it records "killed by signal 9" as the guest's
  exit reason. The fire is logged (CRITICAL) and recorded in the report.
* After firing it stays fired: as long as the state says armed with a deadline in
  the past, any listed guest seen running again is killed again (a confused daemon
  cannot resurrect a fenced guest). The latch is released by a disarm, or by a new
  deadline in the future, i.e. a real renewal after the fire.
* Only an explicit ``"armed": false`` disarms. A missing, unreadable or half-written
  state file changes nothing (rename makes the last case impossible anyway), the
  daemon dying changes nothing, and SIGTERM/SIGINT are refused while armed. The
  process runs in its own session with no parent-death signal and no inherited
  descriptors, so killing the daemon or its process group does not reach it.
* With ``/dev/watchdog`` present (``--device``), the device is opened when armed,
  petted every tick while the deadline is more than the device's timeout ahead, no
  longer petted after that (so the hardware resets the machine by the deadline: the
  production guarantee, which holds even if this process dies or hangs), and closed
  with the magic 'V' on a clean disarm.
* One supervisor per state file: it holds an exclusive ``flock`` on its pidfile. The
  daemon finds it again after a restart through the pidfile and a
  ``/proc/<pid>/cmdline`` check (module name and this state file's path).

Where there is no hardware watchdog (this lab), the guarantee rests on this process
being alive: :meth:`Watchdog.arm` restarts it if it is gone, and its OOM score is
set to -1000 (best effort) so memory pressure does not pick it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import json
import logging
import math
import os
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from binome import durable
from binome.fence.guests import is_alive, kill_guest, proc_cmdline

__all__ = [
    "DEFAULT_DEVICE",
    "DEFAULT_INTERVAL",
    "MODULE",
    "Supervisor",
    "Watchdog",
    "WatchdogError",
    "WatchdogStatus",
    "kill_guest",
    "main",
]

log = logging.getLogger("binome.fence.watchdog")

MODULE = "binome.fence.watchdog"
DEFAULT_INTERVAL = 0.1
DEFAULT_DEVICE = "/dev/watchdog"
EXIT_ALREADY_RUNNING = 3
LOCK_WAIT = 1.0  # a previous instance may be exiting: wait this long for the pidfile lock
KILL_CONFIRM = 2.0  # after SIGKILL, how long to watch for the guests to be gone
POLL = 0.01
WDIOC_SETTIMEOUT = 0xC0045706  # _IOWR('W', 6, int)
WDIOC_GETTIMEOUT = 0x80045707  # _IOR('W', 7, int)


def _write_json_atomic(path: Path, data: dict[str, Any], mode: int = 0o644) -> None:
    # Atomic, not fsynced: the state and the report hold CLOCK_MONOTONIC deadlines of
    # this boot, meaningless after a power cut, and the state is rewritten at every
    # lease renewal from the daemon's event loop, where an fsync could stall it.
    durable.write_json(path, data, indent=None, mode=mode, sync=False)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# --- the hardware watchdog device -------------------------------------------------------


class HardwareWatchdog:
    """``/dev/watchdog``: open = started, write = pet, 'V' then close = clean stop.

    ``effective_timeout`` is the device's timeout as the driver reports it (None if
    it cannot tell): the supervisor stops petting that long *before* the deadline, so
    the hardware resets the machine by the deadline even if the supervisor itself
    died or hung in between.
    """

    def __init__(self, path: str, timeout: int | None = None) -> None:
        self.path = path
        self.timeout = timeout
        self.fd: int | None = None
        self.effective_timeout: int | None = None
        self._warned = False

    @property
    def is_open(self) -> bool:
        return self.fd is not None

    def open(self) -> bool:
        if self.fd is not None:
            return True
        try:
            self.fd = os.open(self.path, os.O_WRONLY | os.O_CLOEXEC)
        except OSError as exc:
            log.error("cannot open hardware watchdog %s: %s (software kill only)",
                      self.path, exc)
            return False
        if self.timeout:
            try:
                fcntl.ioctl(self.fd, WDIOC_SETTIMEOUT, struct.pack("i", self.timeout))
            except OSError as exc:
                log.warning("%s: cannot set the timeout to %ss: %s", self.path, self.timeout, exc)
        try:
            raw = fcntl.ioctl(self.fd, WDIOC_GETTIMEOUT, struct.pack("i", 0))
            self.effective_timeout = struct.unpack("i", raw)[0] or None
        except OSError:
            self.effective_timeout = None
        if self.effective_timeout is None:
            log.warning("%s: timeout unknown; petted until the deadline, so a reset may come "
                        "up to one device timeout after it", self.path)
        log.info("hardware watchdog %s opened (started, timeout %s s)", self.path,
                 self.effective_timeout)
        return True

    def pet_until(self, deadline: float, now: float) -> None:
        """Pet unless the device's timeout would then run past ``deadline``."""
        if self.effective_timeout is None or now + self.effective_timeout <= deadline:
            self.pet()

    def pet(self) -> None:
        if self.fd is None:
            return
        try:
            os.write(self.fd, b"\0")
        except OSError as exc:
            if not self._warned:
                log.error("petting %s failed: %s", self.path, exc)
                self._warned = True

    def close_clean(self) -> None:
        """Magic close: the driver stops the timer (unless built with nowayout)."""
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            os.write(self.fd, b"V")
        with contextlib.suppress(OSError):
            os.close(self.fd)
        self.fd = None
        log.info("hardware watchdog %s closed cleanly", self.path)


# --- the supervisor process -------------------------------------------------------------


@dataclass
class _Armed:
    deadline: float
    vmids: list[int]
    run_dir: Path
    written_at: float | None = None


def boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _parse_state(data: dict[str, Any] | None) -> _Armed | bool | None:
    """An armed state, False for an explicit disarm, None for no usable instruction."""
    if data is None:
        return None
    if data.get("armed") is False:
        return False
    if data.get("boot_id") not in (None, boot_id()):
        # Written before a reboot: its monotonic deadline means nothing in this boot.
        return False
    if data.get("armed") is not True:
        return None
    deadline, vmids, run_dir = data.get("deadline"), data.get("vmids"), data.get("qemu_run_dir")
    if (isinstance(deadline, bool) or not isinstance(deadline, int | float)
            or not math.isfinite(deadline) or not isinstance(vmids, list)
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in vmids)
            or not isinstance(run_dir, str) or not run_dir):
        return None
    written = data.get("written_at")
    return _Armed(float(deadline), sorted(set(vmids)), Path(run_dir),
                  float(written) if isinstance(written, int | float) else None)


class Supervisor:
    """The supervisor's loop (runs in the ``python -m binome.fence.watchdog`` process)."""

    def __init__(
        self, state_path: Path, pidfile: Path, report_path: Path, *,
        interval: float = DEFAULT_INTERVAL, device: str | None = DEFAULT_DEVICE,
        device_timeout: int | None = None,
    ) -> None:
        self.state_path = state_path
        self.pidfile = pidfile
        self.report_path = report_path
        self.interval = interval
        self.hw = HardwareWatchdog(device, device_timeout) if device else None
        self.armed: _Armed | None = None
        self.fired: dict[str, Any] | None = None  # the latched fire, while it holds
        self.last_fire: dict[str, Any] | None = None
        self._stop = False
        self._lock_fd: int | None = None
        self._started = time.monotonic()

    # -- lifecycle ---------------------------------------------------------------

    def acquire_pidfile(self) -> bool:
        fd = os.open(self.pidfile, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        deadline = time.monotonic() + LOCK_WAIT
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(fd)
                    return False
                time.sleep(POLL)  # the holder may be exiting: its lock goes with it
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd
        return True

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if self.armed is not None:
            log.warning("%s received while armed: refusing to stop (disarm first)",
                        signal.Signals(signum).name)
            return
        self._stop = True

    def run(self) -> int:
        if not self.acquire_pidfile():
            log.error("another supervisor holds %s; exiting", self.pidfile)
            return EXIT_ALREADY_RUNNING
        with contextlib.suppress(OSError):
            # Memory pressure must pick anything but the process that fences.
            Path("/proc/self/oom_score_adj").write_text("-1000")
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        log.info("self-fence supervisor started (pid %d, state %s, interval %gs, device %s)",
                 os.getpid(), self.state_path, self.interval,
                 self.hw.path if self.hw else "none")
        self.tick()
        self.write_report()  # also the "ready" signal the client waits for
        while not self._stop:
            time.sleep(self._sleep_for())  # a timer, not a guess: next tick or the deadline
            self.tick()
        if self.hw is not None:
            self.hw.close_clean()
        log.info("self-fence supervisor stopped (disarmed)")
        return 0

    def _sleep_for(self) -> float:
        if self.armed is None or self.fired is not None:
            return self.interval
        # Wake up right after the deadline rather than up to a tick late.
        return max(0.0, min(self.interval, self.armed.deadline - time.monotonic() + 0.0005))

    # -- one tick ----------------------------------------------------------------

    def tick(self) -> None:
        state = _parse_state(_read_json(self.state_path))
        now = time.monotonic()
        if state is False:
            if self.armed is not None or self.fired is not None:
                self._disarm()
            return
        if state is None:
            state = self.armed  # keep the last instruction: only "armed": false disarms
            if state is None:
                return
        assert isinstance(state, _Armed)
        if self.armed is None:
            self._arm(state)
        elif state != self.armed:
            self.armed = state
            self.write_report()  # acknowledges the renewal: status shows the live deadline
        self.armed = state
        if self.fired is not None and state.deadline > now \
                and state.deadline != self.fired["deadline"]:
            log.warning("re-armed after the fire: new deadline %.3f is %.3fs ahead",
                        state.deadline, state.deadline - now)
            self.fired = None
            if self.hw is not None and self.hw.open():
                self.hw.pet_until(state.deadline, now)
            self.write_report()
        if now <= state.deadline:
            if self.hw is not None:
                self.hw.pet_until(state.deadline, now)
            return
        if self.fired is None:
            self._fire(state, now)
        else:
            self._enforce(state)

    def _arm(self, state: _Armed) -> None:
        log.info("armed: deadline in %.3fs, HA guests %s, run dir %s",
                 state.deadline - time.monotonic(), state.vmids, state.run_dir)
        self.armed = state
        if self.hw is not None and os.path.exists(self.hw.path):
            self.hw.open()
        self.write_report()

    def _disarm(self) -> None:
        log.info("disarmed%s", " (fire latch released)" if self.fired else "")
        self.armed = None
        self.fired = None
        if self.hw is not None:
            self.hw.close_clean()
        self.write_report()

    def _fire(self, state: _Armed, now: float) -> None:
        late = now - state.deadline
        results = [kill_guest(state.run_dir, vmid) for vmid in state.vmids]
        killed = [r for r in results if r["result"] == "killed"]
        # Keep the hardware unpetted from here: in production the machine resets.
        self.fired = {"fired": True, "at": now, "at_wall": time.time(),
                      "deadline": state.deadline, "late": late, "vmids": state.vmids,
                      "last_arm_age": now - state.written_at if state.written_at else None,
                      "killed": killed, "skipped": [r for r in results if r not in killed]}
        self.last_fire = self.fired
        log.critical("SELF-FENCE: lease not renewed in time (deadline passed %.1f ms ago): "
                     "killed %s; %s", late * 1000,
                     ", ".join(f"VM {r['vmid']} (pid {r['pid']})" for r in killed) or "nothing",
                     "; ".join(f"VM {r['vmid']}: {r['result']}"
                               + (f" ({r['detail']})" if r.get("detail") else "")
                               for r in self.fired["skipped"]) or "no guest skipped")
        self._confirm_dead(killed)
        self.write_report()

    def _confirm_dead(self, killed: list[dict[str, Any]]) -> None:
        deadline = time.monotonic() + KILL_CONFIRM
        for entry in killed:
            ticks = entry.get("start_ticks")
            while is_alive(entry["pid"], ticks if isinstance(ticks, int) else None):
                if time.monotonic() > deadline:
                    log.error("VM %s (pid %s) still alive after SIGKILL (D state?)",
                              entry["vmid"], entry["pid"])
                    entry["dead"] = False
                    break
                time.sleep(POLL)
            else:
                entry["dead"] = True
                entry["dead_after"] = time.monotonic() - self.fired["at"] if self.fired else None

    def _enforce(self, state: _Armed) -> None:
        """Still armed and expired after the fire: nothing listed may run again."""
        again = [r for r in (kill_guest(state.run_dir, v) for v in state.vmids)
                 if r["result"] == "killed"]
        if again:
            log.critical("SELF-FENCE still in force: killed %s again",
                         ", ".join(f"VM {r['vmid']} (pid {r['pid']})" for r in again))
            self._confirm_dead(again)
            assert self.fired is not None
            self.fired["killed"] = [*self.fired["killed"], *again]
            self.write_report()

    def write_report(self) -> None:
        armed = self.armed
        report: dict[str, Any] = {
            "pid": os.getpid(),
            "started": self._started,
            "updated": time.monotonic(),
            "armed": armed is not None,
            "deadline": armed.deadline if armed else None,
            "vmids": armed.vmids if armed else [],
            "qemu_run_dir": str(armed.run_dir) if armed else None,
            "fired": self.fired is not None,
            "hardware": self.hw.path if self.hw is not None and self.hw.is_open else None,
            "last_fire": self.last_fire,
        }
        if self.fired is not None:
            report.update({k: self.fired[k] for k in ("at", "at_wall", "late", "killed",
                                                      "skipped")})
        try:
            _write_json_atomic(self.report_path, report)
        except OSError as exc:
            log.error("cannot write the report %s: %s", self.report_path, exc)


def default_report_path(state_path: Path) -> Path:
    return state_path.with_name(state_path.name + ".report")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=f"python -m {MODULE}",
                                description="binome self-fence supervisor")
    p.add_argument("--state", required=True, type=Path, help="state file written by the daemon")
    p.add_argument("--pidfile", required=True, type=Path)
    p.add_argument("--report", type=Path, help="report file (default: <state>.report)")
    p.add_argument("--interval", type=float, default=DEFAULT_INTERVAL)
    p.add_argument("--device", default=DEFAULT_DEVICE,
                   help="hardware watchdog device, used if it exists ('none': never)")
    p.add_argument("--device-timeout", type=int, help="set the hardware timeout (seconds)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s fence-watchdog[%(process)d] %(levelname)s "
                               "%(message)s")
    sup = Supervisor(args.state.absolute(), args.pidfile.absolute(),
                     (args.report or default_report_path(args.state)).absolute(),
                     interval=args.interval,
                     device=None if args.device == "none" else args.device,
                     device_timeout=args.device_timeout)
    return sup.run()


# --- the daemon's client ----------------------------------------------------------------


class WatchdogError(RuntimeError):
    """The supervisor could not be started, or did not acknowledge in time."""


@dataclass
class WatchdogStatus:
    """What the supervisor reports, combined with the daemon's own last instruction."""

    running: bool
    pid: int | None
    armed: bool
    deadline: float | None
    remaining: float | None  # seconds until the deadline (negative: passed)
    fired: bool
    fired_at: float | None = None
    late: float | None = None  # how long after the deadline it fired
    killed: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    hardware: str | None = None
    vmids: list[int] = field(default_factory=list)
    last_fire: dict[str, Any] | None = None

    def protects(self, vmid: int) -> bool:
        """The supervisor holds a live deadline covering guest `vmid`: the guest dies if
        the lease is not renewed in time, and no latched fire of an earlier deadline
        kills it for merely running (`Supervisor._enforce`)."""
        return (self.running and self.armed and not self.fired
                and self.remaining is not None and self.remaining > 0
                and vmid in self.vmids)


class Watchdog:
    """The daemon's handle on its node's self-fence supervisor.

    ``state_file``/``pidfile`` (and the report file, ``<state>.report`` by default)
    belong on a local tmpfs such as /run. ``arm`` is called after every successful
    lease renewal; it is cheap (one small file rename) once the supervisor runs.
    """

    def __init__(
        self, state_file: str | Path, pidfile: str | Path, *,
        report_file: str | Path | None = None, log_file: str | Path | None = None,
        interval: float = DEFAULT_INTERVAL, device: str | None = DEFAULT_DEVICE,
        ack_timeout: float = 2.0, python: str = sys.executable,
    ) -> None:
        self.state_file = Path(state_file).absolute()
        self.pidfile = Path(pidfile).absolute()
        self.report_file = (Path(report_file).absolute() if report_file is not None
                            else default_report_path(self.state_file))
        self.log_file = (Path(log_file).absolute() if log_file is not None
                         else self.state_file.with_name(self.state_file.name + ".log"))
        self.interval = interval
        self.device = device
        self.ack_timeout = ack_timeout
        self.python = python
        self._popen: subprocess.Popen[bytes] | None = None
        # the fire `new_fire` last answered True for: (supervisor pid, at, kills)
        self._reported: tuple[Any, Any, int] | None = None

    # -- finding and starting the supervisor ---------------------------------------

    def argv(self) -> list[str]:
        return [self.python, "-m", MODULE, "--state", str(self.state_file),
                "--pidfile", str(self.pidfile), "--report", str(self.report_file),
                "--interval", str(self.interval), "--device", self.device or "none"]

    def running_pid(self) -> int | None:
        """The supervisor's pid if it runs (pidfile + /proc cmdline check), else None."""
        if self._popen is not None:
            self._popen.poll()  # reap it if it was our child and exited
        try:
            pid = int(self.pidfile.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        if not is_alive(pid):
            return None
        argv = proc_cmdline(pid) or []
        # Not a reused pid: the same module watching the same state file.
        if MODULE not in argv or str(self.state_file) not in argv:
            return None
        return pid

    def _report(self) -> dict[str, Any] | None:
        return _read_json(self.report_file)

    async def _until(self, predicate: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise WatchdogError(f"self-fence supervisor: {what} within {timeout:g}s; "
                                    f"log {self.log_file}: {self._log_tail()}")
            await asyncio.sleep(POLL)

    def _log_tail(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-800:].strip()
        except OSError:
            return "(no log)"

    async def ensure_running(self, timeout: float = 10.0) -> int:
        """Start the supervisor unless it runs; returns its pid once it is ready."""
        pid = self.running_pid()
        if pid is not None:
            return pid
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        popen = await asyncio.to_thread(self._spawn)
        self._popen = popen

        def ready() -> bool:
            if popen.poll() is not None:
                return True  # exited: decided below
            report = self._report()
            return self.running_pid() == popen.pid and report is not None \
                and bool(report) and report.get("pid") == popen.pid

        await self._until(ready, timeout, "not ready")
        if popen.returncode is not None:
            if popen.returncode == EXIT_ALREADY_RUNNING:  # lost a start race: use the winner
                pid = self.running_pid()
                if pid is not None:
                    return pid
            raise WatchdogError(f"self-fence supervisor exited with status {popen.returncode}: "
                                f"{self._log_tail()}")
        log.info("self-fence supervisor started (pid %d)", popen.pid)
        return popen.pid

    def _spawn(self) -> subprocess.Popen[bytes]:
        # Own session, no inherited descriptors, no parent-death signal: whatever happens
        # to the daemon (crash, SIGKILL, its process group signalled) does not reach it.
        with open(self.log_file, "ab") as out:
            return subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True,
                                    close_fds=True, cwd="/")

    # -- instructions --------------------------------------------------------------

    def arm_sync(self, deadline: float, vmids: Iterable[int], qemu_run_dir: str | Path) -> None:
        """Write the armed state (no supervisor check): for synchronous callers."""
        if isinstance(deadline, bool) or not math.isfinite(deadline):
            raise ValueError("deadline must be a finite CLOCK_MONOTONIC time")
        state = {"armed": True, "deadline": float(deadline),
                 "vmids": sorted({int(v) for v in vmids}),
                 "qemu_run_dir": str(Path(qemu_run_dir).absolute()),
                 "written_at": time.monotonic(), "writer_pid": os.getpid(),
                 "boot_id": boot_id()}
        _write_json_atomic(self.state_file, state)

    def disarm_sync(self) -> None:
        """Write the disarmed state (no acknowledgement wait): for synchronous callers."""
        _write_json_atomic(self.state_file, {"armed": False, "written_at": time.monotonic(),
                                             "writer_pid": os.getpid()})

    async def arm(self, deadline: float, vmids: Iterable[int], qemu_run_dir: str | Path) -> None:
        """Arm, or move the deadline (absolute ``time.monotonic()`` seconds).

        Starts the supervisor if it is not running. When this arms a supervisor that
        was not armed yet, waits until it acknowledges, so HA guests are only started
        once the guarantee holds; later calls (renewals) return after the write.
        A deadline already in the past makes the supervisor fire at once.
        """
        vmids = list(vmids)
        self.arm_sync(deadline, vmids, qemu_run_dir)
        pid = self.running_pid()
        if pid is None:
            pid = await self.ensure_running()
        report = self._report() or {}
        if report.get("pid") != pid or not report.get("armed"):
            def acked() -> bool:
                r = self._report() or {}
                return r.get("pid") == pid and bool(r.get("armed"))

            await self._until(acked, self.ack_timeout, "did not acknowledge arm")

    async def disarm(self) -> None:
        """Disarm and wait until the supervisor acknowledges (also releases a fire latch)."""
        await asyncio.to_thread(self.disarm_sync)
        pid = self.running_pid()
        if pid is None:
            return  # nothing runs: nothing can fire

        def acked() -> bool:
            if self.running_pid() is None:
                return True  # it died meanwhile: nothing left that could fire
            r = self._report() or {}
            return r.get("pid") == pid and not r.get("armed") and not r.get("fired")

        await self._until(acked, self.ack_timeout, "did not acknowledge disarm")

    def read_status(self) -> WatchdogStatus:
        """The supervisor's view (synchronous: two small file reads)."""
        pid = self.running_pid()
        report = (self._report() or {}) if pid is not None else {}
        if report.get("pid") != pid:
            report = {}
        deadline = report.get("deadline")
        remaining = deadline - time.monotonic() if isinstance(deadline, int | float) else None
        return WatchdogStatus(
            running=pid is not None, pid=pid, armed=bool(report.get("armed")),
            deadline=deadline, remaining=remaining, fired=bool(report.get("fired")),
            fired_at=report.get("at"), late=report.get("late"),
            killed=list(report.get("killed") or []), skipped=list(report.get("skipped") or []),
            hardware=report.get("hardware"), vmids=list(report.get("vmids") or []),
            last_fire=report.get("last_fire"),
        )

    def release_inherited_fire(self) -> WatchdogStatus | None:
        """Release a fire this daemon's life inherited: the supervisor fired on a deadline
        an earlier life of the daemon set (it crashed or stalled past it; or the
        supervisor, started by this life, found that life's armed state expired; or the
        lease bridge could not renew it) and keeps killing every guest listed there
        whenever one runs (`Supervisor._enforce`) until someone arms or disarms. This
        life knows of that fire (those guests are dead, the CRM recovers them
        elsewhere) and starts none of them without arming first, so the latch would only
        kill what it later runs lawfully: a guest migrated in before its LRM armed, one
        taken out of HA and started by hand. Returns the fire released (None: none).
        The caller holds the daemon's watchdog lock and has not armed in this life."""
        st = self.read_status()
        fire = (st.pid, st.fired_at, len(st.killed))
        if not st.running or not st.fired or fire == self._reported:
            return None     # (the last: released, the supervisor's next tick clears it)
        self.disarm_sync()
        self._reported = fire   # never a "new" fire
        return st

    async def status(self) -> WatchdogStatus:
        """The supervisor's view: running, armed, deadline, fired and what it killed."""
        return self.read_status()

    def new_fire(self) -> bool:
        """True once for each fire the supervisor reports (and once more for each guest it
        kills again under the same latch): the daemon's "the watchdog fired".

        The report keeps a fire (`fired`) until the supervisor reads a deadline in the
        future, at its next tick after the daemon arms again: up to an interval later,
        longer on a loaded machine. Read as "fired", that latch made an LRM which had
        handled the fire and armed again take it for a new one (issue 16: a recovery
        onto the node that had self-fenced in the previous scenario logged "the watchdog
        fired and killed this node's HA guests" while nothing was killed)."""
        st = self.read_status()
        if not st.fired:
            return False
        fire = (st.pid, st.fired_at, len(st.killed))
        if fire == self._reported:
            return False
        self._reported = fire
        return True

    async def stop(self, timeout: float = 5.0) -> None:
        """Disarm, then end the supervisor (SIGTERM by pid) and wait for it to exit.

        For a node leaving HA entirely (and tests); a daemon restart must not call it.
        """
        await self.disarm()
        pid = self.running_pid()
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        await self._until(lambda: self.running_pid() is None, timeout, "did not exit")


if __name__ == "__main__":
    sys.exit(main())
