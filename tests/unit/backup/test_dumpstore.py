"""binome backups on a dir storage: PVE names, staging never listed, protection, restore."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from binome.backup.datastore import DatastoreError
from binome.backup.dumpdir import DumpDir
from binome.backup.dumpstore import GUEST_CONFIG, DumpStore, backup_name, ref_of_name
from binome.backup.reader import restore_image
from binome.backup.writer import backup_image

CHUNK = 64 * 1024


def _image(path: Path, fill: bytes) -> Path:
    path.write_bytes(fill * (5 * CHUNK // len(fill)) + b"tail")
    return path


def test_backup_names_round_trip_and_dedup_across_backups(tmp_path: Path) -> None:
    store = DumpStore(tmp_path, "bk")
    source = _image(tmp_path / "disk.raw", b"x" * 16)
    refs = []
    for when in (1_700_000_000, 1_700_000_100):
        writer = store.begin("vm", "100", when)
        writer.add_file(GUEST_CONFIG, b"memory: 64\n")
        backup_image(writer, "drive-scsi0.img.fidx", source, chunk_size=CHUNK)
        refs.append(writer.commit(notes="n", protected=False))
    names = sorted(p.name for p in (tmp_path / "dump").iterdir() if not p.name.startswith("."))
    assert names == sorted(backup_name(r) for r in refs)
    assert all(n.startswith("vzdump-qemu-100-") and n.endswith(".binome") for n in names)
    assert [ref_of_name(n) for n in names] == store.snapshots()
    assert store.volid(refs[0]) == f"bk:backup/{backup_name(refs[0])}"
    # two identical full backups: the same two distinct chunks (one full, one tail)
    assert len(list((tmp_path / "dump" / ".chunks").rglob("*"))) - len(
        list((tmp_path / "dump" / ".chunks").iterdir())) == 2
    assert store.guest_config(refs[1]) == "memory: 64\n"
    restored = tmp_path / "restored.raw"
    stats = restore_image(store, refs[1], "drive-scsi0.img.fidx", restored)
    assert stats.sha256 == hashlib.sha256(source.read_bytes()).hexdigest()
    assert restored.read_bytes() == source.read_bytes()
    # vma listing of the same directory ignores binome backups
    assert DumpDir(tmp_path, "bk").archives() == []


def test_a_staged_backup_is_never_listed_and_abort_leaves_nothing(tmp_path: Path) -> None:
    store = DumpStore(tmp_path, "bk")
    writer = store.begin("vm", "101", 1_700_000_000)
    backup_image(writer, "drive-scsi0.img.fidx", _image(tmp_path / "d.raw", b"y"),
                 chunk_size=CHUNK)
    assert store.snapshots() == []
    writer.abort()
    assert store.snapshots() == []
    assert not [p for p in (tmp_path / "dump").iterdir() if p.name.startswith(".tmp-")]


def test_protected_backup_refuses_removal(tmp_path: Path) -> None:
    store = DumpStore(tmp_path, "bk")
    writer = store.begin("vm", "102", 1_700_000_000)
    backup_image(writer, "drive-scsi0.img.fidx", _image(tmp_path / "d.raw", b"z"),
                 chunk_size=CHUNK)
    ref = writer.commit(protected=True)
    with pytest.raises(DatastoreError, match="protected"):
        store.remove(ref)
    store.set_protected(ref, False)
    store.remove(ref)
    assert store.snapshots() == []


@pytest.mark.parametrize("name", ["vzdump-qemu-100-2026_12_05-20_00_00.vma.zst",
                                  "vzdump-qemu-1-2026_12_05.binome", "x.binome"])
def test_other_names_are_not_binome_backups(name: str) -> None:
    with pytest.raises(DatastoreError):
        ref_of_name(name)
