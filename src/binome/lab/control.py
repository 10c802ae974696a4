"""`binome lab`: fault commands for a running `make demo`, and the guest outage watcher.

This module owns:

- the demo's control file (`/run/binome-lab/<lab_id>.demo`, JSON, written by
  the demo once its lab is up, removed when it stops): hosts with their
  namespaces and bridge ports, the BMC of each node, the state directories,
  the HA guest's URL. It is not a topology state file (those are `*.json` and
  drive `cleanup_stale`); it only tells these commands what to act on;
- `OutageWatcher`: a continuous HTTP probe of the guest (from the root
  namespace, which reaches the VM LAN through its bridge) that reports each
  outage with its duration and the node the guest came back on;
- the `binome lab` sub-commands (status, power-off/power-on through the node's
  simulated BMC with `ipmitool`, like an admin would; cut/restore a node's
  links; pause/resume its daemon; watch). They are local, lab-only commands:
  no API method, no running daemon needed, root only. They are the program
  `binome-lab`, which `binome lab ARGS` runs (git-style): the production CLI never
  imports the lab.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from binome import durable
from binome.lab.processes import start_time as _start_time
from binome.lab.topology import STATE_DIR

SUFFIX = ".demo"
NETWORKS = ("cluster", "replication", "vmlan")   # what `cut --network all` cuts


class LabControlError(RuntimeError):
    """A `binome lab` command could not do what it was asked; the message says why."""


# ------------------------------------------------------------------ the control file
def control_path(lab_id: str) -> Path:
    return STATE_DIR / f"{lab_id}{SUFFIX}"


def write_control(lab_id: str, info: dict[str, Any]) -> Path:
    """Record the running demo for `binome lab` (owner = this process)."""
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    me = os.getpid()
    doc = {**info, "lab_id": lab_id, "owner": {"pid": me, "start_time": _start_time(me)}}
    path = control_path(lab_id)
    durable.write_json(path, doc, indent=1)
    return path


def remove_control(lab_id: str) -> None:
    control_path(lab_id).unlink(missing_ok=True)


def _owner_alive(doc: dict[str, Any]) -> bool:
    owner = doc.get("owner") or {}
    pid, started = owner.get("pid"), owner.get("start_time")
    return isinstance(pid, int) and started is not None and _start_time(pid) == started


def load_control(lab_id: str | None = None) -> dict[str, Any]:
    """The running demo's control record (the only one, or the one of `lab_id`)."""
    if lab_id is not None:
        paths = [control_path(lab_id)]
    else:
        paths = sorted(STATE_DIR.glob(f"*{SUFFIX}")) if STATE_DIR.is_dir() else []
    docs = []
    for path in paths:
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if _owner_alive(doc):
            docs.append(doc)
        else:   # its demo was killed before it could remove it
            path.unlink(missing_ok=True)
    if not docs:
        raise LabControlError("no running demo found (start one with `make demo`)"
                              + (f" with lab id {lab_id}" if lab_id else ""))
    if len(docs) > 1:
        ids = ", ".join(d["lab_id"] for d in docs)
        raise LabControlError(f"several demos are running ({ids}): pick one with --lab ID")
    return docs[0]


# ------------------------------------------------------------------ views
def _link_up(veth: str) -> bool | None:
    """Is the host's bridge port administratively up (None: it does not exist)?"""
    try:
        flags = int(Path(f"/sys/class/net/{veth}/flags").read_text(), 16)
    except (OSError, ValueError):
        return None
    return bool(flags & 1)


def daemon_pid(doc: dict[str, Any], host: str) -> int | None:
    """binomed of `host`, found in its namespace by its --state-dir argument."""
    from binome.lab.bmc import binomed_pid

    return binomed_pid(doc["hosts"][host]["netns"], doc["state_dirs"][host])


def _proc_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "?"


def guest_nodes(doc: dict[str, Any]) -> list[str]:
    """The nodes where the demo guest's QEMU runs (normally exactly one)."""
    from binome.lab.ha import _qemu_alive

    vmid = doc["guest"]["vmid"]
    return [n for n in doc["nodes"]
            if _qemu_alive(Path(doc["state_dirs"][n]) / "run" / "qemu" / f"{vmid}.pid")]


# ------------------------------------------------------------------ BMC (ipmitool)
def ipmitool(doc: dict[str, Any], node: str, *args: str) -> subprocess.CompletedProcess:
    """ipmitool against the node's BMC, the password read from the lab's 0600 file."""
    bmc = doc["bmcs"].get(node)
    if bmc is None:
        raise LabControlError(f"{node} has no BMC (nodes with one: {', '.join(doc['bmcs'])})")
    argv = ["ipmitool", "-I", "lanplus", "-C", "3", "-H", bmc["address"], "-p",
            str(bmc["port"]), "-U", bmc["user"], "-f", doc["bmc_password_file"], *args]
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        raise LabControlError("ipmitool is not installed (apt-get install ipmitool)") from None
    except subprocess.TimeoutExpired:
        raise LabControlError(f"the BMC of {node} ({bmc['address']}) did not answer") from None


def power_state(doc: dict[str, Any], node: str) -> str:
    r = ipmitool(doc, node, "chassis", "power", "status")
    if r.returncode != 0:
        return f"unknown ({(r.stderr or r.stdout).strip().splitlines()[-1:] or ['no answer']})"
    return r.stdout.strip().rsplit(" ", 1)[-1]   # "Chassis Power is on" -> "on"


def set_power(doc: dict[str, Any], node: str, want: str, timeout: float = 20.0) -> str:
    """Chassis power `want` ("off"/"on") through the BMC; returns what was done."""
    bmc = doc["bmcs"].get(node, {})
    r = ipmitool(doc, node, "chassis", "power", want)
    if r.returncode != 0:
        raise LabControlError(f"{node}: ipmitool chassis power {want} failed: "
                              f"{(r.stderr or r.stdout).strip()}")
    deadline = time.monotonic() + timeout
    while (state := power_state(doc, node)) != want:
        if time.monotonic() > deadline:
            raise LabControlError(f"{node}: the BMC still reports power {state} after "
                                  f"{timeout:g}s")
        time.sleep(0.3)
    return (f"{node}: chassis power {want} through its BMC {bmc.get('address')}:"
            f"{bmc.get('port')} (ipmitool -I lanplus): {r.stdout.strip()}; "
            f"the BMC reports power {state}")


# ------------------------------------------------------------------ links, daemon
def _networks(doc: dict[str, Any], node: str, which: str) -> list[tuple[str, str]]:
    host = doc["hosts"].get(node)
    if host is None:
        raise LabControlError(f"no host {node!r} in this demo ({', '.join(doc['hosts'])})")
    nets = NETWORKS if which == "all" else (which,)
    out = [(net, host["veths"][net]) for net in nets if net in host["veths"]]
    if not out:
        raise LabControlError(f"{node} is not attached to the {which} network")
    return out


def set_links(doc: dict[str, Any], node: str, which: str, up: bool) -> str:
    done = []
    for net, veth in _networks(doc, node, which):
        subprocess.run(["ip", "link", "set", veth, "up" if up else "down"], check=True)
        done.append(net)
    verb = "restored" if up else "cut"
    return f"{node}: {', '.join(done)} link{'s' if len(done) > 1 else ''} {verb}"


def signal_daemon(doc: dict[str, Any], node: str, sig: int) -> str:
    pid = daemon_pid(doc, node)
    if pid is None:
        raise LabControlError(f"{node}: binomed is not running (powered off?)")
    os.kill(pid, sig)
    what = "paused (SIGSTOP)" if sig == signal.SIGSTOP else "resumed (SIGCONT)"
    return f"{node}: binomed pid {pid} {what}"


# ------------------------------------------------------------------ the outage watcher
def _clock(t: float) -> str:
    return datetime.fromtimestamp(t).strftime("%H:%M:%S.%f")[:10]


class OutageWatcher:
    """Polls the guest's URL every `interval` s; calls `report(line)` after each outage.

    An outage is from the first failed request to the first answer after it; the
    node it came back on is where the guest's QEMU runs at that moment.
    """

    def __init__(self, doc: dict[str, Any], report: Callable[[str], None],
                 interval: float = 0.1, timeout: float = 1.0, port: int = 80) -> None:
        # timeout: a TCG guest on a loaded machine may take a moment to answer; that is
        # not an outage
        self.doc = doc
        self.url = doc["guest"]["url"]
        self.ip = doc["guest"]["ip"]
        self.port = port
        self.report = report
        self.interval = interval
        self.timeout = timeout
        self.outages: list[tuple[float, float, str]] = []
        self._down_since: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="outage-watcher", daemon=True)

    def answers(self) -> bool:
        conn = http.client.HTTPConnection(self.ip, self.port, timeout=self.timeout)
        try:
            conn.request("GET", "/cgi-bin/status")
            return conn.getresponse().status == 200
        except (OSError, http.client.HTTPException):
            return False
        finally:
            conn.close()

    def step(self) -> None:
        t = time.time()
        ok = self.answers()
        if not ok and self._down_since is None:
            self._down_since = t
            self.report(f"guest {self.url} unreachable since {_clock(t)}")
        elif ok and self._down_since is not None:
            start, self._down_since = self._down_since, None
            nodes = guest_nodes(self.doc)
            where = ",".join(nodes) or "?"
            self.outages.append((start, t, where))
            self.report(f"guest {self.url} unreachable {_clock(start)} - {_clock(t)}: "
                        f"outage {t - start:.1f} s, now on {where}")

    def _loop(self) -> None:
        while not self._stop.is_set():
            t = time.monotonic()
            self.step()
            self._stop.wait(max(0.0, t + self.interval - time.monotonic()))

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


# ------------------------------------------------------------------ commands
def _status(doc: dict[str, Any], args: argparse.Namespace) -> None:
    print(f"demo lab {doc['lab_id']} (workdir {doc['workdir']})")
    for host, info in doc["hosts"].items():
        pid = daemon_pid(doc, host)
        daemon = "binomed not running" if pid is None else \
            f"binomed pid {pid}" + (" PAUSED" if _proc_state(pid) == "T" else "")
        links = []
        for net in NETWORKS:
            veth = info["veths"].get(net)
            if veth is not None:
                up = _link_up(veth)
                links.append(f"{net} {'up' if up else 'DOWN' if up is False else 'missing'}")
        power = f", BMC {doc['bmcs'][host]['address']} power {power_state(doc, host)}" \
            if host in doc["bmcs"] else ""
        print(f"  {host:<3} {info['addresses'].get('cluster', '')}: {daemon}; "
              f"links: {', '.join(links)}{power}")
    nodes = guest_nodes(doc)
    answering = OutageWatcher(doc, print).answers()
    print(f"  guest VM {doc['guest']['vmid']} {doc['guest']['url']}: running on "
          f"{', '.join(nodes) or 'no node'}, {'answering' if answering else 'NOT answering'}")


def _watch(doc: dict[str, Any], args: argparse.Namespace) -> None:
    print(f"watching {doc['guest']['url']} every 0.1 s (Ctrl-C stops)", flush=True)
    watcher = OutageWatcher(doc, lambda line: print(line, flush=True))
    deadline = None if args.duration is None else time.monotonic() + args.duration
    with contextlib.suppress(KeyboardInterrupt):
        watcher.start()
        while deadline is None or time.monotonic() < deadline:
            time.sleep(0.2)
    watcher.stop()


def _run(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        print("binome lab: needs root (the demo's namespaces, bridges and BMCs)",
              file=sys.stderr)
        return 2
    try:
        doc = load_control(args.lab)
        cmd = args.lab_cmd
        if cmd == "status":
            _status(doc, args)
        elif cmd == "watch":
            _watch(doc, args)
        elif cmd in ("power-off", "power-on"):
            print(set_power(doc, args.node, cmd.split("-", 1)[1]), flush=True)
        elif cmd in ("cut", "restore"):
            print(set_links(doc, args.node, args.network, cmd == "restore"), flush=True)
        elif cmd in ("pause", "resume"):
            sig = signal.SIGSTOP if cmd == "pause" else signal.SIGCONT
            print(signal_daemon(doc, args.node, sig), flush=True)
    except (LabControlError, subprocess.CalledProcessError) as exc:
        print(f"binome lab: {exc}", file=sys.stderr)
        return 1
    return 0


def add_lab_parser(groups: Any) -> None:
    """The `binome lab ...` sub-command group (for `binome.cli.main`)."""
    lab = groups.add_parser("lab", help="faults for a running `make demo` (root, local)",
                            description="Lab-only commands acting on a running demo: "
                                        "no API, no daemon needed.")
    lab.add_argument("--lab", metavar="ID", help="the demo's lab id (default: the one "
                                                 "running)")
    cmds = lab.add_subparsers(dest="lab_cmd", required=True, metavar="COMMAND")
    cmds.add_parser("status", help="hosts, links, BMC power states, where the guest runs")
    w = cmds.add_parser("watch", help="probe the guest continuously, print each outage")
    w.add_argument("--duration", type=float, help="stop after this many seconds")
    for verb, text in (("power-off", "chassis power off through the node's BMC (IPMI)"),
                       ("power-on", "chassis power on through the node's BMC (IPMI)"),
                       ("pause", "freeze the node's binomed (SIGSTOP)"),
                       ("resume", "thaw the node's binomed (SIGCONT)")):
        cmds.add_parser(verb, help=text).add_argument("node", metavar="NODE")
    for verb, text in (("cut", "take the node's links down"),
                       ("restore", "bring the node's links up again")):
        p = cmds.add_parser(verb, help=text)
        p.add_argument("node", metavar="NODE")
        p.add_argument("--network", choices=(*NETWORKS, "all"), default="all",
                       help="which link (default: all of cluster, replication, vmlan; "
                            "the BMCs' management network is never cut)")
    lab.set_defaults(_lab=_run)


def build_parser() -> argparse.ArgumentParser:
    """`binome lab ...`'s grammar (``binome-lab ARGS`` parses ``lab ARGS`` with it)."""
    parser = argparse.ArgumentParser(prog="binome", description="binome lab tooling")
    add_lab_parser(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    return parser


def main(argv: list[str] | None = None) -> int:
    """The `binome-lab` program, run as `binome lab ARGS`."""
    args = build_parser().parse_args(["lab", *(sys.argv[1:] if argv is None else argv)])
    return int(args._lab(args))


if __name__ == "__main__":
    sys.exit(main())
