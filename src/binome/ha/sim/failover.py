"""Simulated failover times with the default timers: `python -m binome.ha.sim.failover`.

For each fault of the main scenarios, the fault is injected at 20 offsets
spread over one keepalive interval (the phase between a node's last lease
renewal and the fault is what varies in real life) and the time from the
fault to the guest running again elsewhere is measured. The guest boot
(3.5 s, measured under TCG on this machine) is included. These are the
figures the lab's `bench/failover` measures on real processes.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from binome.ha.sim.metrics import outages
from binome.ha.sim.scenario import parse_scenario, run

WITH_DEVICES = {"nodes": {"n1": {"fence_device": {"delay": 1.0}},
                          "n2": {"fence_device": {"delay": 1.0}}}, "witness": "w"}
WATCHDOG_ONLY = {"nodes": {"n1": {}, "n2": {}}, "witness": "w"}
SERVICES = {"resources": {"vm:100": {"node": "n1", "state": "started"},
                          "vm:101": {"node": "n2", "state": "started"}}}


@dataclass(frozen=True)
class Case:
    name: str
    cluster: dict[str, Any]
    fault: str
    sid: str          # the guest that must come back


CASES = [
    Case("power loss of n2, fence device works", WITH_DEVICES, "power n2 off", "vm:101"),
    Case("power loss of n2, BMC dead too (watchdog)", WITH_DEVICES,
         "power n2 off\nfence-device n2 dead", "vm:101"),
    Case("power loss of n2, no fence device (watchdog)", WATCHDOG_ONLY, "power n2 off",
         "vm:101"),
    Case("power loss of the CRM master n1", WITH_DEVICES, "power n1 off", "vm:100"),
    Case("network cut of n2 (incident 1)", WITH_DEVICES, "network n2 off", "vm:101"),
    Case("network cut of the CRM master n1", WITH_DEVICES, "network n1 off", "vm:100"),
]


def measure(case: Case, offset: float) -> float:
    at = 20.0 + offset
    scn = parse_scenario(case.name, case.cluster, SERVICES, f"delay {at:.3f}\n{case.fault}\n")
    world = run(scn)
    for outage in outages(world.guests):
        if outage.sid == case.sid and outage.end is not None and outage.start >= at:
            return outage.end - at
    raise AssertionError(f"{case.name}: {case.sid} did not come back")


def main() -> int:
    offsets = [i / 20 for i in range(20)]
    print(f"{'fault':46} {'median':>7} {'min':>6} {'max':>6}   (s, fault -> guest serving)")
    for case in CASES:
        times = [measure(case, off) for off in offsets]
        print(f"{case.name:46} {statistics.median(times):7.2f} {min(times):6.2f} "
              f"{max(times):6.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
