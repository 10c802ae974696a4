"""The `replicated` storage: VM disks on DRBD-like volumes mirrored to a peer node.

A storage definition `{"type": "replicated"}` (content `images`) makes
`alloc(vmid, size)` create the replicated volume `vm-<vmid>-disk-<n>` between
this node (the VM's node, which becomes Primary) and its peer, chosen by the
pairing rule: the storage's `nodes` when it names exactly two (this one and
the peer), otherwise the one other node of a two-node cluster. The volume's
record, secret and replication port go to etcd, and the peer's daemon creates
its copy from there (`replica.service`); the backing files live in each
node's engine state directory, or under the storage's `path` when set.

Volume IDs are `<storage>:vm-<vmid>-disk-<n>` (no format suffix: the export
is raw). QEMU opens `source()`: the engine's NBD unix socket, which serves
I/O only while the volume is Primary on this node (the node it was created
on; `binome volume primary` elsewhere). Resizing is not supported yet.

`StorageManager` builds a backend from its config alone, so the daemon binds
its `VolumeService` here at start (`bind`).
"""

from __future__ import annotations

import asyncio
import os
import re
from typing import TYPE_CHECKING, Any

from binome.storage.base import Storage, StorageError, VolumeSource, split_volid

if TYPE_CHECKING:
    from binome.storage.replica.service import VolumeService

_service: VolumeService | None = None
_NAME_RE = re.compile(r"^(?:vm|base)-(\d+)-disk-(\d+)$")


def bind(service: VolumeService | None) -> None:
    """Give the backend this node's volume service (binomed does, at start)."""
    global _service
    _service = service


def _svc() -> VolumeService:
    if _service is None:
        raise StorageError("replicated storage is not available on this node (no volume "
                           "service)")
    return _service


class ReplicatedStorage(Storage):
    def volname(self, volid: str) -> str:
        storage, name = split_volid(volid)
        if storage != self.id:
            raise StorageError(f"volume '{volid}' is not on storage '{self.id}'")
        if not _NAME_RE.match(name):
            raise StorageError(f"unable to parse replicated volume name '{name}'")
        return name

    def _peer(self) -> str:
        from binome.storage.replica.service import VolumeFailure

        try:
            return _svc().default_peer(self.config.nodes)
        except VolumeFailure as exc:
            raise StorageError(f"storage '{self.id}': {exc}") from None

    async def _records(self) -> dict[str, dict[str, Any]]:
        from binome.storage.replica.service import VolumeFailure

        try:
            return {n: r for n, r in (await _svc().all_records()).items()
                    if r.get("storage") == self.id and not r.get("deleting")}
        except VolumeFailure as exc:
            raise StorageError(str(exc)) from None

    async def alloc(self, vmid: int, size: int, fmt: str = "raw",
                    name: str | None = None) -> str:
        from binome.storage.replica.service import VolumeFailure

        if fmt != "raw":
            raise StorageError(f"unsupported format '{fmt}' on replicated storage (raw only)")
        if size <= 0:
            raise StorageError("volume size must be positive")
        size = (size + 4095) // 4096 * 4096
        service = _svc()
        try:
            taken = set(await service.all_records())
        except VolumeFailure as exc:
            raise StorageError(str(exc)) from None
        if name is None:
            n = 0
            while f"vm-{vmid}-disk-{n}" in taken:
                n += 1
            name = f"vm-{vmid}-disk-{n}"
        elif name in taken:
            raise StorageError(f"volume '{self.id}:{name}' already exists")
        peer = self._peer()
        try:
            # A VM disk may be live-migrated: both nodes Primary during the hand-over.
            await service.create_volume(name, size, peer=peer, storage=self.id, vmid=vmid,
                                        backing_dir=self.config.path or None,
                                        allow_two_primaries=True)
        except VolumeFailure as exc:
            raise StorageError(str(exc)) from None
        return f"{self.id}:{name}"

    async def free(self, volid: str) -> None:
        from binome.storage.replica.service import VolumeFailure

        try:
            await _svc().delete_volume(self.volname(volid))
        except VolumeFailure as exc:
            raise StorageError(str(exc)) from None

    async def resize(self, volid: str, size: int) -> None:
        """Grow both copies (the peer must be connected); running guests keep the size
        their NBD connection negotiated until they reconnect."""
        from binome.storage.replica.service import VolumeFailure

        try:
            await _svc().resize_volume(self.volname(volid), size)
        except VolumeFailure as exc:
            raise StorageError(str(exc)) from None

    async def copy(self, volid: str, vmid: int, fmt: str | None = None) -> str:
        """A new replicated volume with the same data (qemu-img over both NBD exports)."""
        src = self.source(volid)
        new = await self.alloc(vmid, await self.size(volid))
        dst = self.source(new)
        proc = await asyncio.create_subprocess_exec(
            "qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", src.source, dst.source,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        _, err = await proc.communicate()
        if proc.returncode != 0:
            await self.free(new)
            raise StorageError(f"copy of {volid} failed: {err.decode().strip()}")
        return new

    def source(self, volid: str) -> VolumeSource:
        name = self.volname(volid)
        service = _svc()
        if not service.exists_locally(name):
            raise StorageError(f"volume '{volid}' does not exist on this node")
        return VolumeSource(service.nbd_uri(name), None)

    async def size(self, volid: str) -> int:
        name = self.volname(volid)
        rec = (await self._records()).get(name)
        if rec is None:
            raise StorageError(f"volume '{volid}' does not exist")
        return int(rec["size"])

    async def list(self, content: str | None = None,
                   vmid: int | None = None) -> list[dict[str, Any]]:
        if content not in (None, "images"):
            return []
        out = []
        for name, rec in sorted((await self._records()).items()):
            if vmid is not None and rec.get("vmid") != vmid:
                continue
            if _svc().node not in rec.get("nodes", {}):
                continue
            out.append({"volid": f"{self.id}:{name}", "format": "raw", "content": "images",
                        "size": int(rec["size"]), "used": int(rec["size"]),
                        "ctime": int(rec.get("created", 0)), "vmid": rec.get("vmid"),
                        "peer": next((n for n in rec["nodes"] if n != _svc().node), None)})
        return out

    async def status(self) -> dict[str, Any]:
        root = self.config.path or str(_svc().engine_dir)
        os.makedirs(root, exist_ok=True)
        st = os.statvfs(root)
        total = st.f_blocks * st.f_frsize
        return {"total": total, "used": total - st.f_bfree * st.f_frsize,
                "avail": st.f_bavail * st.f_frsize, "active": 1,
                "enabled": 0 if self.config.disable else 1}
