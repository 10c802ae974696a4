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

    sudo .venv/bin/python bench/failover.py [--runs 5] [--scenarios 1,2,3] [--workdir DIR]
                                             [--base 198.20] [--json FILE]
                                             [--compare BASELINE.json]

`--workdir DIR` keeps the lab's logs, each run's timeline (`run-s<S>-r<I>.timeline`)
and, when a run does not recover in time, `failure-s<S>-r<I>.json` (the whole
cluster log, the HA and volume keys, each node's `ha status` and volume states,
where QEMU runs), written at once and again after 3 more minutes of waiting (late
or never); the bench then stops.

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

from binome.lab.cluster import LabClusterError
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


def diagnose(ha: HaLab, out: Path, what: str) -> None:
    """What a run that needs explaining leaves in the workdir: the whole cluster log,
    the HA and volume keys in etcd (fence devices left out: they name secret files),
    each node's `ha status` and volume states, and where QEMU runs."""
    state: dict[str, Any] = {"what": what, "at": time.time()}

    async def read(store: Any) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for prefix in ("/binome/ha/", "/binome/volumes/", "/binome/alive/",
                       "/binome/config/nodes/"):
            for e in await store.get_prefix(prefix):
                if not e.key.startswith("/binome/ha/fence/"):
                    found[e.key] = e.value
        return found
    for name, get in (("cluster_log", lambda: ha.cluster_log()),
                      ("etcd", lambda: ha.etcd(read)),
                      ("ha_status", lambda: {n: ha.cluster.json(n, "ha", "status")
                                             for n in (*ha.nodes, ha.cluster.witness) if n}),
                      ("volumes", lambda: {n: ha.volume_states(n) for n in ha.nodes}),
                      ("qemu_on", lambda: ha.guest_node())):
        try:
            state[name] = get()
        except Exception as exc:   # a dead node's CLI: say so, keep the rest
            state[name] = f"{type(exc).__name__}: {exc}"
    out.write_text(json.dumps(state, indent=1, default=str))
    print(f"diagnosis written to {out}", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=5, help="runs per scenario (default 5)")
    p.add_argument("--scenarios", default="1,2,3",
                   help="comma-separated: 1, 2, 3 (default all)")
    p.add_argument("--base", default="198.20", help="lab subnets <base>.1-4.0/24")
    p.add_argument("--json", help="also write the runs to this file")
    p.add_argument("--compare", help="a baseline run's --json: print median ratios")
    p.add_argument("--workdir", type=Path,
                   help="keep the lab's logs and state here (default: a temporary "
                        "directory, removed at the end)")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/failover.py needs root (network namespaces)", file=sys.stderr)
        return 2
    wanted = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
    ha = HaLab(base=args.base, lab_id=f"fb{os.getpid() % 100000:x}"[:8], name="failover",
               workdir=args.workdir)
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
                try:
                    run = ha.run_fault(fault, f"scenario {s} ({label})", timeout=120)
                except LabClusterError as exc:
                    print(f"scenario {s} ({label}) run {i}: FAILED: {exc}", flush=True)
                    if args.workdir is not None:
                        diagnose(ha, args.workdir / f"failure-s{s}-r{i}.json", str(exc))
                        # late or never: the lab stays up 3 more minutes to tell
                        try:
                            ha.wait_serving(180)
                            print("  ... answering again later", flush=True)
                        except LabClusterError:
                            print("  ... still not answering 3 min later", flush=True)
                        diagnose(ha, args.workdir / f"failure-s{s}-r{i}-later.json",
                                 str(exc))
                    raise
                results[s].append(run)
                print(f"scenario {s} ({label})", flush=True)
                print(row(i, run), flush=True)
                if args.workdir is not None:
                    (args.workdir / f"run-s{s}-r{i}.timeline").write_text(
                        run.timeline.summary() + "\n" + "\n".join(run.timeline.lines) + "\n")
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
