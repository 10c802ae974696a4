"""`make demo`: a local cluster of two nodes and a witness, each in its own network namespace.

Each host gets its own addresses on a cluster network, a replication network
and (nodes) a VM LAN, all bridges in the root namespace, so the machine running
the demo reaches the API and the guests. The demo creates the cluster, joins
the second node and the witness, creates and starts a guest from the tiny lab
image, prints the API URL and a login, and runs until interrupted; then it
removes every process, namespace and bridge it created.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

from binome.lab.cluster import ADMIN, LabCluster, LabClusterError

DEMO_VMID = 100


def create_demo_guest(lab: LabCluster, node: str = "n1", vmid: int = DEMO_VMID) -> str:
    """Create and start a guest from the tiny image; returns its HTTP URL."""
    image = lab.install_guest_image()
    lab.cli(node, "vm", "create", str(vmid), "--name", "web", "--memory", "128",
            "--net0", "virtio,bridge=vmbr0", "--virtio0", "local:1",
            "--kernel", image["kernel"], "--initrd", image["initrd"],
            "--append", lab.guest_cmdline(0, "web"), "--vga", "serial0")
    lab.cli(node, "vm", "start", str(vmid))
    return f"http://{lab.guest_ip(0)}/"


def banner(lab: LabCluster, guest_url: str | None) -> str:
    n1, n2 = lab.address("n1"), lab.address("n2")
    lines = [
        "",
        "binome demo: cluster 'demo' with nodes n1, n2 and witness w is up.",
        "",
        f"  API (HTTPS):  https://{n1}:8006/api2/json   (n2: https://{n2}:8006)",
        f"  Login:        {ADMIN}",
        f"  Password:     {lab.password}   (demo-only; also in {lab.password_file})",
        f"  Fingerprint:  {lab.fingerprint()}",
    ]
    if guest_url:
        lines.append(f"  Guest:        VM {DEMO_VMID} 'web' on n1, serving {guest_url}")
    lines += [
        "",
        "  Try:",
        f"    binome --state-dir {lab.state_dir('n1')} cluster status",
        f"    binome --state-dir {lab.state_dir('n2')} vm list --node n1",
        f"    binome --state-dir {lab.state_dir('w')} witness status",
        f"    curl -sk -d username={ADMIN} --data-urlencode \"password=$(cat "
        f"{lab.password_file})\" https://{n1}:8006/api2/json/access/ticket",
    ]
    if guest_url:
        lines.append(f"    curl {guest_url}")
    lines += ["", "Press Ctrl-C to stop the demo and remove everything it created."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="binome-demo", description=__doc__.splitlines()[0])
    p.add_argument("--base", default="198.18",
                   help="first two octets of the demo networks (default 198.18)")
    p.add_argument("--lab-id", help="lab id (default: derived from the pid)")
    p.add_argument("--no-guest", action="store_true", help="do not create the demo guest")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("binome demo: needs root (network namespaces and bridges)", file=sys.stderr)
        return 2
    lab = LabCluster(base=args.base, lab_id=args.lab_id)
    stop = False

    def on_signal(signum, frame) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        print("binome demo: starting 2 nodes + witness in network namespaces...", flush=True)
        lab.start()
        guest_url = None if args.no_guest else create_demo_guest(lab)
        print(lab.cli("n1", "cluster", "status").stdout, flush=True)
        print(banner(lab, guest_url), flush=True)
        print("DEMO READY", flush=True)
        while not stop:
            time.sleep(0.5)
    except LabClusterError as exc:
        print(f"binome demo: {exc}", file=sys.stderr)
        return 1
    finally:
        print("\nbinome demo: stopping and cleaning up...", flush=True)
        lab.stop()
        print("binome demo: done.", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
