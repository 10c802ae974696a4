"""Back up and restore images made and compared by the real qemu-img and qemu-io."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from binome.backup.datastore import Datastore
from binome.backup.reader import restore_image
from binome.backup.writer import backup_image

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
