"""Local I/O errors from the kernel: the disk is detached and the Primary is served by its peer.

The failing disk is a real block device: a loop device (`--direct-io=on`) over
a file in an ext4 filesystem that itself lives on a second loop device. The
test shrinks that second device under the filesystem (`losetup -c`): every
read of the file's blocks, and the writeback behind an fdatasync, then fails
with EIO in the kernel ("I/O error, dev loopN"). Device-mapper (`dmsetup`'s
`error` target, the obvious tool) is not available in this container's
kernel; loop devices are. Needs root (losetup, mount).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from binome.lab.nbd_client import NbdClient, NbdError
from binome.storage.replica.engine import control
from tests.integration.replica.pairs import (
    MiB,
    Pair,
    connected,
    in_sync,
    log_of,
    wait_for,
)

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not all(shutil.which(t) for t in ("losetup", "mkfs.ext4", "mount",
                                                           "blockdev")),
    reason="needs root, losetup, mkfs.ext4, mount and blockdev")

SIZE = 16 * MiB


def run(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()


@dataclass
class FailingDisk:
    link: Path             # the path the engine is given (a symlink to the block device)
    device: str            # /dev/loopN, the engine's backing block device
    fs_loop: str           # the loop device under the ext4 filesystem
    fs_image: Path
    workdir: Path

    def fail(self) -> None:
        """From now on the kernel answers EIO for the device's blocks."""
        run("blockdev", "--flushbufs", self.device)      # nothing left in the page cache
        os.truncate(self.fs_image, MiB)
        run("losetup", "-c", self.fs_loop)


@pytest.fixture
def failing_disk() -> Iterator[FailingDisk]:
    """Request it *before* `pair`: it must be torn down after the engines stopped."""
    work = Path(tempfile.mkdtemp(prefix="bnm-eio-", dir="/tmp"))
    fs_image, mnt = work / "fs.img", work / "mnt"
    mnt.mkdir()
    fs_loop = device = None
    mounted = False
    try:
        fs_image.touch()
        os.truncate(fs_image, 48 * MiB)
        run("mkfs.ext4", "-q", "-F", "-b", "4096", "-O", "^has_journal", "-E", "nodiscard",
            str(fs_image))
        fs_loop = run("losetup", "-f", "--show", str(fs_image))
        run("mount", fs_loop, str(mnt))
        mounted = True
        data = mnt / "data.img"
        with open(data, "wb") as f:             # allocated blocks, not a sparse file
            f.write(bytes(SIZE))
            f.flush()
            os.fsync(f.fileno())
        device = run("losetup", "-f", "--show", "--direct-io=on", str(data))
        link = work / "disk"
        link.symlink_to(device)
        yield FailingDisk(link, device, fs_loop, fs_image, work)
    finally:
        if device:
            subprocess.run(["losetup", "-d", device], check=False, capture_output=True)
        if mounted:
            if subprocess.run(["umount", str(mnt)], check=False,
                              capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", str(mnt)], check=False, capture_output=True)
        if fs_loop:
            subprocess.run(["losetup", "-d", fs_loop], check=False, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


def handler_cmd(d: Path) -> dict[str, str]:
    return {"local-io-error": f"{{ env; echo END; }} > {d}/$DRBD_MY_NODE.$BINOME_HANDLER"}


def setup_pair(pair: Pair, disk: FailingDisk, hdir: Path) -> str:
    pair.create(size="16M", a={"backing": str(disk.link), "handlers": handler_cmd(hdir)})
    wait_for(pair.a, connected)
    pair.a.call("primary", name="r0", force=True)
    wait_for(pair.a, in_sync)
    wait_for(pair.b, in_sync)
    return pair.a.call("status", name="r0")["socket"]


def wait_file(path: Path, timeout: float = 20) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.read_text().endswith("END\n")):
        assert time.monotonic() < deadline, f"{path} never written"
        time.sleep(0.05)
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def diskless_served(st: dict) -> bool:
    return (st["disk"] == "Diskless" and st["peer_disk"] == "UpToDate"
            and st["cstate"] == "Connected" and st["role"] == "Primary")


@pytest.mark.parametrize("first", ["read", "fua-write", "flush"])
def test_local_io_error_detaches_and_the_peer_serves(failing_disk, pair, tmp_path, first):
    hdir = tmp_path / "h"
    hdir.mkdir()
    sock = setup_pair(pair, failing_disk, hdir)
    p1, p2, p3 = os.urandom(65536), os.urandom(65536), os.urandom(8192)

    async def scenario() -> None:
        c = await NbdClient.connect(sock, "r0")
        try:
            await c.write(MiB, p1)
            await c.flush()
            failing_disk.fail()
            # The first request after the failure meets the kernel's EIO and succeeds anyway.
            if first == "read":
                assert await c.read(MiB, 65536) == p1
            elif first == "fua-write":
                await c.write(5 * MiB, p3, fua=True)
            else:
                await c.write(5 * MiB, p3)
                await c.flush()
            st = wait_for(pair.a, diskless_served)
            assert st["backing"] == str(failing_disk.link)
            # Everything is served by the peer now: reads, writes, FUA, trim, flush.
            assert await c.read(MiB, 65536) == p1
            assert await c.read(9 * MiB, 4096) == bytes(4096)
            await c.write(2 * MiB, p2)
            await c.write(3 * MiB, p3, fua=True)
            await c.trim(MiB + 4096, 4096)
            await c.flush()
            assert await c.read(2 * MiB, 65536) == p2
            assert await c.read(MiB, 8192) == p1[:4096] + bytes(4096)
            # A new client may connect to the Diskless Primary.
            c2 = await NbdClient.connect(sock, "r0")
            assert await c2.read(3 * MiB, 8192) == p3
            await c2.close()
        finally:
            await c.close()

    asyncio.run(scenario())
    b = pair.data(pair.b)
    assert b[2 * MiB:2 * MiB + 65536] == p2 and b[3 * MiB:3 * MiB + 8192] == p3
    assert b[MiB:MiB + 8192] == p1[:4096] + bytes(4096)
    if first != "read":
        assert b[5 * MiB:5 * MiB + 8192] == p3
    assert pair.b.call("status", name="r0")["peer_disk"] == "Diskless"
    op = {"read": "read", "fua-write": "flush", "flush": "flush"}[first]
    assert f"Local IO failed in {op}" in log_of(pair.a)
    env = wait_file(hdir / "alpha.local-io-error")
    assert env["DRBD_RESOURCE"] == "r0" and env["DRBD_BACKING_DEV"] == str(failing_disk.link)
    assert "s3cret" not in (hdir / "alpha.local-io-error").read_text()
    # The metadata remembers that the disk failed: a full sync when a disk comes back.
    assert pair.a.call("status", name="r0")["flags"] & 8      # MDF_FULL_SYNC
    # A Diskless Primary that loses its peer says so (and its I/O fails).
    pair.b.call("disconnect", name="r0")
    wait_for(pair.a, lambda st: st["cstate"] != "Connected" and st["peer_disk"] == "DUnknown")


def test_io_error_without_a_peer_fails_the_request(failing_disk, pair, tmp_path):
    sock = setup_pair(pair, failing_disk, tmp_path)
    pair.a.call("disconnect", name="r0")
    pair.b.call("disconnect", name="r0")

    async def scenario() -> None:
        c = await NbdClient.connect(sock, "r0")
        try:
            failing_disk.fail()
            with pytest.raises(NbdError):
                await c.read(MiB, 4096)
            wait_for(pair.a, lambda st: st["disk"] == "Diskless")
            with pytest.raises(NbdError):
                await c.write(MiB, b"x" * 4096)
        finally:
            await c.close()

    asyncio.run(scenario())


def test_attach_a_replaced_disk_resyncs_it_fully(failing_disk, pair, tmp_path):
    sock = setup_pair(pair, failing_disk, tmp_path)
    p1 = os.urandom(65536)

    async def write_then_fail() -> None:
        c = await NbdClient.connect(sock, "r0")
        try:
            failing_disk.fail()
            await c.write(4 * MiB, p1, fua=True)          # detaches; the peer has it
        finally:
            await c.close()

    asyncio.run(write_then_fail())
    wait_for(pair.a, diskless_served)
    with pytest.raises(control.ControlError, match="Primary cannot become SyncTarget"):
        pair.a.call("attach", name="r0")
    pair.a.call("secondary", name="r0")
    # The administrator replaces the disk: the config's path now names a healthy one.
    replacement = failing_disk.workdir / "new.img"
    replacement.touch()
    os.truncate(replacement, SIZE)
    failing_disk.link.unlink()
    failing_disk.link.symlink_to(replacement)
    st = pair.a.call("attach", name="r0")
    assert st["disk"] in ("Inconsistent", "UpToDate")
    wait_for(pair.a, in_sync, timeout=60)
    wait_for(pair.b, in_sync, timeout=60)
    assert replacement.read_bytes() == pair.data(pair.b)
    assert replacement.read_bytes()[4 * MiB:4 * MiB + 65536] == p1
    assert "Began resync as SyncTarget (will sync 16384 KB" in log_of(pair.a)
    st = pair.a.call("primary", name="r0")
    assert st["disk"] == "UpToDate" and not st["flags"] & 8
    with contextlib.suppress(Exception):
        pair.a.call("secondary", name="r0")


def test_diskless_primary_fails_io_when_the_peer_goes(failing_disk, pair, tmp_path):
    sock = setup_pair(pair, failing_disk, tmp_path)

    async def scenario() -> None:
        c = await NbdClient.connect(sock, "r0")
        try:
            failing_disk.fail()
            assert await c.read(MiB, 4096) == bytes(4096)       # served by the peer
            wait_for(pair.a, diskless_served)
            pair.b.call("disconnect", name="r0")                 # the only copy goes away
            deadline = time.monotonic() + 20
            while True:                                          # until A notices the loss
                try:
                    await c.read(MiB, 4096)
                except NbdError:
                    break
                assert time.monotonic() < deadline, "reads still served without a peer"
                await asyncio.sleep(0.05)
            with pytest.raises(NbdError):
                await c.write(MiB, b"x" * 4096)
        finally:
            await c.close()

    asyncio.run(scenario())


def test_secondary_disk_failure_detaches_and_the_primary_tracks_its_writes(failing_disk, pair,
                                                                          tmp_path):
    pair.create(size="16M", b={"backing": str(failing_disk.link),
                               "handlers": handler_cmd(tmp_path)})
    wait_for(pair.a, connected)
    pair.a.call("primary", name="r0", force=True)
    wait_for(pair.a, in_sync)
    wait_for(pair.b, in_sync)
    sock = pair.a.call("status", name="r0")["socket"]
    p1, p2 = os.urandom(65536), os.urandom(8192)

    async def writes() -> None:
        c = await NbdClient.connect(sock, "r0")
        try:
            failing_disk.fail()
            await c.write(MiB, p1)
            await c.flush()                  # B's fdatasync fails: B detaches, the flush is ok
            wait_for(pair.b, lambda st: st["disk"] == "Diskless")
            wait_for(pair.a, lambda st: st["peer_disk"] == "Diskless")
            await c.write(6 * MiB, p2)       # not mirrored: marked in A's bitmap
            await c.flush()
        finally:
            await c.close()

    asyncio.run(writes())
    st = pair.a.call("status", name="r0")
    assert st["disk"] == "UpToDate" and st["out_of_sync_kib"] >= 8 and not st["suspended"]
    assert "Local IO failed in flush" in log_of(pair.b)
    wait_file(tmp_path / "beta.local-io-error")
    # Replace B's disk and attach it: a full resync from A.
    replacement = failing_disk.workdir / "new.img"
    replacement.touch()
    os.truncate(replacement, SIZE)
    failing_disk.link.unlink()
    failing_disk.link.symlink_to(replacement)
    pair.b.call("attach", name="r0")
    wait_for(pair.b, in_sync, timeout=60)
    wait_for(pair.a, in_sync, timeout=60)
    data = replacement.read_bytes()
    assert data == pair.data(pair.a)
    assert data[MiB:MiB + 65536] == p1 and data[6 * MiB:6 * MiB + 8192] == p2
