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

from collections.abc import Sequence
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

    async def secret(self, storage: str) -> str | None:
        """The storage's secret, for the backend that uses it (never for an API answer)."""
        entry = await self.store.get(keys.storage_secret(storage))
        return None if entry is None else str(dict(entry.value)["secret"])
