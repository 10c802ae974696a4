#!/usr/bin/env python3
"""Live migration as a client sees it: pings lost during the switch-over, vs QEMU's downtime.

Issue 16: a client pinging the guest every 10 ms lost 6-8 consecutive pings
(60-90 ms) per live migration, more than QEMU's own stop-and-copy downtime.
This builds the HA lab (`binome.lab.ha.HaLab`), creates the HA guest on its
replicated disk, starts `ping -i 0.01` from the client host on the VM LAN, and
live-migrates the guest back and forth `--runs` times (`binome vm migrate`,
which an HA guest goes through the HA manager for). Per migration it prints the
longest run of lost pings (the client-visible gap, at 10 ms per ping), QEMU's
reported downtime and binome's switch-over time (both from the `hamigrate` task
log), then the median and max of each.

It measures the code of the interpreter that runs it, so a side by side is two
runs, e.g. the previous commit's clone and this one:

    sudo /path/to/baseline/.venv/bin/python bench/migration.py --runs 6 --label before
    sudo .venv/bin/python bench/migration.py --runs 6 --label after

With `--pauses N` it then pauses the guest N times in place (SIGSTOP, the
pause, SIGCONT of the same QEMU), each pause as long as the median switch-over
just measured (or `--pause-ms`), and prints the client gap of those too: what a
stop of that length costs without a new process (the TCG guest's catch-up,
the bridge), so the rest of a migration's gap is what the hand-over to a new
QEMU adds.

With `--floor N` it then stops the HA guest and runs its very QEMU command line
by hand on the same nodes, without binome, and migrates it N times over QMP
alone (`bench/migration_floor.py`): the gap of QEMU alone on this machine, the
floor under binome's, printed side by side with binome's and their ratio.

Root only. About 1.5 min of setup plus ~15 s per migration. The pinger is
stopped by pid and the lab torn down, also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from migration_floor import FloorNode, run_floor, tap_of

from binome.lab.ha import HaLab, wait_until

INTERVAL = 0.01
REPLY_RE = re.compile(r"^\[(\d+\.\d+)\].*icmp_seq=(\d+)")
DOWNTIME_RE = re.compile(r"migration downtime: (\d+) ms \(QEMU[^)]*\) \+ (\d+) ms")
SPLIT_RE = re.compile(r"config move (\d+) ms, target resume (\d+) ms(?: \(on the target: "
                      r"([^)]*)\))?")


class Pinger:
    """`ping -D -i 0.01` from the client namespace; remembers each reply's sequence number
    and its arrival time (ping's own timestamp), so gaps are measured on replies, not
    on an assumed send rate."""

    def __init__(self, netns: str, ip: str) -> None:
        self.proc = subprocess.Popen(["ip", "netns", "exec", netns, "ping", "-n", "-D", "-i",
                                      str(INTERVAL), "-W", "1", ip],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True, start_new_session=True)
        self.replies: list[tuple[float, int]] = []   # (arrival, seq)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            m = REPLY_RE.search(line)
            if m:
                self.replies.append((float(m.group(1)), int(m.group(2))))

    def worst_gap(self, t0: float, t1: float) -> tuple[float, int]:
        """The longest silence between two consecutive replies arriving in [t0, t1]
        (seconds), and how many pings went unanswered in it."""
        got = [(t, seq) for t, seq in list(self.replies) if t0 <= t <= t1]
        worst, lost = 0.0, 0
        for (ta, sa), (tb, sb) in itertools.pairwise(got):
            if tb - ta > worst:
                worst, lost = tb - ta, max(0, sb - sa - 1)
        return worst, lost

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 9)
        self.proc.wait(10)


def task_figures(ha: HaLab, source: str, since: float) -> tuple[int | None, int | None, str]:
    """QEMU's downtime and the switch-over (ms) from the latest hamigrate task on source,
    and the switch-over's split (config move / target resume) when the log has it."""
    lab = ha.cluster
    tasks = [t for t in lab.json(source, "task", "list")
             if t.get("type") in ("hamigrate", "qmigrate") and t.get("starttime", 0) >= since - 2]
    for t in sorted(tasks, key=lambda t: t.get("starttime", 0), reverse=True):
        log = lab.cli(source, "task", "log", t["upid"]).stdout
        m = DOWNTIME_RE.search(log)
        if m:
            split = SPLIT_RE.search(log)
            return int(m.group(1)), int(m.group(2)), (
                f" (move {split.group(1)} + resume {split.group(2)}"
                + (f": {split.group(3)}" if split.group(3) else "") + ")" if split else "")
    return None, None, ""


def qemu_pid(ha: HaLab, node: str) -> int:
    """The guest's QEMU pid on `node`, from its `-pidfile`."""
    for pidfile in sorted(ha.cluster.state_dir(node).rglob(f"{ha.vmid}.pid")):
        if not pidfile.with_suffix(".qmp").exists():
            continue        # not a guest's run directory
        pid = int(pidfile.read_text().split()[0])
        if Path(f"/proc/{pid}/comm").read_text().startswith("qemu-system"):
            return pid
    raise RuntimeError(f"no running QEMU of VM {ha.vmid} under {ha.cluster.state_dir(node)}")


def pause_in_place(pid: int, pause_s: float) -> float:
    """Freeze the guest's QEMU (SIGSTOP), wait `pause_s`, let it go on (SIGCONT); the
    pause as measured (s). Not QMP `stop`/`cont`: the socket takes one client, binomed.
    A frozen process is what a paused guest is to the network (nothing answers) and
    its catch-up after is the same TCG work."""
    t0 = time.monotonic()
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(pause_s)
    finally:
        os.kill(pid, signal.SIGCONT)
    return time.monotonic() - t0


def run_floor_series(ha: HaLab, pinger: Pinger, runs: int,
                     downtime_ms: int) -> list[dict[str, Any]]:
    """Stop the HA guest, then migrate its QEMU command line by hand (QMP only) `runs`
    times between the two nodes: the floor under binome's gap."""
    node = ha.guest_node()
    assert node is not None
    pid = qemu_pid(ha, node)
    argv = [a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]
    run_dir = str(Path(argv[argv.index("-pidfile") + 1]).parent)
    tap = tap_of(argv)
    ha.cluster.cli(node, "ha", "set", ha.sid, "--state", "stopped")
    wait_until(lambda: not Path(f"/proc/{pid}").exists(), 120, "the HA guest stopped")
    first, second = node, ha.other(node)
    nodes = [FloorNode(n, ha.cluster.lab.host(n).netns, ha.cluster.address(n), argv,
                       run_dir, tap) for n in (first, second)]

    def answering(since: float) -> bool:
        return bool(pinger.replies) and pinger.replies[-1][0] > since

    return asyncio.run(run_floor(nodes, runs, downtime_ms, answering, pinger.worst_gap,
                                 lambda line: print(line, flush=True)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=6, help="migrations (default 6)")
    p.add_argument("--base", default="198.40", help="lab subnets <base>.1-4.0/24")
    p.add_argument("--label", default="", help="printed with the results")
    p.add_argument("--json", help="also write the runs to this file")
    p.add_argument("--downtime", type=float, default=None,
                   help="the VM's migrate_downtime (s) for the runs (default: PVE's 0.1)")
    p.add_argument("--pauses", type=int, default=0,
                   help="then pause the guest in place this many times (default 0)")
    p.add_argument("--pause-ms", type=int, default=0,
                   help="length of each pause (default: the median switch-over measured)")
    p.add_argument("--floor", type=int, default=0,
                   help="then this many migrations of the same QEMU without binome")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/migration.py needs root (network namespaces)", file=sys.stderr)
        return 2
    ha = HaLab(base=args.base, lab_id=f"mg{os.getpid() % 100000:x}"[:8], name="migration")
    runs: list[dict[str, Any]] = []
    pauses: list[dict[str, Any]] = []
    pinger: Pinger | None = None
    floor: list[dict[str, Any]] = []
    began = time.monotonic()
    try:
        ha.start()
        ha.create_ha_guest()
        if args.downtime is not None:
            node = ha.guest_node()
            assert node is not None
            ha.cluster.cli(node, "vm", "set", str(ha.vmid), "--migrate_downtime",
                           str(args.downtime))
        pinger = Pinger(ha.client_netns, ha.guest_ip)
        wait_until(lambda: len(pinger.replies) > 50, 30, "the guest answering pings")
        for i in range(1, args.runs + 1):
            source = ha.guest_node()
            assert source is not None
            target = ha.other(source)
            time.sleep(2)
            t0 = time.time()
            ha.cluster.cli(source, "vm", "migrate", str(ha.vmid), target, "--online", "1")
            def arrived(target: str = target) -> bool:
                return (ha.guest_node() == target
                        and ha.ha_service().get("state") == "started")
            wait_until(arrived, 120, f"the guest migrated to {target}")
            wait_until(lambda: bool(pinger.replies)
                       and pinger.replies[-1][0] > time.time() - 0.2, 60,
                       "the guest answering pings again")
            time.sleep(0.5)
            t1 = time.time()
            gap, lost = pinger.worst_gap(t0, t1)
            qemu_ms, switch_ms, split = task_figures(ha, source, t0)
            run = {"from": source, "to": target, "lost_pings": lost,
                   "gap_ms": round(gap * 1000), "qemu_downtime_ms": qemu_ms,
                   "switch_over_ms": switch_ms}
            runs.append(run)
            print(f"  run {i}: {source}->{target}: longest silence {run['gap_ms']} ms "
                  f"({lost} pings unanswered), QEMU downtime {qemu_ms} ms, switch-over "
                  f"{switch_ms} ms{split}", flush=True)
        switch = [r["switch_over_ms"] for r in runs if r["switch_over_ms"] is not None]
        pause_ms = args.pause_ms or (round(statistics.median(switch)) if switch else 100)
        for i in range(1, args.pauses + 1):
            node = ha.guest_node()
            assert node is not None
            time.sleep(2)
            pid = qemu_pid(ha, node)
            # the window opens before the pause: a silence is measured between two
            # replies inside it, and the last reply before the pause must be one
            t0 = time.time()
            time.sleep(0.5)
            took = pause_in_place(pid, pause_ms / 1000)
            time.sleep(1.5)
            gap, lost = pinger.worst_gap(t0, time.time())
            pauses.append({"node": node, "pause_ms": round(took * 1000),
                           "gap_ms": round(gap * 1000), "lost_pings": lost})
            print(f"  pause {i} on {node}: QEMU pid {pid} stopped {round(took * 1000)} ms "
                  f"in place -> "
                  f"longest silence {round(gap * 1000)} ms ({lost} pings unanswered)",
                  flush=True)
        if args.floor:
            floor = run_floor_series(ha, pinger, args.floor,
                                     round((args.downtime or 0.03) * 1000))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
    finally:
        if pinger is not None:
            pinger.stop()
        ha.stop()

    def stat(key: str) -> str:
        vals = [r[key] for r in runs if r[key] is not None]
        if not vals:
            return "-"
        return f"median {statistics.median(vals):.0f}, max {max(vals):.0f}"
    label = f" [{args.label}]" if args.label else ""
    print(f"live migration{label}, {len(runs)} runs: client gap (ms) {stat('gap_ms')}; "
          f"QEMU downtime (ms) {stat('qemu_downtime_ms')}; switch-over (ms) "
          f"{stat('switch_over_ms')}; total {time.monotonic() - began:.0f} s")
    if pauses:
        gaps = [p["gap_ms"] for p in pauses]
        held = [p["pause_ms"] for p in pauses]
        extra = [p["gap_ms"] - p["pause_ms"] for p in pauses]
        print(f"in-place pauses{label}, {len(pauses)} runs: paused (ms) median "
              f"{statistics.median(held):.0f}; client gap (ms) median "
              f"{statistics.median(gaps):.0f}, max {max(gaps)}; gap beyond the pause (ms) "
              f"median {statistics.median(extra):.0f}")
        mig = [r["gap_ms"] for r in runs]
        if mig:
            print(f"ratio: migration gap / in-place pause gap = "
                  f"{statistics.median(mig) / max(1, statistics.median(gaps)):.2f}")
    if floor:
        fgaps = [f["gap_ms"] for f in floor]
        fqemu = [f["qemu_downtime_ms"] for f in floor]
        print(f"QEMU alone{label}, {len(floor)} runs: client gap (ms) median "
              f"{statistics.median(fgaps):.0f}, max {max(fgaps)}; QEMU downtime (ms) median "
              f"{statistics.median(fqemu):.0f}")
        mig = [r["gap_ms"] for r in runs]
        if mig:
            print(f"ratio: binome's gap / QEMU alone = "
                  f"{statistics.median(mig) / max(1, statistics.median(fgaps)):.2f} "
                  f"({statistics.median(mig):.0f} vs {statistics.median(fgaps):.0f} ms median)")
    if args.json:
        Path(args.json).write_text(json.dumps({"label": args.label, "runs": runs,
                                               "pauses": pauses, "floor": floor}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
