"""Snapshots, fixed index, incremental backup, restore, verify, prune and GC on temp dirs."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from binome.backup.chunkstore import CryptConfig
from binome.backup.datastore import Datastore, DatastoreError, SnapshotRef
from binome.backup.index import FixedIndex, FixedIndexError
from binome.backup.prune import Mark, PruneOptions
from binome.backup.reader import RestoreError, restore_image
from binome.backup.writer import backup_image, dirty_chunks

CHUNK = 64 * 1024


def _disk(path: Path, chunks: int = 8) -> Path:
    data = bytearray(os.urandom(CHUNK * chunks - 1000))
    data[CHUNK:2 * CHUNK] = bytes(CHUNK)  # an all-zero chunk stays sparse on restore
    path.write_bytes(bytes(data))
    return path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _age_all(store: Datastore, seconds: float = 3600) -> None:
    past = time.time() - seconds
    for chunk in store.chunks.base.rglob("*"):
        if chunk.is_file():
            os.utime(chunk, (past, past))


@pytest.fixture
def store(tmp_path: Path) -> Datastore:
    datastore = Datastore(tmp_path / "ds")
    datastore.create()
    return datastore


def test_fixed_index_round_trip_and_torn(tmp_path: Path) -> None:
    index = FixedIndex(size=CHUNK * 2 + 1, chunk_size=CHUNK, digests=[b"a" * 32] * 3)
    again = FixedIndex.from_bytes(index.to_bytes())
    assert again == index
    with pytest.raises(FixedIndexError):
        FixedIndex.from_bytes(index.to_bytes()[:-5])
    with pytest.raises(FixedIndexError):
        FixedIndex(size=CHUNK * 2 + 1, chunk_size=CHUNK, digests=[b"a" * 32] * 2)


def test_full_backup_restore_and_listing(store: Datastore, tmp_path: Path) -> None:
    disk = _disk(tmp_path / "disk.raw")
    writer = store.begin("vm", "100", 1_765_000_000)
    stats = backup_image(writer, "drive-scsi0.img.fidx", disk, chunk_size=CHUNK)
    assert store.snapshots() == []  # not visible until committed
    ref = writer.commit(notes="first")
    assert store.snapshots() == [ref]
    assert ref.relative() == "vm/100/2025-12-06T05:46:40Z"
    assert stats.chunks_read == 8 and stats.full_reason is None
    out = restore_image(store, ref, "drive-scsi0.img.fidx", tmp_path / "restored.raw")
    assert out.sha256 == _sha(disk) == _sha(tmp_path / "restored.raw")
    assert out.bytes_written < out.size  # the zero chunk was skipped
    assert store.manifest(ref).notes == "first"


def test_aborted_backup_is_never_listed(store: Datastore, tmp_path: Path) -> None:
    writer = store.begin("vm", "100", 1000)
    backup_image(writer, "drive-scsi0.img.fidx", _disk(tmp_path / "d"), chunk_size=CHUNK)
    assert store.snapshots() == []
    assert store.oldest_writer_start() is not None
    writer.abort()
    assert store.snapshots() == [] and store.oldest_writer_start() is None


def test_incremental_reads_only_dirty_chunks(store: Datastore, tmp_path: Path) -> None:
    disk = _disk(tmp_path / "disk.raw")
    first = store.begin("vm", "100", 1000)
    backup_image(first, "d.fidx", disk, chunk_size=CHUNK)
    ref1 = first.commit()
    with open(disk, "r+b") as handle:
        handle.seek(3 * CHUNK + 10)
        handle.write(b"changed")
    previous = store.read_index(ref1, "d.fidx")
    second = store.begin("vm", "100", 2000)
    stats = backup_image(second, "d.fidx", disk, chunk_size=CHUNK, previous=previous,
                         dirty=[(3 * CHUNK + 10, 7)])
    ref2 = second.commit()
    assert stats.chunks_read == 1 and stats.bytes_read == CHUNK and stats.chunks_reused == 7
    assert restore_image(store, ref2, "d.fidx", tmp_path / "r2").sha256 == _sha(disk)


def test_incremental_falls_back_to_full_with_reason(store: Datastore, tmp_path: Path) -> None:
    disk = _disk(tmp_path / "disk.raw")
    writer = store.begin("vm", "100", 1000)
    stats = backup_image(writer, "d.fidx", disk, chunk_size=CHUNK, dirty=[])
    assert stats.full_reason == "no previous backup" and stats.chunks_read == 8
    ref = writer.commit()
    previous = store.read_index(ref, "d.fidx")
    writer = store.begin("vm", "100", 2000)
    stats = backup_image(writer, "d.fidx", disk, chunk_size=CHUNK // 2, previous=previous,
                         dirty=[])
    assert stats.full_reason is not None and "chunk size" in stats.full_reason
    writer.abort()


def test_dirty_chunks_clipping() -> None:
    assert dirty_chunks([(0, 1), (CHUNK - 1, 2), (10 * CHUNK, 5)], CHUNK, 4 * CHUNK) == {0, 1}
    assert dirty_chunks([(CHUNK, 0)], CHUNK, 4 * CHUNK) == set()
    with pytest.raises(ValueError):
        dirty_chunks([(-1, 5)], CHUNK, CHUNK)


def test_dedup_across_vms(store: Datastore, tmp_path: Path) -> None:
    disk = _disk(tmp_path / "template.raw")
    for vmid in ("101", "102"):
        writer = store.begin("vm", vmid, 1000)
        stats = backup_image(writer, "d.fidx", disk, chunk_size=CHUNK)
        writer.commit()
    assert stats.chunks_new == 0
    assert len(store.groups()) == 2


def test_verify_finds_flipped_byte_and_marks_failed(store: Datastore, tmp_path: Path) -> None:
    writer = store.begin("vm", "100", 1000)
    backup_image(writer, "d.fidx", _disk(tmp_path / "d"), chunk_size=CHUNK)
    ref = writer.commit()
    assert store.verify(ref).ok and store.manifest(ref).verify_state["state"] == "ok"
    digest = store.read_index(ref, "d.fidx").digests[5]
    path = store.chunks.path(digest)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))
    result = store.verify(ref)
    assert not result.ok and result.bad_chunks == [digest.hex()]
    assert store.manifest(ref).verify_state["state"] == "failed"
    with pytest.raises(RestoreError, match="chunk 5"):
        restore_image(store, ref, "d.fidx", tmp_path / "out")


def test_encrypted_backup_needs_the_key(store: Datastore, tmp_path: Path) -> None:
    crypt, _ = CryptConfig.generate()
    disk = _disk(tmp_path / "d")
    writer = store.begin("vm", "100", 1000, crypt=crypt)
    backup_image(writer, "d.fidx", disk, chunk_size=CHUNK)
    ref = writer.commit()
    assert store.manifest(ref).crypt_fingerprint == crypt.fingerprint
    assert restore_image(store, ref, "d.fidx", tmp_path / "o", crypt=crypt).sha256 == _sha(disk)
    with pytest.raises(RestoreError):
        restore_image(store, ref, "d.fidx", tmp_path / "o2")
    assert store.verify(ref).ok  # without the key: CRC only, as a PBS server does


def test_protect_prune_and_remove(store: Datastore, tmp_path: Path) -> None:
    disk = _disk(tmp_path / "d", chunks=1)
    refs = []
    for day in range(5):
        writer = store.begin("vm", "100", 1_765_000_000 + day * 86400)
        backup_image(writer, "d.fidx", disk, chunk_size=CHUNK)
        refs.append(writer.commit(protected=(day == 0)))
    with pytest.raises(DatastoreError, match="protected"):
        store.remove(refs[0])
    dry = store.prune_group("vm", "100", PruneOptions(keep_last=2), dry_run=True)
    assert dry[refs[0]] is Mark.PROTECTED and dry[refs[4]] is Mark.KEEP
    assert len(store.snapshots()) == 5
    store.prune_group("vm", "100", PruneOptions(keep_last=2))
    assert store.snapshots() == [refs[0], refs[3], refs[4]]
    store.set_protected(refs[0], False)
    store.remove(refs[0])
    assert store.snapshots() == [refs[3], refs[4]]


def test_gc_sweeps_unreferenced_keeps_referenced_and_running(store: Datastore,
                                                            tmp_path: Path) -> None:
    first = store.begin("vm", "100", 1000)
    backup_image(first, "d.fidx", _disk(tmp_path / "a"), chunk_size=CHUNK)
    ref1 = first.commit()
    second = store.begin("vm", "100", 2000)
    backup_image(second, "d.fidx", _disk(tmp_path / "b"), chunk_size=CHUNK)
    ref2 = second.commit()
    store.remove(ref1)
    _age_all(store)
    running = store.begin("vm", "200", 3000)
    backup_image(running, "d.fidx", _disk(tmp_path / "c"), chunk_size=CHUNK)
    result = store.garbage_collect(grace_seconds=60)
    assert result.sweep.removed_chunks == 7  # ref1's chunks except the shared zero chunk
    assert store.verify(ref2).ok
    ref3 = running.commit()
    assert store.verify(ref3).ok


def test_bad_group_and_duplicate_snapshot(store: Datastore, tmp_path: Path) -> None:
    with pytest.raises(DatastoreError):
        store.begin("qemu", "100")
    with pytest.raises(DatastoreError):
        store.begin("vm", "../x")
    writer = store.begin("vm", "100", 1000)
    writer.commit()
    with pytest.raises(DatastoreError, match="exists"):
        store.begin("vm", "100", 1000)
    assert store.snapshots() == [SnapshotRef("vm", "100", 1000)]
