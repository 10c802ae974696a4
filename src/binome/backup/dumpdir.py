"""vzdump archives on a `dir` storage with content `backup`: PVE's names, notes, protection.

Owns the second layout, PVE's: `<storage path>/dump/vzdump-<qemu|lxc>-<vmid>-<YYYY_MM_DD-
HH_MM_SS>.<ext>` with sidecar files `<archive>.notes` and `<archive>.protected` and the
task log `<basename>.log`; volume ids `<storage>:backup/<archive name>`; prune per guest.
Archive times in names are local time, as vzdump writes them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from binome.backup.prune import BackupEntry, Mark, PruneOptions, compute_prune

ARCHIVE_RE = re.compile(
    r"^vzdump-(?P<type>qemu|lxc|openvz)-(?P<vmid>\d+)-"
    r"(?P<time>\d{4}_\d{2}_\d{2}-\d{2}_\d{2}_\d{2})"
    r"\.(?P<ext>vma(\.(zst|gz|lzo))?|tar(\.(zst|gz|lzo))?|tgz|binome)$")
# binome's own backups (`dumpstore`): a directory per backup, chunks shared in `.chunks`
CHUNKED_EXT = "binome"
_TIME_FORMAT = "%Y_%m_%d-%H_%M_%S"


class DumpDirError(ValueError):
    """A name that is not a vzdump archive, or an operation a protected archive forbids."""


@dataclass(frozen=True)
class Archive:
    name: str
    guest_type: str
    vmid: int
    time: datetime
    ext: str

    def volid(self, storage: str) -> str:
        return f"{storage}:backup/{self.name}"

    @property
    def basename(self) -> str:
        return self.name[: -(len(self.ext) + 1)]


def archive_name(guest_type: str, vmid: int, when: datetime, ext: str = "vma.zst") -> str:
    """`vzdump-qemu-100-2026_12_05-20_00_00.vma.zst`, validated by parsing it back."""
    name = f"vzdump-{guest_type}-{vmid}-{when.strftime(_TIME_FORMAT)}.{ext}"
    parse_archive_name(name)
    return name


def parse_archive_name(name: str) -> Archive:
    match = ARCHIVE_RE.match(name)
    if not match:
        raise DumpDirError(f"'{name}' is not a vzdump archive name")
    return Archive(name=name, guest_type=match["type"], vmid=int(match["vmid"]),
                   time=datetime.strptime(match["time"], _TIME_FORMAT), ext=match["ext"])


class DumpDir:
    """The `dump/` directory of a dir storage."""

    def __init__(self, storage_path: str | Path, storage_id: str) -> None:
        self.path = Path(storage_path) / "dump"
        self.storage_id = storage_id

    def archives(self, vmid: int | None = None) -> list[Archive]:
        """Finished archives, oldest first; vzdump's `.tmp`/`.dat` partials never match."""
        if not self.path.is_dir():
            return []
        found = []
        for entry in self.path.iterdir():
            try:
                archive = parse_archive_name(entry.name)
            except DumpDirError:
                continue
            if archive.ext == CHUNKED_EXT:
                continue  # listed by binome.backup.dumpstore
            if vmid is None or archive.vmid == vmid:
                found.append(archive)
        return sorted(found, key=lambda a: (a.vmid, a.time))

    def is_protected(self, archive: Archive) -> bool:
        return (self.path / f"{archive.name}.protected").exists()

    def set_protected(self, archive: Archive, protected: bool) -> None:
        marker = self.path / f"{archive.name}.protected"
        if protected:
            marker.touch()
        else:
            marker.unlink(missing_ok=True)

    def notes(self, archive: Archive) -> str:
        try:
            return (self.path / f"{archive.name}.notes").read_text()
        except FileNotFoundError:
            return ""

    def remove(self, archive: Archive) -> None:
        if self.is_protected(archive):
            raise DumpDirError(f"backup {archive.volid(self.storage_id)} is protected")
        for name in (archive.name, f"{archive.name}.notes", f"{archive.basename}.log"):
            (self.path / name).unlink(missing_ok=True)

    def prune(self, vmid: int, options: PruneOptions,
              dry_run: bool = False) -> dict[str, Mark]:
        """Marks by volume id, as PVE's `prunebackups` returns them."""
        archives = self.archives(vmid)
        marks = compute_prune([BackupEntry(a.name, a.time, self.is_protected(a))
                               for a in archives], options)
        if not dry_run:
            for archive in archives:
                if marks[archive.name] is Mark.REMOVE:
                    self.remove(archive)
        return {a.volid(self.storage_id): marks[a.name] for a in archives}
