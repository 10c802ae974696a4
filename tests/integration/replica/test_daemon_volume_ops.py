"""Dual-primary, online verify, resize and a local disk I/O error's notification through
the real path (CLI -> API -> binomed -> engine, etcd, the kernel's EIO, aiosmtpd): one
2-node + witness cluster for the module."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from binome.lab.nbd_client import NbdClient
from tests.integration.access.client import Api
from tests.integration.harness import Cluster, wait_for
from tests.integration.notify.mailbox import Inbox
from tests.integration.replica.test_daemon_volumes import (
    MiB,
    backing,
    in_sync,
    store_get,
    volume_cluster,
    vstatus,
)
from tests.integration.replica.test_io_errors import (  # noqa: F401 (fixture)
    FailingDisk,
    failing_disk,
)


@pytest.fixture(scope="module")
def vc(tmp_path_factory) -> Iterator[Cluster]:
    yield from volume_cluster(tmp_path_factory, "volops")


def test_two_primaries_and_online_verify_through_the_api(
        vc: Cluster, mail: tuple[Inbox, Api]) -> None:
    n1, n2 = vc["n1"], vc["n2"]
    inbox, _ = mail
    r = n1.cli("volume", "create", "d1", "--size", "8M", "--protocol", "A",
               "--allow-two-primaries", "1", check=False)
    assert r.returncode != 0 and "allow-two-primaries requires protocol C" in r.stdout + r.stderr
    n1.cli("volume", "create", "d1", "--size", "8M", "--allow-two-primaries", "1")
    wait_for(lambda: in_sync(vstatus(n2, "d1")), 30, "n2 in sync")
    out = n2.cli("volume", "primary", "d1").stdout
    assert "ro:Primary/Primary" in out
    assert vstatus(n1, "d1")["peer_role"] == "Primary"
    n2.cli("volume", "secondary", "d1")
    # online verify, started through the API, finds a block damaged behind n2's engine
    fd = os.open(backing(n2, "d1"), os.O_WRONLY)
    try:
        os.pwrite(fd, b"rot" * 100, 5 * MiB + 7)
        os.fsync(fd)
    finally:
        os.close(fd)
    out = n1.cli("volume", "verify", "d1").stdout
    assert "d1: cs:" in out
    wait_for(lambda: vstatus(n1, "d1").get("cstate") == "Connected", 30, "verify done")
    show = json.loads(n1.cli("volume", "show", "d1", "--output-format", "json").stdout)
    assert show["verify"]["finished"] and show["verify"]["found_blocks"] == 1
    assert show["verify"]["ranges"] == [[5 * MiB, 4096]]
    assert show["verify"]["verified_kib"] == 8 * 1024 and show["out_of_sync_kib"] == 4
    # cluster-visible: the published state and the cluster log
    wait_for(lambda: ((store_get(vc, "/binome/volumes/d1/state/n1") or {}).get("verify")
                      or {}).get("found_blocks") == 1, 10, "the verify result in etcd")
    wait_for(lambda: any("online verify on n1 finished after 8192 KiB: 1 blocks out of sync"
                         in e["msg"] for e in n1.json("cluster", "log", "--max", "50")),
             10, "the cluster log entry")
    # ... and mailed once, by the node that ran it
    (_, text), = wait_for(lambda: inbox.events("Verify found differences on d1"), 30,
                          "the verify mail")
    assert "against n2 found 4096 bytes that differ" in text, text
    # disconnect/connect resyncs the block
    n2.cli("volume", "disconnect", "d1")
    n2.cli("volume", "connect", "d1")
    wait_for(lambda: in_sync(s := vstatus(n2, "d1")) and s["out_of_sync_kib"] == 0, 30,
             "n2 resynced")
    assert backing(n1, "d1").read_bytes() == backing(n2, "d1").read_bytes()
    r = n1.cli("volume", "verify-stop", "d1", check=False)
    assert r.returncode != 0 and "no online verify is running" in r.stdout + r.stderr
    # grow it through the API: both copies and the record
    n2.cli("volume", "resize", "d1", "--size", "12M")
    for node in (n1, n2):
        wait_for(lambda node=node: vstatus(node, "d1").get("size") == 12 * MiB, 10,
                 f"{node.name}'s copy grown")
        assert backing(node, "d1").stat().st_size == 12 * MiB
    assert store_get(vc, "/binome/volumes/d1/config")["size"] == 12 * MiB
    r = n1.cli("volume", "resize", "d1", "--size", "8M", check=False)
    assert r.returncode != 0 and "shrinking a volume is not supported" in r.stdout + r.stderr


def test_vm_disk_resize_grows_both_copies(vc: Cluster) -> None:
    n1, n2 = vc["n1"], vc["n2"]
    n1.cli("storage", "add", "repl", "--type", "replicated", "--content", "images")
    n1.cli("vm", "create", "300", "--memory", "64", "--virtio0", "repl:0.0625")   # 64 MiB
    name = "vm-300-disk-0"
    wait_for(lambda: in_sync(vstatus(n2, name)), 90, "n2's copy in sync")
    assert vstatus(n1, name)["size"] == 64 * MiB
    n1.cli("vm", "resize", "300", "virtio0", "+64M")
    for node in (n1, n2):
        st = wait_for(lambda node=node: (s := vstatus(node, name)).get("size") == 128 * MiB
                      and s, 20, f"{node.name}'s copy grown")
        assert st["out_of_sync_kib"] == 0
        assert backing(node, name).stat().st_size == 128 * MiB
    assert store_get(vc, f"/binome/volumes/{name}/config")["size"] == 128 * MiB
    conf = n1.json("vm", "config", "300")
    assert "size=128M" in conf["virtio0"]


def _sha(path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def _guest_sha(path, fmt: str) -> str:
    """SHA-256 of what the guest sees in an image (a qcow2 one read through qemu-img;
    -U: its volume engine has the file open)."""
    with tempfile.NamedTemporaryFile(suffix=".raw") as out:
        subprocess.run(["qemu-img", "convert", "-U", "-f", fmt, "-O", "raw", str(path),
                        out.name], check=True, capture_output=True)
        return _sha(Path(out.name))


def test_vm_disk_moves_between_replicated_and_dir(vc: Cluster) -> None:
    """move_disk of VM 300's disk (replicated, from the test above): stopped off the
    replicated storage to `local` (qemu-img over the engine's NBD export), then with
    the VM running (a QEMU without an OS) onto the replicated storage and off it again
    by QEMU's mirror job, then in and out again as a qcow2 image inside the replicated
    volume, each time with delete=1; the data the same on every copy."""
    n1, n2 = vc["n1"], vc["n2"]

    def disk() -> str:
        return n1.json("vm", "config", "300")["virtio0"].split(",")[0]

    def move(storage: str, *fmt: str) -> str:
        out = n1.cli("vm", "move-disk", "300", "virtio0", storage, "--delete", "1",
                     *(("--format", fmt[0]) if fmt else ())).stdout
        assert "TASK OK" in out or disk().startswith(storage + ":"), out
        return out

    assert disk() == "repl:vm-300-disk-0"
    move("local")                                      # stopped: qemu-img convert
    local = n1.state_dir / "storage" / "local" / "images" / "300" / "vm-300-disk-0.raw"
    assert disk() == "local:300/vm-300-disk-0.raw" and local.stat().st_size == 128 * MiB
    wait_for(lambda: vstatus(n1, "vm-300-disk-0") == {}, 30, "the replicated volume gone")
    with open(local, "r+b") as f:                      # data to carry along
        f.write(os.urandom(4 * MiB))
    digest = _sha(local)
    n1.cli("vm", "start", "300")
    try:
        out = move("repl")                             # running: mirror into NBD
        assert "drive-virtio0: Completed successfully." in out, out
        name = disk().partition(":")[2]
        assert disk().startswith("repl:vm-300-disk-") and not local.exists()
        wait_for(lambda: in_sync(vstatus(n2, name)), 60, "n2's copy in sync")
        assert _sha(backing(n2, name)) == digest       # the peer's copy has the data
        out = move("local")                            # running: mirror out of NBD
        assert "drive-virtio0: Completed successfully." in out, out
        assert disk().startswith("local:300/vm-300-disk-")
        wait_for(lambda: vstatus(n1, name) == {}, 30, "the replicated volume gone")
        # a qcow2 image inside a replicated volume, the same way in and out
        out = move("repl", "qcow2")
        assert "drive-virtio0: Completed successfully." in out, out
        name = disk().partition(":")[2]
        assert n1.json("vm", "config", "300")["virtio0"].startswith(f"repl:{name}")
        wait_for(lambda: in_sync(vstatus(n2, name)), 60, "n2's qcow2 copy in sync")
        assert _guest_sha(backing(n2, name), "qcow2") == digest
        out = move("local", "raw")
        assert "drive-virtio0: Completed successfully." in out, out
        wait_for(lambda: vstatus(n1, name) == {}, 30, "the qcow2 replicated volume gone")
    finally:
        n1.cli("vm", "stop", "300", check=False)
    final = n1.state_dir / "storage" / "local" / "images" / "300" / \
        disk().rpartition("/")[2]
    assert _sha(final) == digest


def test_backup_and_restore_onto_replicated_storage(vc: Cluster) -> None:
    """A guest on replicated storage is backed up (its volume read through the engine's
    NBD export) to a dir storage, and restored with `--storage repl`: the restore creates
    a replicated volume, writes it on n1 (Primary), n2's copy gets the same bytes, and
    the restored guest's QEMU runs from it."""
    from binome.backup.nbd import NbdExport
    from binome.storage.replica.node.volumes import ENGINE_SUBDIR, VolumeService

    n1, n2 = vc["n1"], vc["n2"]
    if not any(s["storage"] == "repl" for s in n1.json("storage", "list")):
        n1.cli("storage", "add", "repl", "--type", "replicated", "--content", "images")
    n1.cli("storage", "add", "bk", "--type", "dir", "--path", str(n1.state_dir / "bk"),
           "--content", "backup", "--nodes", "n1")
    n1.cli("vm", "create", "310", "--memory", "64", "--virtio0", "repl:0.03125")  # 32 MiB
    source = "vm-310-disk-0"
    wait_for(lambda: in_sync(vstatus(n2, source)), 60, "n2's copy of the source in sync")
    socket = VolumeService._socket_dir(n1.state_dir / ENGINE_SUBDIR) / f"{source}.sock"
    pattern = b"".join(bytes([i]) * MiB for i in range(1, 9)) + b"replicated restore" * 1000
    with NbdExport(str(socket), source) as export:      # what a guest would have written
        export.pwrite(3 * MiB, pattern)
        export.flush()
    expected = backing(n1, source).read_bytes()[:32 * MiB]
    out = n1.cli("vzdump", "310", "--storage", "bk").stdout
    assert "Finished Backup of VM 310" in out, out
    (backup,) = [e for e in n1.json("storage", "content", "bk") if e["content"] == "backup"]
    out = n1.cli("qmrestore", backup["volid"], "311", "--storage", "repl").stdout
    assert "new volume ID is 'repl:vm-311-disk-0'" in out, out
    config = n1.json("vm", "config", "311")
    assert config["virtio0"].startswith("repl:vm-311-disk-0,")
    restored = "vm-311-disk-0"
    wait_for(lambda: in_sync(vstatus(n2, restored)), 60, "n2's copy of the restore in sync")
    for node in (n1, n2):
        assert backing(node, restored).read_bytes()[:32 * MiB] == expected, node.name
    # the guest runs from the replicated volume (QEMU opens n1's export; no OS needed)
    n1.cli("vm", "start", "311")
    try:
        wait_for(lambda: n1.json("vm", "status", "311")["status"] == "running", 30,
                 "the restored guest running")
        wait_for(lambda: vstatus(n1, restored).get("open_count", 0) >= 1, 10,
                 "QEMU has the restored volume open")
    finally:
        n1.cli("vm", "stop", "311", check=False)   # the cluster's stop leaves guests


@pytest.mark.skipif(os.geteuid() != 0 or not all(shutil.which(t) for t in (
    "losetup", "mkfs.ext4", "mount", "blockdev")), reason="needs root and losetup")
def test_a_local_disk_io_error_is_mailed_by_its_node_and_the_disk_replaced(
        vc: Cluster, mail: tuple[Inbox, Api],
        failing_disk: FailingDisk) -> None:  # noqa: F811 (the fixture)
    """A real kernel EIO under n1's copy (its backing moved onto the failing loop device of
    test_io_errors while the volume was down): the engine detaches the disk, the volume
    is served through n2, and n1's daemon mails it, once, saying what failed and what to
    do; doing it (a new disk at the same path, `volume secondary`, `volume attach`)
    brings n1's copy back, resynced in full from n2."""
    from binome.storage.replica.node.volumes import ENGINE_SUBDIR, VolumeService

    inbox, api = mail
    n1, n2 = vc["n1"], vc["n2"]
    api.ok("POST", "/cluster/notifications/matchers", name="disk-events", target=["mail"],
           **{"match-field": ["exact:type=disk"]})
    n1.cli("volume", "create", "e1", "--size", "16M")       # the failing disk's size
    data = backing(n1, "e1")
    try:
        wait_for(lambda: in_sync(vstatus(n2, "e1")), 30, "n2's copy of e1 in sync")
        n1.cli("volume", "secondary", "e1")
        n1.cli("volume", "down", "e1")
        subprocess.run(["dd", f"if={data}", f"of={failing_disk.device}", "bs=1M",
                        "oflag=direct", "status=none"], check=True)
        data.unlink()
        data.symlink_to(failing_disk.device)
        n1.cli("volume", "up", "e1")
        wait_for(lambda: in_sync(vstatus(n1, "e1")), 30, "n1's copy of e1 up, in sync")
        n1.cli("volume", "primary", "e1")
        written, later = os.urandom(65536), os.urandom(8192)
        sockets = VolumeService._socket_dir(n1.state_dir / ENGINE_SUBDIR)   # the daemon's

        async def io() -> None:
            c = await NbdClient.connect(str(sockets / "e1.sock"), "e1")
            try:
                await c.write(MiB, written)
                await c.flush()
                failing_disk.fail()
                await c.write(5 * MiB, later)       # meets the EIO, served by n2
                await c.flush()
                assert await c.read(MiB, 65536) == written
            finally:
                await c.close()

        asyncio.run(io())
        st = wait_for(lambda: (s := vstatus(n1, "e1")).get("disk") == "Diskless" and s, 30,
                      "n1's disk detached")
        assert st["peer_disk"] == "UpToDate", st
        title = f"I/O error on {data} (e1)"
        (mail_, text), = wait_for(lambda: inbox.events(title), 30, f"the mail '{title}'")
        assert f"The local disk {data} of volume e1 on n1 failed: a flush (fdatasync) " \
               "returned EIO (Input/output error)." in text, text
        assert "The disk was detached (on-io-error detach): the volume now reads and " \
               "writes through n2 (diskless), and n2 holds its only copy" in text, text
        assert "'binome volume attach e1' resyncs the whole volume from n2" in text, text
        assert "'binome volume secondary e1'" in text, text       # n1 is its Primary
        assert str(mail_["Message-ID"]).endswith("@n1>"), mail_["Message-ID"]
        show = json.loads(n1.cli("volume", "show", "e1", "--output-format", "json").stdout)
        assert (show["io_error"]["op"], show["io_error"]["errno"]) == ("flush", "EIO"), show
        # what the mail says to do: a new disk at the same path, Secondary, attach
        data.unlink()
        with open(data, "wb") as f:
            f.truncate(16 * MiB)
        n1.cli("volume", "secondary", "e1")
        n1.cli("volume", "attach", "e1")
        wait_for(lambda: in_sync(vstatus(n1, "e1")), 30, "n1's new disk resynced from n2")
        copy = data.read_bytes()
        assert copy[MiB:MiB + 65536] == written and copy[5 * MiB:5 * MiB + 8192] == later
        assert copy == backing(n2, "e1").read_bytes()
        assert len(inbox.events(title)) == 1, inbox.subjects()     # said once
    finally:
        n1.cli("volume", "destroy", "e1", "--yes", check=False)   # releases the device
        api.call("DELETE", "/cluster/notifications/matchers/disk-events")


def test_a_split_brain_resolved_by_its_policy_is_mailed_by_the_survivor(
        vc: Cluster, mail: tuple[Inbox, Api]) -> None:
    """A volume created with `--after-sb-0pri discard-least-changes`; both copies written
    while disconnected (standalone mode, no fencing), both Secondary at the reconnect:
    the engines resolve it by the policy (n2 wrote more, n1's changes are discarded) and
    the survivor, n2, mails that, naming the policy; nothing waits for an admin."""
    inbox, _ = mail
    n1, n2 = vc["n1"], vc["n2"]
    n1.cli("volume", "create", "s1", "--size", "8M", "--after-sb-0pri",
           "discard-least-changes")

    async def write(node: str, offset: int, blocks: int) -> None:
        sock = vstatus(vc[node], "s1")["socket"]
        c = await NbdClient.connect(sock, "s1")
        try:
            for i in range(blocks):
                await c.write(offset + i * 4096, os.urandom(4096))
            await c.flush()
        finally:
            await c.close()

    try:
        wait_for(lambda: in_sync(vstatus(n2, "s1")), 30, "n2's copy of s1 in sync")
        for node in (n1, n2):
            node.cli("volume", "standalone", "s1", "--yes")
        for node in (n1, n2):
            node.cli("volume", "disconnect", "s1")
        asyncio.run(write("n1", MiB, 1))                 # n1 (Primary): one block
        n1.cli("volume", "secondary", "s1")
        n2.cli("volume", "primary", "s1", "--force", "1")
        asyncio.run(write("n2", 2 * MiB, 3))             # n2: three blocks
        n2.cli("volume", "secondary", "s1")
        for node in (n1, n2):
            node.cli("volume", "connect", "s1")
        wait_for(lambda: in_sync(vstatus(n1, "s1")) and in_sync(vstatus(n2, "s1")), 30,
                 "the split brain resolved and resynced")
        assert backing(n1, "s1").read_bytes() == backing(n2, "s1").read_bytes()
        rec = vstatus(n2, "s1")["split_brain"]
        assert (rec["state"], rec["policy"], rec["survivor"], rec["victim"]) == \
            ("resolved", "after-sb-0pri discard-least-changes", "n2", "n1"), rec
        (mail_, text), = wait_for(lambda: inbox.events("Split brain on volume s1 resolved"),
                                  30, "the split-brain-resolved mail")
        assert "was resolved by the policy 'after-sb-0pri discard-least-changes': n2 keeps " \
               "its data; the changes made on n1" in text, text
        assert "n1 resyncs from n2" in text, text
        assert str(mail_["Message-ID"]).endswith("@n2>"), mail_["Message-ID"]
    finally:
        for node in (n1, n2):
            node.cli("volume", "standalone", "s1", "--enable", "0", "--yes", check=False)
        n1.cli("volume", "destroy", "s1", "--yes", check=False)


def _qemu_io(uri: str, fmt: str, command: str) -> str:
    import subprocess

    out = subprocess.run(["qemu-io", "-f", fmt, "-c", command, uri], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout + out.stderr


def test_qcow2_volume_snapshots_backup_and_restore(vc: Cluster) -> None:
    """A disk allocated with format=qcow2 on replicated storage: a qcow2 image inside the
    replicated device (device = twice the image + metadata room). A stopped guest's
    snapshot is taken and rolled back by qemu-img on n1's export: write A, snapshot,
    write B, rollback, read A; the snapshot is in n2's copy too. A raw replicated disk
    is refused with the reason. The guest is backed up (its image read through
    qemu-nbd, what the guest sees) and restored; the restore reads A."""
    import shutil
    import subprocess

    from binome.storage.replica.node.volumes import ENGINE_SUBDIR, VolumeService
    from binome.storage.replicated import qcow2_device_size

    if shutil.which("qemu-io") is None:
        pytest.skip("qemu-io is not installed (qemu-utils)")
    n1, n2 = vc["n1"], vc["n2"]
    if not any(s["storage"] == "repl" for s in n1.json("storage", "list")):
        n1.cli("storage", "add", "repl", "--type", "replicated", "--content", "images")
    n1.cli("vm", "create", "320", "--memory", "64", "--virtio0", "repl:0.0625,format=qcow2")
    name = "vm-320-disk-0"
    assert n1.json("vm", "config", "320")["virtio0"].startswith(f"repl:{name},")
    wait_for(lambda: in_sync(vstatus(n2, name)), 60, "n2's copy in sync")
    assert vstatus(n1, name)["size"] == qcow2_device_size(64 * MiB)
    (entry,) = [e for e in n1.json("storage", "content", "repl") if e["volid"] == f"repl:{name}"]
    assert entry["format"] == "qcow2" and entry["size"] == 64 * MiB
    rec = store_get(vc, f"/binome/volumes/{name}/config")
    assert rec["image"] == {"format": "qcow2", "size": 64 * MiB}
    socket = VolumeService._socket_dir(n1.state_dir / ENGINE_SUBDIR) / f"{name}.sock"
    uri = f"nbd+unix:///{name}?socket={socket}"

    _qemu_io(uri, "qcow2", "write -P 0x41 0 64k")                     # data A
    n1.cli("vm", "snapshot", "320", "snap-a")
    _qemu_io(uri, "qcow2", "write -P 0x42 0 64k")                     # data B
    assert [s["name"] for s in n1.json("vm", "listsnapshot", "320")] == ["snap-a", "current"]
    n1.cli("vm", "rollback", "320", "snap-a")
    assert "Pattern verification failed" not in _qemu_io(uri, "qcow2", "read -P 0x41 0 64k")
    # the snapshot is in the peer's copy: its backing file holds the same image
    wait_for(lambda: in_sync(vstatus(n2, name)), 30, "n2's copy in sync")
    image = json.dumps({"driver": "qcow2", "file": {"driver": "file",
                                                    "filename": str(backing(n2, name))}})
    listing = subprocess.run(["qemu-img", "snapshot", "-U", "-l", f"json:{image}"],
                             capture_output=True, text=True, check=True).stdout
    assert " snap-a " in listing, listing

    # a raw replicated disk has no snapshots: refused, nothing changed
    n1.cli("vm", "set", "320", "--virtio1", "repl:0.015625")
    r = n1.cli("vm", "snapshot", "320", "snap-b", check=False)
    assert r.returncode != 0 and "is raw: snapshots need a qcow2 volume" in r.stdout + r.stderr
    assert [s["name"] for s in n1.json("vm", "listsnapshot", "320")] == ["snap-a", "current"]
    n1.cli("vm", "set", "320", "--delete", "virtio1", "--force", "1")

    # backup (the image as the guest sees it) and restore (a raw replicated volume)
    if not any(s["storage"] == "bk" for s in n1.json("storage", "list")):
        n1.cli("storage", "add", "bk", "--type", "dir", "--path", str(n1.state_dir / "bk"),
               "--content", "backup", "--nodes", "n1")
    out = n1.cli("vzdump", "320", "--storage", "bk").stdout
    assert "Finished Backup of VM 320" in out, out
    backup = max((e for e in n1.json("storage", "content", "bk")
                  if e["content"] == "backup" and e["vmid"] == 320), key=lambda e: e["ctime"])
    out = n1.cli("qmrestore", backup["volid"], "321", "--storage", "repl").stdout
    assert "new volume ID is 'repl:vm-321-disk-0'" in out, out
    restored = VolumeService._socket_dir(n1.state_dir / ENGINE_SUBDIR) / "vm-321-disk-0.sock"
    raw = f"nbd+unix:///vm-321-disk-0?socket={restored}"
    assert "Pattern verification failed" not in _qemu_io(raw, "raw", "read -P 0x41 0 64k")
    n1.cli("vm", "delsnapshot", "320", "snap-a")
    assert [s["name"] for s in n1.json("vm", "listsnapshot", "320")] == ["current"]
    for vmid in ("320", "321"):
        n1.cli("vm", "destroy", vmid, check=False)
