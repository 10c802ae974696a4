"""External fence agents speaking the standard ``fence_*`` stdin protocol.

Owns running one agent (``fence_ipmilan``, ``fence_idrac``, ``fence_apc``... from
Debian's ``fence-agents``, or any program obeying the same contract) and turning its
exit status into a :class:`~binome.fence.result.FenceResult`.

The protocol (fence-agents' ``FenceAgentAPI``): the agent is started with no
arguments and reads ``key=value`` lines on stdin until EOF: ``action=`` one of
``off``, ``on``, ``reboot``, ``status``, ``monitor``; ``ip=``, ``username=``,
``password=``, ``plug=`` and any agent-specific option (booleans as ``key=1``). Exit
status 0 is success; for ``status``, 0 means on, 2 means off and 1 an error.

Why stdin, and what is guarded:

* The password is written to the agent's stdin only: never on its command line
  (``/proc/<pid>/cmdline`` is world-readable) nor in its environment. Option values
  that could smuggle a second ``key=value`` line (a newline or NUL) are refused.
* stdout and stderr are captured; whatever the agent prints (some echo their
  options in verbose mode) passes through :func:`~binome.fence.result.scrub` before
  it is logged or put into a result.
* Each run has a timeout; the agent runs in its own session, and on timeout its
  whole process group (the agent and e.g. the ``ipmitool`` it spawned) is SIGKILLed
  by that group id, then reaped.
* ``off`` is confirmed with a ``status`` run reporting off (exit 2), polled until the
  operation's deadline: agents already wait for the power state themselves, but
  confirmation costs one more run and does not trust the agent's exit code alone.
  ``confirm: false`` in the config skips it for agents without a status action.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from binome.fence.result import FenceResult, scrub

__all__ = ["ACTIONS", "DEFAULT_TIMEOUT", "AgentFence", "AgentRun"]

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 30.0  # fence_ipmilan alone waits up to 20 s (power_timeout) for a state
ACTIONS = ("off", "on", "reboot", "status", "monitor")
# Debian installs fence agents in /usr/sbin, often not in a daemon's PATH.
EXTRA_PATH = ("/usr/sbin", "/sbin")
STATUS_ON, STATUS_ERROR, STATUS_OFF = 0, 1, 2
CONFIRM_POLL = 0.5  # between status runs while confirming "off"
OUTPUT_LIMIT = 64 * 1024  # per stream, kept for logs

_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
# Keys that carry the secret: only the dedicated `password` field may set them.
_SECRET_KEYS = {"password", "passwd"}
_RESERVED_KEYS = {"action", "option"} | _SECRET_KEYS


@dataclass(frozen=True)
class AgentRun:
    """One agent invocation (output already scrubbed of the password)."""

    action: str
    returncode: int | None  # None: killed at the timeout
    stdout: str
    stderr: str
    duration: float

    @property
    def timed_out(self) -> bool:
        return self.returncode is None

    def last_line(self) -> str:
        """The most telling line of output for a one-line detail."""
        for text in (self.stderr, self.stdout):
            lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
            if lines:
                return lines[-1][:300]
        return ""


def _render_value(key: str, value: Any) -> str | None:
    if value is None or value is False:
        return None  # absent option (fence-agents treat "0" as unset too)
    text = "1" if value is True else str(value)
    if any(c in text for c in "\n\r\0"):
        raise ValueError(f"fence agent option {key!r}: value must be one line")
    return text


class AgentFence:
    """A fence device driven by an external ``fence_*`` agent.

    ``agent``: program name (looked up in PATH plus /usr/sbin and /sbin) or path.
    ``options``: the agent's options (``ip``, ``username``, ``lanplus``, ``plug``...);
    ``password`` is passed as ``password=`` on stdin. ``timeout``: seconds per agent
    run and for a whole confirmed off.
    """

    kind = "agent"

    def __init__(
        self, agent: str, *, options: Mapping[str, Any] | None = None,
        password: str | None = None, timeout: float = DEFAULT_TIMEOUT, confirm: bool = True,
        search_path: str | None = None,
    ) -> None:
        if not agent or any(c in agent for c in "\n\0"):
            raise ValueError("agent: a program name or path is required")
        if timeout <= 0:
            raise ValueError("agent: timeout must be > 0")
        if password is not None and any(c in password for c in "\n\r\0"):
            raise ValueError("agent: password must be one line")  # never echo it
        rendered: dict[str, str] = {}
        for key, value in (options or {}).items():
            if not isinstance(key, str) or not _KEY_RE.match(key):
                raise ValueError(f"agent option name {key!r}: want [A-Za-z0-9_-]")
            if key in _RESERVED_KEYS:
                what = "the password field" if key in _SECRET_KEYS else "binome"
                raise ValueError(f"agent option {key!r} is set by {what}, not in options")
            text = _render_value(key, value)
            if text is not None:
                rendered[key] = text
        self.agent = agent
        self.options = rendered
        self._password = password
        self.timeout = float(timeout)
        self.confirm = confirm
        path = search_path if search_path is not None else os.environ.get("PATH", "")
        self.search_path = os.pathsep.join([p for p in (path, *EXTRA_PATH) if p])

    def __repr__(self) -> str:
        return f"AgentFence({self.agent!r}, ip={self.options.get('ip')!r})"

    def describe(self) -> dict[str, Any]:
        """The configuration without the password."""
        return {"type": self.kind, "agent": self.agent, "options": dict(self.options),
                "timeout": self.timeout, "confirm": self.confirm}

    def resolve(self) -> str | None:
        """The agent's path, or None if it is not installed."""
        if "/" in self.agent:
            return self.agent if os.access(self.agent, os.X_OK) else None
        return shutil.which(self.agent, path=self.search_path)

    def _stdin(self, action: str, extra: Mapping[str, Any] | None) -> bytes:
        lines = [f"action={action}"]
        merged = dict(self.options)
        for key, value in (extra or {}).items():
            text = _render_value(key, value)
            if text is not None:
                merged[key] = text
        lines += [f"{k}={v}" for k, v in merged.items()]
        if self._password is not None:
            lines.append(f"password={self._password}")
        return ("\n".join(lines) + "\n").encode()

    # -- one run -----------------------------------------------------------------

    async def run(
        self, action: str, extra: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> AgentRun:
        """Run the agent once with ``action``; never raises for the agent's behaviour.

        Raises FileNotFoundError if the agent is not installed (the callers below
        turn that into a failed result).
        """
        if action not in ACTIONS:
            raise ValueError(f"fence agent action {action!r}: want one of {ACTIONS}")
        path = self.resolve()
        if path is None:
            raise FileNotFoundError(f"fence agent {self.agent} not found (not installed? "
                                    "Debian: apt-get install fence-agents)")
        timeout = self.timeout if timeout is None else timeout
        start = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            path, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, start_new_session=True, close_fds=True,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(self._stdin(action, extra)),
                                              max(0.0, timeout))
            returncode: int | None = proc.returncode
        except TimeoutError:
            returncode = None
            out = err = b""
            await self._kill(proc)
        except BaseException:
            await asyncio.shield(self._kill(proc))  # cancelled: leave nothing running
            raise
        secrets = [self._password]
        result = AgentRun(
            action=action, returncode=returncode,
            stdout=scrub(out[:OUTPUT_LIMIT].decode(errors="replace"), secrets),
            stderr=scrub(err[:OUTPUT_LIMIT].decode(errors="replace"), secrets),
            duration=time.monotonic() - start,
        )
        log.debug("fence agent %s action=%s -> %s in %.2fs; stdout=%r stderr=%r", self.agent,
                  action, "timeout" if result.timed_out else result.returncode, result.duration,
                  result.stdout, result.stderr)
        return result

    @staticmethod
    async def _kill(proc: asyncio.subprocess.Process) -> None:
        # Its own session: pgid == pid, so the agent's helpers (ipmitool...) die too.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()

    # -- FenceDevice operations ----------------------------------------------------

    def _detail(self, run: AgentRun, what: str) -> str:
        if run.timed_out:
            return (f"{self.agent} action={run.action}: no result within its timeout "
                    f"(killed after {run.duration:.1f}s)")
        line = run.last_line()
        return f"{self.agent} action={run.action} {what} (exit {run.returncode})" + \
            (f": {line}" if line else "")

    async def _safe_run(self, action: str, timeout: float | None = None
                        ) -> tuple[AgentRun | None, str]:
        try:
            return await self.run(action, timeout=timeout), ""
        except OSError as exc:  # not installed, not executable
            return None, scrub(f"{self.agent} action={action}: cannot run: {exc}",
                               [self._password])

    async def status(self) -> FenceResult:
        """``action=status``: exit 0 is on, 2 is off, anything else an error."""
        start = time.monotonic()
        run, err = await self._safe_run("status")
        if run is None:
            return FenceResult(False, "status", None, err, time.monotonic() - start)
        if run.returncode == STATUS_ON:
            return FenceResult(True, "status", "on", self._detail(run, "reports on"),
                               run.duration)
        if run.returncode == STATUS_OFF:
            return FenceResult(True, "status", "off", self._detail(run, "reports off"),
                               run.duration)
        return FenceResult(False, "status", None, self._detail(run, "failed"), run.duration)

    async def monitor(self) -> FenceResult:
        """``action=monitor``: is the fence device itself reachable and working?"""
        return await self._simple("monitor", None)

    async def _simple(self, action: str, state: str | None) -> FenceResult:
        start = time.monotonic()
        run, err = await self._safe_run(action)
        if run is None:
            return FenceResult(False, action, None, err, time.monotonic() - start)
        ok = run.returncode == 0
        return FenceResult(ok, action, state if ok else None,
                           self._detail(run, "succeeded" if ok else "failed"), run.duration)

    async def power_on(self, confirm: bool = True) -> FenceResult:
        """``action=on`` (agents confirm "on" themselves; ``confirm`` is accepted for
        symmetry with :meth:`power_off`)."""
        return await self._simple("on", "on")

    async def reboot(self) -> FenceResult:
        """``action=reboot`` (fence agents power off, confirm, then power on)."""
        return await self._simple("reboot", "on")

    async def power_off(self, confirm: bool = True) -> FenceResult:
        """``action=off``, then (``confirm`` and the device's ``confirm`` setting)
        ``action=status`` until it reports off, within :attr:`timeout` overall."""
        start = time.monotonic()
        deadline = start + self.timeout
        run, err = await self._safe_run("off")
        if run is None:
            return FenceResult(False, "off", None, err, time.monotonic() - start)
        if run.returncode != 0:
            return FenceResult(False, "off", None, self._detail(run, "failed"),
                               time.monotonic() - start)
        if not (confirm and self.confirm):
            return FenceResult(True, "off", "off", self._detail(run, "succeeded"),
                               time.monotonic() - start)
        off_detail = self._detail(run, "succeeded")
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return FenceResult(False, "off", None,
                                   f"{off_detail}, but no status run confirmed it within "
                                   f"{self.timeout:g}s", time.monotonic() - start)
            check, err = await self._safe_run("status", timeout=left)
            if check is None:
                return FenceResult(False, "off", None, f"{off_detail}; {err}",
                                   time.monotonic() - start)
            if check.returncode == STATUS_OFF:
                return FenceResult(True, "off", "off", f"{off_detail}; status confirms off",
                                   time.monotonic() - start)
            if check.returncode != STATUS_ON:
                return FenceResult(False, "off", None,
                                   f"{off_detail}; confirmation failed: "
                                   f"{self._detail(check, 'failed')}", time.monotonic() - start)
            if deadline - time.monotonic() <= CONFIRM_POLL:
                return FenceResult(False, "off", "on",
                                   f"{off_detail}, but status still reports on at the "
                                   "deadline", time.monotonic() - start)
            await asyncio.sleep(CONFIRM_POLL)  # the agent's status is the polled condition

    async def fence(self, node: str) -> FenceResult:
        """Power ``node`` off through the agent and confirm it (what the CRM calls)."""
        log.info("fencing node %s: %s action=off", node, self.agent)
        result = await self.power_off(confirm=True)
        level = logging.INFO if result.ok else logging.ERROR
        log.log(level, "fencing node %s via %s: %s (%.2fs)", node, self.agent, result.detail,
                result.duration)
        return result
