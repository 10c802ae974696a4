"""Back up and restore images made and compared by the real qemu-img and qemu-io."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from binome.backup.datastore import Datastore
from binome.backup.reader import restore_image
from binome.backup.writer import backup_image
from tests.integration.harness import stop_process

pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None or
                                shutil.which("qemu-io") is None,
                                reason="qemu-utils is not installed")

CHUNK = 1024 * 1024


def _run(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


def _write(image: Path, fmt: str, pattern: int, offset: int, length: int) -> None:
    _run("qemu-io", "-f", fmt, "-c", f"write -P {pattern} {offset} {length}", str(image))


def test_qcow2_backup_incremental_restore_compare(tmp_path: Path) -> None:
    qcow2 = tmp_path / "disk.qcow2"
    _run("qemu-img", "create", "-f", "qcow2", str(qcow2), "32M")
    _write(qcow2, "qcow2", 0xAB, 0, 3 * CHUNK)
    _write(qcow2, "qcow2", 0xCD, 20 * CHUNK, CHUNK // 2)
    raw = tmp_path / "disk.raw"
    _run("qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(qcow2), str(raw))
    store = Datastore(tmp_path / "ds")
    store.create()
    writer = store.begin("vm", "100", 1000)
    backup_image(writer, "drive-scsi0.img.fidx", raw, chunk_size=CHUNK)
    first = writer.commit()

    _write(raw, "raw", 0x11, 7 * CHUNK + 4096, 8192)
    _write(qcow2, "qcow2", 0x11, 7 * CHUNK + 4096, 8192)
    writer = store.begin("vm", "100", 2000)
    stats = backup_image(writer, "drive-scsi0.img.fidx", raw, chunk_size=CHUNK,
                         previous=store.read_index(first, "drive-scsi0.img.fidx"),
                         dirty=[(7 * CHUNK + 4096, 8192)])
    second = writer.commit()
    assert stats.chunks_read == 1

    restored = tmp_path / "restored.raw"
    restore_image(store, second, "drive-scsi0.img.fidx", restored)
    _run("qemu-img", "compare", "-f", "qcow2", "-F", "raw", str(qcow2), str(restored))
    assert store.verify(first).ok and store.verify(second).ok


def test_dirty_bitmap_over_nbd_drives_an_incremental_backup(tmp_path: Path) -> None:
    """qemu-nbd exports a qcow2 bitmap (`-B`): the NBD client's block status finds the
    writes made since the bitmap started, and the incremental backup reads only their
    chunks yet restores the whole new image."""
    import time

    from binome.backup.nbd import NbdError, NbdExport

    qcow2 = tmp_path / "disk.qcow2"
    _run("qemu-img", "create", "-f", "qcow2", str(qcow2), "32M")
    _write(qcow2, "qcow2", 0x41, 0, 6 * CHUNK)
    store = Datastore(tmp_path / "ds")
    store.create()
    socket = tmp_path / "nbd.sock"

    def serve(*extra: str) -> subprocess.Popen[bytes]:
        socket.unlink(missing_ok=True)
        process = subprocess.Popen(["qemu-nbd", "--read-only", "--format=qcow2",
                                    "--export-name=drive", f"--socket={socket}",
                                    "--persistent", *extra, str(qcow2)])
        deadline = time.monotonic() + 10
        while not socket.exists():
            assert process.poll() is None and time.monotonic() < deadline, "no qemu-nbd"
            time.sleep(0.02)
        return process

    server = serve()
    try:
        writer = store.begin("vm", "100", 1000)
        with NbdExport(str(socket), "drive") as export:
            backup_image(writer, "drive-scsi0.img.fidx", export, chunk_size=CHUNK)
        first = writer.commit()
    finally:
        stop_process(server)

    # the bitmap starts at the first backup's instant; then B over 5 MiB + 4 KiB and 20 MiB
    _run("qemu-img", "bitmap", "--add", str(qcow2), "binome-backup-t")
    _write(qcow2, "qcow2", 0x42, 5 * CHUNK + 4096, 8192)
    _write(qcow2, "qcow2", 0x42, 20 * CHUNK, CHUNK)
    _run("qemu-img", "bitmap", "--disable", str(qcow2), "binome-backup-t")
    server = serve("--bitmap=binome-backup-t")
    context = "qemu:dirty-bitmap:binome-backup-t"
    try:
        with pytest.raises(NbdError, match="no meta context"):
            NbdExport(str(socket), "drive", meta_contexts=["qemu:dirty-bitmap:nope"])
        writer = store.begin("vm", "100", 2000)
        with NbdExport(str(socket), "drive", meta_contexts=[context]) as export:
            assert export.structured
            dirty = export.dirty_extents(context)
            # the bitmap's granularity is the qcow2 cluster (64 KiB)
            assert dirty == [(5 * CHUNK, 65536), (20 * CHUNK, CHUNK)]
            # structured reads (data and hole chunks) read like plain ones
            assert export.pread(5 * CHUNK, CHUNK)[4096:4096 + 8192] == b"B" * 8192
            assert export.pread(30 * CHUNK, CHUNK) == bytes(CHUNK)
            stats = backup_image(writer, "drive-scsi0.img.fidx", export, chunk_size=CHUNK,
                                 previous=store.read_index(first, "drive-scsi0.img.fidx"),
                                 dirty=dirty)
        second = writer.commit()
    finally:
        stop_process(server)
    assert stats.incremental and stats.full_reason is None
    assert stats.chunks_read == 2 and stats.bytes_read == 2 * CHUNK
    assert stats.bytes_dirty == 2 * CHUNK
    restored = tmp_path / "restored.raw"
    restore_image(store, second, "drive-scsi0.img.fidx", restored)
    _run("qemu-img", "compare", "-f", "qcow2", "-F", "raw", str(qcow2), str(restored))


def test_reads_in_flight_come_back_in_order_with_holes(tmp_path: Path) -> None:
    """`read_ahead` keeps several reads in flight on qemu-nbd (threads may answer them
    in any order): every range comes back in request order and equal to the image,
    unallocated areas (structured hole replies) as zeros."""
    import os
    import random
    import time

    from binome.backup.nbd import NbdExport

    qcow2 = tmp_path / "disk.qcow2"
    _run("qemu-img", "create", "-f", "qcow2", str(qcow2), "48M")
    rng = random.Random(7)
    for block in rng.sample(range(48), 20):
        _write(qcow2, "qcow2", rng.randrange(1, 255), block * CHUNK + 512, CHUNK - 1024)
    raw = tmp_path / "disk.raw"
    _run("qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(qcow2), str(raw))
    expected = raw.read_bytes()
    socket = tmp_path / "nbd.sock"
    process = subprocess.Popen(["qemu-nbd", "--read-only", "--format=qcow2",
                                "--export-name=drive", f"--socket={socket}", "--cache=none",
                                "--aio=threads", "--persistent", str(qcow2)])
    try:
        deadline = time.monotonic() + 10
        while not socket.exists():
            assert process.poll() is None and time.monotonic() < deadline, "no qemu-nbd"
            time.sleep(0.02)
        ranges = [(offset, min(CHUNK, len(expected) - offset))
                  for offset in range(0, len(expected), CHUNK)]
        ranges += [(3 * CHUNK + 100, 4096), (47 * CHUNK, CHUNK)]
        with NbdExport(str(socket), "drive") as export:
            assert export.structured  # negotiated even without meta contexts
            for depth in (1, 8):
                got = list(export.read_ahead(ranges, depth))
                assert [len(data) for data in got] == [length for _, length in ranges]
                for (offset, length), data in zip(ranges, got, strict=True):
                    assert data == expected[offset:offset + length], (depth, offset)
            # the connection is still in step after the pipelined reads
            assert export.pread(0, 4096) == expected[:4096]
        assert os.path.getsize(raw) == 48 * CHUNK
    finally:
        process.terminate()
        process.wait(10)
