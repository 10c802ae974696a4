"""The `dir` storage: raw or qcow2 image files under a directory (PVE's layout).

Images live in ``<path>/images/<vmid>/vm-<vmid>-disk-<n>.<fmt>`` with volids
``STORAGE:<vmid>/vm-<vmid>-disk-<n>.<fmt>``; kernels, initrds and ISO images in
``<path>/template/iso/`` with volids ``STORAGE:iso/<file>``; backups (content
``backup``) in ``<path>/dump/`` with volids ``STORAGE:backup/<name>``: binome's own
(``vzdump-qemu-<vmid>-<time>.binome``, `binome.backup.dumpstore`) and PVE archives
copied there (listed, not restorable). A VM's cloud-init drive is
``<vmid>/vm-<vmid>-cloudinit.<fmt>``; cloud-init custom files (content ``snippets``)
are ``<path>/snippets/<file>``, volids ``STORAGE:snippets/<file>``.

Snapshots, as PVE's dir plugin: qcow2 images only, as qcow2 internal snapshots
(``qemu-img snapshot`` on an image no QEMU has open; the running QEMU takes
them itself otherwise: `qemu_snapshots_internal`). A raw image has none (PVE:
"snapshot feature is not available"); a new disk is raw unless created with
``format=qcow2``, PVE's default for dir storage.
"""

from __future__ import annotations

import asyncio
import builtins
import os
import re
import shutil
from pathlib import Path
from typing import Any

from binome.backup.datastore import DatastoreError
from binome.backup.dumpdir import DumpDir, DumpDirError, parse_archive_name
from binome.backup.dumpstore import DumpStore, ref_of_name
from binome.storage.base import (
    SNAPSHOT_UNAVAILABLE,
    Storage,
    StorageError,
    VolumeSource,
    parse_image_volname,
    split_volid,
)

FORMATS = ("raw", "qcow2")


async def _run(*argv: str) -> str:
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise StorageError(f"{argv[0]} failed: {err.decode().strip() or proc.returncode}")
    return out.decode()


class DirStorage(Storage):
    formats = FORMATS
    can_rename = True

    @property
    def root(self) -> Path:
        return Path(self.config.path)

    def _image_dir(self, vmid: int) -> Path:
        return self.root / "images" / str(vmid)

    def backup_store(self) -> DumpStore:
        if "backup" not in self.config.content:
            raise StorageError(f"storage '{self.id}' does not support backups (content "
                               f"'backup' is not enabled)")
        return DumpStore(self.root, self.id)

    def path(self, volid: str) -> Path:
        storage, volname = split_volid(volid)
        if storage != self.id:
            raise StorageError(f"volume '{volid}' is not on storage '{self.id}'")
        if volname.startswith("backup/"):
            name = volname[7:]
            try:
                parse_archive_name(name)
            except DumpDirError as error:
                raise StorageError(f"invalid backup volume '{volname}': {error}") from None
            return self.root / "dump" / name
        if volname.startswith("iso/"):
            name = volname[4:]
            if "/" in name or name in ("", ".", ".."):
                raise StorageError(f"invalid volume name '{volname}'")
            return self.root / "template" / "iso" / name
        if volname.startswith("vztmpl/"):     # container templates (kept, not used)
            name = volname[len("vztmpl/"):]
            if "/" in name or name in ("", ".", ".."):
                raise StorageError(f"invalid volume name '{volname}'")
            return self.root / "template" / "cache" / name
        if volname.startswith("snippets/"):   # cloud-init custom files, hook scripts
            name = volname[len("snippets/"):]
            if "/" in name or name in ("", ".", ".."):
                raise StorageError(f"invalid volume name '{volname}'")
            return self.root / "snippets" / name
        vmid, name, fmt = parse_image_volname(volname)
        return self._image_dir(vmid) / f"{name}.{fmt}"

    def _next_name(self, vmid: int, prefix: str = "vm") -> str:
        used = set()
        directory = self._image_dir(vmid)
        if directory.exists():
            for f in directory.iterdir():
                m = re.match(rf"(?:vm|base)-{vmid}-disk-(\d+)\.", f.name)
                if m:
                    used.add(int(m.group(1)))
        n = 0
        while n in used:
            n += 1
        return f"{prefix}-{vmid}-disk-{n}"

    async def alloc(self, vmid: int, size: int, fmt: str = "raw",
                    name: str | None = None) -> str:
        if fmt not in FORMATS:
            raise StorageError(f"unsupported format '{fmt}' on dir storage")
        if size <= 0:
            raise StorageError("volume size must be positive")
        self._image_dir(vmid).mkdir(parents=True, exist_ok=True)
        name = name or self._next_name(vmid)
        path = self._image_dir(vmid) / f"{name}.{fmt}"
        if path.exists():
            raise StorageError(f"volume '{self.id}:{vmid}/{name}.{fmt}' already exists")
        if fmt == "raw":
            with open(path, "xb") as f:
                f.truncate(size)
        else:
            await _run("qemu-img", "create", "-q", "-f", "qcow2", str(path), str(size))
        return f"{self.id}:{vmid}/{name}.{fmt}"

    async def free(self, volid: str) -> None:
        path = self.path(volid)
        if split_volid(volid)[1].startswith("backup/"):
            await asyncio.to_thread(self._free_backup, path)
            return
        path.unlink(missing_ok=True)
        with_dir = path.parent
        if with_dir.name.isdigit() and with_dir.exists() and not any(with_dir.iterdir()):
            with_dir.rmdir()

    async def resize(self, volid: str, size: int) -> None:
        path = self.path(volid)
        if not path.exists():
            raise StorageError(f"volume '{volid}' does not exist")
        await _run("qemu-img", "resize", "-q", "-f", path.suffix[1:], str(path), str(size))

    async def copy(self, volid: str, vmid: int, fmt: str | None = None) -> str:
        src = self.path(volid)
        if not src.exists():
            raise StorageError(f"volume '{volid}' does not exist")
        fmt = fmt or src.suffix[1:]
        self._image_dir(vmid).mkdir(parents=True, exist_ok=True)
        name = self._next_name(vmid)
        dst = self._image_dir(vmid) / f"{name}.{fmt}"
        await _run("qemu-img", "convert", "-q", "-f", src.suffix[1:], "-O", fmt, str(src),
                   str(dst))
        return f"{self.id}:{vmid}/{name}.{fmt}"

    def volume_format(self, volid: str) -> str:
        suffix = self.path(volid).suffix[1:]
        return suffix if suffix in FORMATS else "raw"

    async def rename_volume(self, volid: str, vmid: int) -> str:
        """The image file moves to `vmid`'s directory under its next free disk name
        (PVE's dir plugin rename_volume); same file system, so one rename."""
        src = self.path(volid)
        volname = split_volid(volid)[1]
        owner, name, fmt = parse_image_volname(volname)
        if name.endswith("-cloudinit"):
            raise StorageError("Storage does not support moving of this disk to another VM")
        if not src.exists():
            raise StorageError(f"volume '{volid}' does not exist")
        self._image_dir(vmid).mkdir(parents=True, exist_ok=True)
        new = self._next_name(vmid)
        dst = self._image_dir(vmid) / f"{new}.{fmt}"
        if dst.exists():
            raise StorageError(f"volume '{self.id}:{vmid}/{new}.{fmt}' already exists")
        os.rename(src, dst)
        old_dir = src.parent
        if owner != vmid and old_dir.exists() and not any(old_dir.iterdir()):
            old_dir.rmdir()
        return f"{self.id}:{vmid}/{new}.{fmt}"

    def _free_backup(self, path: Path) -> None:
        """Remove a backup; its chunks stay until a garbage collection (PBS's model)."""
        try:
            if path.suffix == ".binome":
                store = DumpStore(self.root, self.id)
                store.remove(ref_of_name(path.name))
            else:
                dump = DumpDir(self.root, self.id)
                dump.remove(parse_archive_name(path.name))
        except (DatastoreError, DumpDirError) as error:
            raise StorageError(str(error)) from None
        except FileNotFoundError:
            raise StorageError(f"backup '{path.name}' does not exist") from None

    async def set_backup_attributes(self, volid: str, *, notes: str | None = None,
                                    protected: bool | None = None) -> None:
        path = self.path(volid)
        if not split_volid(volid)[1].startswith("backup/"):
            raise StorageError(f"'{volid}' is not a backup volume")

        def change() -> None:
            try:
                if path.suffix == ".binome":
                    store = DumpStore(self.root, self.id)
                    ref = ref_of_name(path.name)
                    if notes is not None:
                        store.set_notes(ref, notes)
                    if protected is not None:
                        store.set_protected(ref, protected)
                else:
                    dump = DumpDir(self.root, self.id)
                    archive = parse_archive_name(path.name)
                    if not path.exists():
                        raise StorageError(f"volume '{volid}' does not exist")
                    if notes is not None:
                        (dump.path / f"{archive.name}.notes").write_text(notes)
                    if protected is not None:
                        dump.set_protected(archive, protected)
            except (DatastoreError, DumpDirError) as error:
                raise StorageError(str(error)) from None

        await asyncio.to_thread(change)

    def _backups(self, vmid: int | None) -> list[dict[str, Any]]:
        """PVE's backup listing: binome backups, then PVE archives found in dump/."""
        out: list[dict[str, Any]] = []
        store = DumpStore(self.root, self.id)
        for ref in store.snapshots("vm", None if vmid is None else str(vmid)):
            try:
                manifest = store.manifest(ref)
            except DatastoreError:
                continue  # removed meanwhile
            entry: dict[str, Any] = {
                "volid": store.volid(ref), "content": "backup", "format": "binome",
                "size": store.used_bytes(ref), "ctime": ref.backup_time,
                "vmid": int(ref.backup_id), "subtype": "qemu",
                "protected": int(manifest.protected)}
            if manifest.notes:
                entry["notes"] = manifest.notes
            if manifest.verify_state:
                entry["verification"] = {"state": manifest.verify_state.get("state")}
            out.append(entry)
        dump = DumpDir(self.root, self.id)
        for archive in dump.archives(vmid):
            try:
                st = (dump.path / archive.name).stat()
            except FileNotFoundError:
                continue
            entry = {"volid": archive.volid(self.id), "content": "backup",
                     "format": archive.ext, "size": st.st_size,
                     "ctime": int(archive.time.timestamp()), "vmid": archive.vmid,
                     "subtype": archive.guest_type,
                     "protected": int(dump.is_protected(archive))}
            notes = dump.notes(archive)
            if notes:
                entry["notes"] = notes
            out.append(entry)
        return out

    def source(self, volid: str) -> VolumeSource:
        path = self.path(volid)
        if not path.exists():
            raise StorageError(f"volume '{volid}' does not exist")
        fmt = path.suffix[1:] if path.suffix[1:] in FORMATS else "raw"
        return VolumeSource(str(path), fmt)

    async def size(self, volid: str) -> int:
        path = self.path(volid)
        if not path.exists():
            raise StorageError(f"volume '{volid}' does not exist")
        if path.suffix == ".qcow2":
            import json

            # -U: a running guest's QEMU holds the image's write lock; reading its size is safe
            info = json.loads(await _run("qemu-img", "info", "-U", "--output=json", str(path)))
            return int(info["virtual-size"])
        return path.stat().st_size

    async def list(self, content: str | None = None,
                   vmid: int | None = None) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if content in (None, "images") and (self.root / "images").exists():
            for vdir in sorted((self.root / "images").iterdir()):
                if not vdir.name.isdigit() or (vmid is not None and int(vdir.name) != vmid):
                    continue
                for f in sorted(vdir.iterdir()):
                    volid = f"{self.id}:{vdir.name}/{f.name}"
                    try:
                        parse_image_volname(f"{vdir.name}/{f.name}")
                    except StorageError:
                        continue
                    st = f.stat()
                    out.append({"volid": volid, "format": f.suffix[1:], "content": "images",
                                "size": await self.size(volid), "used": st.st_blocks * 512,
                                "ctime": int(st.st_ctime), "vmid": int(vdir.name)})
        if content in (None, "backup") and "backup" in self.config.content:
            out += await asyncio.to_thread(self._backups, vmid)
        # files: ISO images, container templates, snippets (PVE's formats: iso, the
        # template's compression, snippet); an upload's hidden .part file is not content
        for kind, sub in (("iso", "template/iso"), ("vztmpl", "template/cache"),
                          ("snippets", "snippets")):
            folder = self.root / sub
            if content not in (None, kind) or vmid is not None or not folder.is_dir():
                continue
            for f in sorted(folder.iterdir()):
                if f.name.startswith(".") or not f.is_file():
                    continue
                st = f.stat()
                fmt = {"iso": "iso", "snippets": "snippet"}.get(kind) or \
                    f.name.rpartition(".")[2]
                out.append({"volid": f"{self.id}:{kind}/{f.name}", "format": fmt,
                            "content": kind, "size": st.st_size,
                            "ctime": int(st.st_ctime)})
        return out

    async def status(self) -> dict[str, Any]:
        self.root.mkdir(parents=True, exist_ok=True)
        st = os.statvfs(self.root)
        total = st.f_blocks * st.f_frsize
        avail = st.f_bavail * st.f_frsize
        return {"total": total, "used": total - st.f_bfree * st.f_frsize, "avail": avail,
                "active": 1, "enabled": 0 if self.config.disable else 1}

    # ------------------------------------------------------------ snapshots

    def _image(self, volid: str) -> Path:
        path = self.path(volid)
        if volid.partition(":")[2].startswith("iso/"):
            raise StorageError(f"volume '{volid}' is not a disk image")
        if not path.exists():
            raise StorageError(f"volume '{volid}' does not exist")
        return path

    async def snapshot_blocker(self, volid: str, *, state_bytes: int | None = 0) -> str | None:
        try:
            path = self._image(volid)
        except StorageError as exc:
            return str(exc)
        if path.suffix != ".qcow2":
            return f"volume {volid} is {path.suffix[1:]}: snapshots need qcow2 on dir storage"
        return None

    def qemu_snapshots_internal(self, volid: str) -> bool:
        return True

    async def _qcow2(self, volid: str) -> Path:
        reason = await self.snapshot_blocker(volid)
        if reason is not None:
            raise StorageError(f"{SNAPSHOT_UNAVAILABLE}: {reason}")
        return self._image(volid)

    async def snapshot(self, volid: str, snap: str) -> None:
        path = await self._qcow2(volid)
        # qcow2 accepts a second snapshot of the same name; a rollback or delete by
        # name would then pick one of them
        if snap in await self.snapshots(volid):
            raise StorageError(f"snapshot '{snap}' already exists in volume {volid}")
        await _run("qemu-img", "snapshot", "-q", "-c", snap, str(path))

    async def rollback_snapshot(self, volid: str, snap: str) -> None:
        path = await self._qcow2(volid)
        await _run("qemu-img", "snapshot", "-q", "-a", snap, str(path))

    async def delete_snapshot(self, volid: str, snap: str) -> None:
        path = await self._qcow2(volid)
        await _run("qemu-img", "snapshot", "-q", "-d", snap, str(path))

    async def snapshots(self, volid: str) -> builtins.list[str]:
        import json

        path = self._image(volid)
        if path.suffix != ".qcow2":
            return []
        # -U: the running guest's QEMU holds the image's write lock; a read is safe
        info = json.loads(await _run("qemu-img", "info", "-U", "--output=json", str(path)))
        return [s["name"] for s in info.get("snapshots", [])]

    def import_iso(self, src: Path, name: str | None = None) -> str:
        """Copy a file into the iso content (used by the lab to provide the guest kernel)."""
        dst_dir = self.root / "template" / "iso"
        dst_dir.mkdir(parents=True, exist_ok=True)
        name = name or src.name
        shutil.copyfile(src, dst_dir / name)
        return f"{self.id}:iso/{name}"
