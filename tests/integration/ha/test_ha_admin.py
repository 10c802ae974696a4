"""The HA admin surface on real processes: qm actions routed through the manager,
fence device configuration and `binome fence`, node maintenance, disarm/arm.

One loopback 2-node + witness cluster (real etcd, binomed, QEMU with TCG) is
shared by the tests of this module; each test creates its own guests and
leaves the cluster with no HA resource.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.ha.guests import (
    api,
    guest_cluster,
    kill_pid,
    qemu_pid,
    service,
    sigterm_and_wait,
    takes_services,
)
from tests.integration.harness import PASSWORD, Cluster, wait_for


@pytest.fixture(scope="module")
def ha_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    yield from guest_cluster(tmp_path_factory, "ha-admin")


def create_vm(px, node: str, name: str) -> int:
    vmid = int(px.cluster.nextid.get())
    upid = px.nodes(node).qemu.post(vmid=vmid, name=name, memory=64, cores=1,
                                    kernel="local:iso/vmlinuz", initrd="local:iso/initrd.gz",
                                    vga="serial0")
    wait_for(lambda: px.nodes(node).tasks(upid).status.get()["status"] == "stopped", 60,
             f"creation of VM {vmid}")
    return vmid


def task_done(px, node: str, upid: str, timeout: float = 180) -> dict[str, Any]:
    return wait_for(lambda: (st := px.nodes(node).tasks(upid).status.get())["status"]
                    == "stopped" and st, timeout, f"task {upid}")


def task_log(px, node: str, upid: str) -> str:
    return "\n".join(e["t"] for e in px.nodes(node).tasks(upid).log.get(limit=1000))


def test_qm_actions_of_an_ha_vm_go_through_the_manager(ha_cluster: Cluster) -> None:
    """start/stop/shutdown of an HA VM become hastart/hastop, the guest really follows."""
    import requests

    began = time.monotonic()
    c = ha_cluster
    n1, n2 = c["n1"], c["n2"]
    px = api(n2)
    vmid = create_vm(px, "n1", "ha-qm")
    plain = create_vm(px, "n1", "not-ha")
    sid = f"vm:{vmid}"
    try:
        n1.cli("ha", "add", sid, "--state", "stopped")
        assert px.nodes("n1").qemu(vmid).status.current.get()["ha"]["managed"] == 1
        assert px.nodes("n1").qemu(plain).status.current.get()["ha"] == {"managed": 0}

        # ---- start through the qm path (proxmoxer, via n2): an hastart task
        upid = px.nodes("n1").qemu(vmid).status.start.post()
        assert ":hastart:" in upid, upid
        st = task_done(px, "n1", upid)
        log = task_log(px, "n1", upid)
        print(log)
        assert st["exitstatus"] == "OK", log
        assert f"Requesting HA start for VM {vmid}" in log
        assert px.cluster.ha.resources(sid).get()["state"] == "started"
        assert qemu_pid(n1, vmid), "HA start reported OK but QEMU is not running"
        cur = px.nodes("n1").qemu(vmid).status.current.get()
        assert cur["status"] == "running"
        assert cur["ha"]["managed"] == 1 and cur["ha"]["state"] == "started"
        row = next(r for r in px.cluster.resources.get(type="vm") if r["vmid"] == vmid)
        assert row["hastate"] == "started" and isinstance(row["hastate"], str)
        plain_row = next(r for r in px.cluster.resources.get(type="vm") if r["vmid"] == plain)
        assert "hastate" not in plain_row
        # starting it again: PVE's text (bpg treats it as success)
        with pytest.raises(Exception, match="already running"):
            px.nodes("n1").qemu(vmid).status.start.post()

        # ---- stop through the CLI (`binome vm stop`): an hastop task, not undone
        t0 = time.monotonic()
        out = n1.cli("vm", "stop", str(vmid))
        print(out.stdout, out.stderr)
        assert ":hastop:" in out.stderr and f"Requesting HA stop for VM {vmid}" in out.stdout
        assert qemu_pid(n1, vmid) is None
        print(f"hastop task: {time.monotonic() - t0:.1f} s")
        assert service(n1, sid)["state"] == "stopped"
        assert px.cluster.ha.resources(sid).get()["state"] == "stopped"
        time.sleep(4)   # several manager and LRM rounds: a stop must not be undone
        assert qemu_pid(n1, vmid) is None, "the manager restarted a VM stopped through qm"
        with pytest.raises(Exception, match="not running"):
            px.nodes("n1").qemu(vmid).status.stop.post()

        # ---- start via the CLI, then `shutdown` via the API: hastop too
        out = n1.cli("vm", "start", str(vmid))
        assert ":hastart:" in out.stderr
        assert qemu_pid(n1, vmid)
        upid = px.nodes("n1").qemu(vmid).status.shutdown.post(forceStop=1)
        assert ":hastop:" in upid
        assert task_done(px, "n1", upid)["exitstatus"] == "OK"
        assert qemu_pid(n1, vmid) is None

        # ---- a non-HA VM keeps the direct path
        upid = px.nodes("n1").qemu(plain).status.start.post()
        assert ":qmstart:" in upid
        assert task_done(px, "n1", upid)["exitstatus"] == "OK"
        upid = px.nodes("n1").qemu(plain).status.stop.post()
        assert ":qmstop:" in upid
        assert task_done(px, "n1", upid)["exitstatus"] == "OK"

        # ---- bad input: 400 with per-parameter errors, nothing changed
        base = f"https://{n1.address}:8006/api2/json"
        s = requests.Session()
        s.verify = False
        s.trust_env = False  # a CA bundle in the environment would override verify=False
        tk = s.post(f"{base}/access/ticket",
                    data={"username": "admin@pve", "password": PASSWORD}).json()["data"]
        s.cookies.set("PVEAuthCookie", tk["ticket"])
        s.headers["CSRFPreventionToken"] = tk["CSRFPreventionToken"]
        r = s.post(f"{base}/nodes/n1/qemu/{vmid}/status/start", data={"timeout": "soon"})
        assert r.status_code == 400 and "timeout" in r.json()["errors"]
        r = s.post(f"{base}/nodes/n1/qemu/{vmid}/status/start", data={"bogus": "1"})
        assert r.status_code == 400 and "bogus" in r.json()["errors"]
        r = s.post(f"{base}/nodes/n2/qemu/{vmid}/status/start")
        assert r.status_code == 500 and "does not exist" in r.reason
        assert px.cluster.ha.resources(sid).get()["state"] == "stopped"
        assert qemu_pid(n1, vmid) is None

        # ---- destroy: refused while HA holds the VM, unless purge (PVE's text), which
        # takes the resource out of the HA configuration as well
        r = s.delete(f"{base}/nodes/n1/qemu/{vmid}")
        assert r.status_code == 500 and r.reason == (
            f"unable to remove VM {vmid} - used in HA resources and purge parameter not set.")
        assert px.nodes("n1").qemu(vmid).config.get()["name"] == "ha-qm"
        upid = px.nodes("n1").qemu(vmid).delete(purge=1)
        assert task_done(px, "n1", upid)["exitstatus"] == "OK"
        log = task_log(px, "n1", upid)
        assert f"NOTE: removed VM {vmid} from HA resource configuration." in log, log
        assert sid not in [r["sid"] for r in px.cluster.ha.resources.get()]
        assert vmid not in [r["vmid"] for r in px.cluster.resources.get(type="vm")]
    finally:
        n1.cli("ha", "remove", sid, check=False)
        for v in (vmid, plain):
            kill_pid(qemu_pid(n1, v))
        print(f"test runtime {time.monotonic() - began:.1f} s")


# ---------------------------------------------------------------- fence devices


def _free_udp_port(address: str) -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((address, 0))
        return s.getsockname()[1]


def _files_containing(root, needle: bytes) -> list[str]:
    """Every file under `root` holding `needle`, etcd's data directories excepted
    (etcd is where the secret is meant to be)."""
    hits = []
    for path in root.rglob("*"):
        if any(part == "etcd" for part in path.relative_to(root).parts) or not path.is_file():
            continue
        try:
            if needle in path.read_bytes():
                hits.append(str(path))
        except OSError:
            pass
    return hits


def test_fence_device_api_and_binome_fence(ha_cluster: Cluster, tmp_path) -> None:
    """Configure n2's IPMI device (a simulated BMC powering a dummy process tree),
    `fence test` reads "on", `fence` powers it off; bad input and a wrong password give
    clear errors; the password is never shown or logged."""
    import os
    import secrets
    import signal
    import subprocess

    from proxmoxer.core import ResourceException

    from binome.lab.bmc import netns_pids, start_bmc

    began = time.monotonic()
    c = ha_cluster
    n1 = c["n1"]
    px = api(n1)
    password = "Bmc-" + secrets.token_hex(12)
    ns = f"bnh3f{os.getpid() % 100000}"
    bmc_ip = f"127.{c.net}.0.20"
    port = _free_udp_port(bmc_ip)
    machine = None
    bmc = None
    pwfile = tmp_path / "fence.pw"
    pwfile.write_text(password + "\n")
    pwfile.chmod(0o600)
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        # the "machine" n2's BMC powers: a dummy process tree in a namespace of its own
        machine = subprocess.Popen(["ip", "netns", "exec", ns, "sh", "-c",
                                    "sleep 1000 & sleep 1000 & wait"],
                                   start_new_session=True, stdin=subprocess.DEVNULL)
        wait_for(lambda: len(netns_pids(ns)) >= 3, 10, "the dummy machine's processes")
        bmc = start_bmc(netns=ns, address=bmc_ip, port=port, user="admin", password=password,
                        power_on_argv=["sh", "-c", "sleep 1000 & wait"],
                        workdir=tmp_path / "bmc")

        # ---- bad input: 400 per parameter, nothing stored
        def bad(node: str, **params) -> dict:
            with pytest.raises(ResourceException) as info:
                px.cluster.ha.fence(node).post(**params)
            assert info.value.status_code == 400, info.value
            assert px.cluster.ha.fence.get() == []
            return info.value.errors or {}

        assert "password" in bad("n2", type="ipmi", ip=bmc_ip, username="admin")
        for address in ("10.0.0.300", "bmc_1.example", "-bmc"):
            assert "ip" in bad("n2", type="ipmi", ip=address, username="admin",
                               password=password)
        assert "agent" in bad("n2", type="agent", agent="fence_no_such_agent")
        assert "options" in bad("n2", type="agent", agent="/bin/true", options="action=off")
        assert "agent" in bad("n2", type="ipmi", ip=bmc_ip, username="admin",
                              password=password, agent="fence_ipmilan")
        assert "type" in bad("n2", ip=bmc_ip)
        assert "action" in bad("n2", type="ipmi", ip=bmc_ip, username="admin",
                               password=password, action="cycle")
        with pytest.raises(ResourceException, match="no such cluster node"):
            px.cluster.ha.fence("n9").post(type="ipmi", ip=bmc_ip, username="a",
                                           password=password)

        # ---- configure through the CLI (password from a file), read back without it
        n1.cli("fence", "add", "n2", "--type", "ipmi", "--ip", bmc_ip, "--port", str(port),
               "--username", "admin", "--password-file", str(pwfile), "--timeout", "5")
        cfg = px.cluster.ha.fence("n2").get()
        assert cfg == {"node": "n2", "type": "ipmi", "ip": bmc_ip, "port": port,
                       "username": "admin", "timeout": 5.0, "action": "reboot",
                       "has_password": 1}, cfg
        listed = px.cluster.ha.fence.get()
        assert [e["node"] for e in listed] == ["n2"] and "password" not in listed[0]
        dup = n1.cli("fence", "add", "n2", "--type", "agent", "--agent", "/bin/true",
                     check=False)
        assert dup.returncode != 0 and "already has a fence device" in dup.stderr

        # ---- fence test: the device answers, nothing changes
        out = n1.cli("fence", "test", "n2").stdout
        print(out)
        assert "n2: power on" in out
        assert len(netns_pids(ns)) >= 3

        # ---- a wrong password: a clear error, nothing powered off
        wrong = tmp_path / "wrong.pw"
        wrong.write_text("not-the-password\n")
        wrong.chmod(0o600)
        n1.cli("fence", "set", "n2", "--password-file", str(wrong))
        res = n1.json("fence", "test", "n2")
        print(res)
        assert res["ok"] == 0 and res["state"] is None and res["detail"], res
        out = n1.cli("fence", "node", "n2", "--yes", check=False)
        print(out.stdout, out.stderr)
        assert out.returncode != 0 and "fence of n2 failed" in out.stdout
        assert len(netns_pids(ns)) >= 3
        n1.cli("fence", "set", "n2", "--password-file", str(pwfile))
        assert px.cluster.ha.fence("n2").get()["has_password"] == 1

        # ---- `binome fence NODE`: refuses without --yes, never the local node
        out = n1.cli("fence", "n2", check=False)
        assert out.returncode != 0 and "refusing without --yes" in out.stderr
        out = n1.cli("fence", "n1", "--yes", check=False)
        assert out.returncode != 0 and "refusing to fence the local node" in out.stderr
        assert len(netns_pids(ns)) >= 3
        t0 = time.monotonic()
        out = n1.cli("fence", "n2", "--yes")
        print(out.stdout, out.stderr, f"fence: {time.monotonic() - t0:.2f} s")
        assert ":hafence:n2:" in out.stderr and "off: ok, power off" in out.stdout
        assert netns_pids(ns) == [], "the BMC's machine still runs after a confirmed fence"
        assert "n2: power off" in n1.cli("fence", "test", "n2").stdout
        wait_for(lambda: any("node n2 fenced: power off confirmed" in e["msg"]
                             for e in n1.json("cluster", "log")), 10, "the cluster log entry")

        # ---- `binome fence NODE --power-on`: the BMC runs the machine again
        out = n1.cli("fence", "n2", "--power-on")
        print(out.stdout, out.stderr)
        assert ":hapoweron:n2:" in out.stderr and "on: ok, power on" in out.stdout
        wait_for(lambda: len(netns_pids(ns)) >= 1, 10, "the machine running again")
        assert "n2: power on" in n1.cli("fence", "test", "n2").stdout

        # ---- the secret is nowhere: API answers, cluster log, daemon and task logs
        for answer in (px.cluster.ha.fence.get(), px.cluster.ha.fence("n2").get(),
                       px.cluster.ha.status.manager_status.get(), n1.json("cluster", "log"),
                       px.cluster.ha.status.current.get()):
            assert password not in str(answer)
        leaks = _files_containing(c.root, password.encode())
        assert leaks == [], f"the fence password leaked into {leaks}"
        n1.cli("fence", "remove", "n2")
        assert px.cluster.ha.fence.get() == []
    finally:
        n1.cli("fence", "remove", "n2", check=False)
        if bmc is not None:
            bmc.stop()
        for pid in netns_pids(ns):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if machine is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(machine.pid, signal.SIGKILL)
            machine.wait(10)
        subprocess.run(["ip", "netns", "delete", ns], check=False)
        print(f"test runtime {time.monotonic() - began:.1f} s")


# ---------------------------------------------------------------- maintenance, disarm/arm


def test_node_maintenance_evacuates_and_brings_back(ha_cluster: Cluster) -> None:
    """`binome ha node-maintenance enable n1` live-migrates the HA VM to n2 and
    releases n1's watchdog; `disable` brings it back; disarm (upstream's API path) and
    arm (the CLI)."""
    from proxmoxer import ResourceException

    began = time.monotonic()
    c = ha_cluster
    n1, n2 = c["n1"], c["n2"]
    px = api(n1)
    vmid = create_vm(px, "n1", "ha-maint")
    sid = f"vm:{vmid}"
    try:
        n1.cli("ha", "add", sid, "--state", "started")
        wait_for(lambda: qemu_pid(n1, vmid) and service(n1, sid).get("state") == "started",
                 60, f"{sid} started on n1")
        # the shutdown policy (PVE's datacenter option `ha`)
        assert n1.json("cluster", "options") == {}
        n1.cli("cluster", "set-options", "--ha", "shutdown_policy=freeze")
        assert px.cluster.options.get() == {"ha": "shutdown_policy=freeze"}
        out = n1.cli("cluster", "set-options", "--ha", "shutdown_policy=never", check=False)
        assert out.returncode == 2 and "ha:" in out.stderr
        assert px.cluster.options.get() == {"ha": "shutdown_policy=freeze"}
        n1.cli("cluster", "set-options", "--delete", "ha")
        assert px.cluster.options.get() == {}
        # bad input: unknown node, the witness, a bad disarm mode
        for args, text in ((("ha", "node-maintenance", "enable", "n9"), "no such cluster node"),
                           (("ha", "node-maintenance", "enable", "w"), "is a witness"),
                           (("ha", "crm-command", "disarm-ha", "sometimes"), "mode")):
            out = n1.cli(*args, check=False)
            assert out.returncode == 2 and text in out.stderr, out.stderr

        t0 = time.monotonic()
        n1.cli("ha", "node-maintenance", "enable", "n1")
        wait_for(lambda: qemu_pid(n2, vmid) and service(n1, sid).get("node") == "n2"
                 and service(n1, sid).get("state") == "started", 120,
                 f"{sid} evacuated to n2", interval=0.5)
        print(f"maintenance enable -> {sid} started on n2: {time.monotonic() - t0:.1f} s")
        assert qemu_pid(n1, vmid) is None
        lrm = next(e for e in n1.json("ha", "status") if e["id"] == "lrm:n1")
        wait_for(lambda: next(e for e in n1.json("ha", "status") if e["id"] == "lrm:n1")
                 ["state"] == "maintenance", 20, "n1's LRM in maintenance")
        lrm = next(e for e in n1.json("ha", "status") if e["id"] == "lrm:n1")
        assert lrm["watchdog"] == 0 and "maintenance" in lrm["status"], lrm
        assert px.nodes("n2").qemu(vmid).status.current.get()["ha"]["state"] == "started"

        t0 = time.monotonic()
        n1.cli("ha", "node-maintenance", "disable", "n1")
        wait_for(lambda: qemu_pid(n1, vmid) and service(n1, sid).get("node") == "n1"
                 and service(n1, sid).get("state") == "started", 120,
                 f"{sid} back on n1", interval=0.5)
        print(f"maintenance disable -> {sid} back on n1: {time.monotonic() - t0:.1f} s")
        assert qemu_pid(n2, vmid) is None

        # ---- disarm (freeze) and arm again; disarm through upstream's path (PVE 9)
        with pytest.raises(ResourceException) as bad:
            px.cluster.ha.status("disarm-ha").post(**{"resource-mode": "sometimes"})
        assert bad.value.status_code == 400 and "resource-mode" in bad.value.errors
        px.cluster.ha.status("disarm-ha").post(**{"resource-mode": "freeze"})
        wait_for(lambda: service(n1, sid).get("state") == "freeze", 20, f"{sid} frozen")
        wait_for(lambda: all(e["watchdog"] == 0 for e in n1.json("ha", "status")
                             if e["type"] == "lrm"), 20, "watchdogs released")
        master = next(e for e in n1.json("ha", "status") if e["type"] == "master")
        assert master.get("disarm") == "freeze" and "disarmed" in master["status"]
        assert qemu_pid(n1, vmid), "a freeze disarm must leave the guest running"
        n1.cli("ha", "crm-command", "arm-ha")
        wait_for(lambda: service(n1, sid).get("state") == "started", 30, f"{sid} started again")
        wait_for(lambda: next(e for e in n1.json("ha", "status") if e["id"] == "lrm:n1")
                 ["watchdog"] == 1, 20, "n1's watchdog armed again")
        assert qemu_pid(n1, vmid)
    finally:
        n1.cli("ha", "crm-command", "arm-ha", check=False)
        n1.cli("ha", "node-maintenance", "disable", "n1", check=False)
        n1.cli("ha", "remove", sid, check=False)
        for node in (n1, n2):
            kill_pid(qemu_pid(node, vmid))
        print(f"test runtime {time.monotonic() - began:.1f} s")


# ---------------------------------------------------------------- bulk actions


def bulk_task(px, node: str, upid: str) -> str:
    st = task_done(px, node, upid, 120)
    log = task_log(px, node, upid)
    print(log)
    assert st["exitstatus"] == "OK", log
    return log


def test_node_bulk_start_stop_migrate(ha_cluster: Cluster) -> None:
    """startall/stopall/migrateall (PVE's Nodes.pm): onboot and `startup` order, `vms`
    and `force`, the HA guest through the manager; bad input refused, nothing changed."""
    from proxmoxer import ResourceException

    began = time.monotonic()
    c = ha_cluster
    n1, n2 = c["n1"], c["n2"]
    px = api(n2)                       # through n2: proxied to n1 as PVE does
    a = create_vm(px, "n1", "bulk-a")
    b = create_vm(px, "n1", "bulk-b")
    h = create_vm(px, "n1", "bulk-ha")
    sid = f"vm:{h}"
    vms = f"{a},{b},{h}"
    try:
        # `up=0`: no pause after each start (PVE waits 3 s by default)
        px.nodes("n1").qemu(a).config.put(onboot=1, startup="order=1,up=0")
        px.nodes("n1").qemu(b).config.put(startup="order=2,up=0")
        px.nodes("n1").qemu(h).config.put(onboot=1, startup="up=0")
        n1.cli("ha", "add", sid, "--state", "stopped")

        # ---- bad input: PVE's 400 naming the parameter; nothing started or moved
        for call, field in ((lambda: px.nodes("n1").startall.post(vms="100,99"), "vms"),
                            (lambda: px.nodes("n1").stopall.post(timeout=-1), "timeout"),
                            (lambda: px.nodes("n1").migrateall.post(target="n1"), "target"),
                            (lambda: px.nodes("n1").migrateall.post(target="n9"), "target"),
                            (lambda: px.nodes("n1").migrateall.post(target="w"), "target"),
                            (lambda: px.nodes("n1").status.post(command="halt"), "command")):
            with pytest.raises(ResourceException) as bad:
                call()
            assert bad.value.status_code == 400 and field in bad.value.errors, bad.value
        assert not any(qemu_pid(node, v) for node in (n1, n2) for v in (a, b, h))
        assert {a, b, h} <= {vm["vmid"] for vm in px.nodes("n1").qemu.get()}

        # ---- startall: onboot guests only, not the HA one (the manager's business)
        log = bulk_task(px, "n1", px.nodes("n1").startall.post())
        assert f"Starting VM {a}" in log and f"VM {b}" not in log and f"VM {h}" not in log
        assert qemu_pid(n1, a) and not qemu_pid(n1, b) and not qemu_pid(n1, h)
        # force + vms: a guest without onboot, and the HA guest through the manager
        log = bulk_task(px, "n1", px.nodes("n1").startall.post(force=1, vms=f"{b},{h}"))
        assert f"Starting VM {b}" in log and f"Starting VM {h}" in log
        assert ":hastart:" in "".join(t["upid"] for t in px.nodes("n1").tasks.get(
            typefilter="hastart", vmid=h))
        wait_for(lambda: qemu_pid(n1, b) and qemu_pid(n1, h)
                 and service(n1, sid).get("state") == "started", 60, "b and the HA guest up")

        # ---- stopall: reverse startup order (no order = last, so stopped first)
        log = bulk_task(px, "n1", px.nodes("n1").stopall.post(vms=vms, timeout=3))
        order = [log.index(f"Stopping VM {v} ") for v in (h, b, a)]
        assert order == sorted(order), log
        wait_for(lambda: not any(qemu_pid(n1, v) for v in (a, b, h)), 30, "all stopped")
        assert px.cluster.ha.resources(sid).get()["state"] == "stopped"

        # ---- migrateall: every guest (the HA one by the manager) to n2
        log = bulk_task(px, "n1", px.nodes("n1").migrateall.post(
            target="n2", vms=vms, **{"max-workers": 2}))
        assert all(f"Migrating VM {v}" in log for v in (a, b, h)), log
        wait_for(lambda: {a, b, h} <= {vm["vmid"] for vm in px.nodes("n2").qemu.get()}, 60,
                 "the three guests on n2")
        wait_for(lambda: service(n1, sid).get("node") == "n2", 30, "the HA guest on n2")
        # CLI: the same verbs (`binome node ...`), here with nothing left to do
        out = n2.cli("node", "migrateall", "n1", "n2", "--vms", vms, check=False)
        assert out.returncode == 1 and "no virtual guests matched" in out.stdout, out
    finally:
        n1.cli("ha", "remove", sid, check=False)
        for node in (n1, n2):
            for v in (a, b, h):
                kill_pid(qemu_pid(node, v))
        print(f"test runtime {time.monotonic() - began:.1f} s")


# ---------------------------------------------------------------- host shutdown


def test_host_shutdown_policies(
        ha_cluster: Cluster, tmp_path, monkeypatch) -> None:
    """binomed stopped by SIGTERM while the host reboots (policy `conditional`): the
    guest is frozen, stopped, and not recovered elsewhere; it starts again where it was
    once the node is back. While the host powers off: stopped, lease released, and
    recovered on the other node at once. With policy `migrate`: live-migrated away
    first, back when the node returns. The host's state comes from the probe command
    (no systemd on this machine: see binome.ha.agent.shutdown)."""
    began = time.monotonic()
    c = ha_cluster
    n1, n2 = c["n1"], c["n2"]
    answer = tmp_path / "host-state"
    answer.write_text("")
    monkeypatch.setenv("BINOME_SHUTDOWN_PROBE", f"cat {answer}")
    # the host power command of `POST /nodes/n1/status`: a probe that records the ask
    asked = tmp_path / "power-asked"
    monkeypatch.setenv("BINOME_HOST_POWER_COMMAND", f"sh -c 'echo \"$0\" >> {asked}'")
    vmid = None
    sid = ""
    try:
        # a plain daemon restart (probe says nothing) changes nothing
        took = sigterm_and_wait(n1, 120)
        print(f"plain restart: binomed stopped in {took:.1f} s")
        n1.start()
        wait_for(n1.quorate, 60, "n1 quorate again")
        # quorate is not yet online for the HA manager (its lease comes with its HA
        # agent): a service asked on n1 before that is recovered elsewhere, rightly
        wait_for(lambda: takes_services(n2, "n1"), 60, "n1 online and active for the CRM")
        px = api(n2)
        vmid = create_vm(px, "n1", "ha-shutdown")
        sid = f"vm:{vmid}"
        n2.cli("ha", "add", sid, "--state", "started")
        wait_for(lambda: qemu_pid(n1, vmid) and service(n2, sid).get("state") == "started",
                 90, f"{sid} started on n1")

        # ---- reboot through the API (PVE's POST /nodes/{node}/status): binomed applies
        # the policy (freeze, stop), then asks the host (here the recording probe); the
        # SIGTERM systemd then sends finds the policy applied. Not recovered elsewhere.
        t0 = time.monotonic()
        assert px.nodes("n1").status.post(command="reboot") is None
        upid = wait_for(lambda: next((t["upid"] for t in px.nodes("n1").tasks.get(
            typefilter="nodereboot", source="all")), None), 10, "the nodereboot task")
        st = task_done(px, "n1", upid, 120)
        log = task_log(px, "n1", upid)
        print(log)
        assert st["exitstatus"] == "OK", log
        assert "HA shutdown policy applied" in log and "asking the host to reboot" in log
        assert asked.read_text() == "reboot\n"
        assert qemu_pid(n1, vmid) is None, "the guest outlived its node's reboot"
        wait_for(lambda: service(n2, sid).get("state") == "freeze", 10, f"{sid} frozen")
        took = sigterm_and_wait(n1, 120)
        print(f"reboot: policy applied through the API and binomed exited "
              f"{time.monotonic() - t0:.1f} s after the request ({took:.1f} s for the stop)")
        assert service(n2, sid).get("state") == "freeze", service(n2, sid)
        # longer than lease_ttl + fence_delay + rounds: a lost node's started service
        # would be fenced and recovered by now; a frozen one must wait for its node
        time.sleep(12)
        assert qemu_pid(n2, vmid) is None, "a frozen service was recovered elsewhere"
        st = service(n2, sid)
        assert st.get("state") == "freeze" and st.get("node") == "n1", st
        answer.write_text("")
        t0 = time.monotonic()
        n1.start()
        wait_for(lambda: qemu_pid(n1, vmid) and service(n2, sid).get("state") == "started"
                 and service(n2, sid).get("node") == "n1", 120, f"{sid} unfrozen on n1")
        print(f"reboot: n1 started -> {sid} running on n1 again: "
              f"{time.monotonic() - t0:.1f} s")

        # ---- power-off: stop, release, recovered on n2 at once (clean shutdown proof)
        answer.write_text("poweroff\n")
        t0 = time.monotonic()
        took = sigterm_and_wait(n1, 120)
        gone = time.monotonic()
        assert qemu_pid(n1, vmid) is None
        wait_for(lambda: qemu_pid(n2, vmid), 60, f"{sid} recovered on n2", interval=0.1)
        print(f"power-off: binomed exited after {took:.1f} s; {sid} running on n2 "
              f"{time.monotonic() - gone:.1f} s later")
        wait_for(lambda: service(n2, sid).get("state") == "started"
                 and service(n2, sid).get("node") == "n2", 30, f"{sid} started on n2")
        print(f"power-off total: {time.monotonic() - t0:.1f} s")

        # ---- policy `migrate`: live-migrated away before the node goes, back after
        answer.write_text("")
        n1.start()
        wait_for(lambda: takes_services(n2, "n1"), 60, "n1 online and active for the CRM")
        n2.cli("ha", "migrate", sid, "n1")
        wait_for(lambda: qemu_pid(n1, vmid) and service(n2, sid).get("node") == "n1"
                 and service(n2, sid).get("state") == "started", 120, f"{sid} back on n1")
        n2.cli("cluster", "set-options", "--ha", "shutdown_policy=migrate")
        answer.write_text("reboot\n")
        took = sigterm_and_wait(n1, 120)
        print(f"migrate policy: binomed exited after {took:.1f} s")
        assert qemu_pid(n2, vmid), f"{sid} was not migrated away before n1 went down"
        st = service(n2, sid)
        assert st.get("node") == "n2" and st.get("state") == "started", st
        answer.write_text("")
        t0 = time.monotonic()
        n1.start()
        wait_for(lambda: qemu_pid(n1, vmid) and service(n2, sid).get("node") == "n1"
                 and service(n2, sid).get("state") == "started", 120,
                 f"{sid} migrated back to n1")
        print(f"migrate policy: n1 started -> {sid} back on n1: "
              f"{time.monotonic() - t0:.1f} s")
    finally:
        answer.write_text("")
        if not n1.running:
            n1.start()
        n2.cli("cluster", "set-options", "--delete", "ha", check=False)
        if sid:
            n2.cli("ha", "remove", sid, check=False)
        if vmid is not None:
            for node in (n1, n2):
                kill_pid(qemu_pid(node, vmid))
        print(f"test runtime {time.monotonic() - began:.1f} s")


# ---------------------------------------------------------------- PVE 9 rules


def test_ha_rules_api_round_trip_and_placement(ha_cluster: Cluster) -> None:
    """`/cluster/ha/rules` through proxmoxer (PVE 9's shapes, refusals and digests), a
    group shown as its `ha-group-<g>` rule, `binome ha rules ...`; and the CRM really
    keeps two VMs of a negative rule apart: added on n1 together, one starts on n2."""
    from proxmoxer import ResourceException

    began = time.monotonic()
    c = ha_cluster
    n1, n2 = c["n1"], c["n2"]
    px = api(n2)
    a, b = create_vm(px, "n1", "rule-a"), create_vm(px, "n1", "rule-b")
    sa, sb = f"vm:{a}", f"vm:{b}"
    pair = ",".join(sorted((sa, sb)))
    try:
        for sid in (sa, sb):
            px.cluster.ha.resources.post(sid=sid, state="stopped")
        assert px.cluster.ha.rules.get() == []

        # ---- bad input: PVE's 400 per parameter or its refusal; nothing stored
        for kw, status, text in (
                ({"rule": "1x", "type": "node-affinity", "resources": sa, "nodes": "n1"},
                 400, "rule"),
                ({"rule": "pin", "type": "node-affinity", "resources": sa}, 400, "nodes"),
                ({"rule": "pin", "type": "colocation", "resources": sa}, 400, "type"),
                ({"rule": "pin", "type": "node-affinity", "resources": sa, "nodes": "n1,n9"},
                 500, "cannot use non-existent node(s) n9."),
                ({"rule": "pin", "type": "node-affinity", "resources": "vm:999999",
                  "nodes": "n1"}, 500, "cannot use unmanaged resource(s) vm:999999."),
                ({"rule": "many", "type": "resource-affinity", "resources": f"{pair},vm:{b + 1}",
                  "affinity": "negative"}, 500, "cannot use unmanaged resource(s)")):
            with pytest.raises(ResourceException) as bad:
                px.cluster.ha.rules.post(**kw)
            assert bad.value.status_code == status, (kw, bad.value)
            if status == 400:
                assert text in bad.value.errors, bad.value.errors
            else:
                assert text in str(bad.value), bad.value
        assert px.cluster.ha.rules.get() == []

        # ---- create, list, read: PVE 9's fields
        px.cluster.ha.rules.post(rule="apart", type="resource-affinity", resources=pair,
                                 affinity="negative", comment="keep them apart")
        px.cluster.ha.rules.post(rule="pin-a", type="node-affinity", resources=sa,
                                 nodes="n1,n2", strict=1)
        rules = px.cluster.ha.rules.get()
        assert [r["rule"] for r in rules] == ["apart", "pin-a"]
        apart = px.cluster.ha.rules("apart").get()
        assert {k: apart[k] for k in ("rule", "type", "resources", "affinity", "comment",
                                      "order")} == {
            "rule": "apart", "type": "resource-affinity", "resources": pair,
            "affinity": "negative", "comment": "keep them apart", "order": 1}
        assert "errors" not in apart and len(apart["digest"]) == 40
        pin = px.cluster.ha.rules("pin-a").get()
        assert pin["nodes"] == "n1,n2" and pin["strict"] == 1
        assert [r["rule"] for r in px.cluster.ha.rules.get(type="node-affinity")] == ["pin-a"]
        assert [r["rule"] for r in px.cluster.ha.rules.get(resource=sb)] == ["apart"]

        # a conflicting rule: "Rule '...' is invalid." with the reason per property
        with pytest.raises(ResourceException) as bad:
            px.cluster.ha.rules.post(rule="together", type="resource-affinity",
                                     resources=pair, affinity="positive")
        assert bad.value.status_code == 400 and "is invalid" in str(bad.value)
        assert bad.value.errors == {"resources": "rule shares two or more resources with a "
                                                 "negative resource affinity rule"}
        with pytest.raises(ResourceException) as bad:
            px.cluster.ha.rules.post(rule="pin-again", type="node-affinity", resources=sa,
                                     nodes="n2")
        assert bad.value.errors == {
            "resources": f"resource '{sa}' is already used in another node affinity rule"}

        # update with the digest; a stale digest is refused
        px.cluster.ha.rules("pin-a").put(type="node-affinity", comment="pinned",
                                         digest=pin["digest"])
        assert px.cluster.ha.rules("pin-a").get()["comment"] == "pinned"
        with pytest.raises(ResourceException) as bad:
            px.cluster.ha.rules("pin-a").put(type="node-affinity", comment="x",
                                             digest=pin["digest"])
        assert "detected modified configuration" in str(bad.value)
        # priorities for a resource in a resource affinity rule: upstream's refusal
        with pytest.raises(ResourceException) as bad:
            px.cluster.ha.rules("pin-a").put(type="node-affinity", nodes="n1:2,n2:1")
        assert bad.value.status_code == 400 and "multiple priorities" in \
            bad.value.errors["resources"], bad.value.errors
        assert px.cluster.ha.rules("pin-a").get()["nodes"] == "n1,n2"   # nothing changed
        n1.cli("ha", "rules", "remove", "pin-a")

        # ---- a group is shown (and checked) as its node-affinity rule
        px.cluster.ha.groups.post(group="g", nodes="n2:1")
        px.cluster.ha.resources(sb).put(group="g")
        shown = {r["rule"]: r for r in px.cluster.ha.rules.get()}
        assert shown["ha-group-g"]["nodes"] == "n2:1" and shown["ha-group-g"]["resources"] == sb
        assert shown["ha-group-g"]["comment"] == "Generated from HA group 'g'."
        px.cluster.ha.resources(sb).put(delete="group")
        px.cluster.ha.groups("g").delete()

        # ---- the CLI (`ha-manager rules ...`)
        n1.cli("ha", "rules", "set", "resource-affinity", "apart", "--comment", "spread")
        out = n1.cli("ha", "rules", "config").stdout
        assert "apart" in out and "in use" in out and "spread" in out, out

        # ---- the CRM: both started from n1, they end up on separate nodes, for real
        t0 = time.monotonic()
        for sid in (sa, sb):
            px.cluster.ha.resources(sid).put(state="started")

        def apart_and_running():
            nodes = {service(n1, s).get("node") for s in (sa, sb)}
            return (nodes == {"n1", "n2"}
                    and all(service(n1, s).get("state") == "started" for s in (sa, sb))
                    and all(qemu_pid(c[service(n1, s)["node"]], v) for s, v in ((sa, a), (sb, b))))
        wait_for(apart_and_running, 120, "the two VMs running on separate nodes", interval=0.5)
        print(f"negative rule: started apart in {time.monotonic() - t0:.1f} s")
        # the one on n2 never ran on n1 as well
        on_n2 = a if service(n1, sa)["node"] == "n2" else b
        assert qemu_pid(n1, on_n2) is None

        # PVE 9's resource option failback (default 1)
        assert px.cluster.ha.resources(sa).get()["failback"] == 1
        px.cluster.ha.resources(sa).put(failback=0)
        assert px.cluster.ha.resources(sa).get()["failback"] == 0

        # ---- removing a resource purges it from the rule (upstream's default purge=1);
        # the rule, left with one resource, is shown with upstream's error
        px.cluster.ha.resources(sa).delete()
        left = px.cluster.ha.rules("apart").get()
        assert left["resources"] == sb
        assert left["errors"] == {"resources": [
            "rule is ineffective as there are less than two resources"]}
        px.cluster.ha.resources(sb).delete()
        assert px.cluster.ha.rules.get() == []
    finally:
        for sid in (sa, sb):
            n1.cli("ha", "remove", sid, check=False)
        n1.cli("ha", "rules", "remove", "apart", check=False)
        n1.cli("ha", "rules", "remove", "pin-a", check=False)
        n1.cli("ha", "groupremove", "g", check=False)
        for node in (n1, n2):
            for vmid in (a, b):
                kill_pid(qemu_pid(node, vmid))
        print(f"test runtime {time.monotonic() - began:.1f} s")
