"""Storage definitions (PVE's storage.cfg, kept in etcd) and their backends.

Every node has the implicit `local` dir storage (``<state-dir>/storage/local``)
unless the cluster defines `local` differently. Backends are looked up by type,
so the replicated engine plugs in by adding its type here, without touching the
guest code.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from binome.storage.base import Storage, StorageConfig, StorageError
from binome.storage.dir import DirStorage
from binome.storage.replicated import ReplicatedStorage
from binome.store import keys

if TYPE_CHECKING:
    from binome.cluster.cluster import ClusterService

BACKENDS: dict[str, type[Storage]] = {"dir": DirStorage, "replicated": ReplicatedStorage}


class StorageManager:
    def __init__(self, node: str, state_dir: Path, cluster: ClusterService) -> None:
        self.node = node
        self.state_dir = state_dir
        self.cluster = cluster

    def default_local(self) -> StorageConfig:
        return StorageConfig("local", "dir", path=str(self.state_dir / "storage" / "local"),
                             content=("images", "iso"))

    async def configs(self) -> list[StorageConfig]:
        found: dict[str, StorageConfig] = {"local": self.default_local()}
        store = self.cluster.store
        if store is not None:
            for entry in await store.get_prefix(keys.STORAGE, serializable=True):
                data = dict(entry.value)
                found[data["storage"]] = StorageConfig(
                    storage=data["storage"], type=data["type"], path=data.get("path", ""),
                    content=tuple(data.get("content", "images").split(",")),
                    shared=bool(data.get("shared", 0)),
                    nodes=tuple(n for n in data.get("nodes", "").split(",") if n),
                    disable=bool(data.get("disable", 0)))
        return sorted(found.values(), key=lambda c: c.storage)

    async def config(self, storage_id: str) -> StorageConfig:
        for cfg in await self.configs():
            if cfg.storage == storage_id:
                return cfg
        raise StorageError(f"storage '{storage_id}' does not exist")

    async def get(self, storage_id: str) -> Storage:
        cfg = await self.config(storage_id)
        if not cfg.available_on(self.node):
            raise StorageError(f"storage '{storage_id}' is not available on node '{self.node}'")
        if cfg.disable:
            raise StorageError(f"storage '{storage_id}' is disabled")
        backend = BACKENDS.get(cfg.type)
        if backend is None:
            raise StorageError(f"storage type '{cfg.type}' is not supported on this node")
        return backend(cfg)

    async def for_volid(self, volid: str) -> Storage:
        storage_id = volid.split(":", 1)[0]
        return await self.get(storage_id)
