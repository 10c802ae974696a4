#!/usr/bin/env python3
"""Failover benchmark: fault -> the HA guest answering HTTP again, on real processes.

Builds the HA lab (`binome.lab.ha.HaLab`: n1, n2, witness, a simulated BMC per
node with its IPMI fence device configured, a client host on the VM LAN) with
the default timers, creates the HA guest (tiny image, disk on a replicated
volume, HTTP server) and runs issue 5's scenarios against the node the guest
runs on, N times each, alternating:

1. its cluster and replication links cut (incident 1 of docs/incidents.md);
2. powered off through its BMC, the BMC then killed (incident 3: recovery
   on the witness + watchdog guarantee);
3. powered off through its BMC, the BMC still answering (a power loss or a
   crash that switched the machine off: the CRM's power probe reads the
   chassis off and recovers without waiting for the lease, `ha.probe`).

After each run the faulted node is power-cycled through its BMC, its links
restored, and the volume resynced before the next run. Per run it prints the
outage (fault -> a *new* guest instance answers the client's HTTP probe, every
100 ms), the time to detect (the CRM saw the node lost) and to fence (the
proof accepted), when the new QEMU ran, the guest's boot (QEMU -> HTTP), the
invariant audit (max simultaneous QEMU copies, acknowledged writes lost), and
per scenario the median and max, with the baselines as ratios: Proxmox's
documented ~120 s, and the seeds' 45-51 lost pings at 1 s.

    sudo .venv/bin/python bench/failover.py [--runs 5] [--scenarios 1,2,3]
                                             [--base 198.20] [--json FILE]
                                             [--compare BASELINE.json]

`--compare` takes the `--json` of a baseline run (e.g. an older commit run
side by side) and prints each scenario's median outage against it.

Root only (network namespaces). About 1 min of setup plus 50-70 s per run on
this machine. Not a test: it asserts nothing, but prints a VIOLATION line if
an invariant broke. Everything started is stopped by pid and the lab torn
down, also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from binome.lab.ha import FaultRun, HaLab

PROXMOX_S = 120.0          # pve-ha-manager: about 2 minutes (docs/reference/proxmox-ha.md)
SEEDS_S = (45.0, 51.0)     # the seeds' runs: 45-51 lost pings at 1 s


def scenario_faults(ha: HaLab) -> dict[str, tuple[str, Any]]:
    def power_off_bmc_dead(node: str) -> None:
        ha.power_off(node)
        ha.kill_bmc(node)
    return {"1": ("links cut", ha.cut_links),
            "2": ("power off, BMC dead", power_off_bmc_dead),
            "3": ("power off, BMC answers", ha.power_off)}


def fmt(v: float | None) -> str:
    return "   -  " if v is None else f"{v:5.1f}s"


def row(i: int, run: FaultRun) -> str:
    tl = run.timeline
    audit = "ok" if run.max_copies <= 1 and not run.lost else \
        f"VIOLATION copies={run.max_copies} lost={run.lost[:5]}"
    return (f"  run {i:2d} {run.victim}->{run.survivor}: outage {fmt(tl.answered)}  "
            f"detect {fmt(tl.detect)}  fence {fmt(tl.fence)} [{tl.fenced_by or '-'}]  "
            f"qemu {fmt(tl.qemu_started)}  boot {fmt(run.boot)}  "
            f"writes {run.acked} acked, {audit}")


def summary(name: str, runs: list[FaultRun]) -> list[str]:
    def stats(values: list[float | None]) -> str:
        vals = [v for v in values if v is not None]
        if not vals:
            return "-"
        return f"median {statistics.median(vals):.1f} s, max {max(vals):.1f} s"
    outages = [r.timeline.answered for r in runs if r.timeline.answered is not None]
    lines = [f"scenario {name} ({len(runs)} runs):",
             f"  outage (fault -> HTTP again): {stats([r.timeline.answered for r in runs])}",
             f"  detect:                       {stats([r.timeline.detect for r in runs])}",
             f"  fence:                        {stats([r.timeline.fence for r in runs])}",
             f"  new QEMU running:             {stats([r.timeline.qemu_started for r in runs])}",
             f"  guest boot (QEMU -> HTTP):    {stats([r.boot for r in runs])}"]
    if outages:
        med = statistics.median(outages)
        lines.append(f"  baseline: Proxmox ~{PROXMOX_S:.0f} s -> x{PROXMOX_S / med:.1f} "
                     f"faster; seeds {SEEDS_S[0]:.0f}-{SEEDS_S[1]:.0f} lost pings at 1 s -> "
                     f"x{SEEDS_S[0] / med:.1f}-{SEEDS_S[1] / med:.1f} faster "
                     f"(target <= 10 s median incl. boot: "
                     f"{'met' if med <= 10 else 'NOT met'})")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=5, help="runs per scenario (default 5)")
    p.add_argument("--scenarios", default="1,2,3",
                   help="comma-separated: 1, 2, 3 (default all)")
    p.add_argument("--base", default="198.20", help="lab subnets <base>.1-4.0/24")
    p.add_argument("--json", help="also write the runs to this file")
    p.add_argument("--compare", help="a baseline run's --json: print median ratios")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/failover.py needs root (network namespaces)", file=sys.stderr)
        return 2
    wanted = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    ha = HaLab(base=args.base, lab_id=f"fb{os.getpid() % 100000:x}"[:8], name="failover")
    results: dict[str, list[FaultRun]] = {s: [] for s in wanted}
    began = time.monotonic()
    try:
        ha.start()
        ha.create_ha_guest()
        print(f"lab up, HA guest serving on a replicated disk: "
              f"{time.monotonic() - began:.0f} s", flush=True)
        faults = scenario_faults(ha)
        for i in range(1, args.runs + 1):
            for s in wanted:
                label, fault = faults[s]
                run = ha.run_fault(fault, f"scenario {s} ({label})", timeout=120)
                results[s].append(run)
                print(f"scenario {s} ({label})", flush=True)
                print(row(i, run), flush=True)
                ha.restore(run.victim)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
    finally:
        ha.stop()
    print()
    for s in wanted:
        if results[s]:
            print("\n".join(summary(s, results[s])))
    if args.compare:
        base = json.loads(Path(args.compare).read_text())
        for s in wanted:
            now = [r.timeline.answered for r in results[s] if r.timeline.answered is not None]
            then = [r["outage"] for r in base.get(s, []) if r.get("outage") is not None]
            if now and then:
                a, b = statistics.median(now), statistics.median(then)
                print(f"scenario {s}: median outage {a:.1f} s vs baseline {b:.1f} s "
                      f"-> x{b / a:.2f} ({len(now)} vs {len(then)} runs)")
    print(f"total {time.monotonic() - began:.0f} s")
    if args.json:
        out = {s: [{"victim": r.victim, "outage": r.timeline.answered,
                    "detect": r.timeline.detect, "fence": r.timeline.fence,
                    "fenced_by": r.timeline.fenced_by, "qemu": r.timeline.qemu_started,
                    "boot": r.boot, "max_copies": r.max_copies, "acked": r.acked,
                    "lost": r.lost} for r in runs] for s, runs in results.items()}
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
