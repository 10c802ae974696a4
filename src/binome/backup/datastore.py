"""A backup datastore laid out like PBS: `<root>/<type>/<id>/<RFC3339 time>/` + `.chunks`.

Owns snapshots (list, add through a staging directory renamed into place so a half-written
backup is never listed, remove, protect, notes), per-group prune, verify (every chunk an
index references is re-read and re-hashed; a bad one marks the snapshot failed) and
garbage collection (touch every chunk any index references, then sweep chunks untouched
since the start of GC, or of the oldest running writer, minus a grace period).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from binome.backup.chunkstore import ChunkError, ChunkStore, CryptConfig, SweepStats
from binome.backup.index import FixedIndex, FixedIndexError, Manifest
from binome.backup.prune import BackupEntry, Mark, PruneOptions, compute_prune
from binome.durable import fsync_dir, write_json

BACKUP_TYPES = ("vm", "ct", "host")
MANIFEST = "index.json"
PROTECTED_MARKER = ".protected"
_ID_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")
_GC_GRACE_SECONDS = 300.0


class DatastoreError(Exception):
    """Bad input or a state that forbids the operation (e.g. removing a protected backup)."""


def format_backup_time(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_backup_time(text: str) -> int:
    try:
        return int(datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
                   .timestamp())
    except ValueError as error:
        raise DatastoreError(f"'{text}' is not a backup time (YYYY-MM-DDTHH:MM:SSZ)") from error


@dataclass(frozen=True)
class SnapshotRef:
    backup_type: str
    backup_id: str
    backup_time: int

    def relative(self) -> str:
        return f"{self.backup_type}/{self.backup_id}/{format_backup_time(self.backup_time)}"


def _check_group(backup_type: str, backup_id: str) -> None:
    if backup_type not in BACKUP_TYPES:
        raise DatastoreError(f"backup type must be one of {', '.join(BACKUP_TYPES)}")
    if not _ID_RE.match(backup_id):
        raise DatastoreError(f"bad backup id '{backup_id}'")


@dataclass
class VerifyResult:
    snapshot: SnapshotRef
    ok: bool
    bad_chunks: list[str]


@dataclass
class GcResult:
    marked_indexes: int
    cutoff: float
    sweep: SweepStats


class SnapshotWriter:
    """Stages one snapshot in a hidden directory; `commit()` makes it visible at once."""

    def __init__(self, store: Datastore, ref: SnapshotRef, crypt: CryptConfig | None) -> None:
        self.store, self.ref, self.crypt = store, ref, crypt
        self.started = time.time()
        group = store.root / ref.backup_type / ref.backup_id
        group.mkdir(parents=True, exist_ok=True)
        self.staging = group / f".tmp-{format_backup_time(ref.backup_time)}-{uuid.uuid4().hex}"
        self.staging.mkdir()
        self.files: list[dict[str, Any]] = []
        self._writer_mark = store.root / ".writers" / self.staging.name
        self._writer_mark.parent.mkdir(exist_ok=True)
        write_json(self._writer_mark, {"started": self.started, "snapshot": ref.relative()})

    def add_index(self, name: str, index: FixedIndex) -> None:
        if not name.endswith(".fidx") or "/" in name:
            raise DatastoreError(f"index name '{name}' must be a plain name ending in .fidx")
        index.write(self.staging / name)
        self.files.append({"filename": name, "size": index.size,
                           "csum": index.checksum().hex()})

    def commit(self, notes: str = "", protected: bool = False, *,
               crypt_fingerprint: str | None = None,
               signature: str | None = None) -> SnapshotRef:
        """Make the snapshot visible. An encrypted one is signed here with the writer's
        key; a backup server, which has no key, stores the fingerprint and signature
        its client sent (`crypt_fingerprint`, `signature`)."""
        manifest = Manifest(self.ref.backup_type, self.ref.backup_id, self.ref.backup_time,
                            files=self.files, notes=notes, protected=protected,
                            crypt_fingerprint=crypt_fingerprint, signature=signature)
        if self.crypt is not None:
            manifest.crypt_fingerprint = self.crypt.fingerprint
            manifest.signature = self.crypt.sign(manifest.signed_payload())
        write_json(self.staging / MANIFEST, manifest.to_json())
        if protected:
            (self.staging / PROTECTED_MARKER).touch()
        final = self.store.snapshot_dir(self.ref)
        try:
            os.rename(self.staging, final)
        except OSError as error:
            self.abort()
            raise DatastoreError(f"snapshot {self.ref.relative()} already exists") from error
        fsync_dir(final.parent)
        self._writer_mark.unlink(missing_ok=True)
        return self.ref

    def abort(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)
        self._writer_mark.unlink(missing_ok=True)


class Datastore:
    """One datastore directory. Synchronous local I/O: run it in a thread from asyncio."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.chunks = ChunkStore(self.root)

    def create(self) -> None:
        self.chunks.create()

    def snapshot_dir(self, ref: SnapshotRef) -> Path:
        return self.root / ref.relative()

    def begin(self, backup_type: str, backup_id: str, backup_time: int | None = None,
              crypt: CryptConfig | None = None) -> SnapshotWriter:
        _check_group(backup_type, backup_id)
        when = int(time.time()) if backup_time is None else backup_time
        ref = SnapshotRef(backup_type, backup_id, when)
        if self.snapshot_dir(ref).exists():
            raise DatastoreError(f"snapshot {ref.relative()} already exists")
        return SnapshotWriter(self, ref, crypt)

    def groups(self) -> list[tuple[str, str]]:
        found = []
        for backup_type in BACKUP_TYPES:
            base = self.root / backup_type
            if base.is_dir():
                found += [(backup_type, d.name) for d in sorted(base.iterdir())
                          if d.is_dir() and not d.name.startswith(".")]
        return found

    def snapshots(self, backup_type: str | None = None,
                  backup_id: str | None = None) -> list[SnapshotRef]:
        """Finished snapshots, oldest first (staging directories are never listed)."""
        refs = []
        for group_type, group_id in self.groups():
            if backup_type not in (None, group_type) or backup_id not in (None, group_id):
                continue
            for entry in (self.root / group_type / group_id).iterdir():
                if entry.name.startswith(".") or not (entry / MANIFEST).exists():
                    continue
                refs.append(SnapshotRef(group_type, group_id, parse_backup_time(entry.name)))
        return sorted(refs, key=lambda r: (r.backup_type, r.backup_id, r.backup_time))

    def manifest(self, ref: SnapshotRef) -> Manifest:
        path = self.snapshot_dir(ref) / MANIFEST
        try:
            manifest = Manifest.from_json(json.loads(path.read_text()))
        except FileNotFoundError as error:
            raise DatastoreError(f"no snapshot {ref.relative()}") from error
        manifest.protected = (self.snapshot_dir(ref) / PROTECTED_MARKER).exists()
        return manifest

    def _save_manifest(self, ref: SnapshotRef, manifest: Manifest) -> None:
        write_json(self.snapshot_dir(ref) / MANIFEST, manifest.to_json())

    def read_index(self, ref: SnapshotRef, name: str) -> FixedIndex:
        return FixedIndex.read(self.snapshot_dir(ref) / name)

    def set_protected(self, ref: SnapshotRef, protected: bool) -> None:
        manifest = self.manifest(ref)
        marker = self.snapshot_dir(ref) / PROTECTED_MARKER
        if protected:
            marker.touch()
        else:
            marker.unlink(missing_ok=True)
        manifest.protected = protected
        self._save_manifest(ref, manifest)

    def set_notes(self, ref: SnapshotRef, notes: str) -> None:
        manifest = self.manifest(ref)
        manifest.notes = notes
        self._save_manifest(ref, manifest)

    def remove(self, ref: SnapshotRef) -> None:
        """Forget a snapshot (metadata only; GC frees its chunks). Protected ones refuse."""
        if self.manifest(ref).protected:
            raise DatastoreError(f"snapshot {ref.relative()} is protected")
        directory = self.snapshot_dir(ref)
        trash = directory.parent / f".removing-{directory.name}"
        os.rename(directory, trash)
        shutil.rmtree(trash)

    def prune_group(self, backup_type: str, backup_id: str, options: PruneOptions,
                    dry_run: bool = False) -> dict[SnapshotRef, Mark]:
        refs = self.snapshots(backup_type, backup_id)
        entries = [BackupEntry(id=r.relative(), time=datetime.fromtimestamp(r.backup_time),
                               protected=self.manifest(r).protected) for r in refs]
        marks = compute_prune(entries, options)
        result = {r: marks[r.relative()] for r in refs}
        if not dry_run:
            for ref, mark in result.items():
                if mark is Mark.REMOVE:
                    self.remove(ref)
        return result

    def _indexes(self, ref: SnapshotRef) -> Iterator[FixedIndex]:
        for entry in self.manifest(ref).files:
            if entry["filename"].endswith(".fidx"):
                yield self.read_index(ref, entry["filename"])

    def verify(self, ref: SnapshotRef, crypt: CryptConfig | None = None) -> VerifyResult:
        """Re-read every chunk; record `verify_state` ok/failed in the manifest."""
        bad: list[str] = []
        checked: set[bytes] = set()
        try:
            indexes = list(self._indexes(ref))
        except (FixedIndexError, OSError) as error:
            indexes, bad = [], [f"index: {error}"]
        for index in indexes:
            for digest in index.digests:
                if digest in checked:
                    continue
                checked.add(digest)
                try:
                    self.chunks.verify_chunk(digest, crypt)
                except ChunkError:
                    bad.append(digest.hex())
        manifest = self.manifest(ref)
        manifest.verify_state = {"state": "failed" if bad else "ok",
                                 "upid": None, "time": int(time.time())}
        self._save_manifest(ref, manifest)
        return VerifyResult(ref, not bad, bad)

    def oldest_writer_start(self) -> float | None:
        writers = self.root / ".writers"
        starts = []
        if writers.is_dir():
            for mark in writers.iterdir():
                try:
                    starts.append(float(json.loads(mark.read_text())["started"]))
                except (OSError, ValueError, KeyError):
                    continue
        return min(starts) if starts else None

    def garbage_collect(self, grace_seconds: float = _GC_GRACE_SECONDS) -> GcResult:
        """Phase 1 touches all referenced chunks, phase 2 sweeps the untouched ones.

        The cutoff is the GC start (or the oldest running writer's start, whichever is
        earlier) minus a grace, so chunks a running backup inserted or reused are kept.
        """
        started = time.time()
        oldest = self.oldest_writer_start()
        cutoff = min(started, oldest if oldest is not None else started) - grace_seconds
        marked = 0
        for ref in self.snapshots():
            for index in self._indexes(ref):
                marked += 1
                for digest in index.digests:
                    self.chunks.touch(digest)
        return GcResult(marked, cutoff, self.chunks.sweep(cutoff))
