"""Pending changes and hot-plug on a running VM, as PVE, with real QEMU.

The test watches QEMU through a second QMP monitor of its own, added with PVE's
root-only `args` (set over the node's unix socket, where root is root@pam): a SCSI
disk, a NIC (its tap on the test's bridge) and a vCPU are plugged into the running
guest and QEMU has them; `memory` (without `memory` in `hotplug`) stays pending, GET .../pending
and GET .../config show both sides, a hot-plug that fails stays pending with PVE's
"hotplug problem", revert drops a pending change, a disk is unplugged (its volume
kept as unusedN) and the next cold start applies what was pending. With `memory` in
`hotplug`, DIMMs are added to and asked out of the running guest (PVE's memory
hot-plug).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from pathlib import Path

import pytest

from binome.cli.client import ApiCallError, Client
from tests.integration.harness import Cluster


@pytest.fixture
def bridge():
    """A bridge of this test's own (name from the pid), removed even on failure."""
    name = f"bhp{os.getpid() % 100000}"
    subprocess.run(["ip", "link", "add", name, "type", "bridge"], check=True,
                   capture_output=True)
    try:
        subprocess.run(["ip", "link", "set", name, "up"], check=True, capture_output=True)
        yield name
    finally:
        subprocess.run(["ip", "link", "del", name], check=False, capture_output=True)


class Monitor:
    """The test's own QMP connection to the guest (qemu.qmp, on its event loop)."""

    def __init__(self, path: str) -> None:
        from qemu.qmp import QMPClient

        self.loop = asyncio.new_event_loop()
        self.client = QMPClient("test")
        self.loop.run_until_complete(self.client.connect(path))

    def __call__(self, cmd: str, **args):
        return self.loop.run_until_complete(self.client.execute(cmd, args or None))

    def pci_ids(self) -> set[str]:
        def walk(devices):
            for d in devices:
                yield d.get("qdev_id", "")
                yield from walk((d.get("pci_bridge") or {}).get("devices", []))
        return {i for bus in self("query-pci") for i in walk(bus["devices"])}

    def block_ids(self) -> set[str]:
        return {b.get("qdev", "") for b in self("query-block")}

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.loop.run_until_complete(self.client.disconnect())
        self.loop.close()


def rows(root: Client, vmid: int) -> dict[str, dict]:
    return {r["key"]: r for r in root.call("GET", f"/nodes/n1/qemu/{vmid}/pending")}


def test_hotplug_and_pending_on_a_running_vm(cluster: Cluster, bridge: str) -> None:
    root = Client(socket_path=cluster["n1"].socket)
    vmid = int(root.call("GET", "/cluster/nextid"))
    url = f"/nodes/n1/qemu/{vmid}"
    sock = f"/tmp/binome-hp-{os.getpid()}-{vmid}.qmp"
    upid = root.call("POST", "/nodes/n1/qemu", {
        "vmid": vmid, "name": "hotplug", "memory": 64, "cores": 2, "vcpus": 1,
        "hotplug": "network,disk,cpu", "scsi0": "local:1", "vga": "none",
        "args": f"-qmp unix:{sock},server=on,wait=off"})
    assert root.wait_task(upid)["exitstatus"] == "OK"
    monitor = None
    try:
        assert root.wait_task(root.call("POST", url + "/status/start"))["exitstatus"] == "OK"
        monitor = Monitor(sock)
        assert len(monitor("query-cpus-fast")) == 1
        mac = "BC:24:11:AB:00:01"
        root.call("PUT", url + "/config", {
            "scsi1": "local:1", "net0": f"virtio={mac},bridge={bridge}", "vcpus": 2,
            "memory": 96, "name": "renamed", "balloon": 48})
        # plugged: QEMU has the disk, the NIC (its tap on the bridge) and the vCPU
        assert "scsi1" in monitor.block_ids()
        assert "net0" in monitor.pci_ids()
        tap = Path(f"/sys/class/net/tap{vmid}i0")
        assert (tap / "master").resolve().name == bridge
        assert len(monitor("query-cpus-fast")) == 2
        # memory waits for the next start (no `memory` in hotplug): both sides shown
        pending = rows(root, vmid)
        assert pending["memory"] == {"key": "memory", "value": 64, "pending": 96}
        for key in ("scsi1", "net0", "vcpus", "name", "balloon"):
            assert "pending" not in pending[key], pending[key]
        assert root.call("GET", url + "/config")["memory"] == 96
        current = root.call("GET", url + "/config", {"current": 1})
        assert current["memory"] == 64 and current["name"] == "renamed"
        assert current["net0"].startswith(f"virtio={mac}")
        assert root.call("GET", url + "/status/current")["maxmem"] == 64 << 20

        # a hot-plug that fails stays pending, with PVE's text; revert drops it
        with pytest.raises(ApiCallError) as exc:
            root.call("PUT", url + "/config",
                      {"net1": "virtio=BC:24:11:AB:00:02,bridge=nosuchbr0"})
        assert exc.value.status == 400
        assert exc.value.errors["net1"].startswith("hotplug problem - bridge 'nosuchbr0'")
        assert rows(root, vmid)["net1"]["pending"].startswith("virtio=BC:24:11:AB:00:02")
        assert "net1" not in monitor.pci_ids()
        root.call("PUT", url + "/config", {"revert": "net1,memory"})
        assert {k: r for k, r in rows(root, vmid).items()
                if "pending" in r or "delete" in r} == {}

        # a SCSI disk is unplugged at once; its volume is kept as unusedN
        scsi1 = current["scsi1"].split(",")[0]
        root.call("PUT", url + "/config", {"delete": "scsi1"})
        assert "scsi1" not in monitor.block_ids()
        conf = root.call("GET", url + "/config", {"current": 1})
        assert "scsi1" not in conf and conf["unused0"] == scsi1

        # memory again: pending until a cold start applies it
        root.call("PUT", url + "/config", {"memory": 96})
        assert rows(root, vmid)["memory"]["pending"] == 96
        monitor.close()
        monitor = None
        assert root.wait_task(root.call("POST", url + "/status/stop"))["exitstatus"] == "OK"
        assert root.wait_task(root.call("POST", url + "/status/start"))["exitstatus"] == "OK"
        assert "pending" not in rows(root, vmid)["memory"]
        assert root.call("GET", url + "/config", {"current": 1})["memory"] == 96
        assert root.call("GET", url + "/status/current")["maxmem"] == 96 << 20
        monitor = Monitor(sock)
        assert "net0" in monitor.pci_ids()       # a start puts it where it was plugged
    finally:
        if monitor is not None:
            monitor.close()
        with contextlib.suppress(ApiCallError):
            root.wait_task(root.call("POST", url + "/status/stop"))
        root.wait_task(root.call("DELETE", url))
        Path(sock).unlink(missing_ok=True)


def test_memory_hotplug_adds_and_removes_dimms(cluster: Cluster) -> None:
    """PVE's memory hot-plug (`hotplug: memory`, `numa: 1`): the guest starts with 1024
    MiB of static memory and the rest as DIMMs; `memory` raised on the running guest
    adds `pc-dimm` devices (QMP query-memory-devices has them, status `maxmem` grows);
    lowered, the DIMMs are asked to go, and a guest that keeps them (this one runs no
    OS to release them) leaves the change pending with PVE's "error unplug memory
    module" until the next start. A start without NUMA is PVE's refusal."""
    root = Client(socket_path=cluster["n1"].socket)
    vmid = int(root.call("GET", "/cluster/nextid"))
    url = f"/nodes/n1/qemu/{vmid}"
    sock = f"/tmp/binome-mh-{os.getpid()}-{vmid}.qmp"
    upid = root.call("POST", "/nodes/n1/qemu", {
        "vmid": vmid, "name": "memhp", "memory": 1024, "hotplug": "disk,memory",
        "vga": "none", "args": f"-qmp unix:{sock},server=on,wait=off"})
    assert root.wait_task(upid)["exitstatus"] == "OK"
    monitor = None
    try:
        status = root.wait_task(root.call("POST", url + "/status/start"))
        assert "NUMA needs to be enabled for memory hotplug" in status["exitstatus"]
        root.call("PUT", url + "/config", {"numa": 1})
        assert root.wait_task(root.call("POST", url + "/status/start"))["exitstatus"] == "OK"
        monitor = Monitor(sock)
        assert monitor("query-memory-devices") == []

        def dimms() -> dict[str, tuple[int, int]]:
            return {d["data"]["id"]: (d["data"]["size"] >> 20, d["data"]["node"])
                    for d in monitor("query-memory-devices")}

        root.call("PUT", url + "/config", {"memory": 2048})
        assert dimms() == {"dimm0": (512, 0), "dimm1": (512, 0)}
        assert "pending" not in rows(root, vmid)["memory"]
        assert root.call("GET", url + "/config", {"current": 1})["memory"] == 2048
        assert root.call("GET", url + "/status/current")["maxmem"] == 2048 << 20

        # PVE's refusals of a size the DIMMs cannot make: stays pending
        with pytest.raises(ApiCallError) as exc:
            root.call("PUT", url + "/config", {"memory": 2100})
        assert exc.value.status == 400 and exc.value.errors["memory"] == (
            "hotplug problem - memory size (2100) must be aligned to 512 for hotplugging")
        root.call("PUT", url + "/config", {"revert": "memory"})

        # lowered: dimm1 is asked to go; the guest does not release it
        with pytest.raises(ApiCallError) as exc:
            root.call("PUT", url + "/config", {"memory": 1536})
        assert exc.value.errors["memory"].startswith(
            "hotplug problem - dimm1: error unplug memory module")
        assert rows(root, vmid)["memory"] == {"key": "memory", "value": 2048, "pending": 1536}
        assert root.call("GET", url + "/status/current")["maxmem"] == 2048 << 20
        # the next start applies it: one DIMM
        monitor.close()
        monitor = None
        assert root.wait_task(root.call("POST", url + "/status/stop"))["exitstatus"] == "OK"
        assert root.wait_task(root.call("POST", url + "/status/start"))["exitstatus"] == "OK"
        monitor = Monitor(sock)
        assert dimms() == {"dimm0": (512, 0)}
        assert root.call("GET", url + "/status/current")["maxmem"] == 1536 << 20
    finally:
        if monitor is not None:
            monitor.close()
        with contextlib.suppress(ApiCallError):
            root.wait_task(root.call("POST", url + "/status/stop"))
        root.wait_task(root.call("DELETE", url))
        Path(sock).unlink(missing_ok=True)
