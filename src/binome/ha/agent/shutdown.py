"""`ShutdownDetector`: tells the HA service whether the *host* is going down, and how.

The LRM's shutdown policy (`conditional`, `freeze`, `failover`, `migrate`)
needs to know whether binomed stops because the machine reboots, powers off,
or because only the daemon restarts (then nothing must happen to the guests).
On Debian that knowledge lives in systemd, and there are two ways to get it:

1. **logind** (preferred, early): hold a *delay* inhibitor lock for
   "shutdown" (`systemd-inhibit --what=shutdown --mode=delay`, a child that
   holds the lock while it lives) and watch logind's `PrepareForShutdown`
   signal (`gdbus monitor` on the system bus). When it fires, systemd waits
   for our lock (up to logind's `InhibitDelayMaxSec`) while the LRM applies
   the policy; `release()` (the LRM's `shutdown_ready`) drops the lock.
   Whether it is a reboot or a power-off is read from the queued systemd
   jobs (`reboot.target`/`kexec.target` vs `poweroff.target`/`halt.target`).
2. **On SIGTERM** (fallback, e.g. without logind or when the inhibitor
   could not be taken): `probe()` asks systemd: `systemctl
   is-system-running` says `stopping` during a system shutdown, and the
   queued jobs say which kind. A `systemctl restart binomed` leaves the
   system `running`: a plain daemon restart is no shutdown.

3. **Announced by binome** (`announce`): a reboot or shutdown asked through the API
   (`POST /nodes/{node}/status`) is known before anything stops; the API's task
   then waits for the LRM, and runs `power_argv` (`BINOME_HOST_POWER_COMMAND`,
   default `systemctl`, with `reboot` or `poweroff` appended) last.

Both use only subprocesses of tools that ship with systemd and glib (no new
Python dependency), and both degrade to "no shutdown known" when the tools
are missing: the watchdog guarantee still covers the guests then.

The probe command can be replaced by the environment variable
`BINOME_SHUTDOWN_PROBE` (a command line; its first output word `reboot` or
`poweroff` means the host goes down that way, anything else means it does
not). The lab and the integration tests run without systemd (no PID 1 to
ask), so they configure a probe that reads a file the test writes; the code
path after the probe (the LRM's policy, the freeze, the failover) is the
production one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import shutil
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("binome.ha")

PROBE_ENV = "BINOME_SHUTDOWN_PROBE"
POWER_ENV = "BINOME_HOST_POWER_COMMAND"
POWER_DEFAULT = "systemctl"
POWER_TIMEOUT = 30.0
PROBE_TIMEOUT = 5.0
REBOOT_TARGETS = ("reboot.target", "kexec.target", "soft-reboot.target")
POWEROFF_TARGETS = ("poweroff.target", "halt.target", "shutdown.target")


def classify_jobs(text: str) -> str | None:
    """`systemctl list-jobs` output -> "reboot" | "poweroff" | None."""
    units = {line.split()[1] for line in text.splitlines() if len(line.split()) > 1}
    if units & set(REBOOT_TARGETS):
        return "reboot"
    if units & set(POWEROFF_TARGETS):
        return "poweroff"
    return None


async def _run(argv: list[str], timeout: float = PROBE_TIMEOUT) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL, start_new_session=True)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except (TimeoutError, asyncio.CancelledError):
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    return proc.returncode or 0, out.decode(errors="replace")


class ShutdownDetector:
    """One per HA service. `request` is None, "reboot" or "poweroff"."""

    def __init__(self, on_request: Callable[[], None] | None = None,
                 probe_command: str | None = None) -> None:
        self.request: str | None = None
        self.on_request = on_request
        env = os.environ.get(PROBE_ENV)
        self.probe_command = probe_command if probe_command is not None else env
        self._inhibitor: asyncio.subprocess.Process | None = None
        self._monitor: asyncio.Task[None] | None = None

    # ------------------------------------------------------------ systemd / logind

    @staticmethod
    def systemd_running() -> bool:
        return Path("/run/systemd/system").is_dir() and shutil.which("systemctl") is not None

    async def start(self) -> None:
        """Take the delay inhibitor and watch PrepareForShutdown, where logind exists."""
        if self.probe_command or not self.systemd_running():
            return
        inhibit, gdbus = shutil.which("systemd-inhibit"), shutil.which("gdbus")
        if inhibit is None or gdbus is None:
            log.info("no systemd-inhibit/gdbus: host shutdowns are detected on SIGTERM only")
            return
        try:
            self._inhibitor = await asyncio.create_subprocess_exec(
                inhibit, "--what=shutdown", "--mode=delay", "--who=binomed",
                "--why=HA: stop or freeze guests per the shutdown policy", "sleep", "infinity",
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL, start_new_session=True)
        except OSError as exc:
            log.warning("cannot take the logind inhibitor: %s", exc)
        self._monitor = asyncio.get_running_loop().create_task(
            self._watch(gdbus), name="ha-logind")

    async def _watch(self, gdbus: str) -> None:
        proc = await asyncio.create_subprocess_exec(
            gdbus, "monitor", "--system", "--dest", "org.freedesktop.login1",
            "--object-path", "/org/freedesktop/login1", stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True)
        try:
            assert proc.stdout is not None
            async for raw in proc.stdout:
                line = raw.decode(errors="replace")
                if "PrepareForShutdown" in line and "true" in line:
                    kind = await self._systemd_kind() or "poweroff"
                    self._set(kind, "logind PrepareForShutdown")
        finally:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()

    async def _systemd_kind(self) -> str | None:
        try:
            _, jobs = await _run(["systemctl", "list-jobs", "--no-legend", "--no-pager"])
        except (OSError, TimeoutError):
            return None
        return classify_jobs(jobs)

    def announce(self, kind: str, source: str) -> None:
        """The host goes down this way, said by binome itself (the API's node reboot or
        shutdown, which then runs `power_command`)."""
        if kind not in ("reboot", "poweroff"):
            raise ValueError(f"unknown host shutdown kind {kind!r}")
        self._set(kind, source)

    def _set(self, kind: str, source: str) -> None:
        if self.request is None:
            log.warning("host %s detected (%s)", kind, source)
        self.request = kind
        if self.on_request is not None:
            self.on_request()

    # ------------------------------------------------------------ on SIGTERM

    async def probe(self) -> str | None:
        """Is the host going down right now? Called when binomed is asked to stop."""
        if self.request is not None:
            return self.request
        kind: str | None = None
        try:
            if self.probe_command:
                _, out = await _run(shlex.split(self.probe_command))
                word = (out.split() or [""])[0]
                kind = word if word in ("reboot", "poweroff") else None
            elif self.systemd_running():
                _, state = await _run(["systemctl", "is-system-running"])
                if state.strip() == "stopping":
                    kind = await self._systemd_kind() or "poweroff"
        except (OSError, TimeoutError, ValueError) as exc:
            log.warning("shutdown probe failed (%s): taken for a daemon restart", exc)
            return None
        if kind is not None:
            self._set(kind, "probe on SIGTERM")
        return kind

    async def release(self) -> None:
        """The LRM is ready: let logind proceed (drop the delay inhibitor)."""
        if self._inhibitor is not None and self._inhibitor.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._inhibitor.kill()
            await self._inhibitor.wait()
        self._inhibitor = None

    async def stop(self) -> None:
        if self._monitor is not None:
            self._monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._monitor
            self._monitor = None
        await self.release()


def power_argv(kind: str, command: str | None = None) -> list[str]:
    """The command that reboots or powers off this host: `BINOME_HOST_POWER_COMMAND`
    (default `systemctl`) with `reboot` or `poweroff` appended. The lab and the tests
    set a harmless command (a probe that records what it was asked)."""
    if kind not in ("reboot", "poweroff"):
        raise ValueError(f"unknown host power action {kind!r}")
    text = command if command is not None else os.environ.get(POWER_ENV) or POWER_DEFAULT
    return [*shlex.split(text), kind]


async def run_power_command(kind: str, command: str | None = None) -> tuple[int, str]:
    """Ask the host to reboot or power off; (exit status, output). systemd then stops
    binomed, whose detector already knows the kind (the policy is not applied twice)."""
    proc = await asyncio.create_subprocess_exec(
        *power_argv(kind, command), stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        start_new_session=True)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), POWER_TIMEOUT)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        return -1, f"no answer within {POWER_TIMEOUT:.0f}s"
    return proc.returncode or 0, out.decode(errors="replace").strip()
