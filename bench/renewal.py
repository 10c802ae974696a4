#!/usr/bin/env python3
"""Lease renewal under load: the HA keepalive on the daemon's event loop vs in its thread.

Issue 16 asks for the real cause of multi-second lease renewal gaps under load
(a node fenced again for a 3.7 s stall 10 s after its power-on, while its
guest booted and its volume resynced on two cores). This builds the HA lab
(`binome.lab.ha.HaLab`) twice, once with the heartbeat on binomed's event loop
(`BINOME_HA_KEEPER_THREAD=0`, the former design) and once in its `ha-keepalive`
thread (the default), and in each runs the same phases:

1. idle (the HA guest serving, a writer storing sequence numbers through it);
2. CPU hog: busy loops on the guest's node, as many as it has cores, plus one;
3. boot + resync under the hog: the guest is stopped, the other node's
   replication link cut, the guest started again (a TCG boot), the link
   restored and the volume resynced;
4. power-cycled rejoin: the other node powered off and on through its BMC
   (its etcd member catches up, its copy resyncs) while the hog runs.

Each binomed writes every renewal (wall time, gap since the previous one, its
latency) to a trace file (`BINOME_HA_RENEWAL_TRACE`) and logs its event-loop
stalls over 0.5 s. Per design, node and phase it prints the renewal gap
(median, p99, max: a gap over the self-fence deadline, 3.8 s, would have made
the node kill its guests and get fenced), the renewal latency, the late
renewals (gap > 1.5 s) and the main-loop stalls, then the ratio of the worst
gaps, thread vs loop.

    sudo .venv/bin/python bench/renewal.py [--phase 30] [--base 198.30] [--json FILE]

Root only. About 4 minutes per design. Processes it starts (the hogs) are stopped
by pid; the lab is torn down also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from binome.lab.ha import HaLab, wait_until

STALL_RE = re.compile(r"event loop was blocked for ([0-9.]+) s")


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def stats(trace: list[tuple[float, float, float]], t0: float, t1: float) -> dict[str, Any]:
    gaps = [g for t, g, _lat in trace if t0 <= t < t1 and g > 0]
    lats = [lat for t, _g, lat in trace if t0 <= t < t1]
    if not gaps:
        return {"renewals": len(lats)}
    return {"renewals": len(lats), "gap_median": statistics.median(gaps),
            "gap_p99": _pct(gaps, 0.99), "gap_max": max(gaps),
            "late": sum(1 for g in gaps if g > 1.5),
            "lat_median_ms": statistics.median(lats) * 1000,
            "lat_p99_ms": _pct(lats, 0.99) * 1000, "lat_max_ms": max(lats) * 1000}


def read_trace(path: Path) -> list[tuple[float, float, float]]:
    out = []
    if path.exists():
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 3:
                out.append((float(parts[0]), float(parts[1]), float(parts[2])))
    return out


def stalls(log: Path) -> list[float]:
    """The main-loop stalls a node logged (seconds), in order."""
    if not log.exists():
        return []
    return [float(m.group(1)) for m in STALL_RE.finditer(log.read_text(errors="replace"))]


class Hog:
    """Busy loops inside a node's namespace, started and stopped by pid."""

    def __init__(self, netns: str, count: int) -> None:
        self.procs = [subprocess.Popen(["ip", "netns", "exec", netns, "sh", "-c",
                                        "while :; do :; done"], start_new_session=True)
                      for _ in range(count)]

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, 9)
            p.wait(10)


def run_design(thread: bool, phase: float, base: str, workdir: Path) -> dict[str, Any]:
    trace = workdir / ("thread" if thread else "loop")
    os.environ["BINOME_HA_KEEPER_THREAD"] = "1" if thread else "0"
    os.environ["BINOME_HA_RENEWAL_TRACE"] = str(trace)
    name = "keeper thread" if thread else "event loop"
    labdir = workdir / f"lab-{'thread' if thread else 'loop'}"
    labdir.mkdir()
    ha = HaLab(base=base, lab_id=f"rn{os.getpid() % 10000:x}{int(thread)}"[:8],
               name="renewal", workdir=labdir)
    marks: dict[str, tuple[float, float]] = {}
    hog: Hog | None = None
    try:
        ha.start()
        ha.create_ha_guest()
        node = ha.guest_node()
        assert node is not None
        other = ha.other(node)
        lab = ha.cluster
        with ha.probes() as (_probe, _seq, _watch):
            t = time.time()
            time.sleep(phase)
            marks["idle"] = (t, time.time())
            t = time.time()
            hog = Hog(lab.lab.host(node).netns, (os.cpu_count() or 2) + 1)
            time.sleep(phase)
            marks["cpu hog"] = (t, time.time())
            t = time.time()
            lab.cli(node, "ha", "set", ha.sid, "--state", "stopped")
            wait_until(lambda: ha.ha_service().get("state") == "stopped", 120, "guest stopped")
            lab.lab.link_down(other, "replication")
            lab.cli(node, "ha", "set", ha.sid, "--state", "started")
            ha.wait_serving(180)
            time.sleep(5)   # writes while the other copy is cut off
            lab.lab.link_up(other, "replication")
            ha.wait_in_sync(180)
            marks["boot + resync, hog"] = (t, time.time())
            # the case: a node power-cycled through its BMC comes back (etcd
            # member catching up, its copy resyncing) while the other node is loaded
            t = time.time()
            ha.power_off(other)
            time.sleep(3)
            ha.power_on(other)
            wait_until(lambda: ha.node_online(other), 120, f"{other} back online")
            ha.wait_in_sync(180)
            time.sleep(phase / 2)
            marks["power-cycled rejoin"] = (t, time.time())
        hog.stop()
        hog = None
    finally:
        if hog is not None:
            hog.stop()
        ha.stop()
    result: dict[str, Any] = {"design": name, "phases": {}}
    for n in ha.nodes:
        tr = read_trace(Path(f"{trace}.{n}"))
        loop_stalls = stalls(ha.cluster.workdir / f"{n}.log")
        for ph, (t0, t1) in marks.items():
            result["phases"].setdefault(ph, {})[n] = stats(tr, t0, t1)
        result.setdefault("stalls", {})[n] = loop_stalls
    return result


def show(res: dict[str, Any]) -> list[str]:
    lines = [f"== heartbeat on the {res['design']}"]
    for ph, per_node in res["phases"].items():
        for n, s in per_node.items():
            if "gap_max" not in s:
                lines.append(f"  {ph:20s} {n}: {s['renewals']} renewals")
                continue
            lines.append(
                f"  {ph:20s} {n}: {s['renewals']:3d} renewals, gap median "
                f"{s['gap_median']:.2f} p99 {s['gap_p99']:.2f} max {s['gap_max']:.2f} s, "
                f"late {s['late']}, latency median {s['lat_median_ms']:.1f} p99 "
                f"{s['lat_p99_ms']:.1f} max {s['lat_max_ms']:.1f} ms")
    for n, st in res["stalls"].items():
        worst = f", worst {max(st):.2f} s" if st else ""
        lines.append(f"  main-loop stalls > 0.5 s on {n}: {len(st)}{worst}")
    return lines


def worst_gap(res: dict[str, Any]) -> float:
    return max((s.get("gap_max", 0.0) for per in res["phases"].values()
                for s in per.values()), default=0.0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--phase", type=float, default=30.0, help="seconds per timed phase")
    p.add_argument("--base", default="198.30", help="lab subnets <base>.1-4.0/24")
    p.add_argument("--json", help="also write the results to this file")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/renewal.py needs root (network namespaces)", file=sys.stderr)
        return 2
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="binome-renewal-") as tmp:
        results = []
        for thread in (False, True):
            res = run_design(thread, args.phase, args.base, Path(tmp))
            results.append(res)
            print("\n".join(show(res)), flush=True)
    loop, thread = (worst_gap(r) for r in results)
    print(f"\nworst renewal gap: event loop {loop:.2f} s, keeper thread {thread:.2f} s "
          f"(thread/loop = {thread / loop:.2f}); self-fence deadline 3.8 s")
    print(f"total {time.monotonic() - began:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
