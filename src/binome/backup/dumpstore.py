"""binome's backups on a `dir` storage: PVE's vzdump names over a deduplicated datastore.

Owns the layout of `<storage path>/dump/` for binome backups: each backup is a directory
`vzdump-qemu-<vmid>-<YYYY_MM_DD-HH_MM_SS>.binome/` (local time, as vzdump names its
archives) holding the datastore snapshot (`index.json` manifest, one `drive-<key>.img.fidx`
fixed index per disk, the guest config `qemu-server.conf`), and every chunk of every
backup lives once in `dump/.chunks/`, so backups on a plain directory deduplicate as on
a backup server. A backup is staged in `dump/.tmp-<name>-<uuid>/` and renamed into place
when complete, so a failed or half-written backup is never listed. Volume ids are PVE's
`<storage>:backup/<name>`.

Everything else (verify, prune, GC, protection, notes, restore) is `Datastore`'s: this
class only maps snapshots to names. The checks a reader with an encryption key makes
(`authenticated_manifest`, `checked_index`, `checked_file`, `decode_guest_config`) are
shared with the backup server's client (`binome.backup.remote`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from binome.backup.chunkstore import (
    ChunkError,
    CryptConfig,
    decode_blob,
    is_encrypted_blob,
)
from binome.backup.crypt import CryptError, check_encryption, file_entry
from binome.backup.datastore import (
    MANIFEST,
    Datastore,
    DatastoreError,
    SnapshotRef,
    SnapshotWriter,
)
from binome.backup.dumpdir import CHUNKED_EXT, DumpDirError, archive_name, parse_archive_name
from binome.backup.index import FixedIndex, Manifest
from binome.durable import write_json

GUEST_CONFIG = "qemu-server.conf"
_TYPE_NAMES = {"vm": "qemu", "ct": "lxc"}
_TYPE_OF_NAME = {name: kind for kind, name in _TYPE_NAMES.items()}


def backup_name(ref: SnapshotRef) -> str:
    """`vzdump-qemu-100-2026_12_05-20_00_00.binome` for a snapshot."""
    return archive_name(_TYPE_NAMES[ref.backup_type], int(ref.backup_id),
                        datetime.fromtimestamp(ref.backup_time), CHUNKED_EXT)


def ref_of_name(name: str) -> SnapshotRef:
    """The snapshot a backup name stands for; DatastoreError if it is not one."""
    try:
        archive = parse_archive_name(name)
    except DumpDirError as error:
        raise DatastoreError(str(error)) from None
    if archive.ext != CHUNKED_EXT or archive.guest_type not in _TYPE_OF_NAME:
        raise DatastoreError(f"'{name}' is not a binome backup")
    return SnapshotRef(_TYPE_OF_NAME[archive.guest_type], str(archive.vmid),
                       int(archive.time.timestamp()))


def authenticated_manifest(name: str, manifest: Manifest, crypt: CryptConfig | None
                           ) -> Manifest:
    """`manifest` if a reader with `crypt` may use it (see `crypt.check_encryption`);
    CryptError otherwise."""
    check_encryption(name, manifest.crypt_fingerprint, manifest.signature,
                     manifest.signed_payload(), crypt)
    return manifest


def checked_index(name: str, manifest: Manifest, filename: str,
                  index: FixedIndex) -> FixedIndex:
    """`index` if it is the one the (authenticated) manifest lists; CryptError if not."""
    entry = manifest.file(filename)
    if entry is None or entry.get("csum") != index.checksum().hex() \
            or int(entry.get("size", -1)) != index.size:
        raise CryptError(f"backup {name}: index {filename} does not match the signed "
                         f"manifest - the backup was altered on the server")
    return index


def checked_file(name: str, manifest: Manifest, filename: str, data: bytes) -> bytes:
    entry = manifest.file(filename)
    if entry is None or entry.get("csum") != hashlib.sha256(data).hexdigest():
        raise CryptError(f"backup {name}: file {filename} does not match the signed "
                         f"manifest - the backup was altered on the server")
    return data


def decode_guest_config(name: str, data: bytes, crypt: CryptConfig | None) -> str:
    """The guest config's text: stored plain, or as an encrypted blob in an encrypted
    backup (it is guest data too)."""
    if not is_encrypted_blob(data):
        return data.decode()
    try:
        return decode_blob(data, crypt).decode()
    except ChunkError as error:
        raise CryptError(f"backup {name}: guest config: {error}") from None


class DumpWriter(SnapshotWriter):
    """Stages a backup in `dump/.tmp-<name>-<uuid>/` (not in a per-guest group dir)."""

    def __init__(self, store: Datastore, ref: SnapshotRef, crypt: CryptConfig | None) -> None:
        self.store, self.ref, self.crypt = store, ref, crypt
        self.started = datetime.now().timestamp()
        self.staging = store.root / f".tmp-{backup_name(ref)}-{uuid.uuid4().hex}"
        self.staging.mkdir(parents=True)
        self.files = []
        self._writer_mark = store.root / ".writers" / self.staging.name
        self._writer_mark.parent.mkdir(exist_ok=True)
        write_json(self._writer_mark, {"started": self.started, "snapshot": backup_name(ref)})

    def add_file(self, name: str, data: bytes) -> None:
        """A small blob stored as is (the guest config), listed in the manifest."""
        if "/" in name or name.startswith("."):
            raise DatastoreError(f"bad file name '{name}'")
        (self.staging / name).write_bytes(data)
        self.files.append(file_entry(name, data))


class DumpStore(Datastore):
    """The `dump/` directory of a dir storage as a datastore with vzdump names."""

    def __init__(self, storage_path: str | os.PathLike[str], storage_id: str,
                 crypt: CryptConfig | None = None) -> None:
        super().__init__(Path(storage_path) / "dump")
        self.storage_id = storage_id
        # the key of a reader: manifests, indexes and files are then checked against
        # the signature (a backup server's own directory is read without it)
        self.crypt = crypt

    def authenticated_manifest(self, ref: SnapshotRef) -> Manifest:
        return authenticated_manifest(backup_name(ref), self.manifest(ref), self.crypt)

    def read_index(self, ref: SnapshotRef, name: str) -> FixedIndex:
        index = super().read_index(ref, name)
        if self.crypt is not None:
            checked_index(backup_name(ref), self.authenticated_manifest(ref), name, index)
        return index

    def snapshot_dir(self, ref: SnapshotRef) -> Path:
        return self.root / backup_name(ref)

    def volid(self, ref: SnapshotRef) -> str:
        return f"{self.storage_id}:backup/{backup_name(ref)}"

    def begin(self, backup_type: str, backup_id: str, backup_time: int | None = None,
              crypt: CryptConfig | None = None) -> DumpWriter:
        if backup_type not in _TYPE_NAMES or not backup_id.isdigit():
            raise DatastoreError(f"cannot name a backup of {backup_type}/{backup_id}")
        when = int(datetime.now().timestamp()) if backup_time is None else backup_time
        ref = SnapshotRef(backup_type, backup_id, when)
        if self.snapshot_dir(ref).exists():
            raise DatastoreError(f"backup {backup_name(ref)} already exists")
        self.create()
        return DumpWriter(self, ref, crypt or self.crypt)

    def groups(self) -> list[tuple[str, str]]:
        return sorted({(r.backup_type, r.backup_id) for r in self.snapshots()})

    def snapshots(self, backup_type: str | None = None,
                  backup_id: str | None = None) -> list[SnapshotRef]:
        """Finished backups, oldest first (staging directories are never listed)."""
        if not self.root.is_dir():
            return []
        refs = []
        for entry in self.root.iterdir():
            if entry.name.startswith(".") or not (entry / MANIFEST).exists():
                continue
            try:
                ref = ref_of_name(entry.name)
            except DatastoreError:
                continue
            if backup_type in (None, ref.backup_type) and backup_id in (None, ref.backup_id):
                refs.append(ref)
        return sorted(refs, key=lambda r: (r.backup_type, int(r.backup_id), r.backup_time))

    def read_file(self, ref: SnapshotRef, name: str) -> bytes:
        """A small file of the backup (OSError if it has none)."""
        data = (self.snapshot_dir(ref) / name).read_bytes()
        if self.crypt is not None:
            checked_file(backup_name(ref), self.authenticated_manifest(ref), name, data)
        return data

    def describe(self, ref: SnapshotRef) -> str:
        """Where the backup is, for a task log."""
        return f"'{self.snapshot_dir(ref)}' (chunks in '{self.chunks.base}')"

    def guest_config(self, ref: SnapshotRef) -> str:
        try:
            data = self.read_file(ref, GUEST_CONFIG)
        except FileNotFoundError:
            raise DatastoreError(f"backup {backup_name(ref)} has no guest config") from None
        return decode_guest_config(backup_name(ref), data, self.crypt)

    def used_bytes(self, ref: SnapshotRef) -> int:
        """The size PVE lists for a backup: here the sum of its disk images."""
        return sum(int(f.get("size", 0)) for f in self.manifest(ref).files
                   if str(f["filename"]).endswith(".fidx"))

    def staging_dirs(self) -> list[Path]:
        """The `.tmp-*` staging directories of backups not (or not yet) committed."""
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.glob(".tmp-*") if p.is_dir())

    def staging_started(self, staging: Path) -> float | None:
        """When the backup staged in `staging` started (its writer mark), None if unknown."""
        try:
            return float(json.loads((self.root / ".writers" / staging.name).read_text())
                         ["started"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def remove_staging(self, staging: Path) -> None:
        """Drop a staging directory (a backup that will never commit) and its writer mark,
        so GC no longer holds chunks back for it."""
        if staging.parent != self.root or not staging.name.startswith(".tmp-"):
            raise DatastoreError(f"'{staging}' is not a staging directory of this store")
        shutil.rmtree(staging, ignore_errors=True)
        (self.root / ".writers" / staging.name).unlink(missing_ok=True)

    # ------------------------------------------------------------ maintenance tasks

    def verify_backups(self, refs: list[SnapshotRef], log: Callable[[str], None]) -> list[str]:
        """PBS's verify over `refs` (each chunk re-read and re-hashed, a bad backup marked
        failed), narrated to `log`; the names of the backups that failed."""
        log(f"verify datastore of storage '{self.storage_id}': {len(refs)} backup(s)")
        failed = []
        for ref in refs:
            name = backup_name(ref)
            log(f"verify {name}")
            try:
                result = self.verify(ref)
            except (DatastoreError, OSError) as error:   # removed meanwhile, unreadable
                log(f"  check failed: {error}")
                failed.append(name)
                continue
            for bad in result.bad_chunks[:20]:
                log(f"  chunk {bad} is missing or corrupt")
            if not result.ok:
                log(f"  {name}: {len(result.bad_chunks)} bad chunk(s), marked failed")
                failed.append(name)
        if failed:
            log(f"Failed to verify the following snapshots/groups: {', '.join(failed)}")
        else:
            log("verified all backups: ok")
        return failed

    def collect_garbage(self, log: Callable[[str], None],
                        grace_seconds: float | None = None) -> None:
        """PBS's garbage collection (mark, then sweep), narrated to `log` as PBS does.
        DatastoreError or OSError when it fails. `grace_seconds`: see `garbage_collect`
        (None: its default)."""
        log(f"starting garbage collection on storage '{self.storage_id}'")
        log("Start GC phase1 (mark used chunks)")
        log("Start GC phase2 (sweep unused chunks)")
        if not self.root.is_dir():
            log("no backups on this storage: nothing to do")
            return
        result = (self.garbage_collect() if grace_seconds is None
                  else self.garbage_collect(grace_seconds))
        sweep = result.sweep
        log(f"Marked chunks of {result.marked_indexes} index(es)")
        log(f"Removed garbage: {sweep.removed_bytes} B")
        log(f"Removed chunks: {sweep.removed_chunks}")
        log(f"Disk chunks: {sweep.kept_chunks}")
        log(f"Disk bytes: {sweep.kept_bytes} B")
