"""The backup and restore pipelines: chunk order, in-flight dedup, durability before the
index, failure mid-pipeline, repeated chunks on restore. Real files, real threads."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest

from binome.backup import chunkstore
from binome.backup.datastore import Datastore
from binome.backup.index import FixedIndex
from binome.backup.reader import RestoreError, restore_image
from binome.backup.writer import FileSource, backup_image

CHUNK = 64 * 1024


@pytest.fixture
def store(tmp_path: Path) -> Datastore:
    datastore = Datastore(tmp_path / "ds")
    datastore.create()
    return datastore


def _mixed_disk(path: Path) -> tuple[Path, list[bytes]]:
    """48 chunks: distinct random ones, runs of zeros, repeats of one pattern spread out
    (equal chunks in flight together), a short tail chunk."""
    pattern = os.urandom(CHUNK)
    chunks = []
    for position in range(48):
        if position % 7 == 3:
            chunks.append(bytes(CHUNK))
        elif position % 5 == 1:
            chunks.append(pattern)
        else:
            chunks.append(os.urandom(CHUNK))
    chunks.append(os.urandom(CHUNK // 3))
    path.write_bytes(b"".join(chunks))
    return path, chunks


@pytest.mark.parametrize("workers", [1, 4, 8])
def test_index_keeps_chunk_order_and_equal_chunks_are_stored_once(
        store: Datastore, tmp_path: Path, workers: int) -> None:
    disk, chunks = _mixed_disk(tmp_path / "disk")
    done: list[int] = []
    writer = store.begin("vm", "100", 1000)
    stats = backup_image(writer, "d.fidx", disk, chunk_size=CHUNK, workers=workers,
                         progress=lambda s: done.append(s.bytes_done))
    ref = writer.commit()
    index = store.read_index(ref, "d.fidx")
    assert index.digests == [hashlib.sha256(c).digest() for c in chunks]
    distinct = {hashlib.sha256(c).digest() for c in chunks}
    assert stats.chunks_new == len(distinct)
    assert stats.chunks_new + stats.chunks_reused == len(chunks)
    stored = [p for p in store.chunks.base.rglob("*") if p.is_file()]
    assert len(stored) == len(distinct)
    assert not [p for p in stored if p.name.startswith(".tmp-")]
    # progress comes after every chunk, in order, ending at the image size
    assert done == sorted(done) and len(done) == len(chunks) and done[-1] == disk.stat().st_size
    out = restore_image(store, ref, "d.fidx", tmp_path / "restored")
    assert (tmp_path / "restored").read_bytes() == disk.read_bytes()
    assert out.sha256 == hashlib.sha256(disk.read_bytes()).hexdigest()


@pytest.mark.parametrize("direct", [True, False])
def test_every_new_chunk_is_durable_before_the_index_is_written(
        store: Datastore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        direct: bool) -> None:
    """The crash-safety rule: an index never references a chunk whose data or name is
    not durable, and a chunk name never appears before its data is durable. Batched:
    the chunks are written without fsync (with O_DIRECT, or through the page cache
    where the filesystem refuses it), then one syncfs, the renames, a second syncfs."""
    events: list[tuple[str, str]] = []
    lock = threading.Lock()
    real_direct, real_all = chunkstore._write_direct, chunkstore._write_all
    real_syncfs, real_replace, real_write = chunkstore.syncfs, os.replace, FixedIndex.write

    def log(kind: str, path: str) -> None:
        with lock:
            events.append((kind, path))

    def write_direct(fd: int, path: str, parts: list[bytes]) -> bool:
        if not direct:
            return False
        assert real_direct(fd, path, parts)
        log("data", path)
        return True

    def write_all(fd: int, parts: list[bytes]) -> None:
        real_all(fd, parts)
        log("data", os.readlink(f"/proc/self/fd/{fd}"))

    def syncfs(path: str | os.PathLike[str]) -> None:
        real_syncfs(path)
        log("syncfs", str(path))

    def replace(source: str, target: str | os.PathLike[str]) -> None:
        real_replace(source, target)
        log("rename", f"{source} {target}")

    def write_index(index: FixedIndex, path: Path) -> None:
        log("index", str(path))
        real_write(index, path)

    monkeypatch.setattr(chunkstore, "_write_direct", write_direct)
    monkeypatch.setattr(chunkstore, "_write_all", write_all)
    monkeypatch.setattr(chunkstore, "syncfs", syncfs)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(FixedIndex, "write", write_index)
    disk, _chunks = _mixed_disk(tmp_path / "disk")
    writer = store.begin("vm", "100", 1000)
    backup_image(writer, "d.fidx", disk, chunk_size=CHUNK, workers=4)
    ref = writer.commit()
    at_index = next(i for i, (kind, _) in enumerate(events) if kind == "index")
    before = events[:at_index]
    syncs = [i for i, (kind, _) in enumerate(before) if kind == "syncfs"]
    assert len(syncs) == 2   # batched: not one per chunk
    digests = set(store.read_index(ref, "d.fidx").digests)
    renames = {path.split()[1]: (i, path.split()[0]) for i, (kind, path) in enumerate(before)
               if kind == "rename" and path.startswith(str(store.chunks.base))}
    assert len(renames) == len(digests)
    for digest in digests:
        final = store.chunks.path(digest)
        assert str(final) in renames, final
        renamed_at, tmp = renames[str(final)]
        written_at = before.index(("data", tmp))
        assert Path(tmp).parent == final.parent and Path(tmp).name.startswith(".tmp-")
        # data written, then synced, then named, then the name synced: then the index
        assert any(written_at < sync < renamed_at for sync in syncs), final
        assert any(renamed_at < sync for sync in syncs), final
        store.chunks.verify_chunk(digest)
    assert not [p for p in store.chunks.base.rglob(".tmp-*")]


class _FailingSource(FileSource):
    def __init__(self, path: Path, fail_at: int) -> None:
        super().__init__(path)
        self.fail_at = fail_at

    def pread(self, offset: int, length: int) -> bytes:
        if offset >= self.fail_at:
            raise OSError("disk went away")
        return super().pread(offset, length)


def test_a_read_error_mid_pipeline_fails_the_backup_and_writes_no_index(
        store: Datastore, tmp_path: Path) -> None:
    disk, _chunks = _mixed_disk(tmp_path / "disk")
    source = _FailingSource(disk, fail_at=30 * CHUNK)
    writer = store.begin("vm", "100", 1000)
    try:
        with pytest.raises(OSError, match="disk went away"):
            backup_image(writer, "d.fidx", source, chunk_size=CHUNK, workers=4)
    finally:
        source.close()
    assert not list(writer.staging.glob("*.fidx"))
    writer.abort()
    assert store.snapshots() == []
    # the chunks staged before the failure are dropped, none was named (all or nothing)
    assert not [p for p in store.chunks.base.rglob("*") if p.is_file()]


def test_restore_checks_a_repeated_chunk_and_reports_the_first_bad_position(
        store: Datastore, tmp_path: Path) -> None:
    disk, chunks = _mixed_disk(tmp_path / "disk")
    writer = store.begin("vm", "100", 1000)
    backup_image(writer, "d.fidx", disk, chunk_size=CHUNK)
    ref = writer.commit()
    digest = hashlib.sha256(chunks[1]).digest()  # the repeated pattern: first at 1
    path = store.chunks.path(digest)
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(RestoreError, match="chunk 1 "):
        restore_image(store, ref, "d.fidx", tmp_path / "out")
