"""`make demo`: a local cluster of two nodes and a witness, each in its own network namespace.

Each host gets its own addresses on a cluster network, a replication network
and (nodes) a VM LAN, all bridges in the root namespace, so the machine running
the demo reaches the API and the guests; each node also has a simulated BMC on
a management network, configured as its IPMI fence device (`binome.lab.ha`).
The demo creates the cluster, joins the second node and the witness, creates
guest VM 100 from the tiny lab image with its disk on a replicated volume
(n1 <-> n2) and puts it under HA, prints the API URL, a login and the
`binome lab` fault commands to try, and runs until interrupted: meanwhile it
probes the guest every 100 ms and prints each outage with its duration and the
node the guest came back on. It records itself in a control file for `binome
lab` (`binome.lab.control`). On exit it removes every process, namespace and
bridge it created.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

from binome.lab.cluster import ADMIN, BMC_PORT, BMC_USER, LabCluster, LabClusterError
from binome.lab.control import OutageWatcher, remove_control, write_control
from binome.lab.ha import HaLab

DEMO_VMID = 100
GUEST_NAME = "web"


def create_demo_guest(ha: HaLab) -> str:
    """VM 100 'web' on a replicated disk, HA-managed, started on n1; returns its URL."""
    ha.create_ha_guest(node="n1", guest_name=GUEST_NAME)
    return f"http://{ha.guest_ip}/"


def control_info(ha: HaLab, guest_url: str | None) -> dict[str, Any]:
    """What `binome lab` needs to act on this demo (see binome.lab.control)."""
    lab = ha.cluster
    return {
        "workdir": str(lab.workdir),
        "nodes": list(lab.nodes), "witness": lab.witness,
        "hosts": {h: {"netns": lab.lab.host(h).netns, "veths": dict(lab.lab.host(h).veths),
                      "addresses": dict(lab.lab.host(h).addresses)} for h in lab.hosts},
        "state_dirs": {h: str(lab.state_dir(h)) for h in lab.hosts},
        "bmcs": {n: {"address": lab.bmc_address(n), "port": BMC_PORT, "user": BMC_USER}
                 for n in lab.nodes},
        "bmc_password_file": str(lab.bmc_password_file()),
        "guest": {"vmid": ha.vmid, "ip": ha.guest_ip, "url": guest_url or ""},
    }


def binome_command() -> str:
    """How to type this install's `binome`: the bare name if the PATH finds this very
    program (`make setup` links it into /usr/local/bin), else its absolute path."""
    mine = Path(sys.executable).parent / "binome"
    found = shutil.which("binome")
    if found is not None and Path(found).resolve() == mine.resolve():
        return "binome"
    return str(mine)


def banner(lab: LabCluster, guest_url: str | None) -> str:
    n1, n2 = lab.address("n1"), lab.address("n2")
    binome = binome_command()
    lines = [
        "",
        "binome demo: cluster 'demo' with nodes n1, n2 and witness w is up.",
        "",
        f"  Web UI:       https://{n1}:8006/   (any node; the certificate is the cluster's "
        f"own CA: accept it in the browser)",
        f"  API (HTTPS):  https://{n1}:8006/api2/json   (n2: https://{n2}:8006)",
        f"  Login:        {ADMIN}",
        f"  Password:     {lab.password}   (demo-only; also in {lab.password_file})",
        f"  Fingerprint:  {lab.fingerprint()}",
        f"  BMCs (IPMI):  n1 {lab.bmc_address('n1')}, n2 {lab.bmc_address('n2')}: the "
        f"fence devices of the nodes",
    ]
    if guest_url:
        lines.append(f"  Guest:        VM {DEMO_VMID} '{GUEST_NAME}' on n1, HA-managed, disk "
                     f"replicated n1 <-> n2, serving {guest_url}")
    lines += [
        "",
        "  Try:",
        f"    {binome} --state-dir {lab.state_dir('n1')} cluster status",
        f"    {binome} --state-dir {lab.state_dir('n2')} vm list --node n1",
        f"    {binome} --state-dir {lab.state_dir('w')} witness status",
        f"    {binome} --state-dir {lab.state_dir('w')} ha status",
        f"    curl -sk -d username={ADMIN} --data-urlencode \"password=$(cat "
        f"{lab.password_file})\" https://{n1}:8006/api2/json/access/ticket",
    ]
    if guest_url:
        lines += [
            f"    curl {guest_url}",
            "",
            "  Faults (as root, in another terminal; this demo prints every outage of the "
            "guest):",
            f"    {binome} lab status             hosts, links, BMC power, where the guest runs",
            f"    {binome} lab power-off n1       through n1's BMC: the guest is recovered on n2",
            f"    {binome} lab power-on n1        n1 rejoins and resyncs; the guest stays on n2",
            f"    {binome} lab cut n2             n2's cluster, replication and VM LAN links down",
            f"    {binome} lab restore n2",
            f"    {binome} lab pause n2 / resume n2   freeze / thaw n2's daemon",
            f"    {binome} lab watch              the outage probe, in your terminal",
        ]
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
    ha = HaLab(base=args.base, lab_id=args.lab_id, name="demo", vmid=DEMO_VMID)
    lab = ha.cluster
    stop = False
    watcher: OutageWatcher | None = None

    def on_signal(signum, frame) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        print("binome demo: starting 2 nodes + witness in network namespaces...", flush=True)
        ha.start()
        if not args.no_guest:
            print("binome demo: creating the HA guest on a replicated disk...", flush=True)
        guest_url = None if args.no_guest else create_demo_guest(ha)
        print(lab.cli("n1", "cluster", "status").stdout, flush=True)
        print(banner(lab, guest_url), flush=True)
        write_control(lab.lab.lab_id, control_info(ha, guest_url))
        if guest_url:
            watcher = OutageWatcher(control_info(ha, guest_url),
                                    lambda line: print(f"binome demo: {line}", flush=True))
            watcher.start()
        print("DEMO READY", flush=True)
        while not stop:
            time.sleep(0.5)
    except LabClusterError as exc:
        print(f"binome demo: {exc}", file=sys.stderr)
        return 1
    finally:
        if watcher is not None:
            watcher.stop()
        print("\nbinome demo: stopping and cleaning up...", flush=True)
        remove_control(lab.lab.lab_id)
        ha.stop()
        print("binome demo: done.", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
