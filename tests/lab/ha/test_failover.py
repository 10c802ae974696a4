"""HA failover on real processes in network namespaces: issue 5's scenarios 1, 2 and 6.

One lab for the module (`binome.lab.ha.HaLab`, subnets 198.20.x): n1, n2 and a
witness, a simulated BMC per node on a management network (IPMI fence device
of each node in etcd), a client host on the VM LAN. The HA guest (tiny image,
TCG) has its disk on a replicated volume and serves HTTP; during each fault
an `HttpProbe` polls it from the client every 100 ms, a `SeqWriter` writes
sequence numbers through its disk, and a `QemuWatch` samples both nodes'
QEMU every 50 ms. Every scenario asserts the invariants of TESTING.md:

- never two running copies (`QemuWatch.max_copies <= 1` during the whole fault);
- no acknowledged write lost (every acknowledged sequence number is in the
  survivor's backing file after recovery);
- never recovered onto stale data (the refusal test: the survivor's copy is
  Outdated, the service waits with the reason, and recovers once the good
  copy's node is back);

and prints the measured outage (fault -> the new instance answers HTTP), the
detect time and the fence time (cluster log). Each test faults the node the
guest runs on and brings that node back at the end (links, BMC, power,
resync), so the tests also run alone.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from binome.lab.ha import HaLab, Timeline, wait_until

pytestmark = pytest.mark.lab

RECOVERY_TIMEOUT = 60.0


@pytest.fixture(scope="module")
def ha(tmp_path_factory) -> Iterator[HaLab]:
    if os.geteuid() != 0:
        pytest.skip("lab tests need root (network namespaces)")
    lab = HaLab(base="198.20", lab_id=f"ha{os.getpid() % 100000:x}"[:8],
                workdir=tmp_path_factory.mktemp("halab"))
    began = time.monotonic()
    lab.start()
    try:
        lab.create_ha_guest()
        print(f"\nHA lab with the guest serving and its volume in sync: "
              f"{time.monotonic() - began:.1f} s")
        yield lab
    finally:
        lab.stop()


def report(name: str, tl: Timeline) -> None:
    print(f"\n{name}: {tl.summary()}")
    for line in tl.lines:
        print(f"   {line}")


def run_fault(ha: HaLab, fault, name: str) -> tuple[str, str, Timeline]:
    """Fault the guest's node, wait for a new instance answering, check the invariants."""
    run = ha.run_fault(fault, name, RECOVERY_TIMEOUT)
    report(name, run.timeline)
    print(f"   {run.acked} acknowledged writes, lost {run.lost}, max copies {run.max_copies}")
    assert run.max_copies <= 1, "two running copies"
    assert run.acked > 5, "the writer got nothing acknowledged"
    assert run.lost == [], f"acknowledged writes lost: {run.lost[:10]}"
    assert ha.guest_node() == run.survivor
    assert run.timeline.qemu_stopped is not None
    return run.victim, run.survivor, run.timeline


def test_ha_guest_runs_on_a_replicated_disk(ha: HaLab) -> None:
    node = ha.guest_node()
    assert node == "n1"
    svc = ha.ha_service()
    assert svc.get("state") == "started" and svc.get("node") == "n1", svc
    st = ha.volume_states("n1")
    assert st and st["role"] == "Primary" and st["peer_disk"] == "UpToDate"


def test_scenario_1_links_cut(ha: HaLab) -> None:
    """Seeds' case 1: the guest's node loses its cluster and replication links."""
    victim, _survivor, tl = run_fault(ha, ha.cut_links, "scenario 1 (links cut)")
    assert tl.detect is not None and tl.fence is not None
    assert tl.answered is not None and tl.answered < RECOVERY_TIMEOUT
    ha.restore(victim)


def test_scenario_2_power_off_bmc_dead(ha: HaLab) -> None:
    """Seeds' case 3: powered off through its BMC, then the BMC is unreachable."""
    def fault(node: str) -> None:
        ha.power_off(node)
        ha.kill_bmc(node)
    victim, _survivor, tl = run_fault(ha, fault, "scenario 2 (power off, BMC dead)")
    assert tl.fenced_by == "watchdog", tl.summary()   # the device cannot answer any more
    ha.restore(victim)


def test_scenario_6_daemon_paused_past_its_lease(ha: HaLab) -> None:
    """binomed frozen (SIGSTOP) while its etcd, volume engine and watchdog supervisor run:
    the watchdog kills the guest before the survivor's CRM accepts the proof and
    recovers it; the frozen node's engine, still Primary and connected, is disconnected
    by the survivor (which records it Outdated with quorum) before promoting."""
    victim = ha.guest_node()
    assert victim is not None
    ha.remove_fencing(victim)   # no BMC power-off: the self-fence is the only proof
    paused: list[int] = []
    try:
        victim, survivor, tl = run_fault(
            ha, lambda node: paused.append(ha.pause_daemon(node)),
            "scenario 6 (daemon paused)")
        assert tl.fenced_by == "watchdog", tl.summary()
        assert tl.qemu_stopped is not None and tl.fence is not None
        assert tl.qemu_stopped < tl.fence, "the CRM recovered before the self-fence fired"
        assert tl.qemu_stopped < tl.qemu_started  # type: ignore[operator]
        # the daemon wakes up: it must not start a second copy
        with ha.probes(writer=False) as (_probe, _seq, watch):
            ha.resume_daemon(paused.pop())
            wait_until(lambda: ha.node_online(victim), 30, f"{victim} online after SIGCONT")
            svc = wait_until(lambda: (s := ha.ha_service()).get("state") == "started" and s,
                             20, "service still started")
            assert svc["node"] == survivor
        assert watch.max_copies <= 1 and ha.guest_node() == survivor
    finally:
        for pid in paused:
            ha.resume_daemon(pid)
        ha.configure_fencing((victim,))
    ha.restore(victim)


def test_no_recovery_onto_an_outdated_copy(ha: HaLab) -> None:
    """The survivor's copy is Outdated (its replication link was cut while the guest
    wrote): when the guest's node dies, recovery waits in `recovery` with the reason,
    visible in `ha status` and the cluster log, and happens on the good copy's node
    once it is back."""
    victim = ha.guest_node()
    assert victim is not None
    survivor = ha.other(victim)
    lab = ha.cluster
    lab.lab.link_down(survivor, "replication")
    try:
        def marked(store) -> object:
            return store.get_value(f"/binome/volumes/{ha.volume}/fencing")
        with ha.probes() as (_probe, seq, _watch):
            wait_until(lambda: ((ha.etcd(marked) or {}).get("outdated") or {}).get(survivor),
                       40, f"{survivor}'s copy recorded Outdated")
            wait_until(lambda: len(seq.acked) >= 3, 30, "writes acknowledged after the cut")
        t0 = time.time()
        with ha.probes(writer=False) as (_probe, _seq, watch):
            ha.power_off(victim)   # its BMC answers: fenced by the device at once
            svc = wait_until(lambda: (s := ha.ha_service()).get("state") == "recovery"
                             and "UpToDate" in s.get("reason", "") and s, 40,
                             "recovery waiting for an UpToDate copy")
            print(f"\n`ha status`: {svc['status']} - {svc['reason']}")
            assert ha.volume in svc["reason"] and survivor in svc["reason"]
            status_text = lab.cli(lab.witness or survivor, "ha", "status").stdout
            assert "UpToDate" in status_text
            # it stays so: nothing starts on the stale copy (bounded observation)
            deadline = time.monotonic() + 8
            while time.monotonic() < deadline:
                assert watch.running_on() == [], "started on an Outdated copy"
                time.sleep(0.2)
            tl = ha.timeline(t0, victim)
            print(f"fenced: {tl.summary()}")
            assert any("waits" in line and "UpToDate" in line for line in tl.lines), tl.lines
            # the good copy's node is back: the guest is recovered there
            ha.power_on(victim)
            wait_until(lambda: ha.guest_node() == victim, 120, f"{ha.sid} back on {victim}")
            ha.wait_serving(120)
        assert watch.max_copies <= 1
        lost = seq.missing(ha.backing(victim))
        assert lost == [], f"acknowledged writes lost: {lost[:10]}"
    finally:
        lab.lab.link_up(survivor, "replication")
    ha.wait_in_sync()
