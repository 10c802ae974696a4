"""A plain binomed restart (not a host shutdown) on real processes: the LRM's `restart` mode.

One loopback 2-node + witness cluster (real etcd, binomed, QEMU with TCG).
binomed gets SIGTERM while its host is not shutting down (the shutdown probe,
`BINOME_SHUTDOWN_PROBE`, answers "running": this machine has no systemd to
ask): its LRM has the CRM freeze the node's services, releases the watchdog
and the daemon exits; the guest keeps running, past the self-fence deadline
(3 s) and the lease TTL (5 s), and is neither killed nor started elsewhere.
When binomed is back, the service is `started` again with the same QEMU.

If the node dies while binomed is down (its remaining processes SIGKILLed),
lease expiry proves nothing (the watchdog was released): the guest is
recovered on the other node only after its fence device (an external agent
script here, the `agent` fence type) confirmed the power-off, after
`restart_grace` (30 s).

The same cluster carries issue 13's snapshot-across-failover case: an HA guest
whose disk is a qcow2 image on replicated storage writes A, is snapshotted by its
QEMU (QMP), writes B; its node dies (daemon, QEMU, watchdog supervisor and volume
engine killed) and the guest is recovered on n2, where it is rolled back
(qemu-img on n2's copy) and reads A again.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator

import pytest

from tests.integration.conftest import _nets, _require_tools
from tests.integration.ha.guests import (
    _pid,
    api,
    install_guest_image,
    kill_pid,
    qemu_pid,
    remove_ha_guest,
    service,
    sigterm_and_wait,
    stop_cluster_and_guests,
)
from tests.integration.harness import Cluster, Node, make_cluster, wait_for

GRACE = 30.0   # HaTimers.restart_grace (default)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    _require_tools()
    root = tmp_path_factory.mktemp("ha-restart")
    probe = root / "host-state"
    probe.write_text("running\n")   # the host is up: a SIGTERM is a daemon restart
    old = os.environ.get("BINOME_SHUTDOWN_PROBE")
    os.environ["BINOME_SHUTDOWN_PROBE"] = f"cat {probe}"
    c = make_cluster(root, next(_nets))
    try:
        install_guest_image(c)
        yield c
    finally:
        stop_cluster_and_guests(c)
        if old is None:
            os.environ.pop("BINOME_SHUTDOWN_PROBE", None)
        else:
            os.environ["BINOME_SHUTDOWN_PROBE"] = old


def ha_vm(c: Cluster, name: str) -> tuple[int, str]:
    """An HA guest requested `started`, running on n1."""
    px = api(c["n2"])
    vmid = int(px.cluster.nextid.get())
    upid = px.nodes("n1").qemu.post(vmid=vmid, name=name, memory=64, cores=1,
                                    kernel="local:iso/vmlinuz", initrd="local:iso/initrd.gz",
                                    vga="serial0")
    wait_for(lambda: px.nodes("n1").tasks(upid).status.get()["status"] == "stopped", 60,
             f"creation of VM {vmid}")
    sid = f"vm:{vmid}"
    c["n2"].cli("ha", "add", sid, "--state", "started")
    wait_for(lambda: qemu_pid(c["n1"], vmid) and service(c["n2"], sid).get("state") == "started",
             90, f"{sid} started on n1")
    return vmid, sid


def sigterm(node: Node) -> float:
    return sigterm_and_wait(node, 60)


def cluster_log(node: Node) -> list[str]:
    return [e.get("msg", "") for e in node.json("cluster", "log")]


def test_binomed_restart_keeps_the_guest_running(cluster: Cluster) -> None:
    began = time.monotonic()
    c = cluster
    n1, n2 = c["n1"], c["n2"]
    vmid, sid = ha_vm(c, "ha-restart")
    try:
        pid = qemu_pid(n1, vmid)
        took = sigterm(n1)
        print(f"binomed restart: SIGTERM -> exit {took:.1f} s")
        st = service(n2, sid)
        assert st.get("state") == "freeze" and st.get("node") == "n1", st
        # longer than the self-fence deadline (3 s) and the lease TTL (5 s): the guest
        # must neither be killed by the watchdog nor started on n2
        t_end = time.monotonic() + 8
        while time.monotonic() < t_end:
            assert qemu_pid(n1, vmid) == pid, "the guest died while binomed was down"
            assert qemu_pid(n2, vmid) is None, "a frozen guest was started on n2"
            time.sleep(0.2)
        st = service(n2, sid)
        assert st.get("state") == "freeze" and st.get("node") == "n1", st
        status = n2.cli("ha", "status").stdout
        print(status)
        assert f"service {sid} (n1, freeze)" in status
        assert "restart mode (binomed restarting, guests left running)" in status, status

        t0 = time.monotonic()
        n1.start()

        def back() -> bool:
            assert qemu_pid(n1, vmid) == pid, "the guest was restarted, not adopted"
            assert qemu_pid(n2, vmid) is None
            s = service(n2, sid)
            return s.get("state") == "started" and s.get("node") == "n1"   # it was freeze
        wait_for(back, 90, f"{sid} started again on n1", interval=0.2)
        print(f"binomed start -> {sid} started with the same QEMU: {time.monotonic() - t0:.1f} s")
        logs = "\n".join(cluster_log(n2))
        assert "binomed restarts on n1" in logs and "unfrozen" in logs
        time.sleep(3)   # a few rounds: nothing undoes it
        assert qemu_pid(n1, vmid) == pid and qemu_pid(n2, vmid) is None
    finally:
        remove_ha_guest(n1, n2, sid, vmid)
        print(f"test runtime {time.monotonic() - began:.1f} s")


def test_a_crash_of_binomed_is_bridged_and_the_guest_lives_on(cluster: Cluster) -> None:
    """kill -9 of binomed (its etcd member dies with it) and a restart at once, as
    systemd's Restart= would: the new daemon's lease bridge renews the old lease and
    moves the watchdog's deadline from its first instant, the monitor adopts the lease,
    the LRM takes the watchdog over. Without the bridge the self-fence supervisor
    killed the guest 3.8 s after the last renewal (and the CRM restarted it)."""
    began = time.monotonic()
    c = cluster
    n1, n2 = c["n1"], c["n2"]
    vmid, sid = ha_vm(c, "ha-crash")
    record = n1.state_dir / "run" / "ha-lease.json"
    try:
        pid = qemu_pid(n1, vmid)
        wait_for(record.exists, 10, "the lease record")
        lease = json.loads(record.read_text())["lease"]
        wall0 = time.time()
        t0 = time.monotonic()
        n1.kill()
        n1.start()
        print(f"kill -9 -> the new binomed's API answers: {time.monotonic() - t0:.1f} s")
        # past the self-fence deadline (3.8 s) and the lease TTL (5 s) from the kill
        while time.monotonic() < t0 + 10:
            assert qemu_pid(n1, vmid) == pid, "the guest was killed: the crash was not bridged"
            assert qemu_pid(n2, vmid) is None, "two copies"
            time.sleep(0.2)
        wait_for(lambda: service(n2, sid).get("state") == "started"
                 and service(n2, sid).get("node") == "n1", 30, f"{sid} started on n1")
        log = n1.log_path.read_text()
        assert f"node lease {lease:x} of the previous daemon adopted" in log
        assert "lease bridge stopped" in log and "the HA agent took over" in log
        since = "\n".join(e.get("msg", "") for e in n2.json("cluster", "log")
                          if e.get("time", 0) >= wall0 - 1)
        for word in ("watchdog fired", "fenc", "-> unknown", "recover"):
            assert word not in since, f"{word!r} after the crash:\n{since}"
        assert json.loads(record.read_text())["lease"] == lease
    finally:
        remove_ha_guest(n1, n2, sid, vmid)
        print(f"test runtime {time.monotonic() - began:.1f} s")


AGENT = """#!/bin/sh
# a fence agent (fence-agents' stdin protocol) for a node that is already dead:
# `off` records when it was asked; `status` then says off (exit 2)
action=
while IFS= read -r line; do
  case "$line" in action=*) action=${line#action=};; esac
done
case "$action" in
  off) date +%s.%N >> "@MARK@"; exit 0;;
  on) rm -f "@MARK@"; exit 0;;
  status|monitor) if [ -s "@MARK@" ]; then exit 2; fi; exit 0;;
esac
exit 0
"""


def test_node_dead_during_restart_is_recovered_only_after_a_device_fence(
        cluster: Cluster, tmp_path) -> None:
    began = time.monotonic()
    c = cluster
    n1, n2 = c["n1"], c["n2"]
    mark = tmp_path / "n1-powered-off"
    agent = tmp_path / "fence_test_agent"
    agent.write_text(AGENT.replace("@MARK@", str(mark)))
    agent.chmod(0o755)
    px = api(n2)
    # action off: this node died, no power-on brings it back (the reboot path: test_fencer)
    px.cluster.ha.fence("n1").post(type="agent", agent=str(agent), timeout=10, action="off")
    vmid, sid = ha_vm(c, "ha-restart-dies")
    try:
        took = sigterm(n1)
        assert service(n2, sid).get("state") == "freeze"
        # the node dies while binomed is down: everything left of it goes
        t_dead = time.monotonic()
        kill_pid(qemu_pid(n1, vmid))
        kill_pid(_pid(n1.state_dir / "run" / "ha-watchdog.pid"))
        print(f"binomed exited after {took:.1f} s; n1's remaining processes killed")

        def recovered() -> bool:
            assert qemu_pid(n1, vmid) is None
            if qemu_pid(n2, vmid):
                assert mark.exists(), f"{sid} recovered on n2 before the device fence"
                return True
            return False
        wait_for(recovered, GRACE + 60, f"{sid} recovered on n2", interval=0.1)
        t_run = time.time()
        fenced_at = float(mark.read_text().split()[0])
        elapsed = time.monotonic() - t_dead
        print(f"n1 dead -> {sid} running on n2: {elapsed:.1f} s "
              f"(device fence {t_run - fenced_at:.1f} s before)")
        assert fenced_at <= t_run
        assert elapsed >= GRACE - 5, "recovered before restart_grace"
        wait_for(lambda: service(n2, sid).get("state") == "started"
                 and service(n2, sid).get("node") == "n2", 60, f"{sid} started on n2")
        logs = "\n".join(cluster_log(n2))
        assert "did not come back from a binomed restart" in logs, logs
        assert "fenced (device" in logs, logs
        # n1 back: its binomed starts nothing (the config is on n2 now)
        n1.start()
        wait_for(n1.quorate, 60, "n1 quorate again")
        t_end = time.monotonic() + 5
        while time.monotonic() < t_end:
            assert qemu_pid(n1, vmid) is None, "two copies"
            time.sleep(0.2)
        assert qemu_pid(n2, vmid)
    finally:
        remove_ha_guest(n1, n2, sid, vmid, fence=True)
        print(f"test runtime {time.monotonic() - began:.1f} s")


def test_snapshot_survives_a_failover_of_a_guest_on_replicated_storage(
        cluster: Cluster) -> None:
    from binome.lab.image import build_image
    from tests.integration.guest.test_snapshots import Console, guest_read, guest_write
    from tests.integration.replica.test_daemon_volumes import kill_engine

    began = time.monotonic()
    c = cluster
    n1, n2 = c["n1"], c["n2"]
    px = api(n2)
    n2.cli("storage", "add", "repl", "--type", "replicated", "--content", "images")
    vmid = int(px.cluster.nextid.get())
    sid = f"vm:{vmid}"
    upid = px.nodes("n1").qemu.post(
        vmid=vmid, name="ha-snap", memory=128, cores=1, virtio0="repl:0.125,format=qcow2",
        kernel="local:iso/vmlinuz", initrd="local:iso/initrd.gz",
        append=build_image().cmdline(), vga="serial0")
    wait_for(lambda: px.nodes("n1").tasks(upid).status.get()["status"] == "stopped", 60,
             f"creation of VM {vmid}")
    assert px.nodes("n1").tasks(upid).status.get()["exitstatus"] == "OK"
    console = Console(n1.state_dir / "run" / "qemu" / f"{vmid}.serial")

    def task_ok(node: str, upid: str, timeout: float = 60) -> None:
        tasks = px.nodes(node).tasks(upid)
        wait_for(lambda: tasks.status.get()["status"] == "stopped", timeout, upid)
        status = tasks.status.get()["exitstatus"]
        log = "\n".join(e["t"] for e in tasks.log.get(limit=500))
        assert status == "OK", f"{status}\n{log}"

    try:
        n2.cli("ha", "add", sid, "--state", "started")
        wait_for(lambda: qemu_pid(n1, vmid) and service(n2, sid).get("state") == "started",
                 90, f"{sid} started on n1")
        guest_write(console, "DATA-A", "RAM-A")
        task_ok("n1", px.nodes("n1").qemu(vmid).snapshot.post(snapname="before"))
        guest_write(console, "DATA-B", "RAM-B")
        # with its RAM: the state goes into the replicated qcow2 image like the disks
        task_ok("n1", px.nodes("n1").qemu(vmid).snapshot.post(snapname="withram",
                                                                vmstate=1))
        guest_write(console, "DATA-C", "RAM-C")
        console.close()
        volume = f"vm-{vmid}-disk-0"

        # n1 dies: everything of it at once
        t_dead = time.monotonic()
        kill_pid(qemu_pid(n1, vmid))
        kill_pid(_pid(n1.state_dir / "run" / "ha-watchdog.pid"))
        n1.kill()
        kill_engine(n1)
        wait_for(lambda: qemu_pid(n2, vmid) is not None, 90, f"{sid} recovered on n2",
                 interval=0.2)
        print(f"n1 dead -> {sid} running on n2: {time.monotonic() - t_dead:.1f} s")
        q2 = px.nodes("n2").qemu(vmid)
        assert sorted(s["name"] for s in q2.snapshot.get()) == ["before", "current", "withram"]

        # the RAM snapshot taken on n1, rolled back on n2 while HA keeps the guest
        # started: the guest runs on from that instant (its RAM and its disk), once
        rolled = q2.snapshot("withram").rollback.post()
        task_ok("n2", rolled)
        console = Console(n2.state_dir / "run" / "qemu" / f"{vmid}.serial")
        assert guest_read(console) == ("DATA-B", "RAM-B")
        console.close()
        assert service(n2, sid).get("state") == "started" and qemu_pid(n1, vmid) is None
        pid = qemu_pid(n2, vmid)
        t_end = time.monotonic() + 5       # HA leaves it be: no restart, no second copy
        while time.monotonic() < t_end:
            assert qemu_pid(n2, vmid) == pid and service(n2, sid).get("state") == "started"
            time.sleep(0.2)

        # rolled back on n2 by its administrator: HA stops it, the rollback, HA starts it
        n2.cli("ha", "set", sid, "--state", "stopped")
        wait_for(lambda: qemu_pid(n2, vmid) is None, 60, f"{sid} stopped on n2")
        task_ok("n2", q2.snapshot("before").rollback.post())
        n2.cli("ha", "set", sid, "--state", "started")
        wait_for(lambda: qemu_pid(n2, vmid) is not None, 60, f"{sid} started on n2 again")
        console = Console(n2.state_dir / "run" / "qemu" / f"{vmid}.serial")
        assert guest_read(console) == ("DATA-A", "none")
        st = next(v for v in n2.json("volume", "list") if v["name"] == volume)
        assert st["role"] == "Primary", st
    finally:
        console.close()
        remove_ha_guest(n1, n2, sid, vmid)
        wait_for(n1.quorate, 60, "n1 quorate again")
        print(f"test runtime {time.monotonic() - began:.1f} s")
