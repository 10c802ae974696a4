"""`make demo`: a local cluster of two nodes and a witness, each in its own network namespace.

Each host gets its own addresses on a cluster network and a replication network
(bridges in the root namespace, so the machine running the demo reaches the
API). The demo creates the cluster, joins the second node and the witness,
prints the API URL and a login, and runs until interrupted; then it removes
every process, namespace and bridge it created.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from binome.lab.topology import Lab, NetworkSpec

BIN = Path(sys.executable).parent
ADMIN = "admin@pve"
HOSTS = (("n1", "node"), ("n2", "node"), ("w", "witness"))


class DemoError(RuntimeError):
    pass


class Demo:
    def __init__(self, base: str = "198.18", workdir: Path | None = None,
                 lab_id: str | None = None) -> None:
        networks = [NetworkSpec("cluster", f"{base}.1.0/24"),
                    NetworkSpec("replication", f"{base}.2.0/24")]
        self.lab = Lab([h for h, _ in HOSTS], networks, lab_id=lab_id)
        self._own_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="binome-demo-"))
        self.password = secrets.token_urlsafe(12)
        self.password_file = self.workdir / "admin-password"

    def state_dir(self, host: str) -> Path:
        return self.workdir / host

    def address(self, host: str) -> str:
        return self.lab.host(host).addresses["cluster"]

    def cli(self, host: str, *args: str) -> subprocess.CompletedProcess:
        env = dict(os.environ, BINOME_STATE_DIR=str(self.state_dir(host)))
        env.pop("BINOME_SOCKET", None)
        result = subprocess.run([str(BIN / "binome"), *args], env=env, capture_output=True,
                                text=True, timeout=120)
        if result.returncode != 0:
            raise DemoError(f"binome {' '.join(args)} on {host} failed:\n{result.stdout}"
                            f"{result.stderr}")
        return result

    def start(self) -> None:
        self.lab.up()
        try:
            fd = os.open(self.password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(self.password + "\n")
            for name, role in HOSTS:
                host = self.lab.host(name)
                host.spawn([str(BIN / "binomed"), "--state-dir", str(self.state_dir(name)),
                            "--name", name, "--role", role,
                            "--address", host.addresses["cluster"],
                            "--replication-address", host.addresses["replication"]],
                           log_path=self.workdir / f"{name}.log")
            for name, _ in HOSTS:
                self._wait_api(name)
            self.cli("n1", "cluster", "create", "demo", "--password-file",
                     str(self.password_file))
            fingerprint = self.fingerprint()
            for name, role in HOSTS[1:]:
                verb = "witness" if role == "witness" else "cluster"
                self.cli(name, verb, "join", self.address("n1"), "--fingerprint", fingerprint,
                         "--user", ADMIN, "--password-file", str(self.password_file))
        except BaseException:
            self.stop()
            raise

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
        raise DemoError(f"binomed on {host} did not start:\n{log}")

    def fingerprint(self) -> str:
        nodes = json.loads(self.cli("n1", "cluster", "nodes", "--output-format",
                                    "json").stdout)
        return next(n["ssl_fingerprint"] for n in nodes if n["name"] == "n1")

    def stop(self) -> None:
        self.lab.down()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def banner(self) -> str:
        n1, n2 = self.address("n1"), self.address("n2")
        return "\n".join([
            "",
            "binome demo: cluster 'demo' with nodes n1, n2 and witness w is up.",
            "",
            f"  API (HTTPS):  https://{n1}:8006/api2/json   (n2: https://{n2}:8006)",
            f"  Login:        {ADMIN}",
            f"  Password:     {self.password}   (demo-only; also in {self.password_file})",
            f"  Fingerprint:  {self.fingerprint()}",
            "",
            "  Try:",
            f"    binome --state-dir {self.state_dir('n1')} cluster status",
            f"    binome --state-dir {self.state_dir('w')} witness status",
            f"    curl -sk -d username={ADMIN} --data-urlencode password@{self.password_file} "
            f"https://{n1}:8006/api2/json/access/ticket",
            "",
            "Press Ctrl-C to stop the demo and remove everything it created.",
        ])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="binome-demo", description=__doc__.splitlines()[0])
    p.add_argument("--base", default="198.18",
                   help="first two octets of the demo networks (default 198.18)")
    p.add_argument("--lab-id", help="lab id (default: derived from the pid)")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("binome demo: needs root (network namespaces and bridges)", file=sys.stderr)
        return 2
    demo = Demo(base=args.base, lab_id=args.lab_id)
    stop = False

    def on_signal(signum, frame) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        print("binome demo: starting 2 nodes + witness in network namespaces...", flush=True)
        demo.start()
        print(demo.cli("n1", "cluster", "status").stdout, flush=True)
        print(demo.banner(), flush=True)
        print("DEMO READY", flush=True)
        while not stop:
            time.sleep(0.5)
    except DemoError as exc:
        print(f"binome demo: {exc}", file=sys.stderr)
        return 1
    finally:
        print("\nbinome demo: stopping and cleaning up...", flush=True)
        demo.stop()
        print("binome demo: done.", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
