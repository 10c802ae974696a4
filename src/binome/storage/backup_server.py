"""The `binome-backup` storage: backups on an independent binome backup server.

Owns the mapping of a storage definition (`server`, `port`, `datastore`, `username` (the
token id `user@realm!name`), `fingerprint`; the token secret is kept apart, see
`binome.storage.definitions`) to a `RemoteDumpStore`, and the backup content of such a
storage: listing (PVE's content entries, the same as a `dir` storage's binome backups:
volids `<storage>:backup/vzdump-qemu-<vmid>-<time>.binome`), notes and protection,
removal. It holds backups only: no images, no ISO.
"""

from __future__ import annotations

import asyncio
from typing import Any

from binome.backup.datastore import DatastoreError
from binome.backup.dumpstore import ref_of_name
from binome.backup.remote import BackupServerClient, RemoteDumpStore
from binome.storage.base import Storage, StorageConfig, StorageError, VolumeSource, split_volid

TYPE = "binome-backup"
DEFAULT_PORT = 8007
OPTIONS = ("server", "port", "datastore", "username", "fingerprint")


class BackupServerStorage(Storage):
    def __init__(self, config: StorageConfig, node: str = "", secret: str | None = None
                 ) -> None:
        super().__init__(config, node)
        self._secret = secret

    def __repr__(self) -> str:
        return f"BackupServerStorage({self.id})"

    def backup_store(self) -> RemoteDumpStore:
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
        return RemoteDumpStore(client, self.id)

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
        store = self.backup_store()
        await self._call(store.remove, ref)

    async def resize(self, volid: str, size: int) -> None:
        raise StorageError(f"storage '{self.id}' ({TYPE}) holds backups only")

    async def copy(self, volid: str, vmid: int, fmt: str | None = None) -> str:
        raise StorageError(f"storage '{self.id}' ({TYPE}) holds backups only")

    def source(self, volid: str) -> VolumeSource:
        raise StorageError(f"volume '{volid}' is a backup: restore it instead")

    async def size(self, volid: str) -> int:
        ref = ref_of_name(self._backup_name(volid))
        return int(await self._call(self.backup_store().used_bytes, ref))

    async def set_backup_attributes(self, volid: str, *, notes: str | None = None,
                                    protected: bool | None = None) -> None:
        try:
            ref = ref_of_name(self._backup_name(volid))
        except DatastoreError as error:
            raise StorageError(str(error)) from None
        store = self.backup_store()
        if notes is not None:
            await self._call(store.set_notes, ref, notes)
        if protected is not None:
            await self._call(store.set_protected, ref, protected)

    async def list(self, content: str | None = None,
                   vmid: int | None = None) -> list[dict[str, Any]]:
        if content not in (None, "backup"):
            return []
        store = self.backup_store()
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
            if item.get("verification"):
                entry["verification"] = {"state": item["verification"].get("state")}
            out.append(entry)
        return sorted(out, key=lambda e: (e["vmid"], e["ctime"]))

    async def status(self) -> dict[str, Any]:
        """The datastore's space as the server sees it; inactive if it does not answer."""
        enabled = 0 if self.config.disable else 1
        try:
            usage = await self._call(self.backup_store().status)
        except StorageError:
            return {"total": 0, "used": 0, "avail": 0, "active": 0, "enabled": enabled}
        return {**usage, "active": 1, "enabled": enabled}
