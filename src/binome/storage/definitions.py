"""The cluster's storage definitions in etcd (`/binome/storage/<id>`, PVE's storage.cfg):
the one module that writes them.

A definition is a flat record (`storage`, `type`, `path`, `content`, `nodes`, `shared`,
`disable`, and a type's own options such as a backup server's `server`, `port`,
`datastore`, `username`, `fingerprint`), created together with a bump of the cluster
config version, so every node sees a versioned change. A storage's secret (a backup
server's token secret) is written in the same transaction under
`/binome/priv/storage/<id>` (PVE's /etc/pve/priv/storage/<id>.pw): never in the
definition, so no listing carries it; `secret` reads it for the node that needs it.
Reading them into `StorageConfig` stays with
`binome.storage.manager.StorageManager.configs`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from binome.schema import register_format
from binome.storage.base import CONTENT_TYPES, StorageError
from binome.store import keys

if TYPE_CHECKING:
    from binome.store.client import Store


def _content_type(value: str) -> str:
    if value not in CONTENT_TYPES:
        raise ValueError(f"invalid content type '{value}'")
    return value


# PVE's `pve-storage-content`; `content` is a list of them (pve-storage-content-list)
register_format("pve-storage-content", _content_type)


def definition_record(storage: str, type_: str, *, path: str = "",
                      content: Sequence[str] = ("images", "iso"), nodes: str = "",
                      shared: bool = False, disable: bool = False,
                      options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The stored form of a definition (what `StorageManager.configs` reads back)."""
    record = {"storage": storage, "type": type_, "path": path, "content": ",".join(content),
              "nodes": nodes, "shared": int(shared), "disable": int(disable)}
    if options:
        record["options"] = dict(options)
    return record


class StorageDefinitions:
    """Writes of the storage definitions, on one store client."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def create(self, record: dict[str, Any], secret: str | None = None) -> None:
        """Define a storage (with its secret, if it has one); StorageError if its ID is
        taken."""
        key = keys.STORAGE + record["storage"]
        puts: dict[str, Any] = {key: record}
        if secret is not None:
            puts[keys.storage_secret(record["storage"])] = {"secret": secret}
        if not await self.store.commit({key: 0}, puts, bump_config=True):
            raise StorageError(f"storage ID '{record['storage']}' already defined")

    async def records(self) -> dict[str, tuple[dict[str, Any], int]]:
        """Every stored definition with its key's revision, by storage ID."""
        out = {}
        for entry in await self.store.get_prefix(keys.STORAGE):
            record = dict(entry.value)
            out[str(record["storage"])] = (record, entry.mod_revision)
        return out

    async def digest(self) -> str:
        """The digest of the definitions as they are now (see `records_digest`)."""
        return records_digest([r for r, _ in (await self.records()).values()])

    async def update(self, storage: str, changes: dict[str, Any], delete: Sequence[str],
                     *, digest: str | None = None, base: dict[str, Any] | None = None,
                     secret: str | None = None) -> dict[str, Any]:
        """Change a definition (PVE's update: `changes` set, `delete` removed), if the
        definitions still have `digest` (when given); the new record. `base`: the record
        of a storage that exists without one (the built-in `local`), stored by this
        update. StorageError with PVE's text; nothing is written then. The commit is
        conditioned on every definition's revision, so the digest checked is the one
        replaced."""
        records = await self.records()
        if digest is not None and digest != records_digest([r for r, _ in records.values()]):
            raise StorageError("detected modified configuration - file changed by other "
                               "user? Try again.")
        if storage in records:
            record = records[storage][0]
        elif base is not None:
            record = base
        else:
            raise StorageError(f"storage '{storage}' does not exist")
        new = updated_record(record, changes, delete)
        expect = {keys.STORAGE + sid: rev for sid, (_, rev) in records.items()}
        expect.setdefault(keys.STORAGE + storage, 0)
        puts: dict[str, Any] = {keys.STORAGE + storage: new}
        if secret is not None:
            puts[keys.storage_secret(storage)] = {"secret": secret}
        if not await self.store.commit(expect, puts, bump_config=True):
            raise StorageError("detected modified configuration - file changed by other "
                               "user? Try again.")
        return new

    async def remove(self, storage: str, *, in_use: Callable[[], Awaitable[str | None]]
                     ) -> None:
        """Remove a definition and its secret; `in_use()` (asked after the read, before
        the commit) gives the reason it must stay, or None. StorageError if it does not
        exist or must stay; the commit is conditioned on the definition's revision."""
        entry = await self.store.get(keys.STORAGE + storage)
        if entry is None:
            raise StorageError(f"storage '{storage}' does not exist")
        reason = await in_use()
        if reason is not None:
            raise StorageError(reason)
        if not await self.store.commit({keys.STORAGE + storage: entry.mod_revision}, {},
                                       [keys.STORAGE + storage, keys.storage_secret(storage)],
                                       bump_config=True):
            raise StorageError("detected modified configuration - file changed by other "
                               "user? Try again.")

    async def secret(self, storage: str) -> str | None:
        """The storage's secret, for the backend that uses it (never for an API answer)."""
        entry = await self.store.get(keys.storage_secret(storage))
        return None if entry is None else str(dict(entry.value)["secret"])


# What `PUT /storage/{id}` may change, by storage type (PVE's updateSchema: the options
# not `fixed`), and what `delete=` may remove (the optional ones). `type` and `path` are
# fixed (PVE: a dir storage's path cannot change), the storage ID is the key.
COMMON_OPTIONS = ("content", "nodes", "shared", "disable")
TYPE_OPTIONS: dict[str, tuple[str, ...]] = {
    "dir": COMMON_OPTIONS,
    "replicated": COMMON_OPTIONS,
    "binome-backup": ("nodes", "disable", "server", "port", "datastore", "username",
                      "fingerprint"),
}
FIXED_OPTIONS = ("type", "path", "storage", "encryption-key")
REQUIRED_OPTIONS: dict[str, tuple[str, ...]] = {
    "binome-backup": ("server", "datastore", "username", "fingerprint"),
}
# the default a deleted option falls back on (PVE: the plugin's default)
DEFAULT_CONTENT: dict[str, str] = {"dir": "images,iso", "replicated": "images",
                                   "binome-backup": "backup"}
_FLAT = ("path", "content", "nodes", "shared", "disable")


def records_digest(records: Sequence[dict[str, Any]]) -> str:
    """PVE's storage.cfg digest: a SHA-1 over every definition (the whole config: any
    change to any storage changes it, as a change to the file does)."""
    import hashlib
    import json

    text = json.dumps(sorted(records, key=lambda r: str(r.get("storage"))), sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()


def updated_record(record: dict[str, Any], changes: dict[str, Any],
                   delete: Sequence[str]) -> dict[str, Any]:
    """The record after PVE's update (pure): `changes` set, `delete` options removed;
    StorageError with PVE's text ("no such option 'x'", "unable to delete required
    option 'x'", "unable to delete fixed option 'x'", "cannot set and delete property 'x'
    at the same time!")."""
    type_ = str(record["type"])
    allowed = TYPE_OPTIONS.get(type_, COMMON_OPTIONS)
    for name in delete:
        if name in FIXED_OPTIONS:
            raise StorageError(f"unable to delete fixed option '{name}'")
        if name in REQUIRED_OPTIONS.get(type_, ()):
            raise StorageError(f"unable to delete required option '{name}'")
        if name not in allowed:
            raise StorageError(f"no such option '{name}'")
        if name in changes:
            raise StorageError(f"cannot set and delete property '{name}' at the same time!")
    for name in changes:
        if name in FIXED_OPTIONS:
            raise StorageError(f"can't change value of fixed parameter '{name}'")
        if name not in allowed:
            raise StorageError(f"no such option '{name}'")
    new = dict(record)
    options = dict(new.get("options") or {})
    for name in delete:
        if name == "content":
            new["content"] = DEFAULT_CONTENT.get(type_, "images")
        elif name in ("shared", "disable"):
            new[name] = 0
        elif name in _FLAT:
            new[name] = ""
        else:
            options.pop(name, None)
    for name, value in changes.items():
        if name in ("shared", "disable"):
            new[name] = int(bool(value))
        elif name in _FLAT:
            new[name] = value
        else:
            options[name] = value
    if options:
        new["options"] = options
    else:
        new.pop("options", None)
    return new


def volume_storage(volid: str) -> str:
    """The storage ID a volume ID names ('local:iso/x.iso' -> 'local')."""
    return volid.partition(":")[0]
