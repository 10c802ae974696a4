"""IPMI-over-LAN fence device (RMCP+, "lanplus") through ``pyghmi``.

Owns power control of one node through its BMC: off (confirmed), on, status and
reboot, each bounded by an overall timeout and reported as a
:class:`~binome.fence.result.FenceResult`. Nothing here raises for a BMC that does not
answer, refuses the password or times out: the HA manager needs a result with a
reason, not an exception, to decide whether recovery may proceed.

Design:

* ``pyghmi`` is synchronous. Each operation is one function run in a thread of a small
  executor of its own (not the loop's default one): a BMC that does not answer keeps
  its thread inside pyghmi's retries for a few seconds after our timeout expired, and
  fencing must neither starve nor be starved by unrelated ``to_thread`` work. The
  caller gets its result at the timeout regardless (``asyncio.wait_for``); the thread
  checks the same deadline between steps and winds down on its own.
* One pyghmi conversation per BMC at a time (a per-device thread lock): pyghmi shares
  sessions between callers with the same credentials, and a late thread of a timed-out
  attempt must not interleave with the next attempt.
* pyghmi 1.6 caches half-open sessions under a key it never deletes (it stores the
  user/password as ``str`` but deletes with ``bytes``), so a second ``Command`` to the
  same BMC in one process gets a dead session back. :func:`_forget_session` drops that
  cache entry before and after every operation.
* pyghmi 1.6's synchronous client also loses wake-ups: after sending a request it
  registers to be woken by the *next* datagram from the BMC, so a reply that arrived in
  between (a fast BMC, a busy CPU) sits in the session's queue until the retransmit
  timer (0.5-1 s, measured up to 2.5 s) fires. :func:`_fix_pyghmi_lost_wakeup` wraps
  pyghmi's wait so it returns at once when a reply from that BMC is already queued
  (the caller then processes it and loops as before).
* Before pyghmi is asked anything, one sessionless *Get Channel Authentication
  Capabilities* request (what ipmitool sends first, answered by every IPMI 2.0 BMC)
  probes the BMC, retransmitted with backoff until the deadline. A dead BMC (the
  incident 3 of docs/incidents.md: the node lost power and its BMC with it) is thus reported at our
  deadline, or at once when an ICMP "port unreachable" comes back, instead of
  leaving pyghmi's own login retries (about 5 s, not configurable) to run on in a
  thread and block the next attempt.
* "Off" is confirmed by reading the chassis power state back until it says off (or the
  deadline passes): a BMC acknowledging the command is not proof the node is down.
* ``reboot`` is off (confirmed) then on, like ``fence_ipmilan``'s default ``onoff``
  method: a chassis reset would not prove the node ever stopped.
* The password lives only in this object and in pyghmi's session; details are passed
  through :func:`~binome.fence.result.scrub` anyway.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import select
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

# Imported here, not in the worker: the first import costs ~0.5 s, which must not
# come out of the first fence operation's timeout.
from pyghmi.exceptions import IpmiException
from pyghmi.ipmi.command import Command

from binome.fence.result import FenceResult, scrub

__all__ = ["AUTH_CAP_PROBE", "DEFAULT_PORT", "DEFAULT_TIMEOUT", "IpmiFence", "probe"]

log = logging.getLogger(__name__)

DEFAULT_PORT = 623
DEFAULT_TIMEOUT = 5.0
POLL = 0.1  # power state read-back interval while confirming
PROBE_FIRST_RETRY = 0.2  # then doubling: 0.2, 0.4, 0.8 ... until the deadline

# IPMI 1.5 sessionless Get Channel Authentication Capabilities (IPMI 2.0 section 22.13):
# RMCP header, session header (auth none, seq 0, session 0, length 9), then the message
# to the BMC (0x20) netfn App (0x06), from remote console 0x81, cmd 0x38, channel "this
# one" (0x0E) with the IPMI 2.0 extended-data bit, privilege Administrator (0x04).
_AUTH_CAP_MSG = bytes([0x81, 0x00, 0x38, 0x8E, 0x04])
AUTH_CAP_PROBE = (bytes([0x06, 0x00, 0xFF, 0x07, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0x09,
                         0x20, 0x18, (-(0x20 + 0x18)) & 0xFF])
                  + _AUTH_CAP_MSG + bytes([(-sum(_AUTH_CAP_MSG)) & 0xFF]))

# Enough for several BMCs fenced at once plus stragglers of timed-out attempts.
_EXECUTOR = concurrent.futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="ipmi")


class _Deadline(Exception):
    """The operation ran out of time inside the worker thread."""


def _forget_session(bmc: str, userid: str, password: str, port: int) -> None:
    """Drop pyghmi's cached half-open session for these credentials (see module doc)."""
    try:
        from pyghmi.ipmi.private.session import Session

        cache = Session.initting_sessions
        for key in ((bmc, userid, password, port, None),
                    (bmc, userid.encode(), password.encode(), port, None)):
            cache.pop(key, None)
    except Exception:  # a pyghmi without this cache has no such bug either
        pass


class _NoAnswer(Exception):
    """The BMC did not answer the probe (or its port is closed)."""


def probe(ip: str, port: int, deadline: float) -> float:
    """Send Get Channel Auth Capabilities until a reply comes or ``deadline`` passes.

    Returns the round-trip seconds of the answered attempt; raises :class:`_NoAnswer`
    with the reason otherwise. Blocking (runs in the worker thread).
    """
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        try:
            # connect(): the kernel then reports ICMP port unreachable as ECONNREFUSED.
            sock.connect((ip, port))
        except OSError as exc:
            raise _NoAnswer(f"cannot reach the BMC: {exc.strerror or exc}") from None
        wait = PROBE_FIRST_RETRY
        while True:
            sent = time.monotonic()
            try:
                sock.send(AUTH_CAP_PROBE)
            except ConnectionRefusedError:
                raise _NoAnswer("the BMC's IPMI port is closed (ICMP port unreachable)") \
                    from None
            except OSError as exc:
                raise _NoAnswer(f"cannot send to the BMC: {exc.strerror or exc}") from None
            until = min(deadline, sent + wait)
            while True:
                left = until - time.monotonic()
                if left <= 0:
                    break
                ready, _, _ = select.select([sock], [], [], left)
                if not ready:
                    continue
                try:
                    reply = sock.recv(512)
                except ConnectionRefusedError:
                    raise _NoAnswer("the BMC's IPMI port is closed (ICMP port unreachable)") \
                        from None
                except OSError as exc:
                    raise _NoAnswer(f"error from the BMC's address: {exc.strerror or exc}") \
                        from None
                if reply[:4] == b"\x06\x00\xff\x07":
                    return time.monotonic() - sent
            if time.monotonic() >= deadline:
                raise _NoAnswer("no answer from the BMC to IPMI requests (BMC powered off "
                                "with the node, unreachable, or not an IPMI BMC)")
            wait *= 2


def _fix_pyghmi_lost_wakeup() -> None:
    """Wrap ``pyghmi...session._io_wait`` to not wait for a reply already received.

    Idempotent. Only the directed, event-less wait used while awaiting a response is
    short-cut; everything else goes to pyghmi unchanged.
    """
    from pyghmi.ipmi.private import session as pyghmi_session

    original = pyghmi_session._io_wait
    if getattr(original, "binome_fixed", False):
        return

    def _io_wait(timeout: Any, myaddr: Any = None, evq: Any = None) -> Any:
        if myaddr is not None and evq is None:
            handlers = pyghmi_session.Session.bmc_handlers.get(myaddr) or {}
            if any(getattr(h, "pktqueue", None) for h in list(handlers.values())):
                return None  # already here: the caller processes its queue next
        return original(timeout, myaddr, evq)

    _io_wait.binome_fixed = True  # type: ignore[attr-defined]
    pyghmi_session._io_wait = _io_wait


_fix_pyghmi_lost_wakeup()


def _explain(exc: BaseException) -> str:
    """A human reason for a pyghmi failure."""
    msg = str(exc) or type(exc).__name__
    low = msg.lower()
    if "incorrect password" in low:
        return "authentication failed: incorrect password"
    if "unauthorized name" in low:
        return "authentication failed: unknown user name"
    if "timeout" in low or "no longer connected" in low or "failed to initialize" in low:
        return f"no answer from the BMC ({msg})"
    if "cipher suite" in low:
        return f"session setup refused by the BMC: {msg}"
    if isinstance(exc, IpmiException):
        return f"BMC error: {msg}"
    return f"unexpected {type(exc).__name__}: {msg}"


class IpmiFence:
    """One node's BMC. ``timeout``: seconds for a whole operation, confirmation included."""

    kind = "ipmi"

    def __init__(
        self, ip: str, *, username: str, password: str, port: int = DEFAULT_PORT,
        timeout: float = DEFAULT_TIMEOUT, poll_interval: float = POLL,
    ) -> None:
        if not ip:
            raise ValueError("ipmi: ip is required")
        if not username:
            raise ValueError("ipmi: username is required")
        if not password:
            raise ValueError("ipmi: password is required")
        if timeout <= 0:
            raise ValueError("ipmi: timeout must be > 0")
        self.ip = ip
        self.port = int(port)
        self.username = username
        self._password = password
        self.timeout = float(timeout)
        self.poll_interval = poll_interval
        self._conversation = threading.Lock()

    def __repr__(self) -> str:
        return f"IpmiFence({self.ip}:{self.port}, user={self.username!r})"

    def describe(self) -> dict[str, Any]:
        """The configuration without the password (for status output and logs)."""
        return {"type": self.kind, "ip": self.ip, "port": self.port,
                "username": self.username, "timeout": self.timeout}

    @property
    def target(self) -> str:
        return f"{self.ip}:{self.port}"

    # -- public operations -------------------------------------------------------

    async def power_off(self, confirm: bool = True) -> FenceResult:
        """Chassis power off; with ``confirm``, ok only once the BMC reports "off"."""
        return await self._run("off", lambda cmd, dl: self._set(cmd, dl, "off", confirm))

    async def power_on(self, confirm: bool = True) -> FenceResult:
        """Chassis power on; with ``confirm``, ok only once the BMC reports "on"."""
        return await self._run("on", lambda cmd, dl: self._set(cmd, dl, "on", confirm))

    async def status(self) -> FenceResult:
        """The chassis power state ("on"/"off")."""
        return await self._run("status", self._status)

    async def reboot(self) -> FenceResult:
        """Off (confirmed), then on (confirmed); each half has the full timeout."""
        start = time.monotonic()
        off = await self.power_off(confirm=True)
        if not off.ok:
            return FenceResult(False, "reboot", off.state, f"reboot: {off.detail}",
                               time.monotonic() - start)
        on = await self.power_on(confirm=True)
        return FenceResult(on.ok, "reboot", on.state, f"reboot: {off.detail}; {on.detail}",
                           time.monotonic() - start)

    async def fence(self, node: str) -> FenceResult:
        """Power ``node`` off through its BMC and confirm it (what the CRM calls)."""
        log.info("fencing node %s: IPMI power off via %s", node, self.target)
        result = await self.power_off(confirm=True)
        level = logging.INFO if result.ok else logging.ERROR
        log.log(level, "fencing node %s via IPMI %s: %s (%.2fs)", node, self.target,
                result.detail, result.duration)
        return result

    # -- machinery ---------------------------------------------------------------

    async def _run(
        self, action: str, body: Callable[[Any, float], tuple[bool, str | None, str]],
    ) -> FenceResult:
        start = time.monotonic()
        deadline = start + self.timeout
        cancelled = threading.Event()
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(_EXECUTOR, self._conversation_in_thread, body, deadline,
                                      cancelled)
        try:
            ok, state, detail = await asyncio.wait_for(future, self.timeout)
        except TimeoutError:
            cancelled.set()
            ok, state = False, None
            detail = (f"no answer from the BMC within {self.timeout:g}s "
                      "(powered off with the node, unreachable, or busy)")
        except BaseException:
            cancelled.set()
            raise
        detail = scrub(f"IPMI {action} {self.target}: {detail}", [self._password])
        return FenceResult(ok, action, state, detail, time.monotonic() - start)

    def _conversation_in_thread(
        self, body: Callable[[Any, float], tuple[bool, str | None, str]], deadline: float,
        cancelled: threading.Event,
    ) -> tuple[bool, str | None, str]:
        if not self._conversation.acquire(timeout=max(0.0, deadline - time.monotonic())):
            return False, None, "an earlier IPMI operation on this BMC is still running"
        try:
            if cancelled.is_set():
                return False, None, "cancelled"
            cmd = None
            try:
                probe(self.ip, self.port, deadline)
                if cancelled.is_set():
                    return False, None, "cancelled"
                _forget_session(self.ip, self.username, self._password, self.port)
                cmd = Command(bmc=self.ip, userid=self.username, password=self._password,
                              port=self.port)
                if cancelled.is_set() or time.monotonic() > deadline:
                    return False, None, "logged in too late (deadline passed)"
                return body(cmd, deadline)
            except _NoAnswer as exc:
                return False, None, str(exc)
            except _Deadline as exc:
                return False, getattr(exc, "state", None), str(exc)
            except Exception as exc:
                return False, None, _explain(exc)
            finally:
                if cmd is not None:
                    with contextlib.suppress(Exception):
                        cmd.ipmi_session.logout()
                _forget_session(self.ip, self.username, self._password, self.port)
        finally:
            self._conversation.release()

    @staticmethod
    def _power(cmd: Any) -> str:
        return str(cmd.get_power()["powerstate"])

    def _set(self, cmd: Any, deadline: float, want: str, confirm: bool) -> tuple[bool, str, str]:
        before = self._power(cmd)
        if before == want:
            return True, before, f"already {want} (confirmed)"
        cmd.set_power(want, wait=False)
        if not confirm:
            return True, before, f"power {want} requested (was {before}, not confirmed)"
        while (state := self._power(cmd)) != want:
            if time.monotonic() + self.poll_interval > deadline:
                exc = _Deadline(f"power {want} requested but the BMC still reports "
                                f"{state} at the deadline")
                exc.state = state  # type: ignore[attr-defined]
                raise exc
            time.sleep(self.poll_interval)  # the BMC's reported state is what we poll
        return True, state, f"power {want} confirmed"

    def _status(self, cmd: Any, deadline: float) -> tuple[bool, str, str]:
        state = self._power(cmd)
        return True, state, f"power is {state}"
