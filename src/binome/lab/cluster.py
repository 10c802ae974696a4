"""A binome cluster on real hosts in network namespaces: nodes, a witness, a VM LAN.

Each host gets addresses on a cluster network and a replication network;
nodes also get a `vmbr0` bridge inside their namespace, enslaving their link
to the VM LAN, so guests on every node share one L2 segment that the machine
running the lab reaches too. Used by `make demo` and the lab tests.

Options for the HA lab (`binome.lab.ha`):

- `bmc=True`: a management network (`<base>.4.0/24`) and, per node, a host
  `<node>bmc` on it running the simulated BMC (`binome.lab.bmc`) of that node:
  IPMI power off kills every process in the node's namespace (binomed, its
  etcd, the volume engine, QEMU, the watchdog supervisor), power on starts
  the node's `binomed` again (same argv; its output goes to
  `<workdir>/bmc-<node>/bmc.power-on.log`). Nodes are on the management
  network too (the CRM fences through it). `fence_config(node)` is the
  node's IPMI fence device as `make_device` reads it (the password as a 0600
  `password_file`, never in etcd); `HaLab.configure_fencing()` writes it to
  `/binome/ha/fence/<node>`.
- `client=True`: a host `client` on the VM LAN (`<base>.3.<i>`), for probing
  guests from outside the nodes.
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

from binome.fence.ipmi import IpmiFence
from binome.lab.bmc import BmcProcess, start_bmc, write_secret_file
from binome.lab.topology import Lab, NetworkSpec

BIN = Path(sys.executable).parent
ADMIN = "admin@pve"
VM_BRIDGE = "vmbr0"
BMC_USER = "admin"
BMC_PORT = 623
CLIENT = "client"


class LabClusterError(RuntimeError):
    pass


class LabCluster:
    def __init__(self, base: str = "198.18", nodes: tuple[str, ...] = ("n1", "n2"),
                 witness: str | None = "w", workdir: Path | None = None,
                 lab_id: str | None = None, name: str = "demo", bmc: bool = False,
                 client: bool = False) -> None:
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
        extra: list[str] = []
        self.with_bmc = bmc
        if bmc:
            networks.append(NetworkSpec("mgmt", f"{base}.4.0/24"))
            for n in nodes:
                attach[n].append("mgmt")
                attach[self.bmc_host(n)] = ["mgmt"]
                extra.append(self.bmc_host(n))
        if client:
            attach[CLIENT] = ["vmlan"]
            extra.append(CLIENT)
        self.lab = Lab([*self.hosts, *extra], networks, lab_id=lab_id, attach=attach)
        self.bmcs: dict[str, BmcProcess] = {}
        self.bmc_password = secrets.token_urlsafe(12)
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

    @staticmethod
    def bmc_host(node: str) -> str:
        return f"{node}bmc"

    def bmc_address(self, node: str) -> str:
        return self.lab.host(self.bmc_host(node)).addresses["mgmt"]

    def bmc_password_file(self) -> Path:
        return self.workdir / "bmc-password"

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
            if self.with_bmc:
                self._start_bmcs()
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

    def daemon_argv(self, name: str) -> list[str]:
        host = self.lab.host(name)
        role = "witness" if name == self.witness else "node"
        argv = [str(BIN / "binomed"), "--state-dir", str(self.state_dir(name)), "--name", name,
                "--role", role, "--address", host.addresses["cluster"],
                # the lab's nodes share one host: a self-fence must never reset it
                "--watchdog-device", "none"]
        if "replication" in host.addresses:
            argv += ["--replication-address", host.addresses["replication"]]
        return argv

    def start_daemon(self, name: str) -> None:
        host = self.lab.host(name)
        self.daemons[name] = host.spawn(self.daemon_argv(name),
                                        log_path=self.workdir / f"{name}.log")
        self._wait_api(name)

    # ------------------------------------------------------------------ BMCs
    def _start_bmcs(self) -> None:
        write_secret_file(self.bmc_password_file(), self.bmc_password)
        for node in self.nodes:
            self.start_bmc(node)

    def start_bmc(self, node: str) -> BmcProcess:
        """(Re)start the simulated BMC of `node` in its own namespace on the mgmt network."""
        old = self.bmcs.pop(node, None)
        if old is not None:
            old.stop()
        bmc = start_bmc(netns=self.lab.host(node).netns, address=self.bmc_address(node),
                        port=BMC_PORT, user=BMC_USER, password=self.bmc_password,
                        power_on_argv=self.daemon_argv(node),
                        workdir=self.workdir / f"bmc-{node}",
                        bmc_netns=self.lab.host(self.bmc_host(node)).netns)
        self.bmcs[node] = bmc
        return bmc

    def kill_bmc(self, node: str) -> None:
        """The BMC stops answering (docs/incidents.md, 3: lost power with its node)."""
        bmc = self.bmcs.pop(node, None)
        if bmc is not None:
            bmc.kill()

    def fence_config(self, node: str) -> dict[str, object]:
        """The node's IPMI fence device, as `binome.fence.device.make_device` reads it.

        `action: off`, not the product's default reboot: the lab's faults model a machine
        that died (power lost, hardware gone), which no power-on brings back; its tests
        and the demo power nodes on themselves (`binome-lab power NODE on`)."""
        return {"type": "ipmi", "ip": self.bmc_address(node), "port": BMC_PORT,
                "username": BMC_USER, "password_file": str(self.bmc_password_file()),
                "timeout": 5, "action": "off"}

    def ipmi(self, node: str) -> IpmiFence:
        """An IPMI client for the node's BMC, from the root namespace (on the mgmt bridge)."""
        return IpmiFence(self.bmc_address(node), port=BMC_PORT, username=BMC_USER,
                         password=self.bmc_password, timeout=10)

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
        for node in list(self.bmcs):   # before the nodes: no power-on behind our back
            self.kill_bmc(node)
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
