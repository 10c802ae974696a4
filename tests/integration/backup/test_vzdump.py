"""vzdump and restore through the API (proxmoxer) with real QEMU guests and disks.

The consistency check of a live backup: the guest fills its disk with `A\\n`, the backup
starts (slowed by bwlimit), the guest then overwrites the whole disk with `B\\n` while
the backup still runs; the restored disk must hash like the all-`A` disk (the disk at
the backup's start) and the source disk like the all-`B` one (the writes did happen
during the backup). A backup that does not fleece would restore a mix.
"""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.integration.harness import PASSWORD, Cluster, wait_for

pytestmark = pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None
                                or shutil.which("qemu-nbd") is None,
                                reason="QEMU (qemu-system-x86, qemu-utils) is not installed")

DISK_MIB = 64
DISK = DISK_MIB << 20


@pytest.fixture(scope="module")
def px(cluster: Cluster):
    from proxmoxer import ProxmoxAPI

    from binome.lab.image import build_image

    image = build_image()
    iso = cluster["n1"].state_dir / "storage" / "local" / "template" / "iso"
    iso.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(image.kernel, iso / "vmlinuz")
    shutil.copyfile(image.initrd, iso / "initrd.gz")
    api = ProxmoxAPI(cluster["n1"].address, user="admin@pve", password=PASSWORD,
                     verify_ssl=False, timeout=30)
    backup_dir = cluster["n1"].state_dir / "backups"
    if "bk" not in {s["storage"] for s in api.storage.get()}:
        api.storage.post(storage="bk", type="dir", path=str(backup_dir), content="backup",
                         nodes="n1")
    return api


def wait_task(px, upid: str, timeout: float = 120) -> dict:
    from proxmoxer.tools import Tasks

    status = Tasks.blocking_status(px, upid, timeout=timeout, polling_interval=0.2)
    assert status is not None, f"task {upid} did not finish"
    return status


def task_log(px, upid: str) -> list[str]:
    return [line["t"] for line in px.nodes("n1").tasks(upid).log.get(limit=1000)]


def image_path(cluster: Cluster, volid: str) -> Path:
    storage, volname = volid.split(",")[0].split(":")
    assert storage == "local"
    return cluster["n1"].state_dir / "storage" / "local" / "images" / volname


def sha256_of(path: Path, fmt: str = "raw") -> str:
    if fmt != "raw":
        with tempfile.TemporaryDirectory() as scratch:
            raw = Path(scratch) / "image.raw"
            subprocess.run(["qemu-img", "convert", "-f", fmt, "-O", "raw", str(path),
                            str(raw)], check=True, capture_output=True)
            return sha256_of(raw)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def filled(letter: str, other: str = "", mibs: range = range(0)) -> str:
    """The hash of a disk of `letter\\n`, with `other\\n` in the MiBs `mibs`."""
    whole = hashlib.sha256()
    for mib in range(DISK_MIB):
        whole.update(((other if mib in mibs else letter) + "\n").encode() * (1 << 19))
    return whole.hexdigest()


def mib_letters(path: Path) -> str:
    """What each MiB of a disk holds (`A`, `B`, `?` for anything else): for messages."""
    data = path.read_bytes()
    return "".join(chr(data[i]) if data[i:i + (1 << 20)] == data[i:i + 2] * (1 << 19)
                   else "?" for i in range(0, len(data), 1 << 20))


def backups(px, vmid: int | None = None) -> list[dict]:
    listed = px.nodes("n1").storage("bk").content.get(content="backup")
    return [b for b in listed if vmid is None or b["vmid"] == vmid]


class Console:
    """Runs shell commands in the lab guest over its serial socket."""

    def __init__(self, socket: Path) -> None:
        self.socket = socket
        self.count = 0

    async def run(self, command: str, timeout: float) -> None:
        from binome.guest.console import open_serial

        self.count += 1
        token = f"cmd-done-{self.count}"
        reader, writer = await open_serial(self.socket)
        try:
            # the token is split in the command so its echo never matches the output line
            writer.write(f"\n{command}; echo cmd-done-''{self.count}\n".encode())
            await writer.drain()
            seen = b""
            deadline = time.monotonic() + timeout
            while True:
                left = deadline - time.monotonic()
                assert left > 0, f"'{command}' did not finish: {seen[-400:]!r}"
                chunk = await asyncio.wait_for(reader.read(4096), left)
                assert chunk, "serial socket closed"
                seen += chunk
                lines = [ln.strip() for ln in seen.decode(errors="replace").splitlines()]
                if token in lines:
                    return
        finally:
            writer.close()
            await writer.wait_closed()

    def __call__(self, command: str, timeout: float = 60) -> None:
        asyncio.run(self.run(command, timeout))


def wait_shell(console: Console) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            console("true", timeout=3)
            return
        except (AssertionError, TimeoutError, OSError):
            if time.monotonic() > deadline:
                raise


def fill_disk(console: Console, letter: str, mibs: range = range(DISK_MIB)) -> None:
    """The guest writes `letter\\n` over the MiBs `mibs` of its disk (1 MiB writes: fast
    under TCG), then syncs."""
    console(f"yes {letter} | head -c 1048576 > /tmp/p; for i in {' '.join(map(str, mibs))}; "
            f"do dd if=/tmp/p of=/dev/vda bs=1M seek=$i count=1 conv=notrunc 2>/dev/null; "
            f"done; sync")


def create_vm(px, vmid: int, disk: str, **extra: str) -> None:
    from binome.lab.image import build_image

    # a NIC only on guests that never start (no bridge here: tests/lab has the network)
    upid = px.nodes("n1").qemu.post(vmid=vmid, name=f"bk{vmid}", memory=96, cores=1,
                                   virtio0=disk, kernel="local:iso/vmlinuz",
                                   initrd="local:iso/initrd.gz", vga="serial0",
                                   append=build_image().cmdline(), **extra)
    assert wait_task(px, upid)["exitstatus"] == "OK"


def destroy(px, vmid: int) -> None:
    node = px.nodes("n1")
    if node.qemu(vmid).status.current.get()["status"] == "running":
        wait_task(px, node.qemu(vmid).status.stop.post())
    wait_task(px, node.qemu(vmid).delete())


def test_stopped_vm_backup_restore_listing_and_protection(px, cluster: Cluster) -> None:
    from proxmoxer import ResourceException

    node = px.nodes("n1")
    vmid = 910
    create_vm(px, vmid, f"local:{DISK_MIB / 1024},format=qcow2",
              net0="virtio=BC:24:11:00:00:01,bridge=vmbr0")
    try:
        disk = image_path(cluster, node.qemu(vmid).config.get()["virtio0"])
        subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 1M 3M", "-c",
                        "write -P 0xa5 40M 64k", str(disk)], check=True, capture_output=True)
        source_sum = sha256_of(disk, "qcow2")

        upid = node.vzdump.post(vmid=str(vmid), storage="bk", mode="snapshot", protected=1,
                                **{"notes-template": "{{guestname}} on {{node}}"})
        status = wait_task(px, upid)
        log = task_log(px, upid)
        assert status["exitstatus"] == "OK", log
        assert upid.split(":")[5] == "vzdump" and upid.split(":")[6] == str(vmid)
        assert f"INFO: Starting Backup of VM {vmid} (qemu)" in log
        assert "INFO: status = stopped" in log
        assert any(line.startswith(f"INFO: Finished Backup of VM {vmid} (") for line in log)
        assert log[-2:] == ["INFO: Backup job finished successfully", "TASK OK"]
        assert any("100% (64.0 MiB of 64.0 MiB)" in line for line in log), log

        (listed,) = backups(px, vmid)
        assert listed["volid"].startswith(f"bk:backup/vzdump-qemu-{vmid}-")
        assert listed["volid"].endswith(".binome")
        assert listed["format"] == "binome" and listed["subtype"] == "qemu"
        assert listed["protected"] == 1 and listed["notes"] == f"bk{vmid} on n1"
        assert listed["size"] == DISK and abs(listed["ctime"] - time.time()) < 120
        assert node.qemu(vmid).config.get().get("lock") is None

        # protected: deleting is refused and changes nothing
        with pytest.raises(ResourceException) as exc:
            node.storage("bk").content(listed["volid"]).delete()
        assert "protected" in str(exc.value)
        assert len(backups(px, vmid)) == 1
        # PUT content: notes and protection; unprotected, it can go (at the end)
        node.storage("bk").content(listed["volid"]).put(notes="kept", protected=0)
        (changed,) = backups(px, vmid)
        assert changed["protected"] == 0 and changed["notes"] == "kept"

        # restore to a new vmid, onto the dir storage 'local'
        upid = node.qemu.post(vmid=vmid + 1, archive=listed["volid"], storage="local",
                              unique=1)
        assert wait_task(px, upid)["exitstatus"] == "OK", task_log(px, upid)
        try:
            restored = node.qemu(vmid + 1).config.get()
            assert restored["name"] == f"bk{vmid}"
            assert restored["virtio0"].startswith(f"local:{vmid + 1}/vm-{vmid + 1}-disk-0.qcow2")
            assert "BC:24:11:00:00:01" not in restored["net0"]   # unique: a new MAC
            assert sha256_of(image_path(cluster, restored["virtio0"]), "qcow2") == source_sum

            # restore over an existing VM needs force, and keeps nothing of the old
            with pytest.raises(ResourceException) as exc:
                node.qemu.post(vmid=vmid + 1, archive=listed["volid"])
            assert "already exists" in str(exc.value)
            node.qemu(vmid + 1).config.put(memory=128, description="old one")
            upid = node.qemu.post(vmid=vmid + 1, archive=listed["volid"], force=1)
            assert wait_task(px, upid)["exitstatus"] == "OK", task_log(px, upid)
            again = node.qemu(vmid + 1).config.get()
            assert again["memory"] == 96 and "description" not in again
            assert again["net0"].startswith("virtio=BC:24:11:00:00:01")  # not unique
        finally:
            destroy(px, vmid + 1)
        assert wait_task(px, node.storage("bk").content(listed["volid"]).delete()
                         )["exitstatus"] == "OK"
        assert backups(px, vmid) == []
    finally:
        destroy(px, vmid)


def test_running_vm_backup_is_the_disk_at_its_start(px, cluster: Cluster) -> None:
    node = px.nodes("n1")
    vmid = 920
    create_vm(px, vmid, f"local:{DISK_MIB / 1024}")
    try:
        wait_task(px, node.qemu(vmid).status.start.post())
        console = Console(cluster["n1"].state_dir / "run" / "qemu" / f"{vmid}.serial")
        wait_shell(console)
        fill_disk(console, "A")
        disk = image_path(cluster, node.qemu(vmid).config.get()["virtio0"])
        assert sha256_of(disk) == filled("A")

        # ~16 s at 4 MiB/s: meanwhile the guest writes B into every 8th MiB, mostly ahead
        # of the backup's sequential read (a backup without copy-before-write reads them).
        # At 8 MiB/s a loaded machine's guest once finished its writes after the backup.
        rewritten = range(0, DISK_MIB, 8)
        upid = node.vzdump.post(vmid=str(vmid), storage="bk", bwlimit=4096)
        wait_for(lambda: any("copy-before-write" in line for line in task_log(px, upid)),
                 30, "fleecing set up")
        fill_disk(console, "B", rewritten)
        assert node.tasks(upid).status.get()["status"] == "running", \
            f"the backup ended before the guest's writes: {task_log(px, upid)}"
        status = wait_task(px, upid)
        log = task_log(px, upid)
        assert status["exitstatus"] == "OK", log
        assert "INFO: status = running" in log and "INFO: backup mode: snapshot" in log
        assert sha256_of(disk) == filled("A", "B", rewritten)
        (listed,) = backups(px, vmid)
        assert node.qemu(vmid).status.current.get()["status"] == "running"

        upid = node.qemu.post(vmid=vmid + 1, archive=listed["volid"])
        assert wait_task(px, upid)["exitstatus"] == "OK", task_log(px, upid)
        try:
            restored = node.qemu(vmid + 1).config.get()["virtio0"]
            image = image_path(cluster, restored)
            assert sha256_of(image) == filled("A"), mib_letters(image)
        finally:
            destroy(px, vmid + 1)

        # the guest vanishes mid-backup: the job fails, nothing half-written is listed
        upid = node.vzdump.post(vmid=str(vmid), storage="bk", bwlimit=4096, mode="suspend")
        wait_for(lambda: any("copy-before-write" in line for line in task_log(px, upid)),
                 30, "fleecing set up")
        assert "INFO: resuming guest" in task_log(px, upid)
        assert node.qemu(vmid).status.current.get()["qmpstatus"] == "running"
        wait_task(px, node.qemu(vmid).status.stop.post(skiplock=1))
        status = wait_task(px, upid)
        log = task_log(px, upid)
        assert status["exitstatus"] == "job errors", log
        assert any(line.startswith(f"ERROR: Backup of VM {vmid} failed - ") for line in log)
        assert "INFO: Backup job finished with errors" in log
        assert [b["volid"] for b in backups(px, vmid)] == [listed["volid"]]
        dump = cluster["n1"].state_dir / "backups" / "dump"
        assert not [p.name for p in dump.iterdir() if p.name.startswith(".tmp-")]
        assert not list((dump / ".fleecing").iterdir())
        wait_for(lambda: node.qemu(vmid).config.get().get("lock") is None, 10,
                 "backup lock released")
        wait_task(px, node.storage("bk").content(listed["volid"]).delete())
        assert backups(px, vmid) == []
    finally:
        destroy(px, vmid)


def test_bad_input_is_a_pve_400(px) -> None:
    from proxmoxer import ResourceException

    node = px.nodes("n1")
    cases = [
        ({"vmid": "100", "all": 1}, "all"),
        ({}, "vmid"),
        ({"vmid": "100", "mode": "later"}, "mode"),
        ({"vmid": "abc"}, "vmid"),
        ({"vmid": "100", "exclude": "101"}, "exclude"),
        ({"vmid": "100", "storage": "bk", "prune-backups": "keep-often=2"}, "prune-backups"),
        ({"vmid": "100", "storage": "local"}, "storage"),
        ({"vmid": "100", "bogus": 1}, "bogus"),
        ({"vmid": "100", "protected": 1}, "protected"),
    ]
    for params, field in cases:
        with pytest.raises(ResourceException) as exc:
            node.vzdump.post(**params)
        assert exc.value.status_code == 400, params
        assert field in exc.value.errors, (params, exc.value.errors)
    with pytest.raises(ResourceException) as exc:
        node.qemu.post(vmid=990, archive="local:100/vm-100-disk-0.raw")
    assert exc.value.status_code == 400 and "archive" in exc.value.errors
    with pytest.raises(ResourceException) as exc:
        node.qemu.post(vmid=990, archive="bk:backup/x.binome", memory=64)
    assert exc.value.status_code == 400 and "memory" in exc.value.errors
    for only_with_archive in ({"live-restore": 1}, {"bwlimit": 100}):
        with pytest.raises(ResourceException) as exc:
            node.qemu.post(vmid=990, memory=64, **only_with_archive)
        assert exc.value.status_code == 400 and set(exc.value.errors) == set(only_with_archive)
    with pytest.raises(ResourceException) as exc:
        node.qemu.post(vmid=990, archive="bk:backup/x.binome", bwlimit=-1)
    assert exc.value.status_code == 400 and "bwlimit" in exc.value.errors
    assert 990 not in [r["vmid"] for r in px.cluster.resources.get(type="vm")]


def _started_with_pattern(px, cluster: Cluster, vmid: int) -> tuple[Path, Console]:
    """VM `vmid`'s qcow2 disk filled with 0x41, the VM started, its shell reached: the
    disk's image path and the serial console."""
    node = px.nodes("n1")
    disk = image_path(cluster, node.qemu(vmid).config.get()["virtio0"])
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P 0x41 0 {DISK}", str(disk)],
                   check=True, capture_output=True)
    wait_task(px, node.qemu(vmid).status.start.post())
    console = Console(cluster["n1"].state_dir / "run" / "qemu" / f"{vmid}.serial")
    wait_shell(console)
    return disk, console


def test_incremental_backups_follow_the_dirty_bitmap(px, cluster: Cluster) -> None:
    """Full, then incremental through QEMU's dirty bitmap (only the written chunks are
    read); a backup cancelled mid-way loses no dirty bit; deleting the newest backup or
    restarting QEMU makes the next backup full with the reason. Restores hash like the
    disk at each backup's instant."""
    node = px.nodes("n1")
    vmid = 930
    create_vm(px, vmid, f"local:{DISK_MIB / 1024},format=qcow2")
    try:
        disk, console = _started_with_pattern(px, cluster, vmid)

        def backup(**extra: object) -> list[str]:
            upid = node.vzdump.post(vmid=str(vmid), storage="bk", **extra)
            status = wait_task(px, upid)
            log = task_log(px, upid)
            assert status["exitstatus"] == "OK", log
            return log

        def disk_with(changes: dict[int, str]) -> str:
            whole = hashlib.sha256()
            for mib in range(DISK_MIB):
                whole.update((changes[mib] + "\n").encode() * (1 << 19) if mib in changes
                             else b"A" * (1 << 20))
            return whole.hexdigest()

        log = backup()
        assert "INFO: dirty bitmap not trusted: no previous backup on storage 'bk' - full " \
               "backup" in log, log
        assert f"INFO: transferred {DISK_MIB}.0 MiB" in " ".join(log), log

        fill_disk(console, "B", range(40, 41))            # chunk 10 (4 MiB chunks)
        # a backup cancelled while it reads: the bits of B and of C (written during it)
        # must both be in the next backup
        upid = node.vzdump.post(vmid=str(vmid), storage="bk", bwlimit=512)
        wait_for(lambda: any("copy-before-write" in line for line in task_log(px, upid)),
                 30, "fleecing set up")
        fill_disk(console, "C", range(20, 21))            # chunk 5
        assert node.tasks(upid).status.get()["status"] == "running", task_log(px, upid)
        node.tasks(upid).delete()
        wait_for(lambda: node.tasks(upid).status.get()["status"] == "stopped", 30,
                 "cancelled backup ended")
        wait_for(lambda: node.qemu(vmid).config.get().get("lock") is None, 10,
                 "backup lock released")
        assert any("using fast incremental mode" in line for line in task_log(px, upid))
        assert "INFO: virtio0: dirty bitmap kept (the failed backup's writes merged back)" \
            in task_log(px, upid), task_log(px, upid)

        log = backup()
        assert "INFO: virtio0: dirty-bitmap status: OK (8.0 MiB of 64.0 MiB dirty)" in log, log
        assert "INFO: using fast incremental mode (dirty-bitmap), 8.0 MiB dirty of 64.0 MiB " \
               "total" in log, log
        assert any(line.startswith("INFO: transferred 8.0 MiB in ") for line in log), log
        second = backups(px, vmid)[-1]["volid"]

        upid = node.qemu.post(vmid=vmid + 1, archive=second)
        assert wait_task(px, upid)["exitstatus"] == "OK", task_log(px, upid)
        try:
            restored = image_path(cluster, node.qemu(vmid + 1).config.get()["virtio0"])
            assert sha256_of(restored, "qcow2") == disk_with({20: "C", 40: "B"})
        finally:
            destroy(px, vmid + 1)

        # the newest backup deleted: the bitmap it started is not the one of the backup
        # now newest, so that disk is read in full
        log = backup()
        assert "INFO: using fast incremental mode (dirty-bitmap), 0 B dirty of 64.0 MiB " \
               "total" in log, log
        wait_task(px, node.storage("bk").content(backups(px, vmid)[-1]["volid"]).delete())
        log = backup()
        assert any(line.startswith("INFO: virtio0: dirty bitmap not trusted: the bitmap of "
                                   "virtio0 belongs to a later backup than ") for line in log), \
            log
        assert any(line.startswith(f"INFO: transferred {DISK_MIB}.0 MiB in ") for line in log)

        # QEMU stopped and started: the disk may have changed meanwhile, so a full backup
        wait_task(px, node.qemu(vmid).status.stop.post())
        subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x41 40M 1M", str(disk)],
                       check=True, capture_output=True)
        wait_task(px, node.qemu(vmid).status.start.post())
        log = backup()
        assert "INFO: dirty bitmap not trusted: QEMU restarted since the previous backup - " \
               "full backup" in log, log
        assert any(line.startswith(f"INFO: transferred {DISK_MIB}.0 MiB in ") for line in log)
        upid = node.qemu.post(vmid=vmid + 1, archive=backups(px, vmid)[-1]["volid"])
        assert wait_task(px, upid)["exitstatus"] == "OK", task_log(px, upid)
        try:
            restored = image_path(cluster, node.qemu(vmid + 1).config.get()["virtio0"])
            assert sha256_of(restored, "qcow2") == disk_with({20: "C"})
        finally:
            destroy(px, vmid + 1)
        for listed in backups(px, vmid):
            wait_task(px, node.storage("bk").content(listed["volid"]).delete())
    finally:
        destroy(px, vmid)


def disk_with(changes: dict[int, str]) -> str:
    """The hash of an all-`A` (0x41) disk with `letter\\n` in the MiBs of `changes`."""
    whole = hashlib.sha256()
    for mib in range(DISK_MIB):
        whole.update((changes[mib] + "\n").encode() * (1 << 19) if mib in changes
                     else b"A" * (1 << 20))
    return whole.hexdigest()


def test_stopped_guest_backup_reads_only_what_the_guest_wrote(px, cluster: Cluster) -> None:
    """Run, back up, write, stop, back up again stopped: the persistent dirty bitmap the
    first backup started is in the qcow2 image, qemu-nbd exports it and only the written
    chunk is read; the restore hashes like the disk. A snapshot rollback removes the
    bitmap, a QEMU killed with the image open leaves it `in-use`: the next backup is
    full, with the reason; and an `in-use` bitmap does not stop an online resize."""
    import os
    import signal

    node = px.nodes("n1")
    vmid = 940
    create_vm(px, vmid, f"local:{DISK_MIB / 1024},format=qcow2")
    try:
        disk, console = _started_with_pattern(px, cluster, vmid)

        def backup() -> list[str]:
            upid = node.vzdump.post(vmid=str(vmid), storage="bk")
            status = wait_task(px, upid)
            log = task_log(px, upid)
            assert status["exitstatus"] == "OK", log
            return log

        log = backup()
        assert "INFO: status = running" in log
        assert any(line.startswith(f"INFO: transferred {DISK_MIB}.0 MiB in ") for line in log)
        fill_disk(console, "B", range(40, 41))            # one 4 MiB chunk of 16
        wait_task(px, node.qemu(vmid).status.stop.post())

        log = backup()
        assert "INFO: status = stopped" in log, log
        assert "INFO: virtio0: dirty-bitmap status: OK (4.0 MiB of 64.0 MiB dirty)" in log, log
        assert "INFO: using fast incremental mode (dirty-bitmap), 4.0 MiB dirty of 64.0 MiB " \
               "total" in log, log
        assert any(line.startswith("INFO: transferred 4.0 MiB in ") for line in log), log
        assert sha256_of(disk, "qcow2") == disk_with({40: "B"})
        upid = node.qemu.post(vmid=vmid + 1, archive=backups(px, vmid)[-1]["volid"])
        assert wait_task(px, upid)["exitstatus"] == "OK", task_log(px, upid)
        try:
            restored = image_path(cluster, node.qemu(vmid + 1).config.get()["virtio0"])
            assert sha256_of(restored, "qcow2") == disk_with({40: "B"})
        finally:
            destroy(px, vmid + 1)
        # stopped again, nothing written since: nothing read
        log = backup()
        assert "INFO: using fast incremental mode (dirty-bitmap), 0 B dirty of 64.0 MiB " \
               "total" in log, log

        # a snapshot rollback drops the image's bitmaps: full, with the reason
        upid = node.qemu(vmid).snapshot.post(snapname="s1")
        assert wait_task(px, upid)["exitstatus"] == "OK", task_log(px, upid)
        upid = node.qemu(vmid).snapshot("s1").rollback.post()
        assert wait_task(px, upid)["exitstatus"] == "OK", task_log(px, upid)
        log = backup()
        assert "INFO: virtio0: dirty bitmap not trusted: bitmap missing on virtio0 - read in " \
               "full" in log, log

        def start_and_kill() -> None:
            """QEMU killed with the image open: the bitmap it loaded stays `in-use`."""
            wait_task(px, node.qemu(vmid).status.start.post())
            pid = int((cluster["n1"].state_dir / "run" / "qemu" / f"{vmid}.pid").read_text())
            os.kill(pid, signal.SIGKILL)
            wait_for(lambda: node.qemu(vmid).status.current.get()["status"] == "stopped", 30,
                     "killed guest seen stopped")

        start_and_kill()
        log = backup()
        assert "INFO: virtio0: dirty bitmap not trusted: bitmap inconsistent on virtio0 - " \
               "read in full" in log, log
        assert any(line.startswith(f"INFO: transferred {DISK_MIB}.0 MiB in ") for line in log)
        # such a bitmap, loaded by the next QEMU, does not stop an online resize
        start_and_kill()
        wait_task(px, node.qemu(vmid).status.start.post())
        upid = node.qemu(vmid).resize.put(disk="virtio0", size="+4M")
        assert wait_task(px, upid)["exitstatus"] == "OK", task_log(px, upid)
        wait_task(px, node.qemu(vmid).status.stop.post())

        for listed in backups(px, vmid):
            wait_task(px, node.storage("bk").content(listed["volid"]).delete())
    finally:
        destroy(px, vmid)


def test_efidisk_and_tpmstate_are_backed_up_and_restored(px, cluster: Cluster) -> None:
    """An OVMF guest's efidisk0 and tpmstate0 are disks of the backup (running: the
    pflash vars fleeced with the disk, swtpm's state read from its file; stopped: the
    files) and come back, byte for byte, on the restore's target storage."""
    node = px.nodes("n1")
    vmid = 960
    create_vm(px, vmid, f"local:{DISK_MIB / 1024}", bios="ovmf",
              efidisk0="local:1,efitype=4m", tpmstate0="local:1,version=v2.0")
    try:
        config = node.qemu(vmid).config.get()
        efidisk, tpm = image_path(cluster, config["efidisk0"]), image_path(cluster,
                                                                          config["tpmstate0"])

        def backup_and_restore(target: int) -> dict:
            upid = node.vzdump.post(vmid=str(vmid), storage="bk")
            status = wait_task(px, upid)
            log = task_log(px, upid)
            assert status["exitstatus"] == "OK", log
            efivol = config["efidisk0"].split(",")[0]
            assert any(line.startswith(f"INFO: include disk 'efidisk0' '{efivol}'")
                       for line in log), log
            assert any(line.startswith("INFO: include disk 'tpmstate0'") for line in log), log
            upid = node.qemu.post(vmid=target, archive=backups(px, vmid)[-1]["volid"],
                                  storage="local")
            assert wait_task(px, upid)["exitstatus"] == "OK", task_log(px, upid)
            assert not any("is not restored" in line for line in task_log(px, upid))
            return node.qemu(target).config.get()

        # running, paused (OVMF and swtpm write nothing meanwhile)
        wait_task(px, node.qemu(vmid).status.start.post())
        wait_task(px, node.qemu(vmid).status.suspend.post())
        sums = (sha256_of(efidisk), sha256_of(tpm))
        assert sums[1] != hashlib.sha256(bytes(tpm.stat().st_size)).hexdigest(), \
            "swtpm wrote no state"
        restored = backup_and_restore(vmid + 1)
        try:
            assert restored["efidisk0"].startswith(f"local:{vmid + 1}/"), restored
            assert "efitype=4m" in restored["efidisk0"], restored
            assert "version=v2.0" in restored["tpmstate0"]
            assert (sha256_of(image_path(cluster, restored["efidisk0"])),
                    sha256_of(image_path(cluster, restored["tpmstate0"]))) == sums
        finally:
            destroy(px, vmid + 1)
        wait_task(px, node.qemu(vmid).status.stop.post())

        # stopped
        sums = (sha256_of(efidisk), sha256_of(tpm))
        restored = backup_and_restore(vmid + 1)
        try:
            assert (sha256_of(image_path(cluster, restored["efidisk0"])),
                    sha256_of(image_path(cluster, restored["tpmstate0"]))) == sums
        finally:
            destroy(px, vmid + 1)
        for listed in backups(px, vmid):
            wait_task(px, node.storage("bk").content(listed["volid"]).delete())
    finally:
        destroy(px, vmid)


def disk_of(changes: dict[int, str], letter: str) -> str:
    whole = hashlib.sha256()
    for mib in range(DISK_MIB):
        whole.update((changes.get(mib, letter) + "\n").encode() * (1 << 19))
    return whole.hexdigest()


def _chunk_files(cluster: Cluster) -> set[Path]:
    return set((cluster["n1"].state_dir / "backups" / "dump" / ".chunks").glob("*/*"))


def _live_restore_dirs(cluster: Cluster) -> list[str]:
    run = cluster["n1"].state_dir / "run" / "qemu"
    return [p.name for p in run.iterdir() if p.name.startswith("live-restore-")]


def test_live_restore_runs_the_guest_at_once_then_on_its_own_disk(px, cluster: Cluster
                                                                  ) -> None:
    """PVE's `live-restore`: the restored VM starts before its disk is filled (it reads
    the backup through binomed's NBD server and a temporary overlay), the disk is then
    filled by a mirror job and the drive switched to it; the lock goes. The guest's
    writes afterwards land on the restored volume. A backup chunk that cannot be read
    fails the restore: the VM is stopped, "live-restore failed", nothing left over."""
    node = px.nodes("n1")
    vmid = 960
    create_vm(px, vmid, f"local:{DISK_MIB / 1024}")
    try:
        wait_task(px, node.qemu(vmid).status.start.post())
        console = Console(cluster["n1"].state_dir / "run" / "qemu" / f"{vmid}.serial")
        wait_shell(console)
        fill_disk(console, "L")
        wait_task(px, node.qemu(vmid).status.stop.post())
        before = _chunk_files(cluster)
        assert wait_task(px, node.vzdump.post(vmid=str(vmid), storage="bk")
                         )["exitstatus"] == "OK"
        ours = _chunk_files(cluster) - before      # the 'L' chunk (all 16 are one)
        assert ours
        (listed,) = backups(px, vmid)

        # 4 MiB/s: 16 s of restore, during which the guest runs, reads its disk from the
        # backup and writes 'B' into its first 8 MiB
        posted = time.monotonic()
        upid = node.qemu.post(vmid=vmid + 1, archive=listed["volid"], bwlimit=4096,
                              **{"live-restore": 1})
        try:
            wait_for(lambda: any(line.startswith(f"VM {vmid + 1} started (pid ")
                                 for line in task_log(px, upid)), 60, "the guest started")
            running_after = time.monotonic() - posted
            assert node.qemu(vmid + 1).config.get()["lock"] == "create"
            console = Console(cluster["n1"].state_dir / "run" / "qemu" /
                              f"{vmid + 1}.serial")
            wait_shell(console)
            # a read the restore has not reached yet: from the backup (else it hangs)
            console("[ \"$(dd if=/dev/vda bs=1M skip=60 count=1 2>/dev/null | tr -d 'L\\n' "
                    "| wc -c)\" = 0 ] || sleep 600", timeout=30)
            fill_disk(console, "B", range(0, 8))
            assert node.tasks(upid).status.get()["status"] == "running", \
                f"the restore ended before the guest's writes: {task_log(px, upid)}"
        finally:
            status = wait_task(px, upid)
        log = task_log(px, upid)
        assert status["exitstatus"] == "OK", log
        print(f"live restore of {DISK_MIB} MiB at 4 MiB/s: guest running after "
              f"{running_after:.1f} s, shell and writes during the restore, task done after "
              f"{time.monotonic() - posted:.1f} s")
        try:
            order = [next(i for i, line in enumerate(log) if line.startswith(text))
                     for text in ("starting VM for live-restore",
                                  f"restoring 'drive-virtio0' to 'local:{vmid + 1}/",
                                  f"VM {vmid + 1} started (pid ",
                                  "all 'mirror' jobs are ready",
                                  "restore-drive jobs finished successfully")]
            assert order == sorted(order), log
            assert node.qemu(vmid + 1).status.current.get()["status"] == "running"
            config = node.qemu(vmid + 1).config.get()
            assert "lock" not in config, config
            image = image_path(cluster, config["virtio0"])
            # QEMU has the volume open now, not the overlay (gone with the NBD server)
            block = node.qemu(vmid + 1).monitor.post(command="info block")
            assert str(image) in block and "live-restore" not in block, block
            assert _live_restore_dirs(cluster) == []
            # on its own disk now: the writes made during the restore are there, and
            # the ones after land there too
            fill_disk(console, "C", range(60, 62))
            wait_task(px, node.qemu(vmid + 1).status.stop.post())
            assert sha256_of(image) == disk_of({**dict.fromkeys(range(8), "B"),
                                                60: "C", 61: "C"}, "L"), mib_letters(image)
        finally:
            destroy(px, vmid + 1)

        # the backup unreadable (its chunk moved away): the restore fails cleanly
        hidden = [(p, p.with_name(p.name + ".away")) for p in ours]
        for path, away in hidden:
            path.rename(away)
        try:
            upid = node.qemu.post(vmid=vmid + 1, archive=listed["volid"],
                                  **{"live-restore": 1})
            status = wait_task(px, upid)
            log = task_log(px, upid)
        finally:
            for path, away in hidden:
                away.rename(path)
        assert status["exitstatus"].startswith("live-restore failed"), log
        assert any(line.startswith("WARN: An error occurred during live-restore: ")
                   for line in log), log
        try:
            assert node.qemu(vmid + 1).status.current.get()["status"] == "stopped"
            # as PVE's: the incomplete VM keeps its 'create' lock (no start by mistake)
            assert node.qemu(vmid + 1).config.get()["lock"] == "create"
            assert _live_restore_dirs(cluster) == []
        finally:
            destroy(px, vmid + 1)
    finally:
        destroy(px, vmid)
