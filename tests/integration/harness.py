"""Real binomed processes on distinct loopback addresses, for integration tests.

Each node gets its own address in 127.0.0.0/8 (so default ports can be used
and nothing collides), its own state directory, and is started and stopped by
pid. Nothing here touches etcd directly except `raw_store`, used only to plant
fixtures that a later issue's API will create (guest configs).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent
PASSWORD = "integration-secret"


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.2):
    """Poll a real condition until it holds; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except Exception as exc:  # the condition may raise while the system settles
            last = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def stop_process(proc: subprocess.Popen) -> None:
    """Stop a helper process the test started: SIGTERM, then SIGKILL after 10 s."""
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Node:
    def __init__(self, name: str, address: str, root: Path, role: str = "node") -> None:
        self.name, self.address, self.role = name, address, role
        self.state_dir = root / name
        self.log_path = root / f"{name}.log"
        self.proc: subprocess.Popen | None = None

    @property
    def socket(self) -> str:
        return str(self.state_dir / "run" / "api.sock")

    def start(self, env: dict[str, str] | None = None) -> None:
        """Start binomed; `env`: extra environment of the daemon (and its children)."""
        # several nodes share this host: a self-fence must never reset it
        args = [str(BIN / "binomed"), "--state-dir", str(self.state_dir),
                "--watchdog-device", "none"]
        if not (self.state_dir / "node.json").exists():
            args += ["--name", self.name, "--address", self.address, "--api-bind",
                     self.address, "--role", self.role]
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(args, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                     env=None if env is None else {**os.environ, **env})
        log.close()
        wait_for(lambda: Path(self.socket).exists() and self.cli_ok("version"), 20,
                 f"{self.name} API")

    def kill(self) -> None:
        """A crash: SIGKILL the daemon; its etcd child dies with it (PDEATHSIG)."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        etcd_pid = self.state_dir / "run" / "etcd.pid"
        if etcd_pid.exists():
            pid = int(etcd_pid.read_text())
            wait_for(lambda: not _alive(pid), 10, f"{self.name} etcd pid {pid} to exit")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.kill()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def cli(self, *args: str, check: bool = True, input: str | None = None
            ) -> subprocess.CompletedProcess:
        env = dict(os.environ, BINOME_SOCKET=self.socket)
        result = subprocess.run([str(BIN / "binome"), *args], env=env, capture_output=True,
                                text=True, timeout=120, input=input)
        if check and result.returncode != 0:
            raise AssertionError(f"binome {' '.join(args)} on {self.name} failed "
                                 f"({result.returncode}):\n{result.stdout}\n{result.stderr}")
        return result

    def cli_ok(self, *args: str) -> bool:
        return self.cli(*args, check=False).returncode == 0

    def json(self, *args: str) -> Any:
        return json.loads(self.cli(*args, "--output-format", "json").stdout)

    def cluster(self) -> dict[str, Any]:
        return next(e for e in self.json("cluster", "status") if e["type"] == "cluster")

    def quorate(self) -> bool:
        return bool(self.cluster()["quorate"])

    def fingerprint(self) -> str:
        me = [n for n in self.json("cluster", "nodes") if n["name"] == self.name]
        return me[0]["ssl_fingerprint"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class Cluster:
    """n1 + n2 + witness on 127.<net>.0.1-3 (more nodes with `add_node`)."""

    def __init__(self, root: Path, net: int) -> None:
        self.root, self.net = root, net
        self.nodes: dict[str, Node] = {}
        self.password_file = root / "password"
        self.password_file.write_text(PASSWORD + "\n")

    def add_node(self, name: str, role: str = "node") -> Node:
        node = Node(name, f"127.{self.net}.0.{len(self.nodes) + 1}", self.root, role)
        self.nodes[name] = node
        node.start()
        return node

    def __getitem__(self, name: str) -> Node:
        return self.nodes[name]

    def create(self) -> None:
        n1 = self.add_node("n1")
        n1.cli("cluster", "create", "itest", "--password-file", str(self.password_file))

    def join(self, name: str, role: str = "node", via: str = "n1") -> Node:
        node = self.add_node(name, role)
        verb = "witness" if role == "witness" else "cluster"
        node.cli(verb, "join", self[via].address, "--fingerprint", self[via].fingerprint(),
                 "--user", "admin@pve", "--password-file", str(self.password_file))
        return node

    def stop(self) -> None:
        # all at once: one by one, each daemon's shutdown (~2.5 s: HA status, lease
        # release, etcd) waited for the previous one's
        for node in self.nodes.values():
            if node.proc and node.proc.poll() is None:
                node.proc.send_signal(signal.SIGTERM)
        for node in self.nodes.values():
            node.stop()

    def raw_store(self, node: str):
        from binome.cluster.pki import PkiPaths
        from binome.store.client import Store

        n = self.nodes[node]
        paths = PkiPaths(n.state_dir / "pki")
        return Store(n.address, 2379, ca=paths.ca_cert, cert=paths.node_cert, key=paths.node_key)


def make_cluster(tmp_path: Path, net: int, witness: bool = True) -> Cluster:
    cluster = Cluster(tmp_path, net)
    try:
        cluster.create()
        cluster.join("n2")
        if witness:
            cluster.join("w", role="witness")
    except BaseException:
        cluster.stop()
        raise
    return cluster
