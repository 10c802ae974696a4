"""Storage definitions (PVE's storage.cfg, kept in etcd) and their backends: the one
entry point guest and HA code use for storage.

Every node has the implicit `local` dir storage (``<state-dir>/storage/local``)
unless the cluster defines `local` differently. Backends are built by type
(`_build`), so a new storage type plugs in there without touching guest or HA
code. The per-volume operations (`activate_volume`, `volume_state`, ...) find
the volume's backend by its volid and delegate to the `Storage` interface; the
node-wide views (`guest_volumes`, `idle_active_copies`) ask the types whose
volumes are bound to nodes (today: replicated).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from binome.backup.crypt import CryptError, load_key
from binome.storage.backup_server import (
    ENCRYPTION_KEY,
    BackupServerStorage,
    key_file,
    write_key_file,
)
from binome.storage.base import Storage, StorageConfig, StorageError, VolumeState
from binome.storage.definitions import StorageDefinitions
from binome.storage.dir import DirStorage
from binome.storage.replicated import ReplicatedStorage, ReplicaVolumes
from binome.store import keys

if TYPE_CHECKING:
    from binome.cluster.cluster import ClusterService
    from binome.storage.replica.node.volumes import VolumeService
    from binome.tasks.manager import Task

BACKENDS: dict[str, type[Storage]] = {"dir": DirStorage, "replicated": ReplicatedStorage,
                                      "binome-backup": BackupServerStorage}


class StorageManager:
    def __init__(self, node: str, state_dir: Path, cluster: ClusterService,
                 volumes: VolumeService | None = None) -> None:
        """`volumes`: this node's replicated volume service (None: no replicated
        storage here, e.g. a witness)."""
        self.node = node
        self.state_dir = state_dir
        self.cluster = cluster
        self.replicas = ReplicaVolumes(volumes) if volumes is not None else None

    @property
    def key_dir(self) -> Path:
        """Where this node keeps storages' encryption keys (root's alone)."""
        return self.state_dir / "priv" / "storage"

    def save_encryption_key(self, storage_id: str, key_text: str) -> Path:
        """Keep a binome-backup storage's key file on this node; its path."""
        return write_key_file(self.key_dir, storage_id, key_text)

    def encryption_key_text(self, storage_id: str) -> str | None:
        """This node's copy of a storage's key file (None: it has none), to hand to
        another node; never for a log or an API answer."""
        try:
            return key_file(self.key_dir, storage_id).read_text()
        except FileNotFoundError:
            return None

    async def receive_encryption_key(self, storage_id: str, key_text: str) -> None:
        """Keep the key file another node sent for storage `storage_id`: only the key
        whose fingerprint the definition records (StorageError otherwise, nothing
        written)."""
        cfg = await self.config(storage_id)
        if cfg.type != "binome-backup":
            raise StorageError(f"storage '{storage_id}' is not a binome-backup storage")
        expected = cfg.options.get(ENCRYPTION_KEY)
        if not expected:
            raise StorageError(f"storage '{storage_id}' has no encryption key")
        try:
            crypt = load_key(key_text.strip())
        except CryptError as exc:
            raise StorageError(f"not a key file: {exc}") from None
        if crypt.fingerprint != expected:
            raise StorageError(f"the key's fingerprint {crypt.fingerprint} is not storage "
                               f"'{storage_id}''s ({expected})")
        self.save_encryption_key(storage_id, key_text)

    async def key_recipients(self, storage_id: str) -> list[str]:
        """The other guest-hosting nodes a storage's key file goes to (the storage's
        `nodes`, or every node; witnesses back up nothing)."""
        cfg = await self.config(storage_id)
        records = self.cluster.node_records
        return sorted(n for n, rec in records.items()
                      if n != self.node and rec.get("role", "node") == "node"
                      and cfg.available_on(n))

    def default_local(self) -> StorageConfig:
        return StorageConfig("local", "dir", path=str(self.state_dir / "storage" / "local"),
                             content=("images", "iso"))

    async def configs(self) -> list[StorageConfig]:
        found: dict[str, StorageConfig] = {"local": self.default_local()}
        store = self.cluster.store
        if store is not None:
            for entry in await store.get_prefix(keys.STORAGE, serializable=True):
                data = dict(entry.value)
                path = data.get("path", "")
                if data["storage"] == "local" and data["type"] == "dir" and not path:
                    # the built-in `local` once changed (PUT /storage/local): still each
                    # node's own directory
                    path = self.default_local().path
                found[data["storage"]] = StorageConfig(
                    storage=data["storage"], type=data["type"], path=path,
                    content=tuple(data.get("content", "images").split(",")),
                    shared=bool(data.get("shared", 0)),
                    nodes=tuple(n for n in data.get("nodes", "").split(",") if n),
                    disable=bool(data.get("disable", 0)),
                    options=dict(data.get("options") or {}))
        return sorted(found.values(), key=lambda c: c.storage)

    async def config(self, storage_id: str) -> StorageConfig:
        for cfg in await self.configs():
            if cfg.storage == storage_id:
                return cfg
        raise StorageError(f"storage '{storage_id}' does not exist")

    def _build(self, cfg: StorageConfig) -> Storage:
        backend = BACKENDS.get(cfg.type)
        if backend is None:
            raise StorageError(f"storage type '{cfg.type}' is not supported on this node")
        if backend is ReplicatedStorage:
            return ReplicatedStorage(cfg, self.node, self.replicas)
        return backend(cfg, self.node)

    async def get(self, storage_id: str) -> Storage:
        cfg = await self.config(storage_id)
        if not cfg.available_on(self.node):
            raise StorageError(f"storage '{storage_id}' is not available on node '{self.node}'")
        if cfg.disable:
            raise StorageError(f"storage '{storage_id}' is disabled")
        if cfg.type == "binome-backup" and self.cluster.store is not None:
            secret = await StorageDefinitions(self.cluster.store).secret(storage_id)
            return BackupServerStorage(cfg, self.node, secret, self.key_dir)
        return self._build(cfg)

    async def for_volid(self, volid: str) -> Storage:
        storage_id = volid.split(":", 1)[0]
        return await self.get(storage_id)

    async def _holder(self, volid: str) -> Storage:
        """The backend of an existing volume, even if its storage was since disabled or
        restricted to other nodes: a guest's volumes are still activated, released
        and taken over (what `get` refuses is new use)."""
        return self._build(await self.config(volid.split(":", 1)[0]))

    # ------------------------------------------------------------ per volume (Storage)

    async def volume_state(self, volid: str) -> VolumeState:
        return await (await self._holder(volid)).volume_state(volid)

    async def usable_here(self, volid: str) -> str | None:
        return await (await self._holder(volid)).usable_here(volid)

    async def activate_volume(self, volid: str, *, task: Task | None = None) -> bool:
        return await (await self._holder(volid)).activate_volume(volid, task=task)

    async def deactivate_volume(self, volid: str) -> VolumeState:
        return await (await self._holder(volid)).deactivate_volume(volid)

    async def migration_blocker(self, volid: str, target: str, *, live: bool) -> str | None:
        return await (await self._holder(volid)).migration_blocker(volid, target, live=live)

    async def take_over_volume(self, volid: str, *, reason: str,
                               task: Task | None = None) -> None:
        await (await self._holder(volid)).take_over_volume(volid, reason=reason, task=task)

    async def release_fenced_copy(self, volid: str, *, still_idle: Callable[[], bool],
                                  timeout: float, owner: str | None = None) -> str | None:
        return await (await self._holder(volid)).release_fenced_copy(
            volid, still_idle=still_idle, timeout=timeout, owner=owner)

    # snapshots (see Storage): the guest's snapshot operations reach volumes only here

    async def snapshot_blocker(self, volid: str, *, state_bytes: int | None = 0) -> str | None:
        try:
            return await (await self._holder(volid)).snapshot_blocker(
                volid, state_bytes=state_bytes)
        except StorageError as exc:
            return str(exc)

    async def qemu_snapshots_internal(self, volid: str) -> bool:
        return (await self._holder(volid)).qemu_snapshots_internal(volid)

    async def snapshot(self, volid: str, snap: str) -> None:
        await (await self._holder(volid)).snapshot(volid, snap)

    async def rollback_snapshot(self, volid: str, snap: str) -> None:
        await (await self._holder(volid)).rollback_snapshot(volid, snap)

    async def delete_snapshot(self, volid: str, snap: str) -> None:
        await (await self._holder(volid)).delete_snapshot(volid, snap)

    async def volume_snapshots(self, volid: str) -> list[str]:
        return await (await self._holder(volid)).snapshots(volid)

    # ------------------------------------------------------------ node-wide views

    async def guest_volumes(self, vmid: int) -> list[str]:
        """Volids of guest `vmid`'s volumes that need activation on the node running it
        and have a copy on this one."""
        return await self.replicas.guest_volumes(vmid) if self.replicas is not None else []

    def idle_active_copies(self, exclude_vmids: set[int]) -> list[tuple[str, int]]:
        """(volid, vmid): guests' volumes still active here that nothing here opens,
        from caches (no I/O), guests in `exclude_vmids` left out."""
        if self.replicas is None:
            return []
        return self.replicas.idle_active_copies(exclude_vmids)
