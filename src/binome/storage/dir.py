"""The `dir` storage: raw or qcow2 image files under a directory (PVE's layout).

Images live in ``<path>/images/<vmid>/vm-<vmid>-disk-<n>.<fmt>`` with volids
``STORAGE:<vmid>/vm-<vmid>-disk-<n>.<fmt>``; kernels, initrds and ISO images in
``<path>/template/iso/`` with volids ``STORAGE:iso/<file>``; backups (content
``backup``) in ``<path>/dump/`` with volids ``STORAGE:backup/<name>``: binome's own
(``vzdump-qemu-<vmid>-<time>.binome``, `binome.backup.dumpstore`) and PVE archives
copied there (listed, not restorable). A VM's cloud-init drive is
``<vmid>/vm-<vmid>-cloudinit.<fmt>``; cloud-init custom files (content ``snippets``)
are ``<path>/snippets/<file>``, volids ``STORAGE:snippets/<file>``.

Templates and linked clones, as PVE's dir plugin: `create_base` renames a template's
``vm-<vmid>-disk-<n>`` to ``base-<vmid>-disk-<n>`` (mode 0444: never written again);
`clone_image` makes a linked clone's qcow2 image in the clone's directory, backed by
``../<basevmid>/<basename>`` (a relative path), volid
``STORAGE:<basevmid>/<basename>/<vmid>/vm-<vmid>-disk-<n>.qcow2``; a base image
cannot be freed while an image's header names it as backing file (`base_users`). A
copy of a linked clone (`qemu-img convert`, QEMU's mirror) reads through its base.

Snapshots, as PVE's dir plugin: qcow2 images only, as qcow2 internal snapshots
(``qemu-img snapshot`` on an image no QEMU has open; the running QEMU takes
them itself otherwise: `qemu_snapshots_internal`). A rollback and an offline resize
drop the backups' persistent dirty bitmaps of the image (`binome.backup.incremental`)
first. A raw image has none (PVE:
"snapshot feature is not available"); a new disk is raw unless created with
``format=qcow2``, PVE's default for dir storage.
"""

from __future__ import annotations

import asyncio
import builtins
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from binome.backup.datastore import DatastoreError
from binome.backup.dumpdir import DumpDir, DumpDirError, parse_archive_name
from binome.backup.dumpstore import DumpStore, ref_of_name
from binome.backup.incremental import BITMAP_PREFIX
from binome.storage.base import (
    SNAPSHOT_UNAVAILABLE,
    Storage,
    StorageError,
    VolumeSource,
    is_base_volname,
    linked_base,
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


async def _drop_backup_bitmaps(path: Path) -> None:
    """Remove the backups' persistent dirty bitmaps (`binome.backup.incremental`) from a
    qcow2 image no QEMU has open: the next backup of the guest reads it in full."""
    info = json.loads(await _run("qemu-img", "info", "--output=json", str(path)))
    for bitmap in (info.get("format-specific") or {}).get("data", {}).get("bitmaps") or []:
        if str(bitmap.get("name", "")).startswith(BITMAP_PREFIX):
            await _run("qemu-img", "bitmap", "--remove", str(path), str(bitmap["name"]))


def qcow2_backing(path: Path) -> str | None:
    """The backing file a qcow2 image's header names (a linked clone's
    '../<basevmid>/<basename>'), None without one or for another format; read from
    the header itself, so listing many images starts no process."""
    try:
        with open(path, "rb") as f:
            header = f.read(20)
            if len(header) < 20 or header[:4] != b"QFI\xfb":
                return None
            offset = int.from_bytes(header[8:16], "big")
            size = int.from_bytes(header[16:20], "big")
            if not offset or not size or size > 1023:
                return None
            f.seek(offset)
            return f.read(size).decode(errors="replace")
    except OSError:
        return None


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
        volname = split_volid(volid)[1]
        if volname.startswith("backup/"):
            await asyncio.to_thread(self._free_backup, path)
            return
        if await self.base_users(volid):
            raise StorageError(f"base volume '{volname}' is still in use by linked clones")
        path.unlink(missing_ok=True)
        with_dir = path.parent
        if with_dir.name.isdigit() and with_dir.exists() and not any(with_dir.iterdir()):
            with_dir.rmdir()

    async def resize(self, volid: str, size: int) -> None:
        path = self.path(volid)
        if not path.exists():
            raise StorageError(f"volume '{volid}' does not exist")
        if self._is_base(volid):
            # PVE's base images are immutable (chattr +i): qemu-img cannot write them
            raise StorageError(f"volume '{volid}' is a template's read-only base image")
        if path.suffix == ".qcow2":
            # an inconsistent one (QEMU died with the image open) makes qemu-img refuse;
            # the next backup reads a resized disk in full anyway
            await _drop_backup_bitmaps(path)
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

    # ------------------------------------------------------------ templates, linked clones

    def _is_base(self, volid: str) -> bool:
        try:
            return is_base_volname(split_volid(volid)[1])
        except StorageError:
            return False

    async def create_base(self, volid: str) -> str:
        """PVE's dir create_base: 'vm-N-disk-M' renamed 'base-N-disk-M' in place (a
        linked clone keeps naming its own base), made read-only (mode 0444)."""
        volname = split_volid(volid)[1]
        owner, name, fmt = parse_image_volname(volname)
        if name.endswith("-cloudinit"):
            return volid
        if name.startswith("base-"):
            raise StorageError("create_base not possible with base image")
        src = self.path(volid)
        if not src.exists():
            raise StorageError(f"volume '{volid}' does not exist")
        base = linked_base(volname)
        new_name = "base-" + name[len("vm-"):]
        new_volname = (f"{base[0]}/{base[1]}/" if base else "") + f"{owner}/{new_name}.{fmt}"
        dst = self._image_dir(owner) / f"{new_name}.{fmt}"
        if dst.exists():
            raise StorageError(f"file '{dst}' already exists")
        os.rename(src, dst)
        os.chmod(dst, 0o444)    # nobody should write anything
        return f"{self.id}:{new_volname}"

    def can_link(self, volid: str) -> bool:
        return self._is_base(volid)

    async def clone_image(self, volid: str, vmid: int) -> str:
        """PVE's dir clone_image: a qcow2 image in `vmid`'s directory whose backing file
        is the base, by a relative path ('../<basevmid>/<basename>'), named
        '<basevmid>/<basename>/<vmid>/vm-<vmid>-disk-N.qcow2'."""
        volname = split_volid(volid)[1]
        basevmid, basename, fmt = parse_image_volname(volname)
        if not basename.startswith("base-"):
            raise StorageError("clone_image only works on base images")
        base = self.path(volid)
        if not base.exists():
            raise StorageError(f"volume '{volid}' does not exist")
        self._image_dir(vmid).mkdir(parents=True, exist_ok=True)
        name = self._next_name(vmid)
        dst = self._image_dir(vmid) / f"{name}.qcow2"
        await _run("qemu-img", "create", "-q", "-f", "qcow2", "-F", fmt,
                   "-b", f"../{basevmid}/{basename}.{fmt}", str(dst))
        return f"{self.id}:{basevmid}/{basename}.{fmt}/{vmid}/{name}.qcow2"

    def _linked_images(self) -> builtins.list[tuple[str, str]]:
        """(volid, backing file) of every image with a backing file."""
        out: builtins.list[tuple[str, str]] = []
        images = self.root / "images"
        if not images.is_dir():
            return out
        for vdir in images.iterdir():
            if not vdir.name.isdigit() or not vdir.is_dir():
                continue
            for f in vdir.iterdir():
                if f.suffix != ".qcow2":
                    continue
                parent = qcow2_backing(f)
                if parent:
                    out.append((self._volid_of(vdir.name, f.name, parent), parent))
        return out

    def _volid_of(self, owner: str, name: str, parent: str | None) -> str:
        """PVE's list_images volid: a linked clone's names its base."""
        m = re.fullmatch(r"\.\./(\d+)/([^/]+\.(?:raw|qcow2))", parent or "")
        if m:
            return f"{self.id}:{m.group(1)}/{m.group(2)}/{owner}/{name}"
        return f"{self.id}:{owner}/{name}"

    async def base_users(self, volid: str) -> builtins.list[str]:
        if not self._is_base(volid):
            return []
        owner, name, fmt = parse_image_volname(split_volid(volid)[1])
        wanted = f"../{owner}/{name}.{fmt}"
        return sorted(v for v, parent in await asyncio.to_thread(self._linked_images)
                      if parent == wanted)

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
        if name.startswith("base-"):
            raise StorageError("Storage does not support moving of this disk to another VM")
        new = self._next_name(vmid)
        dst = self._image_dir(vmid) / f"{new}.{fmt}"
        if dst.exists():
            raise StorageError(f"volume '{self.id}:{vmid}/{new}.{fmt}' already exists")
        os.rename(src, dst)
        old_dir = src.parent
        if owner != vmid and old_dir.exists() and not any(old_dir.iterdir()):
            old_dir.rmdir()
        # a linked clone's image keeps its relative backing file ('../<base vmid>/...'),
        # right from any VM's directory: its volid keeps naming the base (PVE's)
        base = linked_base(volname)
        prefix = f"{base[0]}/{base[1]}/" if base else ""
        return f"{self.id}:{prefix}{vmid}/{new}.{fmt}"

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
                    try:
                        parse_image_volname(f"{vdir.name}/{f.name}")
                    except StorageError:
                        continue
                    parent = qcow2_backing(f) if f.suffix == ".qcow2" else None
                    volid = self._volid_of(vdir.name, f.name, parent)
                    st = f.stat()
                    entry = {"volid": volid, "format": f.suffix[1:], "content": "images",
                             "size": await self.size(volid), "used": st.st_blocks * 512,
                             "ctime": int(st.st_ctime), "vmid": int(vdir.name)}
                    if parent:
                        entry["parent"] = parent    # PVE's list_images
                    out.append(entry)
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
        # a backup's persistent dirty bitmaps make qemu-img refuse ("Device has active
        # dirty bitmaps"); after a rollback they would not describe the disk anyway:
        # dropped, so the next backup of the guest is full ("bitmap missing")
        await _drop_backup_bitmaps(path)
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
