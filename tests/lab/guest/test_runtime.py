"""The guest runtime with real QEMU/TCG guests on a bridge in a node namespace.

The tests up to the graceful shutdown share VM 100 (one boot), in file order:
each leaves it running and answering. The rest start guests of their own.
Guests are reached over HTTP from the root namespace through the lab bridge
and the node's ``vmbr0``; the runtime runs in an agent process inside the node
namespace, so "kill the daemon" is a real SIGKILL of that process.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from binome.guest.console import open_serial
from binome.guest.process import is_alive
from tests.lab.guest.conftest import SharedGuest
from tests.lab.guest.harness import (
    AgentError,
    Node,
    guest_ip,
    http_get,
    wait_for,
    wait_http,
)

BOOT = 60.0  # generous: CI has 2 cores and TCG


def _status(node: Node, vmid: int) -> dict:
    return node.agent.call("status", vmid=vmid)


def _guest_uptime(ip: str) -> float:
    got = http_get(ip, "/cgi-bin/status", timeout=2.0)
    assert got is not None and got[0] == 200, got
    return float(json.loads(got[1])["uptime"])


# -- the shared guest --------------------------------------------------------------------


def test_boot_reaches_http_and_status_is_running(node: Node, shared: SharedGuest) -> None:
    got = http_get(shared.ip, "/cgi-bin/status")
    assert got is not None and got[0] == 200
    assert json.loads(got[1])["hostname"] == "vm100"

    st = _status(node, shared.vmid)
    assert st["status"] == "running" and st["qmpstatus"] == "running"
    assert st["pid"] == shared.pid and is_alive(shared.pid)
    assert st["uptime"] >= 1 and st["exit_reason"] is None
    assert st["maxmem"] == 128 * 1024 * 1024 and st["mem"] > 0
    # the kernel read the partition table; HTTP went both ways through the tap
    assert st["diskread"] > 0
    assert st["netin"] > 0 and st["netout"] > 0
    assert 0.05 < st["cpu"] < 4.0  # first sample: average since start, the boot was busy
    assert "tap100i0" in node.links()
    assert {"100.pid", "100.qmp", "100.serial", "100.json"} <= node.run_files(100)
    assert "100.vnc" not in node.run_files(100)  # vga=serial0: no display, no VNC


def test_start_twice_is_refused(node: Node, shared: SharedGuest) -> None:
    with pytest.raises(AgentError) as err:
        node.start(shared.vmid)
    assert err.value.message == "VM 100 already running"
    assert _status(node, shared.vmid)["pid"] == shared.pid


def test_serial_console_reads_and_writes(node: Node, shared: SharedGuest) -> None:
    async def session() -> str:
        reader, writer = await open_serial(node.run_dir / "100.serial")
        try:
            writer.write(b"\necho hello-console\n")
            await writer.drain()
            seen = b""
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                chunk = await asyncio.wait_for(reader.read(4096), deadline - time.monotonic())
                assert chunk, "serial socket closed"
                seen += chunk
                lines = [ln.strip() for ln in seen.decode(errors="replace").splitlines()]
                if "hello-console" in lines:  # the output line, not the echoed command
                    return "ok"
            return seen.decode(errors="replace")
        finally:
            writer.close()
            await writer.wait_closed()

    assert asyncio.run(session()) == "ok"


def test_disk_write_read_through_the_guest(node: Node, shared: SharedGuest) -> None:
    assert http_get(shared.ip, "/cgi-bin/disk") == (200, f"present {16 * 1024 * 1024}\n")
    assert http_get(shared.ip, "/cgi-bin/disk?write=8192&data=binome-disk") == (200, "ok 11\n")
    assert http_get(shared.ip, "/cgi-bin/disk?read=8192") == (200, "binome-disk")
    # cache=none + the guest's fsync: the bytes are in the file now
    with shared.disk.open("rb") as f:
        f.seek(8192)
        assert f.read(512) == b"binome-disk" + b"\0" * 501
    st = _status(node, shared.vmid)
    assert st["diskwrite"] >= 512


def test_suspend_and_resume(node: Node, shared: SharedGuest) -> None:
    node.agent.call("suspend", vmid=shared.vmid)
    try:
        st = _status(node, shared.vmid)
        assert (st["status"], st["qmpstatus"]) == ("running", "paused")
        assert http_get(shared.ip, "/", timeout=1.0) is None  # frozen: no answer at all
        with pytest.raises(AgentError, match="VM 100 is paused - cannot shutdown"):
            node.agent.call("shutdown", vmid=shared.vmid, timeout=5)
    finally:
        node.agent.call("resume", vmid=shared.vmid)
    assert _status(node, shared.vmid)["qmpstatus"] == "running"
    wait_http(shared.ip, "vm100", timeout=10)


def test_reset_reboots_the_guest(node: Node, shared: SharedGuest) -> None:
    before = _guest_uptime(shared.ip)
    node.agent.call("reset", vmid=shared.vmid)
    took = wait_http(shared.ip, "vm100", timeout=BOOT)
    print(f"\nreset to HTTP: {took:.2f}s")
    assert _guest_uptime(shared.ip) < before + took - 0.5  # the guest kernel started over
    st = _status(node, shared.vmid)
    assert st["pid"] == shared.pid and st["status"] == "running"


def test_guest_survives_killed_daemon_and_is_adopted(node: Node, shared: SharedGuest) -> None:
    old = node.agent
    uptime_before = _status(node, shared.vmid)["uptime"]
    old.kill()
    # the guest does not notice: same process, still answering
    assert is_alive(shared.pid)
    assert http_get(shared.ip, "/")[0] == 200  # type: ignore[index]

    new = node.start_agent()
    assert new.pid != old.pid
    assert new.call("adopt") == [shared.vmid]
    st = new.call("status", vmid=shared.vmid)
    assert st["status"] == "running" and st["qmpstatus"] == "running"
    assert st["pid"] == shared.pid
    assert st["uptime"] >= uptime_before
    assert new.call("is_running", vmid=shared.vmid) is True
    assert new.call("adopt") == [shared.vmid]  # idempotent
    # adopted means controllable: QMP works through the new process
    new.call("suspend", vmid=shared.vmid)
    new.call("resume", vmid=shared.vmid)
    wait_http(shared.ip, "vm100", timeout=10)


def test_graceful_shutdown(node: Node, shared: SharedGuest) -> None:
    assert http_get(shared.ip, "/cgi-bin/disk?write=0&data=before-shutdown") == (200, "ok 15\n")
    t0 = time.monotonic()
    node.agent.call("shutdown", vmid=shared.vmid, timeout=30)
    print(f"\nshutdown (ACPI) returned after {time.monotonic() - t0:.2f}s")
    assert not is_alive(shared.pid)
    assert "tap100i0" not in node.links()
    assert node.run_files(100) == {"100.log", "100.exit.json"}
    st = _status(node, shared.vmid)
    assert (st["status"], st["pid"], st["qmpstatus"]) == ("stopped", None, None)
    assert st["exit_reason"] == "shut down by request (guest powered off)"
    assert node.agent.call("is_running", vmid=shared.vmid) is False
    with pytest.raises(AgentError, match="VM 100 not running"):
        node.agent.call("stop", vmid=shared.vmid)
    assert shared.disk.read_bytes()[:512] == b"before-shutdown" + b"\0" * 497
    events = [e for a in node.agents for e in a.events if e["vmid"] == shared.vmid]
    assert events and events[-1]["reason"] == st["exit_reason"]


# -- guests of their own -------------------------------------------------------------------


def test_hard_stop(node: Node) -> None:
    pid = node.start(101)
    wait_http(guest_ip(101), "vm101", timeout=BOOT)
    t0 = time.monotonic()
    node.agent.call("stop", vmid=101)
    print(f"\nstop (hard) returned after {time.monotonic() - t0:.2f}s")
    assert not is_alive(pid)
    assert "tap101i0" not in node.links()
    st = _status(node, 101)
    assert (st["status"], st["exit_reason"]) == ("stopped", "stopped by request")
    assert node.run_files(101) == {"101.log", "101.exit.json"}


def test_shutdown_timeout_then_force_stop(node: Node) -> None:
    """A machine with nothing to boot has no OS to honour the ACPI button."""
    pid = node.start(109, nics=[], kernel=None, initrd=None, append=None)
    with pytest.raises(AgentError) as err:
        node.agent.call("shutdown", vmid=109, timeout=1.0)
    assert err.value.message == "VM quit/powerdown failed - got timeout"
    assert is_alive(pid) and _status(node, 109)["status"] == "running"
    node.agent.call("shutdown", vmid=109, timeout=1.0, force_stop=True)
    assert not is_alive(pid)
    assert _status(node, 109)["exit_reason"] == "stopped by request"


def test_killed_qemu_is_reported_and_cleaned(node: Node) -> None:
    """SIGKILL of QEMU seen live (102), while no daemon ran (103), and with its wrapper
    killed too (104: no exit status at all, so adopt() alone must clean up)."""
    pids = {vmid: node.start(vmid) for vmid in (102, 103, 104)}
    agent = node.agent
    os.kill(pids[102], signal.SIGKILL)
    wait_for(lambda: _status(node, 102)["status"] == "stopped", "VM 102 stopped", 10)
    assert "killed by signal 9" in _status(node, 102)["exit_reason"]
    assert "tap102i0" not in node.links()

    wrapper104 = json.loads((node.run_dir / "104.json").read_text())["wrapper_pid"]
    agent.kill()
    os.kill(pids[103], signal.SIGKILL)
    os.kill(wrapper104, signal.SIGKILL)
    os.kill(pids[104], signal.SIGKILL)
    wait_for(lambda: not is_alive(pids[103]) and not is_alive(pids[104]), "QEMUs gone", 10)
    assert "tap104i0" in node.links()  # nobody left to remove it

    new = node.start_agent()
    assert new.call("adopt") == []
    st103 = new.call("status", vmid=103)
    assert st103["status"] == "stopped"
    assert st103["exit_reason"] == "QEMU exited unexpectedly (killed by signal 9, SIGKILL)"
    st104 = new.call("status", vmid=104)
    assert st104["status"] == "stopped" and "exit status unknown" in st104["exit_reason"]
    assert not {"tap103i0", "tap104i0"} & node.links()
    for vmid in (103, 104):
        assert node.run_files(vmid) == {f"{vmid}.log", f"{vmid}.exit.json"}
    assert {e["vmid"] for e in new.events} == {103, 104}  # on_exit saw the dead ones
    node.reap_orphaned_wrappers()


def test_missing_bridge_is_refused_and_leaves_nothing(node: Node) -> None:
    nics = [
        {"index": 0, "model": "virtio", "mac": "52:54:00:19:40:69", "bridge": "vmbr0"},
        {"index": 1, "model": "e1000", "mac": "52:54:00:19:40:6a", "bridge": "vmbr9"},
    ]
    before = node.links()
    with pytest.raises(AgentError) as err:
        node.start(105, nics=nics)
    assert (err.value.error, err.value.message) == ("GuestError", "bridge 'vmbr9' does not exist")
    assert node.links() == before
    assert node.run_files(105) == set()
    assert _status(node, 105)["status"] == "stopped"


def test_qemu_failing_to_start_leaves_nothing(node: Node) -> None:
    """Taps already exist when QEMU refuses the spec: they must go again."""
    before = node.links()
    missing = node.work / "no-such-disk.raw"
    with pytest.raises(AgentError) as err:
        node.start(106, disks=[{"bus": "virtio", "index": 0, "source": str(missing),
                                "format": "raw", "cache": "none"}])
    assert err.value.message.startswith("start failed: QEMU exited with status 1: ")
    assert str(missing) in err.value.message
    assert node.links() == before
    assert node.run_files(106) == {"106.log"}


def test_vlan_tag(node: Node) -> None:
    with pytest.raises(AgentError, match="bridge 'vmbr0' is not VLAN aware"):
        node.start(107, tag=5)
    assert "tap107i0" not in node.links()
    if not node.vlan_bridge:
        pytest.skip("this kernel has no bridge VLAN filtering (CONFIG_BRIDGE_VLAN_FILTERING)")
    node.start(107, bridge="vmbr1", tag=5)
    try:
        out = subprocess.run(["bridge", "-n", node.netns, "-j", "vlan", "show", "dev",
                              "tap107i0"], capture_output=True, text=True, check=True).stdout
        vlans = json.loads(out)[0]["vlans"]
        assert vlans == [{"vlan": 5, "flags": ["PVID", "Egress Untagged"]}]
    finally:
        node.agent.call("stop", vmid=107)
    assert "tap107i0" not in node.links()


def _serve_nbd(path: Path, socket: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(["qemu-nbd", "--persistent", "--format=raw", "--cache=none",
                             "--export-name=vol", f"--socket={socket}", str(path)],
                            stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_for(socket.exists, "qemu-nbd socket", 10)
    return proc


def test_every_bus_and_an_nbd_root_disk(node: Node) -> None:
    """virtio0 over NBD is the guest's /dev/vda (written through the guest); scsi, ide and
    sata disks (qcow2, read-only, every cache mode) are accepted by QEMU and visible in QMP."""
    work = node.work
    for name, fmt in (("nbd.raw", "raw"), ("s.qcow2", "qcow2"), ("i.raw", "raw"),
                      ("a.raw", "raw"), ("r.raw", "raw")):
        subprocess.run(["qemu-img", "create", "-q", "-f", fmt, str(work / name), "8M"],
                       check=True)
    sock = work / "nbd.sock"
    nbd = _serve_nbd(work / "nbd.raw", sock)
    try:
        disks = [
            {"bus": "virtio", "index": 0, "source": f"nbd+unix:///vol?socket={sock}",
             "format": None, "cache": "none"},
            {"bus": "scsi", "index": 2, "source": str(work / "s.qcow2"), "format": "qcow2",
             "cache": "writeback"},
            {"bus": "ide", "index": 1, "source": str(work / "i.raw"), "cache": "writethrough"},
            {"bus": "sata", "index": 3, "source": str(work / "a.raw"), "cache": "unsafe"},
            {"bus": "sata", "index": 4, "source": str(work / "r.raw"), "readonly": True},
        ]
        nics = [
            {"index": 0, "model": "virtio", "mac": "52:54:00:19:40:6c", "bridge": "vmbr0"},
            {"index": 2, "model": "rtl8139", "mac": "52:54:00:19:40:6d", "bridge": "vmbr0"},
        ]
        node.start(108, disks=disks, nics=nics, vga="std", boot=["virtio0", "net0"],
                   uuid="5a4c3b2a-1111-2222-3333-444455556666")
        try:
            blocks = {b["device"]: b for b in node.agent.call("command", vmid=108,
                                                              cmd="query-block")}
            assert set(blocks) == {"drive-virtio0", "drive-scsi2", "drive-ide1", "drive-sata3",
                                   "drive-sata4"}
            assert blocks["drive-sata4"]["inserted"]["ro"] is True
            assert blocks["drive-virtio0"]["inserted"]["image"]["filename"].startswith("nbd+unix")
            assert "108.vnc" in node.run_files(108)
            assert {"tap108i0", "tap108i2"} <= node.links()
            wait_http(guest_ip(108), "vm108", timeout=BOOT)
            assert http_get(guest_ip(108), "/cgi-bin/disk?write=512&data=over-nbd") == \
                (200, "ok 8\n")
        finally:
            node.agent.call("shutdown", vmid=108, timeout=30, force_stop=True)
        with (work / "nbd.raw").open("rb") as f:
            f.seek(512)
            assert f.read(8) == b"over-nbd"
        assert not {"tap108i0", "tap108i2"} & node.links()
    finally:
        nbd.terminate()
        nbd.wait(timeout=10)
