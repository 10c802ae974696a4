"""Cross-node moves of VMs on local (`dir`) disks: offline migration with the disks
copied (and PVE's `targetstorage` map), live migration with local disks (PVE's
`with-local-disks`: QEMU mirrors them to the target QEMU's NBD export while the guest
writes to them through its own agent-started writer), clone to another node (through
Ansible's `proxmox_kvm`, unchanged), and what is refused or undone.

One loopback 2-node + witness cluster (real etcd, binomed, qemu-nbd and qemu-img
moving the data over the cluster addresses). Each VM gets random data written into
its disks (raw and qcow2) with `qemu-io`; after every move the guest-visible content
of each disk on its new node is compared with the original by SHA-256, and the
source's copies are checked gone (migration) or intact (clone, refusals, a stopped
copy). `local2` is a `dir` storage of n2 only (`nodes=n2`), so a map onto it really
lands on the other node's disk and cannot be opened by n1.

Also the SPICE console across nodes (`spiceproxy` asked of the other node's API, the
connection through the other node's spice proxy to QEMU's TLS port, SPICE's link
protocol with the one-time password).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.ha.guests import api, guest_cluster, kill_pid, qemu_pid
from tests.integration.harness import Cluster, Node, wait_for

SIZE = "0.0625"       # GiB: 64 MiB disks
DATA = 6 << 20        # random bytes written into each disk, at several offsets


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    gen = guest_cluster(tmp_path_factory, "cross-node")
    c = next(gen)
    local2 = c.root / "n2-local2"
    local2.mkdir()
    api(c["n1"]).storage.post(storage="local2", type="dir", path=str(local2),
                              content="images", nodes="n2")
    try:
        yield c
    finally:
        next(gen, None)


def wait_task(via: Node, node: str, upid: str, timeout: float = 120) -> dict:
    px = api(via)
    wait_for(lambda: px.nodes(node).tasks(upid).status.get()["status"] == "stopped",
             timeout, f"task {upid}")
    return px.nodes(node).tasks(upid).status.get()


def task_log(via: Node, node: str, upid: str) -> str:
    return "\n".join(e["t"] for e in api(via).nodes(node).tasks(upid).log.get(limit=5000))


def ok(via: Node, node: str, upid: str) -> str:
    st = wait_task(via, node, upid)
    log = task_log(via, node, upid)
    assert st["exitstatus"] == "OK", log
    return log


def volume_path(c: Cluster, node: str, volid: str) -> Path:
    storage, _, name = volid.partition(":")
    root = c.root / "n2-local2" if storage == "local2" else \
        c[node].state_dir / "storage" / storage
    return root / "images" / name


def disks(config: dict) -> dict[str, str]:
    return {k: str(v).split(",")[0] for k, v in config.items()
            if k in ("scsi0", "virtio1", "efidisk0") or k.startswith("unused")}


def digest(path: Path) -> str:
    """SHA-256 of the guest-visible content (`content`)."""
    return hashlib.sha256(content(path)).hexdigest()


def fill(path: Path, tmp: Path) -> None:
    """Random data into the disk at three offsets, through qemu-io (its format)."""
    fmt = "qcow2" if path.suffix == ".qcow2" else "raw"
    src = tmp / f"rand-{uuid.uuid4().hex[:6]}"
    src.write_bytes(os.urandom(DATA // 3))
    cmds = []
    for off in (0, 20 << 20, (64 << 20) - DATA // 3):
        cmds += ["-c", f"write -s {src} {off} {DATA // 3}"]
    subprocess.run(["qemu-io", "-f", fmt, *cmds, str(path)], check=True,
                   capture_output=True)
    src.unlink()


def make_vm(c: Cluster, tmp: Path, name: str, **extra: str) -> tuple[int, dict[str, str]]:
    """A stopped VM on n1 with a raw and a qcow2 disk full of random data; (vmid, the
    digest of each disk key)."""
    px = api(c["n1"])
    vmid = int(px.cluster.nextid.get())
    ok(c["n1"], "n1", px.nodes("n1").qemu.post(
        vmid=vmid, name=name, memory=128, kernel="local:iso/vmlinuz",
        initrd="local:iso/initrd.gz", vga="serial0", scsi0=f"local:{SIZE}",
        virtio1=f"local:{SIZE},format=qcow2", **extra))
    config = px.nodes("n1").qemu(vmid).config.get()
    sums = {}
    for key, volid in disks(config).items():
        path = volume_path(c, "n1", volid)
        fill(path, tmp)
        sums[key] = digest(path)
    return vmid, sums


def owner(c: Cluster, vmid: int) -> str:
    return next(r["node"] for r in api(c["n1"]).cluster.resources.get(type="vm")
                if r["vmid"] == vmid)


def images(c: Cluster, node: str, storage: str, vmid: int) -> list[str]:
    return sorted(e["volid"] for e in api(c[node]).nodes(node).storage(storage)
                  .content.get(content="images") if int(e.get("vmid", 0)) == vmid)


def error_of(call) -> tuple[int, str]:
    from proxmoxer import ResourceException

    with pytest.raises(ResourceException) as exc:
        call()
    return exc.value.status_code, f"{exc.value.content} {exc.value.errors or ''}"


def test_offline_migration_copies_local_disks_and_maps_storages(
        cluster: Cluster, tmp_path: Path) -> None:
    c = cluster
    px = api(c["n1"])
    vmid, sums = make_vm(c, tmp_path, "xnode-offline")
    before = px.nodes("n1").qemu(vmid).config.get()

    # n1 -> n2, local disks mapped onto n2's own `local2`
    log = ok(c["n1"], "n1", px.nodes("n1").qemu(vmid).migrate.post(
        target="n2", targetstorage="local:local2", online=1))
    assert "VM isn't running. Doing offline migration instead." in log
    assert "copying 2 local volume(s) to node 'n2'" in log
    assert owner(c, vmid) == "n2"
    config = api(c["n2"]).nodes("n2").qemu(vmid).config.get()
    assert "lock" not in config
    moved = disks(config)
    assert all(v.startswith("local2:") for v in moved.values()), moved
    assert moved["virtio1"].endswith(".qcow2")       # the format is kept
    assert config["scsi0"].split(",", 1)[1] == before["scsi0"].split(",", 1)[1]
    for key, volid in moved.items():
        assert digest(volume_path(c, "n2", volid)) == sums[key], key
    for volid in disks(before).values():                # the source's copies are gone
        assert not volume_path(c, "n1", volid).exists()
    assert images(c, "n1", "local", vmid) == []

    # back to n1 without a map: local2 does not exist there; refused, nothing changed
    status, text = error_of(lambda: api(c["n2"]).nodes("n2").qemu(vmid).migrate.post(
        target="n1"))
    assert status == 500 and "storage 'local2' is not available on node 'n1'" in text
    assert owner(c, vmid) == "n2"
    # a bad map is a 400 on the parameter
    status, text = error_of(lambda: api(c["n2"]).nodes("n2").qemu(vmid).migrate.post(
        target="n1", targetstorage="local,local2"))
    assert status == 400 and "targetstorage" in text and "only be provided once" in text

    # back with a single target id: every disk onto n1's `local`
    ok(c["n2"], "n2", api(c["n2"]).nodes("n2").qemu(vmid).migrate.post(
        target="n1", targetstorage="local"))
    assert owner(c, vmid) == "n1"
    back = disks(px.nodes("n1").qemu(vmid).config.get())
    for key, volid in back.items():
        assert volid.startswith("local:")
        assert digest(volume_path(c, "n1", volid)) == sums[key], key
    assert images(c, "n2", "local2", vmid) == []

    ok(c["n1"], "n1", px.nodes("n1").qemu(vmid).delete())


def live_vm(c: Cluster, tmp: Path, name: str) -> tuple[int, dict[str, bytes]]:
    """A running VM on n1 (`make_vm`'s raw scsi0 and qcow2 virtio1, the guest's
    /dev/vda) with the guest agent, its writer counting into vda's first sector; (vmid,
    the guest-visible content of each disk before the start)."""
    from binome.lab.image import build_image

    vmid, _sums = make_vm(c, tmp, name, agent="enabled=1,type=virtio",
                          append=build_image().cmdline(ip="192.0.2.79/24", hostname=name))
    before = {key: content(volume_path(c, "n1", volid)) for key, volid in
              disks(api(c["n1"]).nodes("n1").qemu(vmid).config.get()).items()}
    ok(c["n1"], "n1", api(c["n1"]).nodes("n1").qemu(vmid).status.start.post())
    return vmid, before


def content(path: Path) -> bytes:
    """The guest-visible bytes of a volume (qcow2 read through qemu-img)."""
    fmt = "qcow2" if path.suffix == ".qcow2" else "raw"
    raw = path.with_name(path.name + f".{uuid.uuid4().hex[:6]}.check")
    subprocess.run(["qemu-img", "convert", "-U", "-f", fmt, "-O", "raw", str(path),
                    str(raw)], check=True)
    try:
        return raw.read_bytes()
    finally:
        raw.unlink()


class Writer:
    """The guest's own writer (test_agent's WRITER: a counter into /dev/vda's first
    sector, each write synced, its value in /tmp/seq) through the agent of `node`."""

    def __init__(self, c: Cluster, vmid: int) -> None:
        from tests.integration.guest.test_agent import WRITER

        self.c, self.vmid = c, vmid
        vm = self.vm("n1")
        wait_for(lambda: _quiet(lambda: vm.agent.ping.post()) == {"result": {}}, 90,
                 "the guest agent answering")
        self.pid = vm.agent.exec.post(command=["sh", "-c", WRITER])["pid"]
        wait_for(lambda: self.seq("n1") > 5, 30, "the guest's writer under way")

    def vm(self, node: str):
        return api(self.c[node]).nodes(node).qemu(self.vmid)

    def seq(self, node: str) -> int:
        text = self.vm(node).agent("file-read").get(file="/tmp/seq")["content"].strip()
        return int(text or 0)

    def answering(self, node: str) -> None:
        """The guest agent answers through `node` (right after a migration on a loaded
        machine, its first ping may not be answered within PVE's timeout)."""
        vm = self.vm(node)
        wait_for(lambda: _quiet(lambda: vm.agent.ping.post()) == {"result": {}}, 60,
                 f"the guest agent answering on {node}")

    def advancing(self, node: str, what: str) -> None:
        self.answering(node)
        mark = self.seq(node)
        wait_for(lambda: self.seq(node) > mark + 5, 30, f"the guest writing {what}")

    def stop(self, node: str) -> int:
        """Stop the writer (it must not have failed a write); its last value."""
        vm = self.vm(node)
        self.answering(node)
        vm.agent("file-write").post(file="/tmp/stop", content="")
        status = wait_for(lambda: (s := vm.agent("exec-status").get(pid=self.pid))[
            "exited"] and s, 30, "the writer to stop")
        assert status["exitcode"] == 0, status      # no write failed
        return self.seq(node)


def _quiet(call):
    try:
        return call()
    except Exception:
        return None


def written(before: bytes, last: int) -> bytes:
    """A disk's content once the writer wrote `last` into its first sector."""
    return f"{last}\n".encode().ljust(512, b"\0") + before[512:]


def test_live_migration_mirrors_local_disks_to_the_target(cluster: Cluster,
                                                          tmp_path: Path) -> None:
    """A running guest writing to its local qcow2 disk goes to n2 (API, PVE's
    `with-local-disks` and `targetstorage`: onto n2's own `local2`) and back (CLI, onto
    n1's `local`): QEMU mirrors each disk to the target QEMU's NBD export, the guest
    runs on (its agent's writer process and counter continue), the source's volumes go,
    and every byte the guest wrote is on the disks it ends on."""
    c = cluster
    px = api(c["n1"])
    vmid, before = live_vm(c, tmp_path, "xnode-live")
    old = disks(px.nodes("n1").qemu(vmid).config.get())
    writer = Writer(c, vmid)

    started = time.monotonic()
    log = ok(c["n1"], "n1", px.nodes("n1").qemu(vmid).migrate.post(
        target="n2", online=1, targetstorage="local:local2", **{"with-local-disks": 1}))
    took = time.monotonic() - started
    for key in ("scsi0", "virtio1"):
        assert f"drive mirror is starting for drive-{key}" in log, log
    assert "all 'mirror' jobs are ready" in log and "migration status: completed" in log
    assert "mirror jobs of scsi0, virtio1 finished" in log, log
    assert owner(c, vmid) == "n2" and qemu_pid(c["n1"], vmid) is None
    assert qemu_pid(c["n2"], vmid)
    config = api(c["n2"]).nodes("n2").qemu(vmid).config.get()
    assert "lock" not in config
    moved = disks(config)
    assert set(moved) == {"scsi0", "virtio1"}
    assert all(v.startswith(f"local2:{vmid}/") for v in moved.values()), moved
    assert moved["virtio1"].endswith(".qcow2")
    for volid in old.values():                  # PVE frees the source's local volumes
        assert f"{volid.partition(':')[2]}: removed on n1" in log, log
        assert not volume_path(c, "n1", volid).exists()
    assert images(c, "n1", "local", vmid) == []
    writer.advancing("n2", "on n2")        # the same guest: its writer process runs on

    # back with the CLI (PVE's qm options), onto n1's `local`
    started = time.monotonic()
    r = c["n2"].cli("vm", "migrate", str(vmid), "n1", "--online", "--with-local-disks",
                    "--targetstorage", "local")
    took += time.monotonic() - started
    assert "migration finished successfully" in r.stdout, r.stdout
    assert owner(c, vmid) == "n1" and qemu_pid(c["n2"], vmid) is None
    back = disks(px.nodes("n1").qemu(vmid).config.get())
    assert all(v.startswith(f"local:{vmid}/") for v in back.values()), back
    assert images(c, "n2", "local2", vmid) == []
    writer.advancing("n1", "back on n1")
    last = writer.stop("n1")
    ok(c["n1"], "n1", px.nodes("n1").qemu(vmid).status.stop.post())
    # every write the guest made reached the disk it ends on; nothing else changed
    assert content(volume_path(c, "n1", back["virtio1"])) == written(before["virtio1"], last)
    assert content(volume_path(c, "n1", back["scsi0"])) == before["scsi0"]
    print(f"two live migrations with local disks: {took:.1f} s")
    ok(c["n1"], "n1", px.nodes("n1").qemu(vmid).delete())


def test_a_failed_live_migration_leaves_the_guest_on_its_disks(cluster: Cluster,
                                                               tmp_path: Path) -> None:
    """The target's QEMU killed during the mirror: the task fails, the guest runs on
    n1 on its own disks, the target's new volumes are gone; the refusals that remain,
    nothing changed by them; the source's daemon killed during the mirror: settled
    when back, and the migration then goes through with every write the guest made."""
    c = cluster
    px = api(c["n1"])
    vmid, before = live_vm(c, tmp_path, "xnode-live-fail")
    old = px.nodes("n1").qemu(vmid).config.get()
    writer = Writer(c, vmid)
    pid = qemu_pid(c["n1"], vmid)

    # slow enough (KiB/s) to be caught mid-mirror: QEMU sleeps after each chunk for
    # its share of the limit, and sees the target gone after that sleep
    upid = px.nodes("n1").qemu(vmid).migrate.post(target="n2", online=1, bwlimit=4096,
                                                   **{"with-local-disks": 1})
    wait_for(lambda: "transferred" in task_log(c["n1"], "n1", upid), 60,
             "the mirror under way")
    assert images(c, "n2", "local", vmid), "no volume on n2 during the mirror"
    target_pid = qemu_pid(c["n2"], vmid)
    assert target_pid
    kill_pid(target_pid)
    st = wait_task(c["n1"], "n1", upid)
    log = task_log(c["n1"], "n1", upid)
    assert st["exitstatus"] != "OK", log
    assert "migration aborted" in log, log
    assert owner(c, vmid) == "n1" and qemu_pid(c["n1"], vmid) == pid
    after = px.nodes("n1").qemu(vmid).config.get()
    assert "lock" not in after and disks(after) == disks(old)
    wait_for(lambda: images(c, "n2", "local", vmid) == [], 30,
             "the target's volumes removed")
    writer.advancing("n1", "on n1 after the failed migration")

    # the refusals that remain: a target storage missing, no with-local-disks
    status, text = error_of(lambda: px.nodes("n1").qemu(vmid).migrate.post(
        target="n2", online=1, targetstorage="nosuch", **{"with-local-disks": 1}))
    assert status == 500 and "storage 'nosuch' does not exist" in text, text
    status, text = error_of(lambda: px.nodes("n1").qemu(vmid).migrate.post(
        target="n2", online=1))
    assert status == 500 and "without with-local-disks option" in text, text

    # n1's daemon dies mid-mirror (QEMU runs on): back, it cancels the migration (the
    # guest on n1, n2's copy and volumes gone, the lock removed), and nothing is left
    # in the way of the same migration
    upid = px.nodes("n1").qemu(vmid).migrate.post(target="n2", online=1, bwlimit=4096,
                                                   **{"with-local-disks": 1})
    wait_for(lambda: "transferred" in task_log(c["n1"], "n1", upid), 60,
             "the mirror under way")
    c["n1"].kill()
    try:
        assert qemu_pid(c["n1"], vmid) == pid, "the source QEMU died with its daemon"
    finally:
        c["n1"].start()
    via = api(c["n2"])
    wait_for(lambda: not next(r for r in via.cluster.resources.get(type="vm")
                              if r["vmid"] == vmid).get("lock"), 60, "the lock to go")
    wait_for(lambda: qemu_pid(c["n2"], vmid) is None and
             images(c, "n2", "local", vmid) == [], 30, "n2's copy and volumes gone")
    assert owner(c, vmid) == "n1" and qemu_pid(c["n1"], vmid) == pid
    wait_for(lambda: _quiet(lambda: writer.seq("n1")), 30, "n1's API back")
    writer.advancing("n1", "on n1 after its daemon's restart")
    log = ok(c["n2"], "n1", via.nodes("n1").qemu(vmid).migrate.post(
        target="n2", online=1, **{"with-local-disks": 1}))
    assert "all 'mirror' jobs are ready" in log, log
    assert owner(c, vmid) == "n2" and qemu_pid(c["n1"], vmid) is None

    last = writer.stop("n2")
    ok(c["n2"], "n2", via.nodes("n2").qemu(vmid).status.stop.post())
    now = disks(via.nodes("n2").qemu(vmid).config.get())
    assert content(volume_path(c, "n2", now["virtio1"])) == written(before["virtio1"], last)
    assert content(volume_path(c, "n2", now["scsi0"])) == before["scsi0"]
    assert images(c, "n1", "local", vmid) == []
    ok(c["n2"], "n2", via.nodes("n2").qemu(vmid).delete())


def test_live_migration_of_a_local_efi_disk_is_refused(cluster: Cluster,
                                                       tmp_path: Path) -> None:
    """PVE's limit kept: a running VM's local efidisk0 is not mirrored (refused with the
    reason, even with with-local-disks); the guest runs on, nothing on n2."""
    c = cluster
    px = api(c["n1"])
    vmid = int(px.cluster.nextid.get())
    ok(c["n1"], "n1", px.nodes("n1").qemu.post(
        vmid=vmid, name="xnode-efi", memory=64, bios="ovmf", vga="serial0",
        efidisk0="local:1,efitype=4m"))
    ok(c["n1"], "n1", px.nodes("n1").qemu(vmid).status.start.post())
    pid = qemu_pid(c["n1"], vmid)
    assert pid
    status, text = error_of(lambda: px.nodes("n1").qemu(vmid).migrate.post(
        target="n2", online=1, **{"with-local-disks": 1}))
    assert status == 500 and "live migration of local efidisk0" in text, text
    assert owner(c, vmid) == "n1" and qemu_pid(c["n1"], vmid) == pid
    assert images(c, "n2", "local", vmid) == []
    ok(c["n1"], "n1", px.nodes("n1").qemu(vmid).status.stop.post())
    ok(c["n1"], "n1", px.nodes("n1").qemu(vmid).delete())


def test_a_stopped_copy_leaves_the_source_whole_and_nothing_on_the_target(
        cluster: Cluster, tmp_path: Path) -> None:
    c = cluster
    px = api(c["n1"])
    vmid, sums = make_vm(c, tmp_path, "xnode-stopped")
    before = px.nodes("n1").qemu(vmid).config.get()
    # slow enough to be stopped mid-copy (PVE's bwlimit, KiB/s)
    upid = px.nodes("n1").qemu(vmid).migrate.post(target="n2", bwlimit=512)
    wait_for(lambda: "transferred" in task_log(c["n1"], "n1", upid), 60,
             "the copy to be under way")
    assert images(c, "n2", "local", vmid), "no copy on n2 while copying"
    px.nodes("n1").tasks(upid).delete()
    st = wait_task(c["n1"], "n1", upid)
    assert st["exitstatus"] != "OK"
    log = task_log(c["n1"], "n1", upid)
    assert "removed the copies on n2" in log, log
    assert owner(c, vmid) == "n1"
    after = px.nodes("n1").qemu(vmid).config.get()
    assert "lock" not in after and disks(after) == disks(before)
    for key, volid in disks(after).items():
        assert digest(volume_path(c, "n1", volid)) == sums[key], key
    assert images(c, "n2", "local", vmid) == []
    ok(c["n1"], "n1", px.nodes("n1").qemu(vmid).delete())


def test_ansible_clones_a_template_to_the_other_node(cluster: Cluster,
                                                     tmp_path: Path) -> None:
    from tests.integration.access.test_ansible import run_play

    c = cluster
    px = api(c["n1"])
    vmid, sums = make_vm(c, tmp_path, f"xnode-tmpl-{uuid.uuid4().hex[:4]}")
    ok(c["n1"], "n1", px.nodes("n1").qemu(vmid).template.post())
    newid = int(px.cluster.nextid.get())

    # refusals first: a storage n2 lacks is PVE's 400 on `storage`, nothing is created
    status, text = error_of(lambda: px.nodes("n1").qemu(vmid).clone.post(
        newid=newid, target="n2", storage="nosuch"))
    assert status == 400 and "storage" in text and "does not exist" in text
    status, text = error_of(lambda: px.nodes("n1").qemu(vmid).clone.post(
        newid=newid, target="w"))
    assert status == 400 and "witness" in text
    # what a clone cannot honour yet is refused, never ignored
    status, text = error_of(lambda: px.nodes("n1").qemu(vmid).clone.post(
        newid=newid, snapname="before", target="n2"))
    assert status == 400 and "snapname" in text and "not supported yet" in text
    # local2 is n2's only: a clone here cannot use it
    status, text = error_of(lambda: px.nodes("n1").qemu(vmid).clone.post(
        newid=newid, storage="local2"))
    assert status == 400 and "storage" in text and "not available on node 'n1'" in text
    assert px.cluster.resources.get(type="vm") and not [
        r for r in px.cluster.resources.get(type="vm") if r.get("vmid") == newid]

    token = px.access.users("admin@pve").token(f"xn{newid}").post(privsep=0)
    try:
        results = run_play(c, tmp_path, "admin@pve",
                           (f"xn{newid}", token["value"]),
                           [("community.proxmox.proxmox_kvm",
                             {"node": "n1", "vmid": vmid, "clone": "ignored",
                              "newid": newid, "name": "xnode-clone", "target": "n2",
                              "storage": "local2", "full": True, "timeout": 300})])
    finally:
        px.access.users("admin@pve").token(f"xn{newid}").delete()
    assert not results[0].get("failed"), results[0]
    assert results[0]["changed"] is True
    assert owner(c, newid) == "n2"
    config = api(c["n2"]).nodes("n2").qemu(newid).config.get()
    assert config["name"] == "xnode-clone" and "template" not in config
    assert "lock" not in config
    copied = disks(config)
    assert all(v.startswith(f"local2:{newid}/") for v in copied.values()), copied
    for key, volid in copied.items():
        assert digest(volume_path(c, "n2", volid)) == sums[key], key
    # the template is untouched on n1
    for key, volid in disks(px.nodes("n1").qemu(vmid).config.get()).items():
        assert digest(volume_path(c, "n1", volid)) == sums[key], key
    # the clone runs on n2
    ok(c["n2"], "n2", api(c["n2"]).nodes("n2").qemu(newid).status.start.post())
    ok(c["n2"], "n2", api(c["n2"]).nodes("n2").qemu(newid).status.stop.post())
    ok(c["n2"], "n2", api(c["n2"]).nodes("n2").qemu(newid).delete())
    ok(c["n1"], "n1", px.nodes("n1").qemu(vmid).delete())


def test_clones_here_onto_another_storage_and_from_a_snapshot(cluster: Cluster,
                                                             tmp_path: Path) -> None:
    """A same-node clone onto another storage in another format (Terraform's bpg
    provider clones so: `storage`, `format`), one from a snapshot (`snapname`: the
    config and the disks as the snapshot has them), and a clone never names the
    source's unused volumes (destroying it with --purge would delete them)."""
    c = cluster
    px = api(c["n1"])
    local3 = c.root / "n1-local3"
    local3.mkdir(exist_ok=True)
    px.storage.post(storage="local3", type="dir", path=str(local3), content="images",
                    nodes="n1")

    def path_of(volid: str) -> Path:
        storage, _, name = volid.partition(":")
        root = local3 if storage == "local3" else c["n1"].state_dir / "storage" / storage
        return root / "images" / name

    made: list[int] = []
    try:
        vmid, sums = make_vm(c, tmp_path, "clone-here")
        made.append(vmid)
        newid = int(px.cluster.nextid.get())
        status, text = error_of(lambda: px.nodes("n1").qemu(vmid).clone.post(
            newid=newid, snapname="nosuch"))
        assert status == 500 and "snapshot 'nosuch' does not exist" in text
        status, text = error_of(lambda: px.nodes("n1").qemu(vmid).clone.post(
            newid=newid, storage="nosuch"))
        assert status == 400 and "storage 'nosuch' does not exist" in text

        ok(c["n1"], "n1", px.nodes("n1").qemu(vmid).clone.post(
            newid=newid, storage="local3", format="qcow2", name="on-local3"))
        made.append(newid)
        copy = disks(px.nodes("n1").qemu(newid).config.get())
        assert sorted(copy) == ["scsi0", "virtio1"], copy
        for key, volid in copy.items():
            assert volid.startswith(f"local3:{newid}/") and volid.endswith(".qcow2"), volid
            assert digest(path_of(volid)) == sums[key], key
        source = disks(px.nodes("n1").qemu(vmid).config.get())
        for key, volid in source.items():
            assert digest(path_of(volid)) == sums[key], key

        # the source's detached disk is its own: a clone does not list it
        px.nodes("n1").qemu(vmid).config.put(delete="virtio1")
        unused = px.nodes("n1").qemu(vmid).config.get()["unused0"].split(",")[0]
        third = int(px.cluster.nextid.get())
        ok(c["n1"], "n1", px.nodes("n1").qemu(vmid).clone.post(newid=third))
        made.append(third)
        assert not [k for k in px.nodes("n1").qemu(third).config.get()
                    if k.startswith("unused")]
        ok(c["n1"], "n1", px.nodes("n1").qemu(third).delete(purge=1))
        made.remove(third)
        assert digest(path_of(unused)) == sums["virtio1"]

        # from a snapshot: a qcow2-only VM, written after the snapshot
        snapped = int(px.cluster.nextid.get())
        ok(c["n1"], "n1", px.nodes("n1").qemu.post(
            vmid=snapped, name="snapped", memory=128, kernel="local:iso/vmlinuz",
            initrd="local:iso/initrd.gz", vga="serial0",
            virtio0=f"local:{SIZE},format=qcow2"))
        made.append(snapped)
        disk = path_of(px.nodes("n1").qemu(snapped).config.get()["virtio0"].split(",")[0])
        fill(disk, tmp_path)
        at_snapshot = digest(disk)
        ok(c["n1"], "n1", px.nodes("n1").qemu(snapped).snapshot.post(snapname="before"))
        fill(disk, tmp_path)
        px.nodes("n1").qemu(snapped).config.put(memory=256)
        assert digest(disk) != at_snapshot
        fourth = int(px.cluster.nextid.get())
        log = ok(c["n1"], "n1", px.nodes("n1").qemu(snapped).clone.post(
            newid=fourth, snapname="before", storage="local3", format="raw"))
        made.append(fourth)
        assert "snapshot 'before'" in log, log
        config = px.nodes("n1").qemu(fourth).config.get()
        assert int(config["memory"]) == 128 and "parent" not in config
        new = config["virtio0"].split(",")[0]
        assert new.startswith(f"local3:{fourth}/") and new.endswith(".raw"), new
        assert digest(path_of(new)) == at_snapshot
        assert px.nodes("n1").qemu(fourth).snapshot.get() == [
            e for e in px.nodes("n1").qemu(fourth).snapshot.get() if e["name"] == "current"]
    finally:
        for each in reversed(made):
            with contextlib.suppress(Exception):
                ok(c["n1"], "n1", px.nodes("n1").qemu(each).delete(purge=1))
        px.storage("local3").delete()


def _spice_link(proxy: tuple[str, int], connect: str, ca: str, password: str) -> tuple[
        str, int]:
    """remote-viewer's way in: CONNECT through the SPICE proxy, TLS trusting the
    answer's CA, SPICE's link protocol on the main channel with the RSA-OAEP encrypted
    password. (the server certificate's subject as host-subject writes it, the link
    result: 0 = OK, 7 = SPICE_LINK_ERR_PERMISSION_DENIED)."""
    import socket
    import ssl
    import struct

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding

    def read_exactly(sock, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            assert chunk, f"closed after {data!r}"
            data += chunk
        return data

    raw = socket.create_connection(proxy, timeout=15)
    try:
        raw.sendall(f"CONNECT {connect} HTTP/1.0\r\nHost: {connect}\r\n\r\n".encode())
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            head += read_exactly(raw, 1)
        assert head == b"HTTP/1.0 200 OK\r\n\r\n", head
        ctx = ssl.create_default_context(cadata=ca)
        ctx.check_hostname = False      # remote-viewer checks host-subject instead
        tls = ctx.wrap_socket(raw, server_hostname=None)
        cert = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))
        subject = ",".join(f"{a.rfc4514_attribute_name}={a.value}"
                           for rdn in cert.subject.rdns for a in rdn)
        # SpiceLinkHeader (REDQ, 2.2, size) + SpiceLinkMess (main channel 1, id 0, no caps)
        mess = struct.pack("<IBBIII", 0, 1, 0, 0, 0, 18)
        tls.sendall(b"REDQ" + struct.pack("<III", 2, 2, len(mess)) + mess)
        magic, major, _minor, size = struct.unpack("<4sIII", read_exactly(tls, 16))
        assert (magic, major) == (b"REDQ", 2)
        reply = read_exactly(tls, size)
        error, = struct.unpack("<I", reply[:4])
        assert error == 0, error
        key = serialization.load_der_public_key(reply[4:4 + 162])
        tls.sendall(key.encrypt(password.encode() + b"\0", padding.OAEP(   # type: ignore
            mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)))
        result, = struct.unpack("<I", read_exactly(tls, 4))
        tls.close()
        return subject, result
    finally:
        raw.close()


def _proxy_refusal(proxy: tuple[str, int], connect: str) -> bytes:
    import socket

    with socket.create_connection(proxy, timeout=15) as s:
        s.sendall(f"CONNECT {connect} HTTP/1.1\r\nHost: {connect}\r\n\r\n".encode())
        answer = b""
        while chunk := s.recv(4096):
            answer += chunk
    return answer.split(b"\r\n", 1)[0]


def test_spice_console_through_the_other_nodes_api_and_proxy(cluster: Cluster) -> None:
    """PVE's SPICE console end to end: a qxl VM on n1, `spiceproxy` asked of n2's API
    (proxied to n1, the proxy set to n2), remote-viewer's path through n2's proxy
    (forwarded to n1's, then to QEMU's TLS port), the right and a wrong password; after
    a live migration to n2, through n1's proxy."""
    import re
    from urllib.parse import urlsplit

    c = cluster
    px1, px2 = api(c["n1"]), api(c["n2"])
    vmid = int(px1.cluster.nextid.get())
    ok(c["n1"], "n1", px1.nodes("n1").qemu.post(
        vmid=vmid, name="spicy", memory=128, kernel="local:iso/vmlinuz",
        initrd="local:iso/initrd.gz", vga="qxl"))
    status, text = error_of(lambda: px2.nodes("n1").qemu(vmid).spiceproxy.post())
    assert status == 500 and f"VM {vmid} not running" in text, text
    ok(c["n1"], "n1", px1.nodes("n1").qemu(vmid).status.start.post())
    try:
        assert px2.nodes("n1").qemu(vmid).status.current.get()["spice"] == 1
        conf = px2.nodes("n1").qemu(vmid).spiceproxy.post(proxy=c["n2"].address)
        ca_pem = (c["n1"].state_dir / "pki" / "ca.pem").read_text()
        assert conf["type"] == "spice" and conf["title"] == f"VM {vmid} - spicy"
        assert conf["proxy"] == f"http://{c['n2'].address}:3128"
        assert 61000 <= int(conf["tls-port"]) <= 61999
        assert re.fullmatch(rf"pvespiceproxy:[0-9a-f]{{8}}:{vmid}:n1:{conf['tls-port']}"
                            r"::[0-9a-f]{40}", conf["host"])
        assert re.fullmatch(r"[0-9a-f]{40}", conf["password"])
        assert conf["ca"] == ca_pem.replace("\n", "\\n") and conf["delete-this-file"] == 1
        assert (conf["secure-attention"], conf["toggle-fullscreen"],
                conf["release-cursor"]) == ("Ctrl+Alt+Ins", "Shift+F11", "Ctrl+Alt+R")
        # PVE's read_x509_subject_spice: OpenSSL's one-line subject, '/' made ','
        oneline = subprocess.run(
            ["openssl", "x509", "-in", str(c["n1"].state_dir / "pki" / "node.pem"),
             "-noout", "-subject", "-nameopt", "compat"],
            check=True, capture_output=True, text=True).stdout.strip()
        assert conf["host-subject"] == oneline.removeprefix("subject=/").replace("/", ",")
        proxy = urlsplit(conf["proxy"])
        via = (proxy.hostname, proxy.port)
        connect = f"{conf['host']}:{conf['tls-port']}"
        ca = conf["ca"].replace("\\n", "\n")
        subject, result = _spice_link(via, connect, ca, "0" * 40)
        assert subject == conf["host-subject"]
        assert result == 7, "a wrong password: SPICE_LINK_ERR_PERMISSION_DENIED"
        assert _spice_link(via, connect, ca, conf["password"]) == (subject, 0)
        # n1's own proxy takes it too; the default proxy is the VM's node
        conf = px1.nodes("n1").qemu(vmid).spiceproxy.post()
        assert conf["proxy"] == f"http://{c['n1'].address}:3128"
        assert _spice_link((c["n1"].address, 3128), f"{conf['host']}:{conf['tls-port']}",
                           ca, conf["password"])[1] == 0
        # a forged ticket or another port than signed: the proxy's refusal
        plain, _, _sig = conf["host"].partition("::")
        for forged in (f"{plain}::{'0' * 40}:{conf['tls-port']}",
                       f"{conf['host']}:{int(conf['tls-port']) + 1}"):
            assert _proxy_refusal(via, forged) == b"HTTP/1.1 401 invalid ticket"
        # live-migrated, the guest's SPICE display is on n2 (through n1's proxy now)
        ok(c["n1"], "n1", px1.nodes("n1").qemu(vmid).migrate.post(target="n2", online=1))
        node = owner(c, vmid)
        assert node == "n2"
        conf = px1.nodes("n2").qemu(vmid).spiceproxy.post(proxy=c["n1"].address)
        assert f":{vmid}:n2:" in conf["host"]
        assert _spice_link((c["n1"].address, 3128), f"{conf['host']}:{conf['tls-port']}",
                           ca, conf["password"])[1] == 0
        # a VM without SPICE
        ok(c[node], node, px1.nodes(node).qemu(vmid).status.stop.post())
        px1.nodes(node).qemu(vmid).config.put(vga="std")
        ok(c[node], node, px1.nodes(node).qemu(vmid).status.start.post())
        status, text = error_of(lambda: px2.nodes(node).qemu(vmid).spiceproxy.post())
        assert status == 500 and "no spice port" in text, text
        assert "spice" not in px2.nodes(node).qemu(vmid).status.current.get()
    finally:
        node = owner(c, vmid)
        ok(c[node], node, px1.nodes(node).qemu(vmid).status.stop.post())
        ok(c[node], node, px1.nodes(node).qemu(vmid).delete())
