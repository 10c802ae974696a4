"""The `binome-backup` storage: backups on an independent binome backup server.

Owns the mapping of a storage definition (`server`, `port`, `datastore`, `username` (the
token id `user@realm!name`), `fingerprint`; the token secret is kept apart, see
`binome.storage.definitions`) to a `RemoteDumpStore`, and the backup content of such a
storage: listing (PVE's content entries, the same as a `dir` storage's binome backups:
volids `<storage>:backup/vzdump-qemu-<vmid>-<time>.binome`), notes and protection,
removal. It holds backups only: no images, no ISO.

Also owns the storage's client-side encryption key (`encryption-key`, PBS's): the key
file (`binome.backup.crypt` format) lives on the cluster's side only, in
`<state dir>/priv/storage/<id>.enc` (root's alone: 0600 in a 0700 directory; PVE's
/etc/pve/priv/storage/<id>.enc), on the node where the storage was added, which sends
it to the other nodes node-to-node (`api.methods.storage_keys`; never through etcd);
the definition records only its fingerprint.
A node whose key file is missing or is another key lists the storage's backups and
changes their notes and protection, and refuses the rest (`backup_store()`: backup,
restore, prune, verify, GC); it never falls back to plain backups.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from binome.backup.crypt import CryptConfig, CryptError, load_key
from binome.backup.datastore import DatastoreError
from binome.backup.dumpstore import ref_of_name
from binome.backup.remote import BackupServerClient, RemoteDumpStore
from binome.durable import write_bytes
from binome.storage.base import Storage, StorageConfig, StorageError, VolumeSource, split_volid

TYPE = "binome-backup"
DEFAULT_PORT = 8007
OPTIONS = ("server", "port", "datastore", "username", "fingerprint")
ENCRYPTION_KEY = "encryption-key"   # in the definition: the key's fingerprint only


def key_file(key_dir: Path, storage_id: str) -> Path:
    return key_dir / f"{storage_id}.enc"


def write_key_file(key_dir: Path, storage_id: str, text: str) -> Path:
    """Store a storage's key file, root's alone; its path."""
    key_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(key_dir, 0o700)
    path = key_file(key_dir, storage_id)
    write_bytes(path, text.encode(), mode=0o600)
    return path


class BackupServerStorage(Storage):
    def __init__(self, config: StorageConfig, node: str = "", secret: str | None = None,
                 key_dir: Path | None = None) -> None:
        super().__init__(config, node)
        self._secret = secret
        self._key_dir = key_dir

    def __repr__(self) -> str:
        return f"BackupServerStorage({self.id})"

    def encryption(self) -> CryptConfig | None:
        """The storage's key (None: it makes plain backups); StorageError if it has one
        and this node cannot use it."""
        fingerprint = self.config.options.get(ENCRYPTION_KEY)
        if not fingerprint:
            return None
        path = key_file(self._key_dir, self.id) if self._key_dir is not None else None
        try:
            if path is None:
                raise FileNotFoundError
            crypt = load_key(path.read_text())
        except FileNotFoundError:
            raise StorageError(f"storage '{self.id}' encrypts its backups (key fingerprint "
                               f"{fingerprint}) but node '{self.node}' has no key file "
                               f"{path}: run 'binome storage set-key {self.id} "
                               f"--key-file FILE' on it with the storage's key "
                               f"file") from None
        except (OSError, CryptError) as error:
            raise StorageError(f"storage '{self.id}': key file {path}: {error}") from None
        if crypt.fingerprint != fingerprint:
            raise StorageError(f"storage '{self.id}': key file {path} holds key "
                               f"{crypt.fingerprint}, not the storage's {fingerprint}")
        return crypt

    def backup_store(self) -> RemoteDumpStore:
        return self._store(self.encryption())

    def _store(self, crypt: CryptConfig | None) -> RemoteDumpStore:
        options = self.config.options
        if self._secret is None:
            raise StorageError(f"storage '{self.id}': no token secret is stored for it")
        try:
            client = BackupServerClient(
                str(options["server"]), int(options.get("port") or DEFAULT_PORT),
                str(options["datastore"]), str(options["username"]), self._secret,
                str(options["fingerprint"]))
        except (KeyError, ValueError) as error:
            raise StorageError(f"storage '{self.id}' is misconfigured: {error}") from None
        return RemoteDumpStore(client, self.id, crypt)

    def _backup_name(self, volid: str) -> str:
        storage, volname = split_volid(volid)
        if storage != self.id or not volname.startswith("backup/"):
            raise StorageError(f"'{volid}' is not a backup volume of storage '{self.id}'")
        return volname[len("backup/"):]

    async def _call(self, work: Any, *args: Any) -> Any:
        try:
            return await asyncio.to_thread(work, *args)
        except DatastoreError as error:
            raise StorageError(str(error)) from None

    async def alloc(self, vmid: int, size: int, fmt: str = "raw",
                    name: str | None = None) -> str:
        raise StorageError(f"storage '{self.id}' ({TYPE}) holds backups only")

    async def free(self, volid: str) -> None:
        """Remove a backup; its chunks stay until the server's GC (PBS's model)."""
        try:
            ref = ref_of_name(self._backup_name(volid))
        except DatastoreError as error:
            raise StorageError(str(error)) from None
        store = self._store(None)
        await self._call(store.remove, ref)

    async def resize(self, volid: str, size: int) -> None:
        raise StorageError(f"storage '{self.id}' ({TYPE}) holds backups only")

    async def copy(self, volid: str, vmid: int, fmt: str | None = None) -> str:
        raise StorageError(f"storage '{self.id}' ({TYPE}) holds backups only")

    def source(self, volid: str) -> VolumeSource:
        raise StorageError(f"volume '{volid}' is a backup: restore it instead")

    async def size(self, volid: str) -> int:
        ref = ref_of_name(self._backup_name(volid))
        return int(await self._call(self._store(None).used_bytes, ref))

    async def set_backup_attributes(self, volid: str, *, notes: str | None = None,
                                    protected: bool | None = None) -> None:
        try:
            ref = ref_of_name(self._backup_name(volid))
        except DatastoreError as error:
            raise StorageError(str(error)) from None
        store = self._store(None)
        if notes is not None:
            await self._call(store.set_notes, ref, notes)
        if protected is not None:
            await self._call(store.set_protected, ref, protected)

    async def list(self, content: str | None = None,
                   vmid: int | None = None) -> list[dict[str, Any]]:
        if content not in (None, "backup"):
            return []
        store = self._store(None)
        listing = await self._call(store.listing, None if vmid is None else str(vmid))
        out = []
        for item in listing:
            entry: dict[str, Any] = {
                "volid": f"{self.id}:backup/{item['name']}", "content": "backup",
                "format": "binome", "size": int(item["size"]),
                "ctime": int(item["backup-time"]), "vmid": int(item["backup-id"]),
                "subtype": "qemu", "protected": int(item["protected"])}
            if item.get("notes"):
                entry["notes"] = item["notes"]
            if item.get("crypt-fingerprint"):
                entry["encrypted"] = item["crypt-fingerprint"]   # PVE's field for PBS
            if item.get("verification"):
                entry["verification"] = {"state": item["verification"].get("state")}
            out.append(entry)
        return sorted(out, key=lambda e: (e["vmid"], e["ctime"]))

    async def status(self) -> dict[str, Any]:
        """The datastore's space as the server sees it; inactive if it does not answer."""
        enabled = 0 if self.config.disable else 1
        try:
            usage = await self._call(self._store(None).status)
        except StorageError:
            return {"total": 0, "used": 0, "avail": 0, "active": 0, "enabled": enabled}
        return {**usage, "active": 1, "enabled": enabled}
