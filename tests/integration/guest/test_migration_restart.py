"""Live migrations that a binomed death cuts in half, settled when it is back.

One loopback 2-node + witness cluster (real etcd, binomed, QEMU with TCG); the
guests are diskless tiny images (kernel + initrd), migrated over the cluster
addresses with a bandwidth limit so that each migration is still running when
a daemon is SIGKILLed (QEMU runs on without its daemon, as it would after a
crash). What is checked, each time with the config (read by quorum) as the
only arbiter of where a guest may run, and never two running copies:
1. the source's daemon dies mid-migration: when it is back, the migration is
   cancelled, the guest runs on at the source with the same QEMU, the target's
   copy is gone and the `migrate` lock removed; a new migration then works;
2. the target's daemon dies mid-migration: the migration completes QEMU to QEMU,
   the source switches over (config to the target) but cannot have it resumed;
   when the target's daemon is back it resumes the guest there;
3. the source node dies for good (daemon killed, QEMU frozen so its TCP stream
   stays open, as with a power loss): the target's daemon, running all along,
   stops its incoming copy once the source is offline; when the source's daemon
   is back, it cancels the migration and its guest runs on.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator

import pytest

from tests.integration.ha.guests import (
    api,
    guest_cluster,
    kill_pid,
    qemu_pid,
)
from tests.integration.harness import Cluster, Node, wait_for

BWLIMIT_KIB = 1024    # the tiny guest's RAM then takes well over 10 s to send


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    yield from guest_cluster(tmp_path_factory, "migration-restart")


def running_vm(c: Cluster, name: str) -> int:
    """A guest created and started on n1; its vmid."""
    px = api(c["n2"])
    vmid = int(px.cluster.nextid.get())
    upid = px.nodes("n1").qemu.post(vmid=vmid, name=name, memory=128, cores=1,
                                    kernel="local:iso/vmlinuz", initrd="local:iso/initrd.gz",
                                    vga="serial0")
    wait_for(lambda: task_done(c["n2"], "n1", upid), 60, f"creation of VM {vmid}")
    upid = px.nodes("n1").qemu(vmid).status.start.post()
    wait_for(lambda: task_done(c["n2"], "n1", upid), 60, f"start of VM {vmid}")
    time.sleep(2)   # let the guest boot a little: more RAM in use, a longer migration
    return vmid


def task_done(via: Node, node: str, upid: str) -> dict | None:
    st = api(via).nodes(node).tasks(upid).status.get()
    return st if st["status"] == "stopped" else None


def task_log(via: Node, node: str, upid: str) -> str:
    return "\n".join(e["t"] for e in api(via).nodes(node).tasks(upid).log.get(limit=1000))


def resource(via: Node, vmid: int) -> dict:
    """The VM's `/cluster/resources` entry (from etcd: answers while its node is down)."""
    return next(r for r in api(via).cluster.resources.get(type="vm") if r["vmid"] == vmid)


def owner(via: Node, vmid: int) -> str | None:
    return resource(via, vmid)["node"]


def lock(via: Node, vmid: int) -> str | None:
    return resource(via, vmid).get("lock")


def qmpstatus(via: Node, node: str, vmid: int) -> str | None:
    return api(via).nodes(node).qemu(vmid).status.current.get().get("qmpstatus")


def cluster_log(node: Node) -> str:
    return "\n".join(e.get("msg", "") for e in node.json("cluster", "log"))


def start_slow_migration(c: Cluster, vmid: int, source: str, target: str,
                         bwlimit: int = BWLIMIT_KIB) -> str:
    """Start a live migration and wait until the target's QEMU receives; the UPID."""
    px = api(c[source])
    upid = px.nodes(source).qemu(vmid).migrate.post(target=target, online=1,
                                                    bwlimit=bwlimit)
    try:
        wait_for(lambda: qemu_pid(c[target], vmid) and "migration status: active"
                 in task_log(c[source], source, upid), 60, "the migration to be under way")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{task_log(c[source], source, upid)}") from None
    return upid


def test_source_daemon_dies_mid_migration(cluster: Cluster) -> None:
    c = cluster
    n1, n2 = c["n1"], c["n2"]
    vmid = running_vm(c, "mig-src-dies")
    try:
        pid = qemu_pid(n1, vmid)
        upid = start_slow_migration(c, vmid, "n1", "n2")
        n1.kill()
        assert qemu_pid(n1, vmid) == pid, "the source QEMU died with its daemon"
        assert lock(n2, vmid) == "migrate"
    except Exception:
        if not n1.running:
            n1.start()
        raise
    t0 = time.monotonic()
    n1.start()
    wait_for(lambda: not lock(n2, vmid), 60, "the lock to go")
    print(f"binomed back on n1 -> migration settled: {time.monotonic() - t0:.1f} s")
    wait_for(lambda: qemu_pid(n2, vmid) is None, 30, "the target's copy to go")
    assert qemu_pid(n1, vmid) == pid, "the guest was restarted, not kept running"
    assert qmpstatus(n2, "n1", vmid) == "running"
    assert owner(n2, vmid) == "n1"
    logs = cluster_log(n2)
    assert f"VM {vmid}: migration interrupted by a binomed restart on n1" in logs, logs
    assert task_done(n2, "n1", upid)["exitstatus"] != "OK"
    # nothing is left in the way: the same migration now goes through
    upid = api(n2).nodes("n1").qemu(vmid).migrate.post(target="n2", online=1)
    st = wait_for(lambda: task_done(n2, "n1", upid), 120, "the second migration")
    assert st["exitstatus"] == "OK", task_log(n2, "n1", upid)
    assert owner(n1, vmid) == "n2" and qmpstatus(n1, "n2", vmid) == "running"
    assert qemu_pid(n1, vmid) is None
    kill_pid(qemu_pid(n2, vmid))


def test_target_daemon_dies_mid_migration(cluster: Cluster) -> None:
    c = cluster
    n1, n2 = c["n1"], c["n2"]
    vmid = running_vm(c, "mig-dst-dies")
    try:
        # the kill follows at once, and then the whole RAM has to go through: 4x faster
        upid = start_slow_migration(c, vmid, "n1", "n2", bwlimit=4 * BWLIMIT_KIB)
        target_pid = qemu_pid(n2, vmid)
        n2.kill()
        # QEMU to QEMU the migration completes; n1 switches over, then cannot resume it
        st = wait_for(lambda: task_done(n1, "n1", upid), 240, "the migration task to end")
        text = task_log(n1, "n1", upid)
        assert st["exitstatus"] != "OK", text
        assert "could not be resumed there" in st["exitstatus"] + text, text
        assert owner(n1, vmid) == "n2"
        assert qemu_pid(n1, vmid) is None, "the source kept its copy after the switch-over"
        assert qemu_pid(n2, vmid) == target_pid
    finally:
        if not n2.running:
            t0 = time.monotonic()
            n2.start()
    wait_for(lambda: qmpstatus(n1, "n2", vmid) == "running", 60, "the guest resumed on n2")
    print(f"binomed back on n2 -> guest resumed: {time.monotonic() - t0:.1f} s")
    assert qemu_pid(n2, vmid) == target_pid and qemu_pid(n1, vmid) is None
    assert f"VM {vmid}: resumed on n2" in cluster_log(n1)
    kill_pid(qemu_pid(n2, vmid))


def test_source_node_lost_mid_migration(cluster: Cluster) -> None:
    c = cluster
    n1, n2 = c["n1"], c["n2"]
    vmid = running_vm(c, "mig-src-lost")
    pid = qemu_pid(n1, vmid)
    assert pid is not None
    try:
        start_slow_migration(c, vmid, "n1", "n2")
        # a power loss, as far as n2 can tell: the daemon gone, the QEMU silent but
        # its TCP stream open (a dead host sends no FIN), so n2's copy waits for more
        os.kill(pid, signal.SIGSTOP)
        t0 = time.monotonic()
        n1.kill()
        wait_for(lambda: qemu_pid(n2, vmid) is None, 60, "n2 to drop its incoming copy")
        print(f"source lost -> incoming copy on n2 stopped: {time.monotonic() - t0:.1f} s")
        assert "incoming migration from n1, which went offline" in cluster_log(n2)
        assert lock(n2, vmid) == "migrate"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
        if not n1.running:
            n1.start()
    wait_for(lambda: not lock(n2, vmid), 60, "the lock to go")
    wait_for(lambda: qmpstatus(n2, "n1", vmid) == "running", 30, "the guest running on n1")
    assert qemu_pid(n1, vmid) == pid and qemu_pid(n2, vmid) is None
    kill_pid(pid)
