"""HA on real processes: issue 5's scenario 4, two nodes without a witness, link cut.

A 2-node cluster (expected votes 2, no witness; `HaLab(witness=None)`, subnets
198.22.x) with a BMC per node and the HA guest on a replicated volume, started
on n1. The link between the nodes is cut (cluster + replication): neither side
has quorum, so nobody fences or recovers anything: n1's watchdog kills the
guest (its lease cannot be renewed) and n2 does not start it; `ha status` on
both says "No quorum on node" (from the node's own copy of the HA state) and
each node's cluster log (its local queue, served while it has no quorum) says
"quorum lost: 1 of 2 votes, 2 needed" (and n1's that its watchdog fired). Then the admin makes
sure n1 is dead (powers it off through its BMC), runs `binome cluster expected
1` on n2, and the guest is recovered on n2 with every acknowledged write.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from binome.lab.cluster import LabClusterError
from binome.lab.ha import HaLab, wait_until
from tests.lab.ha.labs import serving_lab

pytestmark = pytest.mark.lab

OBSERVE = 25.0   # how long "nothing is recovered" is watched after the cut


@pytest.fixture
def ha2(tmp_path_factory) -> Iterator[HaLab]:
    yield from serving_lab(tmp_path_factory, base="198.22", id_prefix="hn", dirname="halab4",
                           label="2-node HA lab", witness=None)


def quorum_entry(ha: HaLab, node: str) -> dict:
    try:
        return next(e for e in ha.cluster.json(node, "ha", "status") if e["type"] == "quorum")
    except (LabClusterError, ValueError):   # the API may time out while quorum is lost
        return {}


def local_log(ha: HaLab, node: str) -> list[str]:
    try:
        return [str(e.get("msg", "")) for e in
                ha.cluster.json(node, "cluster", "log", "--max", "200")]
    except (LabClusterError, ValueError):
        return []


def test_scenario_4_two_nodes_link_cut_then_expected_1(ha2: HaLab) -> None:
    ha, lab = ha2, ha2.cluster
    assert lab.witness is None and ha.guest_node() == "n1"
    head = lab.json("n2", "cluster", "status")[0]
    assert head["expected_votes"] == 2 and head["quorate"] == 1, head
    with ha.probes() as (probe, seq, watch):
        assert seq is not None
        wait_until(lambda: seq.acked and probe.ok_now(), 30, "probe and writer running")
        wait_until(lambda: len(seq.acked) >= 5, 30, "writes before the cut")
        t0 = time.time()
        ha.cut_links("n1")   # the only link between the two nodes
        for node in ("n1", "n2"):
            q = wait_until(lambda n=node: (e := quorum_entry(ha, n)).get("quorate") == 0 and e,
                           30, f"{node} without quorum")
            print(f"\n`ha status` on {node}: {q['status']}")
            assert q["status"] == "No quorum on node"
        # nobody recovers anything: n2 never starts the guest (and n1's watchdog stops it)
        deadline = time.monotonic() + OBSERVE
        while time.monotonic() < deadline:
            assert "n2" not in watch.running_on(), "recovered without quorum"
            time.sleep(0.3)
        stopped = watch.stopped_at("n1", t0)
        why = {n: [m for m in local_log(ha, n) if "quorum" in m or "watchdog" in m]
               for n in ("n1", "n2")}
        print(f"guest on n1 stopped {None if stopped is None else round(stopped - t0, 1)} s "
              f"after the cut (watchdog); why, per node: {why}")
        assert stopped is not None, "n1 kept running its guest without quorum"
        for node in ("n1", "n2"):
            assert any(f"node {node}: quorum lost: 1 of 2 votes, 2 needed" in m
                       for m in why[node]), why[node]
        assert not probe.ok_now()

        # the admin: n1 is made sure dead (its BMC answers on the management network),
        # then n2 alone is declared the cluster
        ha.power_off("n1")
        t1 = time.time()
        r = lab.cli("n2", "cluster", "expected", "1", "--yes")
        print(r.stdout.strip().splitlines()[-1])
        wait_until(lambda: probe.answered_again(t1), 120, "guest recovered on n2", 0.2)
        t_back = time.time() - t1
        wait_until(lambda: len([a for a in seq.acked if a[1] > t1]) >= 3, 30,
                   "writes acknowledged on n2")
    outages = [(round(a - t0, 1), b and round(b - t0, 1)) for a, b in probe.outages(t0)]
    print(f"recovered on n2 {t_back:.1f} s after `expected 1`; {len(seq.acked)} acknowledged "
          f"writes; outages after the cut {outages}")
    assert ha.guest_node() == "n2"
    assert watch.max_copies <= 1 and watch.overlaps == []
    lost = seq.missing(ha.backing("n2"))
    assert lost == [], f"acknowledged writes lost: {lost[:10]}"
    svc = ha.ha_service(via="n2")
    assert svc.get("state") == "started" and svc.get("node") == "n2", svc
    log = local_log(ha, "n2")
    assert any("EXPECTED VOTES OVERRIDE" in m for m in log), log[:20]
