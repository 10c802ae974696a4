"""A binome cluster on real hosts in network namespaces: nodes, a witness, a VM LAN.

Each host gets addresses on a cluster network and a replication network;
nodes also get a `vmbr0` bridge inside their namespace, enslaving their link
to the VM LAN, so guests on every node share one L2 segment that the machine
running the lab reaches too. Used by `make demo` and the lab tests.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from binome.lab.topology import Lab, NetworkSpec

BIN = Path(sys.executable).parent
ADMIN = "admin@pve"
VM_BRIDGE = "vmbr0"


class LabClusterError(RuntimeError):
    pass


class LabCluster:
    def __init__(self, base: str = "198.18", nodes: tuple[str, ...] = ("n1", "n2"),
                 witness: str | None = "w", workdir: Path | None = None,
                 lab_id: str | None = None, name: str = "demo") -> None:
        self.name = name
        self.nodes = nodes
        self.witness = witness
        self.hosts = (*nodes, *((witness,) if witness else ()))
        networks = [NetworkSpec("cluster", f"{base}.1.0/24"),
                    NetworkSpec("replication", f"{base}.2.0/24"),
                    NetworkSpec("vmlan", f"{base}.3.0/24")]
        attach = {h: ["cluster", "replication", "vmlan"] for h in nodes}
        if witness:
            attach[witness] = ["cluster"]
        self.lab = Lab(list(self.hosts), networks, lab_id=lab_id, attach=attach)
        self.vmlan_prefix = f"{base}.3"
        self._own_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="binome-lab-"))
        self.password = secrets.token_urlsafe(12)
        self.password_file = self.workdir / "admin-password"
        self.daemons: dict[str, object] = {}

    # ------------------------------------------------------------------ addressing
    def state_dir(self, host: str) -> Path:
        return self.workdir / host

    def address(self, host: str) -> str:
        return self.lab.host(host).addresses["cluster"]

    def api_url(self, host: str) -> str:
        return f"https://{self.address(host)}:8006/api2/json"

    def guest_ip(self, index: int) -> str:
        """Addresses for guests on the VM LAN: .10, .11, ..."""
        return f"{self.vmlan_prefix}.{10 + index}"

    # ------------------------------------------------------------------ commands
    def cli(self, host: str, *args: str, check: bool = True,
            input: str | None = None) -> subprocess.CompletedProcess:
        env = dict(os.environ, BINOME_STATE_DIR=str(self.state_dir(host)))
        env.pop("BINOME_SOCKET", None)
        result = subprocess.run([str(BIN / "binome"), *args], env=env, capture_output=True,
                                text=True, timeout=300, input=input)
        if check and result.returncode != 0:
            raise LabClusterError(f"binome {' '.join(args)} on {host} failed:\n"
                                  f"{result.stdout}{result.stderr}")
        return result

    def json(self, host: str, *args: str):
        return json.loads(self.cli(host, *args, "--output-format", "json").stdout)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self.lab.up()
        try:
            fd = os.open(self.password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(self.password + "\n")
            for name in self.nodes:
                self._make_vm_bridge(name)
            for name in self.hosts:
                self.start_daemon(name)
            self.cli(self.nodes[0], "cluster", "create", self.name, "--password-file",
                     str(self.password_file))
            fingerprint = self.fingerprint()
            for name in self.hosts[1:]:
                verb = "witness" if name == self.witness else "cluster"
                self.cli(name, verb, "join", self.address(self.nodes[0]), "--fingerprint",
                         fingerprint, "--user", ADMIN, "--password-file",
                         str(self.password_file))
        except BaseException:
            self.stop()
            raise

    def _make_vm_bridge(self, name: str) -> None:
        host = self.lab.host(name)
        inner = host.interfaces["vmlan"]
        host.run(["ip", "link", "add", VM_BRIDGE, "type", "bridge"])
        host.run(["ip", "addr", "flush", "dev", inner])
        host.run(["ip", "link", "set", inner, "master", VM_BRIDGE])
        host.run(["ip", "link", "set", VM_BRIDGE, "up"])

    def start_daemon(self, name: str) -> None:
        host = self.lab.host(name)
        role = "witness" if name == self.witness else "node"
        argv = [str(BIN / "binomed"), "--state-dir", str(self.state_dir(name)), "--name", name,
                "--role", role, "--address", host.addresses["cluster"]]
        if "replication" in host.addresses:
            argv += ["--replication-address", host.addresses["replication"]]
        self.daemons[name] = host.spawn(argv, log_path=self.workdir / f"{name}.log")
        self._wait_api(name)

    def kill_daemon(self, name: str) -> None:
        """SIGKILL binomed only (its etcd dies with it; guests survive)."""
        proc = self.daemons.pop(name)
        os.kill(proc.pid, 9)   # type: ignore[attr-defined]
        deadline = time.monotonic() + 10
        while proc.alive() and time.monotonic() < deadline:   # type: ignore[attr-defined]
            time.sleep(0.05)

    def _wait_api(self, host: str, timeout: float = 30.0) -> None:
        sock = self.state_dir(host) / "run" / "api.sock"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if sock.exists():
                probe = subprocess.run([str(BIN / "binome"), "--socket", str(sock), "version"],
                                       capture_output=True, timeout=10)
                if probe.returncode == 0:
                    return
            time.sleep(0.2)
        log = (self.workdir / f"{host}.log").read_text(errors="replace")[-2000:]
        raise LabClusterError(f"binomed on {host} did not start:\n{log}")

    def fingerprint(self) -> str:
        nodes = self.json(self.nodes[0], "cluster", "nodes")
        return next(n["ssl_fingerprint"] for n in nodes if n["name"] == self.nodes[0])

    def install_guest_image(self) -> dict[str, str]:
        """Put the tiny guest's kernel and initrd in every node's `local` iso content."""
        from binome.lab.image import build_image

        image = build_image()
        for name in self.nodes:
            iso = self.state_dir(name) / "storage" / "local" / "template" / "iso"
            iso.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(image.kernel, iso / "binome-guest-vmlinuz")
            shutil.copyfile(image.initrd, iso / "binome-guest-initrd.gz")
        return {"kernel": "local:iso/binome-guest-vmlinuz",
                "initrd": "local:iso/binome-guest-initrd.gz"}

    def guest_cmdline(self, index: int, hostname: str) -> str:
        from binome.lab.image import build_image

        return build_image().cmdline(ip=f"{self.guest_ip(index)}/24", hostname=hostname)

    def stop(self) -> None:
        """Stop everything: guests first (they outlive binomed by design), then the lab."""
        for name in self.nodes:
            pidfiles = (self.state_dir(name) / "run" / "qemu").glob("*.pid")
            for pidfile in pidfiles:
                _kill_pidfile(pidfile)
        self.lab.down()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


def _kill_pidfile(pidfile: Path) -> None:
    try:
        pid = int(pidfile.read_text().split()[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError, IndexError):
        return
    if b"qemu" in cmdline and str(pidfile.parent).encode() in cmdline:
        os.kill(pid, 9)
