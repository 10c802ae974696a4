"""Simulated BMC: IPMI over LAN (UDP) that powers a lab node's network namespace off and on.

This module owns the lab's stand-in for a server's management board (iDRAC, iLO, a
generic IPMI BMC): a separate process speaking real IPMI 2.0 / RMCP+ through
``pyghmi``'s BMC server, so fence code (``binome.fence.ipmi``, ``ipmitool``,
``fence_ipmilan``) talks to it exactly as to hardware. The "machine" it controls is
one lab host, i.e. one network namespace and every process inside it:

* power **off** (chassis control 0, also cycle/reset's first half): SIGKILL every
  process whose network namespace is the node's (what ``ip netns pids NS`` lists), in
  rounds until none is left, like pulling the plug: no process gets to clean up;
* power **on**: spawn the configured power-on command inside the namespace (detached:
  own session, stdin from /dev/null), e.g. the node's ``binomed``; a no-op when on;
* soft **shutdown** (chassis control 5): SIGTERM to every process in the namespace;
* **status**: "on" while *any* process lives in the namespace. This is deliberately
  wider than "a process of the power-on command": a node whose daemon crashed but
  whose QEMU guests still run is powered on, and a BMC that answered "off" then would
  let the cluster recover guests that still run, which is the one lie fencing must
  never tell.

The BMC runs outside the node's namespace (in the root namespace or a namespace of
its own on a management network), so powering the node off does not kill the BMC.
Killing the BMC process (by pid, see :meth:`BmcProcess.kill`) is incident 3 (docs/incidents.md):
the node lost power and its BMC with it, so nothing answers on the IPMI port.

Secrets: the password is read from a file (mode 0600, refused otherwise), never from
the command line, and never logged. ``pyghmi``'s server only offers cipher suite 3
(RAKP-HMAC-SHA1, HMAC-SHA1-96, AES-CBC-128); clients that insist on suite 17 must be
told ``-C 3`` (ipmitool 1.8.19 negotiates suite 3 by itself, see the lab tests).

Run as a process::

    python -m binome.lab.bmc --netns bn-lab-n1 --address 198.19.60.101 --port 623 \\
        --user admin --password-file /path/pw --power-on-command '["binomed", "..."]'

or from Python with :func:`start_bmc`, which writes the password file, waits until the
BMC listens and returns a :class:`BmcProcess` to stop or kill it by pid.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from binome import durable

log = logging.getLogger("binome.lab.bmc")

NETNS_DIR = Path("/run/netns")
POWER_OFF_TIMEOUT = 5.0  # a process in D state may take a moment to die
POLL = 0.01
KILL_POLL = 0.001  # SIGKILLed processes vanish within a millisecond or two
READY_TIMEOUT = 10.0

# IPMI completion codes (IPMI 2.0 table 5-2)
CC_OK = 0x00
CC_CANNOT_EXECUTE = 0xD5  # "command not supported in present state"


# --- the machine: a network namespace and its processes ---------------------------------


def _ns_id(path: str | Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def netns_pids(netns: str) -> list[int]:
    """Live processes whose network namespace is ``netns`` (what ``ip netns pids`` lists).

    Compares ``/proc/<pid>/ns/net`` with ``/run/netns/<netns>`` (device and inode), as
    iproute2 does, without a subprocess per query. Zombies have no namespace any more
    and are not listed. Raises FileNotFoundError if the namespace does not exist.
    """
    target = _ns_id(NETNS_DIR / netns)
    if target is None:
        raise FileNotFoundError(f"network namespace {netns} does not exist")
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and _ns_id(f"/proc/{entry.name}/ns/net") == target:
            pids.append(int(entry.name))
    return pids


def netns_pid_matching(netns: str, match: Callable[[list[bytes]], bool]) -> int | None:
    """The first process of a namespace whose argv satisfies `match` (None if the
    namespace or every such process is gone)."""
    try:
        pids = netns_pids(netns)
    except FileNotFoundError:
        return None
    for pid in pids:
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if match(argv):
            return pid
    return None


def binomed_pid(netns: str, state_dir: str | Path) -> int | None:
    """The binomed of a lab host: in its namespace, with its --state-dir (None if the
    namespace or the process is gone)."""
    state = str(state_dir).encode()
    return netns_pid_matching(
        netns, lambda argv: any(a.endswith(b"binomed") for a in argv[:2]) and state in argv)


class NodePower:
    """The power of one lab node: its network namespace's processes and a power-on argv."""

    def __init__(
        self, netns: str, power_on_argv: Sequence[str], *, log_path: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        if not power_on_argv:
            raise ValueError("power-on command is empty")
        self.netns = netns
        self.power_on_argv = list(power_on_argv)
        self.log_path = log_path
        self.env = env
        self._children: list[subprocess.Popen[bytes]] = []

    def pids(self) -> list[int]:
        """The machine's processes: everything in the namespace, plus a power-on command
        still on its way in (``ip netns exec`` before its setns)."""
        self.reap()
        inside = netns_pids(self.netns)
        booting = [c.pid for c in self._children if c.pid not in inside]
        # Never count (or kill) ourselves, even if misconfigured into the node's namespace.
        return [p for p in [*inside, *booting] if p != os.getpid()]

    def is_on(self) -> bool:
        return bool(self.pids())

    def off(self, timeout: float = POWER_OFF_TIMEOUT) -> bool:
        """SIGKILL everything in the namespace, in rounds (a dying parent may fork).

        Returns whether the namespace is empty; "on" stays visible to status until
        the last process is really gone, so clients confirm the real state.
        """
        start = time.monotonic()
        deadline = start + timeout
        killed = 0
        while True:
            pids = self.pids()
            if not pids:
                self.reap()
                log.info("power off: %d process(es) killed, namespace empty after %.1f ms",
                         killed, (time.monotonic() - start) * 1000)
                return True
            killed += len(pids)
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.reap()
            if time.monotonic() > deadline:
                log.error("power off: %d process(es) survive SIGKILL in %s", len(pids),
                          self.netns)
                return False
            time.sleep(KILL_POLL)

    def soft_off(self) -> None:
        """ACPI-like shutdown request: SIGTERM everything; status turns off as they exit."""
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def on(self) -> bool:
        """Spawn the power-on command inside the namespace unless already on.

        Returns True if it was started. The child is detached (own session, no
        inherited descriptors) and reaped by :meth:`reap`.
        """
        if self.is_on():
            return False
        argv = ["ip", "netns", "exec", self.netns, *self.power_on_argv]
        out: Any = subprocess.DEVNULL
        if self.log_path is not None:
            out = open(self.log_path, "ab")  # handed to the child, closed below
        try:
            child = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, close_fds=True, cwd="/",
                env={**os.environ, **self.env} if self.env else None,
            )
        finally:
            if out is not subprocess.DEVNULL:
                out.close()
        self._children.append(child)
        log.info("power on: started %s (pid %d) in %s", self.power_on_argv[0], child.pid,
                 self.netns)
        return True

    def reap(self) -> None:
        """Collect exited power-on children (they are ours until they exit)."""
        self._children = [c for c in self._children if c.poll() is None]


# --- the IPMI server --------------------------------------------------------------------


# RMCP+ status codes (IPMI 2.0 table 13-15)
RMCP_UNAUTHORIZED_NAME = 0x0D
RMCP_NO_CIPHER_SUITE_MATCH = 0x11
SUITE3 = (1, 1, 1)  # RAKP-HMAC-SHA1, HMAC-SHA1-96, AES-CBC-128: all pyghmi's server does


def _make_bmc_class() -> type:
    # pyghmi is imported lazily so `--help` and the helper below work without it loaded.
    from pyghmi.ipmi.bmc import Bmc
    from pyghmi.ipmi.private import constants
    from pyghmi.ipmi.private.serversession import ServerSession

    class HonestServerSession(ServerSession):  # type: ignore[misc, valid-type]
        """pyghmi's server session, made to answer like a real BMC where it stays silent.

        pyghmi's server accepts any algorithm proposal and then runs cipher suite 3
        regardless; pyghmi's own client (1.6) proposes SHA-256 first and takes the
        acceptance at its word, so the two never agree. A real BMC rejects a proposal
        it cannot do (status 0x11), and the client then retries with SHA-1. Same for
        an unknown user name (status 0x0D in RAKP2, instead of silence that the client
        can only diagnose as a timeout).
        """

        def create_open_session_response(self, request: Any) -> bytearray:
            request = bytearray(request)
            # The same client socket may open a new session after an old one: start clean.
            self.sessionid = 0
            self.sequencenumber = 0
            self.integrityalgo = 0
            self.confalgo = 0
            algos = tuple(request[i] & 0x3F for i in (12, 20, 28)) if len(request) >= 32 else ()
            if algos != SUITE3:
                return bytearray([request[0], RMCP_NO_CIPHER_SUITE_MATCH, 0, 0]) + request[4:8]
            return super().create_open_session_response(request)

        def _got_rakp1(self, data: Any) -> None:
            name = bytes(data[28:]).decode("utf-8", errors="replace")
            if data[27] and self.authdata.get(name) is None:
                log.warning("RAKP1: unknown user %r from %s", name, self.sockaddr)
                reply = bytearray([data[0], RMCP_UNAUTHORIZED_NAME, 0, 0]) + self.clientsessionid
                self.send_payload(reply, constants.payload_types["rakp2"], retry=False)
                return
            super()._got_rakp1(data)

    class SimulatedBmc(Bmc):  # type: ignore[misc, valid-type]
        """pyghmi's BMC server wired to a :class:`NodePower`."""

        def __init__(self, node: NodePower, authdata: dict[str, str], *, address: str,
                     port: int) -> None:
            super().__init__(authdata, port=port, address=address)
            self.node = node

        def sessionless_data(self, data: Any, sockaddr: Any) -> None:
            raw = bytearray(data)
            is_open_request = (len(raw) >= 22 and raw[0] == 6 and raw[2:4] == b"\xff\x07"
                               and raw[4] == 6 and raw[5] == 0x10)
            if not is_open_request:
                super().sessionless_data(data, sockaddr)
                return
            HonestServerSession(self.authdata, self.kg, sockaddr, self.serversocket, raw[16:],
                                self.uuid, bmc=self)

        def get_power_state(self) -> str:
            return "on" if self.node.is_on() else "off"

        def power_off(self) -> int:
            log.info("chassis power off")
            self.node.off()
            return CC_OK

        def power_on(self) -> int:
            log.info("chassis power on")
            self.node.on()
            return CC_OK

        def power_cycle(self) -> int:
            log.info("chassis power cycle")
            # A cycle on a machine that is off is refused by real BMCs as well.
            if not self.node.is_on():
                return CC_CANNOT_EXECUTE
            self.node.off()
            self.node.on()
            return CC_OK

        def power_reset(self) -> int:
            log.info("chassis power reset")
            if not self.node.is_on():
                return CC_CANNOT_EXECUTE
            self.node.off()
            self.node.on()
            return CC_OK

        def power_shutdown(self) -> int:
            log.info("chassis soft shutdown")
            self.node.soft_off()
            return CC_OK

        def pulse_diag(self) -> int:
            return CC_CANNOT_EXECUTE

        def cold_reset(self) -> int:
            return CC_OK  # the BMC "resets" itself: nothing to do for the machine

        def get_system_guid(self) -> Any:
            return self.uuid

        def get_boot_device(self) -> str:
            return "default"

        def set_boot_device(self, bootdevice: Any) -> None:
            return None

    return SimulatedBmc


def _read_password_file(path: Path) -> str:
    st = path.stat()
    if stat.S_IMODE(st.st_mode) & 0o077:
        # Like ssh with a private key: a secret readable by others is a configuration bug.
        raise SystemExit(f"{path}: password file must not be accessible by group/others "
                         f"(mode {stat.S_IMODE(st.st_mode):04o}, want 0600)")
    password = path.read_text().rstrip("\r\n")
    if not password:
        raise SystemExit(f"{path}: empty password")
    return password


def serve(args: argparse.Namespace) -> None:
    try:
        argv = json.loads(args.power_on_command)
    except ValueError as exc:
        raise SystemExit(f"--power-on-command: not JSON: {exc}") from None
    if not (isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv)):
        raise SystemExit("--power-on-command: want a JSON array of strings (an argv)")
    if not (NETNS_DIR / args.netns).exists():
        raise SystemExit(f"--netns {args.netns}: no such network namespace")
    if _ns_id(NETNS_DIR / args.netns) == _ns_id("/proc/self/ns/net"):
        raise SystemExit("the BMC must not run inside the namespace it powers off")
    password = _read_password_file(Path(args.password_file))
    node = NodePower(args.netns, argv,
                     log_path=Path(args.power_on_log) if args.power_on_log else None)
    bmc = _make_bmc_class()(node, {args.user: password}, address=args.address, port=args.port)
    from pyghmi.ipmi.private import session as pyghmi_session
    from pyghmi.ipmi.private.session import Session

    # pyghmi's I/O thread sleeps in select() and is woken by a datagram its first socket
    # sends to ("myself", its own port), with "myself" a loopback address. Our socket is
    # bound to the BMC's address, so that datagram went nowhere and every request waited
    # for the next packet or timeout (0.5-1 s, seen as client retransmissions). Waking
    # up means sending to ourselves: aim it at the address we are bound to.
    pyghmi_session.myself = args.address

    if args.ready_file:
        durable.write_json(Path(args.ready_file), {"pid": os.getpid(), "address": args.address,
                                                   "port": args.port}, indent=None, sync=False)
    log.info("BMC for %s listening on %s:%d (user %s)", args.netns, args.address, args.port,
             args.user)
    del bmc  # registered with pyghmi's session machinery, which dispatches to it
    while True:
        # A short wait, because pyghmi can lose a wake-up: a request that arrives between
        # its "anything queued?" check and its wait is only served when the wait ends.
        # 20 ms bounds that delay (an idle BMC wakes 50 times a second, which costs
        # nothing); each wake-up also reaps power-on children that exited.
        Session.wait_for_rsp(timeout=0.02)
        node.reap()


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m binome.lab.bmc", description=__doc__.split("\n")[0])
    p.add_argument("--netns", required=True, help="the node's network namespace")
    p.add_argument("--address", required=True, help="IP address to listen on")
    p.add_argument("--port", type=int, default=623)
    p.add_argument("--user", required=True)
    p.add_argument("--password-file", required=True, help="file with the password (mode 0600)")
    p.add_argument("--power-on-command", required=True,
                   help="JSON argv run inside the namespace at power on")
    p.add_argument("--power-on-log", help="append the power-on command's output here")
    p.add_argument("--ready-file", help="written (atomically) once the BMC listens")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s bmc[%(process)d] %(levelname)s %(message)s")
    serve(args)


# --- helper for tests and lab code -----------------------------------------------------


def _start_ticks(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _wait(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL)
    return True


class BmcError(RuntimeError):
    """The simulated BMC could not be started."""


@dataclass
class BmcProcess:
    """A running simulated BMC (a process of ours, addressed by pid and start time)."""

    pid: int
    address: str
    port: int
    user: str
    netns: str
    password_file: Path
    log_path: Path
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    start_ticks: int | None = None

    def alive(self) -> bool:
        if self.popen is not None and self.popen.poll() is not None:
            return False  # our child and exited (poll() also reaped it)
        st = _start_ticks(self.pid)
        return st is not None and st == self.start_ticks and _state(self.pid) not in "ZX"

    def kill(self) -> None:
        """SIGKILL the BMC by pid ("BMC dead": nothing answers IPMI any more)."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        if not _wait(lambda: not self.alive(), 5.0):
            raise BmcError(f"BMC pid {self.pid} survived SIGKILL")

    def stop(self) -> None:
        """Stop the BMC (it holds no state worth a graceful exit: SIGKILL is the stop)."""
        self.kill()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "X"


def write_secret_file(path: Path, secret: str) -> Path:
    """Write ``secret`` to ``path`` with mode 0600 from the start (temp + rename)."""
    durable.write_text(path, secret + "\n", mode=0o600)
    return path


def start_bmc(
    *, netns: str, address: str, port: int = 623, user: str, password: str,
    power_on_argv: Sequence[str], workdir: Path, name: str = "bmc",
    bmc_netns: str | None = None, timeout: float = READY_TIMEOUT,
) -> BmcProcess:
    """Start a simulated BMC for ``netns`` and wait until it listens.

    ``bmc_netns``: run the BMC inside that namespace (e.g. a host of its own on a
    management network) instead of the caller's. Files go to ``workdir``:
    ``<name>.password`` (0600), ``<name>.log``, ``<name>.ready``, ``<name>.power-on.log``.
    The caller stops it with :meth:`BmcProcess.stop` (tests: in a ``finally``).
    """
    if bmc_netns == netns:
        raise ValueError("the BMC must not run inside the namespace it powers off")
    workdir.mkdir(parents=True, exist_ok=True)
    pwfile = write_secret_file(workdir / f"{name}.password", password)
    ready = workdir / f"{name}.ready"
    ready.unlink(missing_ok=True)
    log_path = workdir / f"{name}.log"
    argv = [sys.executable, "-m", "binome.lab.bmc", "--netns", netns, "--address", address,
            "--port", str(port), "--user", user, "--password-file", str(pwfile),
            "--power-on-command", json.dumps(list(power_on_argv)),
            "--power-on-log", str(workdir / f"{name}.power-on.log"),
            "--ready-file", str(ready)]
    if bmc_netns is not None:
        argv = ["ip", "netns", "exec", bmc_netns, *argv]  # ip execs: the pid stays the BMC's
    with open(log_path, "ab") as out:
        popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                 stderr=subprocess.STDOUT, start_new_session=True,
                                 close_fds=True, cwd="/")
    bmc = BmcProcess(pid=popen.pid, address=address, port=port, user=user, netns=netns,
                     password_file=pwfile, log_path=log_path, popen=popen,
                     start_ticks=_start_ticks(popen.pid))
    if not _wait(lambda: ready.exists() or popen.poll() is not None, timeout):
        bmc.kill()
        raise BmcError(f"BMC not listening within {timeout:g}s: {bmc.log_text()[-2000:]}")
    if popen.poll() is not None:
        raise BmcError(f"BMC exited with status {popen.returncode}: {bmc.log_text()[-2000:]}")
    return bmc


if __name__ == "__main__":
    main()
