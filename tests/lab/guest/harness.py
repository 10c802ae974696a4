"""Lab harness for the guest runtime: a node namespace with bridges, and agents on it.

Topology (one Lab host ``node`` on one lab network ``vmlan``)::

    root netns: lab bridge (198.19.40.254) -- veth --+
    node netns:                        vmlan (port) -+- vmbr0 (198.19.40.1) -- tapNi0 -- guest
                                                       vmbr1 (vlan_filtering=1, no uplink)

So the test process (root namespace) talks to guests over real L2 through the
node's bridge, and the runtime runs inside the node namespace (in an
:mod:`agent` process) where it creates its taps, as binomed would on a node.

Cleanup order, also after failures: agents (by pid), then every QEMU and exit
wrapper recorded in the run dir (by pid, after checking their cmdline), reap
what was re-parented to us, then the lab (namespaces, bridges, veths).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import selectors
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from binome.guest.process import is_alive, is_our_qemu, proc_cmdline
from binome.lab.image import GuestImage
from binome.lab.topology import Lab, NetworkSpec

REPO = Path(__file__).resolve().parents[3]
SUBNET = "198.19.40.0/24"
NODE_IP = "198.19.40.1"
PR_SET_CHILD_SUBREAPER = 36


def guest_ip(vmid: int) -> str:
    return f"198.19.40.{vmid - 90}"  # vm 100 -> .10


def guest_mac(vmid: int) -> str:
    return f"52:54:00:19:40:{vmid - 90:02x}"


class AgentError(Exception):
    def __init__(self, error: str, message: str) -> None:
        super().__init__(f"{error}: {message}")
        self.error = error
        self.message = message


def wait_for(predicate: Callable[[], Any], what: str, timeout: float, interval: float = 0.05
             ) -> Any:
    """Poll ``predicate`` until truthy (returned) or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class Agent:
    """One runtime process (see :mod:`tests.lab.guest.agent`) inside the node namespace."""

    def __init__(self, netns: str, run_dir: Path, log_path: Path) -> None:
        with log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", netns, sys.executable, "-m", "tests.lab.guest.agent",
                 str(run_dir), "--accel", "tcg"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, cwd=REPO,
                start_new_session=True,
            )
        self.pid = self.proc.pid  # `ip netns exec` execs: this is the Python process
        self.events: list[dict[str, Any]] = []
        self._buf = b""
        self._next = 0
        self._sel = selectors.DefaultSelector()
        assert self.proc.stdout is not None
        os.set_blocking(self.proc.stdout.fileno(), False)
        self._sel.register(self.proc.stdout, selectors.EVENT_READ)
        ready = self._read_until(lambda m: m.get("event") == "ready", 30.0)
        assert ready["pid"] == self.pid, ready

    def _read_until(self, match: Callable[[dict[str, Any]], bool], timeout: float
                    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while True:
            while b"\n" in self._buf:
                line, self._buf = self._buf.split(b"\n", 1)
                msg = json.loads(line)
                if msg.get("event") == "exit":
                    self.events.append(msg)
                if match(msg):
                    return msg
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"agent {self.pid}: no answer within {timeout}s")
            if self._sel.select(left):
                chunk = self.proc.stdout.read(65536)
                if not chunk:
                    raise AssertionError(f"agent {self.pid} exited ({self.proc.poll()})")
                self._buf += chunk

    def call(self, op: str, *, deadline: float = 90.0, **kwargs: Any) -> Any:
        """Run one runtime operation (``kwargs`` are its arguments) and return its result;
        AgentError carries the runtime's exception. ``deadline``: seconds to wait."""
        self._next += 1
        rid = self._next
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"id": rid, "op": op, **kwargs}).encode() + b"\n")
        self.proc.stdin.flush()
        msg = self._read_until(lambda m: m.get("id") == rid, deadline)
        self.last_elapsed = float(msg.get("elapsed", 0.0))
        if not msg["ok"]:
            raise AgentError(msg["error"], msg["message"])
        return msg["result"]

    def kill(self) -> None:
        """SIGKILL, like a crashed daemon: nothing of the runtime gets to run."""
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self._close_pipes()

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                assert self.proc.stdin is not None
                self.proc.stdin.write(b'{"op": "exit"}\n')
                self.proc.stdin.flush()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
        self._close_pipes()

    def _close_pipes(self) -> None:
        with contextlib.suppress(Exception):
            self._sel.close()
        for pipe in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(Exception):
                pipe.close()  # type: ignore[union-attr]


def _set_subreaper(on: bool) -> None:
    """Orphans of our descendants (wrappers of a killed agent) re-parent to us, so we can
    reap them instead of leaving zombies under this machine's PID 1 (which never reaps)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1 if on else 0, 0, 0, 0)


@dataclass
class Node:
    lab: Lab
    netns: str
    run_dir: Path
    work: Path
    image: GuestImage
    agents: list[Agent] = field(default_factory=list)
    seen_pids: set[int] = field(default_factory=set)
    vlan_bridge: bool = False  # vmbr1 (vlan_filtering=1) exists

    # -- agents -----------------------------------------------------------------
    def start_agent(self) -> Agent:
        agent = Agent(self.netns, self.run_dir, self.work / "agent.log")
        self.agents.append(agent)
        return agent

    @property
    def agent(self) -> Agent:
        """The current (last started, still running) agent; one is started if none."""
        live = [a for a in self.agents if a.proc.poll() is None]
        return live[-1] if live else self.start_agent()

    # -- specs and guests ---------------------------------------------------------
    def spec(self, vmid: int, *, bridge: str = "vmbr0", tag: int | None = None,
             disks: list[dict[str, Any]] | None = None, nics: list[dict[str, Any]] | None = None,
             **extra: Any) -> dict[str, Any]:
        if nics is None:
            nics = [{"index": 0, "model": "virtio", "mac": guest_mac(vmid), "bridge": bridge,
                     "tag": tag}]
        return {
            "vmid": vmid, "name": f"vm{vmid}", "memory_mb": 128, "vga": "serial0",
            "kernel": str(self.image.kernel), "initrd": str(self.image.initrd),
            "append": self.image.cmdline(ip=f"{guest_ip(vmid)}/24", gateway=NODE_IP,
                                         hostname=f"vm{vmid}"),
            "disks": disks or [], "nics": nics, **extra,
        }

    def start(self, vmid: int, **spec_kwargs: Any) -> int:
        pid = self.agent.call("start", spec=self.spec(vmid, **spec_kwargs))
        self.seen_pids.add(pid)
        return pid

    # -- observations -------------------------------------------------------------
    def links(self) -> set[str]:
        out = subprocess.run(["ip", "-n", self.netns, "-j", "link", "show"],
                             capture_output=True, text=True, check=True).stdout
        return {link["ifname"] for link in json.loads(out)}

    def run_files(self, vmid: int) -> set[str]:
        return {p.name for p in self.run_dir.glob(f"{vmid}.*")}

    # -- cleanup --------------------------------------------------------------------
    def _recorded_pids(self) -> list[tuple[int, Path]]:
        """(pid, pidfile) of every QEMU and wrapper the run dir knows about."""
        found = []
        for state in self.run_dir.glob("*.json"):
            if not state.stem.isdigit():
                continue
            pidfile = self.run_dir / f"{state.stem}.pid"
            with contextlib.suppress(OSError, ValueError):
                data = json.loads(state.read_text())
                for key in ("pid", "wrapper_pid"):
                    if isinstance(data.get(key), int):
                        found.append((data[key], pidfile))
            with contextlib.suppress(OSError, ValueError):
                found.append((int(pidfile.read_text()), pidfile))
        return found

    def kill_guests(self) -> None:
        """SIGKILL every QEMU/wrapper of this run dir (verified by cmdline), then reap."""
        pids = set(self.seen_pids)
        for pid, pidfile in self._recorded_pids():
            argv = proc_cmdline(pid) or []
            ours = is_our_qemu(pid, pidfile) or any(a.startswith("binome-vm-") for a in argv)
            if ours and is_alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            pids.add(pid)
        wait_for(lambda: not any(is_alive(p) for p in pids), "guests to die", 10)
        self.reap(pids)
        self.reap_orphaned_wrappers()

    @staticmethod
    def reap(pids: set[int]) -> None:
        for pid in pids:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)

    @staticmethod
    def reap_orphaned_wrappers() -> None:
        """Reap exited exit-wrappers (``sh``) that were re-parented to us when their agent
        was killed. A zombie has no cmdline left, hence parent + comm."""
        me = os.getpid()
        for p in Path("/proc").iterdir():
            if not p.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                comm, rest = p.joinpath("stat").read_text().rsplit(")", 1)
                fields = rest.split()
                if fields[0] == "Z" and int(fields[1]) == me and comm.endswith("(sh"):
                    with contextlib.suppress(ChildProcessError):
                        os.waitpid(int(p.name), os.WNOHANG)


def make_node(work: Path, image: GuestImage) -> Node:
    """Bring the lab up and build the node's bridges; the caller must call destroy_node."""
    lab = Lab(["node"], [NetworkSpec("vmlan", SUBNET)], lab_id=f"g{os.getpid() % 0xFFFFFF:x}")
    lab.up()
    _set_subreaper(True)
    ns = lab.host("node").netns
    node = Node(lab, ns, work / "run", work, image)
    try:
        for argv in (
            ["ip", "link", "add", "vmbr0", "type", "bridge"],
            ["ip", "addr", "flush", "dev", "vmlan"],
            ["ip", "link", "set", "vmlan", "master", "vmbr0"],
            ["ip", "addr", "add", f"{NODE_IP}/24", "dev", "vmbr0"],
            ["ip", "link", "set", "vmbr0", "up"],
        ):
            lab.host("node").run(argv, capture_output=True)
        # A VLAN-aware bridge needs CONFIG_BRIDGE_VLAN_FILTERING, which some kernels lack.
        vlan = lab.host("node").run(["ip", "link", "add", "vmbr1", "type", "bridge",
                                     "vlan_filtering", "1"], check=False, capture_output=True)
        if vlan.returncode == 0:
            lab.host("node").run(["ip", "link", "set", "vmbr1", "up"], capture_output=True)
            node.vlan_bridge = True
    except BaseException:
        destroy_node(node)
        raise
    return node


def destroy_node(node: Node) -> None:
    try:
        for agent in node.agents:
            agent.kill()
        node.kill_guests()
    finally:
        try:
            node.lab.down()
        finally:
            _set_subreaper(False)


def http_get(ip: str, path: str = "/", timeout: float = 2.0) -> tuple[int, str] | None:
    """(status, body) of a GET from this (root) namespace; None if no answer."""
    try:
        with urllib.request.urlopen(f"http://{ip}{path}", timeout=timeout) as resp:
            return resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")
    except (OSError, TimeoutError):
        return None


def wait_http(ip: str, expect: str, timeout: float = 60.0) -> float:
    """Seconds until GET / answers with ``expect`` in the body."""
    start = time.monotonic()

    def ok() -> bool:
        got = http_get(ip, "/", timeout=0.5)
        return got is not None and got[0] == 200 and expect in got[1]

    wait_for(ok, f"HTTP from {ip}", timeout)
    return time.monotonic() - start
