"""Whether a QEMU dirty bitmap may drive an incremental backup: the record and the rule.

Owns the record kept with each backup (`binome-dirty-bitmap.json` in the backup: the
node and QEMU instance it ran on, `stopped` for a stopped guest, the dirty bitmap it
started on each drive and the volume behind each drive) and the pure trust decision the
next backup makes from it. A backup of a running guest starts, in the same QMP
transaction as its fleecing, a fresh bitmap `binome-backup-<id>` on every drive; a
backup of a stopped guest adds it to each qcow2 image (`qemu-img bitmap --add`). That
bitmap then holds every write since the backup's instant. On a qcow2 image of a `dir`
storage the bitmap is persistent: QEMU stores it in the image when it closes it cleanly
and loads it again (still recording) at the next open, and a QEMU that dies with the
image open leaves the bitmap flagged `in-use`, which every later reader sees as
inconsistent. Elsewhere (raw files, NBD-backed replicated volumes) it lives only in the
running QEMU. The next backup may read only the bitmap's dirty extents, and copy the
rest from the previous backup's index, only if nothing can have changed the disk behind
the bitmap's back since then. Anything doubtful makes it a full backup, with the reason
in the task log:

- there is no previous backup on the storage, it has no record or it failed
  verification, or it was made with another encryption key (or without one) than this
  backup's;
- the guest was restored, or moved to another node (failover, migration);
- a running guest's QEMU process is not the one that started the bitmap (stop/start,
  crash: a restarted guest's disk may have been written by anything while QEMU was
  down, and a transient bitmap is gone anyway); a stopped guest's image bitmap needs no
  such check, its `in-use` flag tells an unclean close;
- the drive's volume changed, or the recorded bitmap is not on the drive any more (a
  later backup, to another storage or since deleted, started another one; a snapshot
  rollback removes them), or QEMU says it is inconsistent, busy or not recording.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

BITMAP_PREFIX = "binome-backup-"
RECORD_FILE = "binome-dirty-bitmap.json"


@dataclass(frozen=True)
class BitmapRecord:
    """What the bitmaps a backup started belong to (stored with the backup)."""

    node: str
    instance: str                          # the QEMU process (see `qemu_instance`)
    bitmap: str                            # started on every drive at the backup's instant
    volumes: dict[str, str] = field(default_factory=dict)   # disk key -> volid
    previous: str | None = None            # the backup this one was incremental to

    def to_json(self) -> bytes:
        return json.dumps({"node": self.node, "instance": self.instance,
                           "bitmap": self.bitmap, "volumes": self.volumes,
                           "previous": self.previous}, indent=1, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> BitmapRecord | None:
        """The record, or None if it is not one (then nothing is trusted)."""
        try:
            raw: Any = json.loads(data)
            return cls(node=str(raw["node"]), instance=str(raw["instance"]),
                       bitmap=str(raw["bitmap"]),
                       volumes={str(k): str(v) for k, v in dict(raw["volumes"]).items()},
                       previous=None if raw.get("previous") is None else str(raw["previous"]))
        except (ValueError, KeyError, TypeError, AttributeError):
            return None


@dataclass(frozen=True)
class PreviousBackup:
    """The newest finished backup of the guest on the target storage."""

    name: str
    time: int
    record: BitmapRecord | None
    verify_failed: bool = False
    unusable: str | None = None    # why its indexes cannot be a base (e.g. another key)


@dataclass(frozen=True)
class LiveBitmap:
    """One dirty bitmap of a drive as QMP `query-block` shows it."""

    name: str
    recording: bool = True
    busy: bool = False
    inconsistent: bool = False

    @classmethod
    def from_qmp(cls, data: dict[str, Any]) -> LiveBitmap:
        return cls(name=str(data.get("name", "")), recording=bool(data.get("recording")),
                   busy=bool(data.get("busy")), inconsistent=bool(data.get("inconsistent")))

    @classmethod
    def from_image(cls, data: dict[str, Any]) -> LiveBitmap:
        """A bitmap stored in a qcow2 image, as `qemu-img info` shows it: flag `auto`
        (enabled: it records), `in-use` (the image was not closed cleanly since)."""
        flags = {str(f) for f in data.get("flags") or ()}
        return cls(name=str(data.get("name", "")), recording="auto" in flags,
                   inconsistent="in-use" in flags)


@dataclass(frozen=True)
class LiveDrive:
    """A drive of the running guest: its disk key, volume and bitmaps."""

    key: str
    volid: str
    bitmaps: tuple[LiveBitmap, ...] = ()


@dataclass(frozen=True)
class Restored:
    """A restore of the guest this daemon made (a restored disk is new to any bitmap)."""

    archive: str
    time: float


@dataclass
class TrustDecision:
    """`reason` (the whole guest) or `drive_reasons[key]`: why a drive is read in full;
    a drive with neither may be read incrementally."""

    reason: str | None = None
    drive_reasons: dict[str, str] = field(default_factory=dict)
    recorded_bitmap: str | None = None     # the bitmap the previous backup started

    def trusted(self, key: str) -> bool:
        return self.reason is None and key not in self.drive_reasons

    def why_full(self, key: str) -> str | None:
        return self.reason or self.drive_reasons.get(key)


STOPPED = "stopped"   # the record's instance for a backup of a stopped guest


def decide(previous: PreviousBackup | None, *, node: str, instance: str,
           drives: list[LiveDrive], restored: Restored | None = None,
           storage: str = "") -> TrustDecision:
    """Which drives an incremental backup may trust (pure). `instance` is the running
    QEMU's, or `STOPPED` for a stopped guest: its drives' bitmaps are the ones stored
    in the images, whichever QEMU recorded them."""
    where = f" on storage '{storage}'" if storage else ""
    if previous is None:
        return TrustDecision(f"no previous backup{where}")
    record = previous.record
    decision = TrustDecision(recorded_bitmap=record.bitmap if record else None)
    if previous.unusable is not None:
        decision.reason = previous.unusable
    elif record is None:
        decision.reason = f"previous backup {previous.name} has no dirty bitmap record"
    elif previous.verify_failed:
        decision.reason = f"previous backup {previous.name} failed verification"
    elif restored is not None and restored.time >= previous.time:
        decision.reason = f"guest restored from {restored.archive} since the previous backup"
    elif record.node != node:
        decision.reason = f"guest moved from {record.node} to {node}"
    elif record.instance != instance and instance != STOPPED:
        decision.reason = "QEMU restarted since the previous backup"
    if record is None or decision.reason is not None:
        return decision
    for drive in drives:
        reason = _drive_reason(record, previous, drive)
        if reason is not None:
            decision.drive_reasons[drive.key] = reason
    return decision


def _drive_reason(record: BitmapRecord, previous: PreviousBackup,
                  drive: LiveDrive) -> str | None:
    recorded = record.volumes.get(drive.key)
    if recorded is None:
        return f"{drive.key} is not in the previous backup"
    if recorded != drive.volid:
        return f"{drive.key} is another volume ({recorded} then, {drive.volid} now)"
    ours = [b for b in drive.bitmaps if b.name.startswith(BITMAP_PREFIX)]
    bitmap = next((b for b in ours if b.name == record.bitmap), None)
    if bitmap is None:
        if ours:
            return (f"the bitmap of {drive.key} belongs to a later backup than "
                    f"{previous.name} (deleted, or on another storage)")
        return f"bitmap missing on {drive.key}"
    if bitmap.inconsistent:
        return f"bitmap inconsistent on {drive.key}"
    if bitmap.busy:
        return f"bitmap busy on {drive.key}"
    if not bitmap.recording:
        return f"bitmap inconsistent on {drive.key} (left disabled by an interrupted backup)"
    return None
