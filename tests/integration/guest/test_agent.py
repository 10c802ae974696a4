"""The QEMU guest agent through the API, against Debian's real qemu-ga in a real guest.

A VM with ``agent: 1`` boots the lab guest, whose /init starts qemu-ga on the
``org.qemu.guest_agent.0`` port; through proxmoxer (as Terraform's bpg and Ansible
call them): ``ping``, ``network-get-interfaces`` showing the address the guest
gave itself, ``exec`` + ``exec-status`` output, a ``file-write`` / ``file-read``
round trip, PVE's errors without an agent, a vzdump of the running VM that freezes
and thaws the guest's filesystems around its start, an online disk move (``move_disk``:
QEMU's mirror job) and a full clone of the running guest while it writes to the disk,
and ``status/shutdown`` going through the agent's ``guest-shutdown`` rather than the
ACPI button.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile

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
        # the QEMU monitor (Telmate's `monitor`) answers PVE's text, not an error
        assert vm.monitor.post(command="info status") == f"ERROR: VM {vmid} not running\n"

        assert done(vm.status.start.post()) == "OK"
        assert wait_for(lambda: vm.agent.ping.post() == {"result": {}}, 60,
                        "the guest agent answering ping")
        assert vm.status.current.get()["agent"] == 1      # PVE's, bpg looks at it

        # HMP through QMP; PVE's permission table (admin@pve is no root@pam), where
        # binome keeps what changes its own records (run state, disks) for root@pam
        assert "VM status: running" in vm.monitor.post(command="info status")
        assert "info" in vm.monitor.post(command="help")
        with pytest.raises(ResourceException, match="root-only command 'system_reset'"):
            vm.monitor.post(command="system_reset")
        with pytest.raises(ResourceException, match="root-only command 'drive_mirror'"):
            vm.monitor.post(command="drive_mirror drive-virtio0 /tmp/x")
        with pytest.raises(ResourceException, match="command 'frobnicate' non-existent"):
            vm.monitor.post(command="  frobnicate now")
        assert vm.status.current.get()["qmpstatus"] == "running"

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

        move_disk_online(px, node, vm, vmid, cluster, done)

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


# the guest writes a counter to its disk's first sector, each write synced, until
# /tmp/stop appears; it exits 1 as soon as a write fails
WRITER = ("i=0; while [ ! -e /tmp/stop ]; do i=$((i+1)); "
          "echo $i | dd of=/dev/vda bs=512 count=1 conv=sync,fsync 2>/dev/null || exit 1; "
          "echo $i > /tmp/seq; usleep 20000; done")


def _tail(path, size: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-size:]
    except OSError as exc:
        return f"({exc})"


def move_disk_online(px, node, vm, vmid: int, cluster: Cluster, done) -> None:
    """POST .../move_disk of the running guest's virtio0 (qcow2 on `local`) to another
    dir storage, while the guest writes to it: QEMU's mirror job with PVE's
    progress lines, the config switched, the old volume kept as unused0; every write
    the guest made before and after reached the disk it uses now. A cancelled move
    changes nothing and the guest writes on."""
    if "mvqga" not in {s["storage"] for s in px.storage.get()}:
        px.storage.post(storage="mvqga", type="dir", content="images", nodes="n1",
                        path=str(cluster["n1"].state_dir / "storage-mvqga"))
    old = vm.config.get()["virtio0"].split(",")[0]

    def seq() -> int:
        try:
            text = vm.agent("file-read").get(file="/tmp/seq")["content"].strip()
        except Exception as exc:
            # the guest gone (seen once in CI after a cancelled move): say how QEMU ended
            run = cluster["n1"].state_dir / "run" / "qemu"
            raise AssertionError(f"{exc}; QEMU exit: {_tail(run / f'{vmid}.exit.json')}; "
                                 f"QEMU log: {_tail(run / f'{vmid}.log')}; binomed: "
                                 f"{_tail(cluster['n1'].log_path, 4000)}") from exc
        return int(text or 0)

    def sector(path, fmt: str) -> int:
        """The counter in an image's first sector (-U: QEMU may hold it open)."""
        with tempfile.NamedTemporaryFile(suffix=".raw") as out:
            subprocess.run(["qemu-img", "convert", "-U", "-f", fmt, "-O", "raw", str(path),
                            out.name], check=True, capture_output=True)
            return int(open(out.name, "rb").read(512).split(b"\n")[0] or 0)

    pid = vm.agent.exec.post(command=["sh", "-c", WRITER])["pid"]
    wait_for(lambda: seq() > 5, 20, "the guest's writer under way")

    # cancelled mid-way (bandwidth-limited): the guest stays on its disk, nothing changes
    before = vm.config.get()
    upid = vm.move_disk.post(disk="virtio0", storage="mvqga", bwlimit=1024)
    try:
        wait_for(lambda: any("drive-virtio0: transferred" in e["t"]
                             for e in node.tasks(upid).log.get(limit=100)), 20,
                 "the mirror under way")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {[e['t'] for e in node.tasks(upid).log.get()]}") \
            from None
    node.tasks(upid).delete()
    assert done(upid) != "OK"
    after = vm.config.get()
    assert after["digest"] == before["digest"] and "unused0" not in after
    assert not list((cluster["n1"].state_dir / "storage-mvqga").rglob("vm-*")), \
        "the cancelled move left its volume"
    mark = seq()
    wait_for(lambda: seq() > mark + 5, 20, "the guest writing on after the cancel")

    # the move: qcow2 on local -> mvqga, online (the format kept: this disk's odd size,
    # 0.01 GiB, is no multiple of 4 KiB, which QEMU cannot open as a raw file with
    # cache=none)
    upid = vm.move_disk.post(disk="virtio0", storage="mvqga")
    assert done(upid) == "OK"
    log = [e["t"] for e in node.tasks(upid).log.get(limit=1000)]
    assert "drive mirror is starting for drive-virtio0" in log, log
    assert any(re.fullmatch(r"drive-virtio0: transferred \S+ \S+ of \S+ \S+ "
                            r"\(100\.00%\) in \d+s, ready", line) for line in log), log
    for line in ("all 'mirror' jobs are ready", "drive-virtio0: Completed successfully.",
                 f"adding source volume '{old}' as 'unused0' to config"):
        assert line in log, log
    conf = vm.config.get()
    new = conf["virtio0"].split(",")[0]
    assert new == f"mvqga:{vmid}/vm-{vmid}-disk-0.qcow2" and conf["unused0"] == old
    mark = seq()
    wait_for(lambda: seq() > mark + 10, 20, "the guest writing after the switch")

    # a full clone of the running guest onto another storage (PVE's drive-mirror, ended
    # without switching, the filesystems frozen): the copy holds the disk as it was at
    # one instant of the clone while the guest writes on
    low = seq()
    clone_id = int(px.cluster.nextid.get())
    upid = vm.clone.post(newid=clone_id, name="qga-clone", storage="local")
    try:
        assert done(upid) == "OK", [e["t"] for e in node.tasks(upid).log.get(limit=500)]
        high = seq()
        log = [e["t"] for e in node.tasks(upid).log.get(limit=1000)]
        freeze = log.index("INFO: issuing guest-agent 'fs-freeze' command")
        thaw = log.index("INFO: issuing guest-agent 'fs-thaw' command")
        ended = log.index("drive-virtio0: Completed successfully (the copy ends here).")
        assert freeze < ended < thaw, log
        copy = node.qemu(clone_id).config.get()["virtio0"].split(",")[0]
        assert copy == f"local:{clone_id}/vm-{clone_id}-disk-0.qcow2"
        copy_path = cluster["n1"].state_dir / "storage" / "local" / "images" / \
            str(clone_id) / f"vm-{clone_id}-disk-0.qcow2"
        # /tmp/seq is written right after each synced write: by the time the task
        # ended it had caught up with what the copy holds
        assert low <= sector(copy_path, "qcow2") <= high
        assert vm.agent("fsfreeze-status").post() == {"result": "thawed"}
        assert vm.config.get()["virtio0"].split(",")[0] == new   # the guest never moved
    finally:
        done(node.qemu(clone_id).delete(purge=1))
    vm.agent("file-write").post(file="/tmp/stop", content="")
    status = wait_for(lambda: (s := vm.agent("exec-status").get(pid=pid))["exited"] and s,
                      20, "the writer to stop")
    assert status["exitcode"] == 0, status          # no write failed
    last = seq()
    new_path = cluster["n1"].state_dir / "storage-mvqga" / "images" / str(vmid) / \
        f"vm-{vmid}-disk-0.qcow2"
    old_path = cluster["n1"].state_dir / "storage" / "local" / "images" / str(vmid) / \
        old.split("/")[-1]
    assert sector(new_path, "qcow2") == last            # the last write is on the new disk
    assert sector(old_path, "qcow2") < last            # and the old one was left behind
