"""Availability history in the simulator: the real CRM/LRM fail over, the history recorded
from the committed manager statuses (as the daemon's master records it) gives outages with
the right cause and durations close to what the guests measured (`sim.metrics.outages`)."""

from __future__ import annotations

import pytest

from binome.ha import availability as av
from binome.ha.sim.failover import SERVICES, WITH_DEVICES
from binome.ha.sim.metrics import outages
from binome.ha.sim.scenario import parse_scenario, run
from binome.ha.timers import HaTimers

FAULT_AT = 20.3


@pytest.mark.parametrize(("fault", "sid"), [
    ("power n2 off", "vm:101"),     # a node without the CRM master
    ("power n1 off", "vm:100"),     # the master's node: a new master records the rest
])
def test_failover_and_admin_stop_have_their_causes_and_durations(fault: str, sid: str) -> None:
    other = "vm:100" if sid == "vm:101" else "vm:101"
    scn = parse_scenario(fault, WITH_DEVICES, SERVICES,
                         f"delay {FAULT_AT}\n{fault}\ndelay 30\nservice {other} stopped\n"
                         f"delay 10\nservice {other} started\n")
    world = run(scn)
    end = world.q.now / 1000
    measured = {(o.sid, round(o.start)): o for o in outages(world.guests)}

    failed = av.report(sid, world.availability[sid], 0, end, end)
    [out] = failed["outage_list"]
    probe = measured[(sid, round(FAULT_AT))]
    assert out["cause"] == "fencing" and not out["ongoing"]
    assert out["node"] == fault.split()[1]
    # the outage starts at the node's last lease renewal (before the fault, by at most
    # a keepalive interval) and ends when the LRM reports the guest started elsewhere
    keepalive = HaTimers().keepalive_interval
    assert probe.start - keepalive <= out["start"] <= probe.start
    assert probe.end is not None and abs(out["end"] - probe.end) <= 0.5
    assert abs(out["duration"] - probe.duration) <= keepalive + 0.5
    assert failed["downtime"] == out["duration"] and failed["mttr"] == out["duration"]
    assert failed["availability"] < 100

    stopped = av.report(other, world.availability[other], 0, end, end)
    assert stopped["outages"] == 0 and stopped["availability"] == 100.0
    admin = [p for p in stopped["planned_list"] if p["cause"] == "admin-stop"]
    [stop] = admin
    probe = next(o for (s, _), o in measured.items() if s == other and o.start > FAULT_AT + 20)
    assert probe.end is not None
    assert abs(stop["start"] - probe.start) <= 0.5 and abs(stop["end"] - probe.end) <= 0.5
