"""The QEMU guest agent through the API, against Debian's real qemu-ga in a real guest.

A VM with ``agent: 1`` boots the lab guest, whose /init starts qemu-ga on the
``org.qemu.guest_agent.0`` port; through proxmoxer (as Terraform's bpg and Ansible
call them): ``ping``, ``network-get-interfaces`` showing the address the guest
gave itself, ``exec`` + ``exec-status`` output, a ``file-write`` / ``file-read``
round trip, PVE's errors without an agent, a vzdump of the running VM that freezes
and thaws the guest's filesystems around its start, and ``status/shutdown`` going
through the agent's ``guest-shutdown`` rather than the ACPI button.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.integration.harness import PASSWORD, Cluster, wait_for


@pytest.fixture
def agent_bridge():
    """A bridge for the guest's NIC (its own name from the pid); removed even on failure."""
    name = f"bqa{os.getpid() % 100000}"
    subprocess.run(["ip", "link", "add", name, "type", "bridge"], check=True,
                   capture_output=True)
    try:
        subprocess.run(["ip", "link", "set", name, "up"], check=True, capture_output=True)
        yield name
    finally:
        subprocess.run(["ip", "link", "del", name], check=False, capture_output=True)


def test_guest_agent_in_a_real_guest(cluster: Cluster, agent_bridge: str) -> None:
    from proxmoxer import ProxmoxAPI, ResourceException
    from proxmoxer.tools import Tasks

    from binome.lab.image import build_image

    image = build_image()
    iso = cluster["n1"].state_dir / "storage" / "local" / "template" / "iso"
    iso.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(image.kernel, iso / "vmlinuz")
    shutil.copyfile(image.initrd, iso / "initrd.gz")
    px = ProxmoxAPI(cluster["n1"].address, user="admin@pve", password=PASSWORD,
                    verify_ssl=False, timeout=30)

    def done(upid: str) -> str:
        status = Tasks.blocking_status(px, upid, timeout=120, polling_interval=0.2)
        assert status is not None, f"task {upid} did not finish"
        return str(status["exitstatus"])

    node = px.nodes("n1")
    vmid = int(px.cluster.nextid.get())
    guest_ip = "192.0.2.77"
    assert done(node.qemu.post(
        vmid=vmid, name="qga-guest", memory=160, agent="enabled=1,type=virtio",
        kernel="local:iso/vmlinuz", initrd="local:iso/initrd.gz",
        append=image.cmdline(ip=f"{guest_ip}/24", hostname="qga-guest"),
        net0=f"virtio=BC:24:11:AA:00:07,bridge={agent_bridge}",
        virtio0="local:0.01,format=qcow2")) == "OK"
    vm = node.qemu(vmid)
    try:
        # PVE's text before the guest runs
        with pytest.raises(ResourceException, match=f"VM {vmid} is not running"):
            vm.agent.ping.post()
        assert {"ping", "exec", "file-read", "network-get-interfaces"} <= {
            c["name"] for c in vm.agent.get()}

        assert done(vm.status.start.post()) == "OK"
        assert wait_for(lambda: vm.agent.ping.post() == {"result": {}}, 60,
                        "the guest agent answering ping")
        assert vm.status.current.get()["agent"] == 1      # PVE's, bpg looks at it

        interfaces = vm.agent("network-get-interfaces").get()["result"]
        eth0 = next(i for i in interfaces if i["hardware-address"] == "bc:24:11:aa:00:07")
        assert {"ip-address": guest_ip, "ip-address-type": "ipv4", "prefix": 24} in [
            {k: a[k] for k in ("ip-address", "ip-address-type", "prefix")}
            for a in eth0["ip-addresses"]]
        assert vm.agent("get-host-name").get()["result"] == {"host-name": "qga-guest"}
        assert vm.agent("get-osinfo").get()["result"]["id"] == "binome-lab"

        pid = vm.agent.exec.post(command=["echo", "hello from", "the guest"])["pid"]
        status = wait_for(lambda: (s := vm.agent("exec-status").get(pid=pid))["exited"] and s,
                          20, "the exec'd echo to exit")
        assert status["exitcode"] == 0 and status["exited"] == 1
        assert status["out-data"] == "hello from the guest\n"

        content = "line one\nzwei \u2013 drei\n"
        assert vm.agent("file-write").post(file="/tmp/qga-test", content=content) is None
        read = vm.agent("file-read").get(file="/tmp/qga-test")
        assert read == {"content": content, "bytes-read": len(content.encode())}
        partial = vm.agent("file-read").get(file="/tmp/qga-test", offset=5, count=3)
        assert partial == {"content": "one", "bytes-read": 3, "truncated": 1}
        with pytest.raises(ResourceException, match=r"Agent error: .*No such file"):
            vm.agent("file-read").get(file="/nonexistent")

        # the lab guest has no chpasswd: the agent's refusal comes back, never the password
        with pytest.raises(ResourceException, match="Agent error") as err:
            vm.agent("set-user-password").post(username="root", password="hunter2-secret")
        assert "hunter2" not in str(err.value)

        # a backup freezes the guest's filesystems at its start and thaws them after
        if "bkqga" not in {s["storage"] for s in px.storage.get()}:
            px.storage.post(storage="bkqga", type="dir", content="backup", nodes="n1",
                            path=str(cluster["n1"].state_dir / "backups-qga"))
        upid = node.vzdump.post(vmid=str(vmid), storage="bkqga", mode="snapshot")
        assert done(upid) == "OK"
        lines = [line["t"] for line in node.tasks(upid).log.get(limit=1000)]
        freeze = lines.index("INFO: issuing guest-agent 'fs-freeze' command")
        thaw = lines.index("INFO: issuing guest-agent 'fs-thaw' command")
        assert freeze < thaw and not any(line.startswith("ERROR") for line in lines)
        assert vm.agent("fsfreeze-status").post() == {"result": "thawed"}

        # Terraform's and PVE's shutdown: through the agent when it answers
        upid = vm.status.shutdown.post(timeout=60)
        assert done(upid) == "OK"
        log = "\n".join(line["t"] for line in node.tasks(upid).log.get(limit=100))
        assert "shut down through the guest agent" in log
        assert vm.status.current.get()["status"] == "stopped"
    finally:
        if vm.status.current.get()["status"] == "running":
            done(vm.status.stop.post())
        done(vm.delete())

    # no agent in the config: PVE's refusal, nothing started
    other = int(px.cluster.nextid.get())
    assert done(node.qemu.post(vmid=other, name="no-agent", memory=64)) == "OK"
    try:
        with pytest.raises(ResourceException, match="No QEMU guest agent configured"):
            node.qemu(other).agent("network-get-interfaces").get()
    finally:
        done(node.qemu(other).delete())
