"""The soak of issue 16, five faults long: the lab tier's version of `bench/soak.py`.

Its own HA lab (subnets 198.23.x; `tests.lab.ha.labs.serving_lab`, as the other
HA modules, each of which needs its lab in a different state), a CPU hog in
n1's namespace, and a fixed plan on the node the guest runs on:

1. binomed paused (SIGSTOP) for 2 s, shorter than the 3.8 s self-fence
   deadline: nothing may be fenced and the guest must not move;
2. its replication link cut for 10 s: the Primary records the peer Outdated
   and goes on; once the link is back the copy resyncs by itself;
3. kill -9 of its volume engine (binomed restarts it): the guest goes on, the
   crashed primary resyncs its activity log and both copies are UpToDate again
   (it used to stay Consistent: never promotable, the mirror degraded for good);
4. binomed paused for 5.5 s, past the deadline: its watchdog kills the guest,
   which the CRM recovers on the other node (the watchdog proof) or which comes
   back where it was if the node wakes first; a node back at once finds its
   copy Primary and idle, unmarked (the survivor promoted nothing while it was
   connected), and must demote it so the guest can run on the survivor (soak
   fault 16: the release hung on the volume's own lock, a 228 s outage);
5. chassis power off through its BMC of the node then running the guest: the
   CRM fences it through the device (`action: off`: it stays off), the guest
   is recovered on the other node, and the soak powers it on again.

Asserted with the soak's own probes (`binome.lab.soak.Soak`): no acknowledged
write lost, never two running QEMU copies (a live migration's paused
`-incoming` target aside), no unneeded fence (of a healthy
node, or of one that stalled less than its deadline), every fault healed with
the guest serving and the volume in sync, and the guest serving at the end.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from binome.lab.ha import HaLab
from binome.lab.soak import Fault, Soak, format_report
from tests.lab.ha.labs import serving_lab

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def ha(tmp_path_factory) -> Iterator[HaLab]:
    yield from serving_lab(tmp_path_factory, base="198.23", id_prefix="hs", dirname="halab5",
                           label="soak lab")


def test_soak_five_faults(ha: HaLab) -> None:
    began = time.monotonic()
    node = ha.guest_node()
    assert node is not None
    # a short grace for "left off": the lab's fence action is off, nothing powers it on
    soak = Soak(ha, hog_node="n1", off_grace=10.0, serve_timeout=60.0, sync_timeout=120.0)
    try:
        soak.start()
        paused = soak.run(Fault("pause", node, 2.0))
        assert ha.guest_node() == node, "a 2 s stall moved the guest"
        soak.run(Fault("cut_replication", node, 10.0))
        soak.run(Fault("kill_engine", node))
        assert ha.guest_node() == node, "a volume engine crash moved the guest"
        soak.run(Fault("pause", node, 5.5))
        node = ha.guest_node()
        assert node is not None
        soak.run(Fault("power_off", node))
        soak.finish()
    finally:
        soak.stop()
    report = soak.report()
    print("\n" + format_report(report))
    print(f"soak test: {time.monotonic() - began:.0f} s")
    assert paused.stall is not None and paused.stall < 3.8
    for w in report["windows"]:
        assert not w["errors"], w
        assert w["served"] is not None and w["synced"] is not None, w
    assert report["acked_writes"] > 20, "the writer got (almost) nothing acknowledged"
    assert report["acked_writes_lost"] == 0, report["lost_sample"]
    assert report["acked_writes_lost_other_copy"] == 0
    # (two QEMUs only for a live-migration hand-over, an `-incoming` one: not a double run)
    assert report["double_runs"] == 0, report["double_run_samples"]
    assert not report["cluster_log_error"]
    assert report["unneeded_fences"] == 0, report["fences"]
    # the power-off was fenced (device or watchdog) and the guest recovered elsewhere
    assert any(f["node"] == node and f["window"] == 5 for f in report["fences"]), \
        report["fence_log"]
    assert ha.guest_node() == ha.other(node)
    ha.wait_serving(30)
