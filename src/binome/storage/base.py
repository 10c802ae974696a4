"""The storage backend interface every storage type implements (PVE's storage plugins).

Guest and HA code only ever talk to this interface, through
`storage.manager.StorageManager`; no other module knows how a storage type
does its work (the volume engine's commands are known to `storage.replicated`
alone). What a type implements:

- content: `alloc`, `free`, `resize`, `copy`, `size`, `list`, `status`;
- use by a guest on this node: `source` (the path or NBD URI QEMU opens),
  `activate_volume` / `deactivate_volume` (PVE's `activate_volume(s)`: a
  replicated copy becomes Primary / Secondary), `volume_state` and
  `usable_here` ("may this node use this volume now", with the reason when not);
- moving a disk (PVE's move_disk): `formats` (the image formats the type can
  hold, its default first), `volume_format` (an existing volume's), and
  `rename_volume` (PVE's rename_volume: the volume handed to another guest,
  refused by the base with PVE's text; `dir` renames the file);
- templates and linked clones (PVE's create_base, clone_image, volume_has_feature
  'clone', volume_is_base_and_used): `create_base` (a template's read-only base
  image; the base keeps the volume as it is), `can_link`, `clone_image` (refused by
  the base) and `base_users`; `dir` implements them;
- moving a guest: `migration_blocker` (why a target node cannot take the
  volume over, live or not); a live migration activates the target's copy
  while the source's is still active (both Primary for the hand-over: every
  VM disk of a replicated storage is created allowing it) and deactivates the
  source's after the switch-over;
- HA recovery (types whose copies are bound to nodes, `per_node_activation`):
  `take_over_volume` (activate here although the copy of a node proven fenced
  is still active) and `release_fenced_copy` (on the fenced node, once back:
  give up its stale active copy so it resyncs).

- snapshots (PVE's volume_snapshot*, volume_has_feature 'snapshot' and
  volume_qemu_snapshot_method): `snapshot_blocker` (why the volume cannot have
  snapshots now, RAM of `state_bytes` saved into it or not; None: it can),
  `snapshot`, `rollback_snapshot`, `delete_snapshot`,
  `snapshots` (the names present) on a volume no QEMU has open, and
  `qemu_snapshots_internal` (True: while a guest runs, its QEMU takes and drops
  the volume's snapshots itself, as qcow2 internal snapshots). The base refuses
  them all with PVE's "snapshot feature is not available"; `dir` implements
  them for qcow2 images, `replicated` for qcow2 volumes (an image inside the
  replicated device).

- backups: `backup_store()` (the deduplicated datastore that holds this storage's
  backups, for types with content `backup`: `dir`, and `binome-backup` whose datastore
  is on a backup server); backup volumes are listed
  by `list(content="backup")`, changed by `set_backup_attributes` (notes,
  protection) and removed by `free`.

Hooks for the next storage types, not implemented by any type yet (the base
methods refuse): storage-level
activation for network storage and LVM (`activate_storage` /
`deactivate_storage`: mount, login, vgchange, before any volume is used).
"""

from __future__ import annotations

import asyncio
import builtins
import re
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from binome.errors import BinomeError

if TYPE_CHECKING:
    from binome.backup.dumpstore import DumpStore
    from binome.backup.remote import RemoteDumpStore
    from binome.tasks.manager import Task

CONTENT_TYPES = ("images", "iso", "backup", "rootdir", "vztmpl", "snippets")
# PVE's text when a guest's volumes cannot all have snapshots (AbstractConfig)
SNAPSHOT_UNAVAILABLE = "snapshot feature is not available"


class StorageError(BinomeError):
    """A storage operation failed; the message is for the administrator."""


class StaleCopy(StorageError):
    """This node's copy of a volume was recorded Outdated by its peer: never used."""


class PeerActive(StorageError):
    """The peer's copy of a volume is in use (Primary) on a node this node still sees
    online: not usable here *now* (a node just fenced leaves that view a moment later)."""


@dataclass(frozen=True)
class VolumeSource:
    """How QEMU opens a volume."""

    source: str            # a file path or an NBD URI
    format: str | None     # raw | qcow2 | None (NBD: the export is raw)


async def convert_into(src: VolumeSource, dst: VolumeSource) -> None:
    """Copy `src`'s data into the existing volume `dst` (`qemu-img convert -n`, each in
    its own format); StorageError with qemu-img's message when it fails."""

    proc = await asyncio.create_subprocess_exec(
        "qemu-img", "convert", "-n", "-f", src.format or "raw", "-O", dst.format or "raw",
        src.source, dst.source, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise StorageError(err.decode(errors="replace").strip()
                           or f"qemu-img convert exited {proc.returncode}")


@dataclass(frozen=True)
class VolumeState:
    """This node's copy of a volume, in storage terms.

    For a plain local or shared volume: it exists (and is then active and
    current) or not. For a replicated one: `active` is the Primary role,
    `disk` the copy's data state (UpToDate, Outdated, Inconsistent,
    Consistent, DUnknown), the peer's role and disk as this node last heard
    them, and whether the replication link is up (`link`: its state name)."""

    exists: bool = True
    active: bool = True
    disk: str = "UpToDate"
    replicated: bool = False
    peer: str | None = None            # the node holding the other copy
    peer_role: str | None = None       # Primary | Secondary | Unknown; None: no peer
    peer_disk: str | None = None
    link: str | None = None            # replication link state (Connected, StandAlone ...)
    connected: bool = False
    in_use: int = 0                    # open handles on this node (QEMU's NBD connections)
    outdated_by_peer: bool = False     # the peer recorded this copy Outdated (with quorum)

    @property
    def peer_active(self) -> bool:
        return self.peer_role == "Primary"


def unusable_reason(name: str, node: str, state: VolumeState) -> str | None:
    """Why a guest on `node` may not use the volume now (None: it may); pure."""
    if not state.exists:
        return f"volume {name} does not exist on {node}"
    if state.outdated_by_peer:
        return f"the copy of volume {name} on {node} was recorded Outdated by its peer"
    if state.disk != "UpToDate":
        return f"the copy of volume {name} on {node} is {state.disk}, not UpToDate"
    if not state.active:
        link = "connected" if state.connected else f"{state.link or 'not connected'}"
        return f"volume {name} is Secondary on {node} ({link}): activate it first"
    return None


@dataclass(frozen=True)
class StorageConfig:
    storage: str
    type: str
    path: str = ""
    content: tuple[str, ...] = ("images", "iso")
    shared: bool = False
    nodes: tuple[str, ...] = ()        # empty: all nodes
    disable: bool = False
    options: dict[str, Any] = field(default_factory=dict)

    def to_api(self) -> dict[str, Any]:
        data: dict[str, Any] = {"storage": self.storage, "type": self.type,
                                "content": ",".join(self.content),
                                "shared": int(self.shared)}
        if self.path:
            data["path"] = self.path
        if self.nodes:
            data["nodes"] = ",".join(self.nodes)
        if self.disable:
            data["disable"] = 1
        data.update(self.options)
        return data

    def available_on(self, node: str) -> bool:
        return not self.nodes or node in self.nodes


def split_volid(volid: str) -> tuple[str, str]:
    storage, sep, volname = volid.partition(":")
    if not sep or not storage or not volname:
        raise StorageError(f"unable to parse volume ID '{volid}'")
    return storage, volname


# a disk, or a VM's cloud-init drive (PVE's vm-<vmid>-cloudinit); a linked clone's
# volume names its base first (PVE's dir plugin: '<basevmid>/<basename>/<vmid>/<name>')
_IMAGE_RE = re.compile(r"^(?:(\d+)/(base-\d+-disk-\d+\.(?:raw|qcow2))/)?"
                       r"(\d+)/((?:vm|base)-\d+-(?:disk-\d+|cloudinit))\.(raw|qcow2)$")


def parse_image_volname(volname: str) -> tuple[int, str, str]:
    """'100/vm-100-disk-0.raw' -> (100, 'vm-100-disk-0', 'raw');
    '100/base-100-disk-0.qcow2/101/vm-101-disk-0.qcow2' (a linked clone) ->
    (101, 'vm-101-disk-0', 'qcow2')."""
    m = _IMAGE_RE.match(volname)
    if not m:
        raise StorageError(f"unable to parse image volume name '{volname}'")
    return int(m.group(3)), m.group(4), m.group(5)


def linked_base(volname: str) -> tuple[int, str] | None:
    """The base image a linked clone's volume is backed by, (basevmid, basename) as
    PVE's parse_volname gives them; None for any other volume."""
    m = _IMAGE_RE.match(volname)
    if not m or m.group(1) is None:
        return None
    return int(m.group(1)), m.group(2)


def is_base_volname(volname: str) -> bool:
    """A template's read-only base image (PVE's isBase: the name starts with 'base-')."""
    return parse_image_volname(volname)[1].startswith("base-")


class Storage(ABC):
    # Volumes bound to nodes: a guest's node activates them before QEMU opens them and
    # deactivates them after (a replicated copy is Primary on one node at a time, on
    # two only during a live migration's hand-over).
    per_node_activation: ClassVar[bool] = False
    # the image formats a volume of this type can have, the default first (PVE's
    # plugindata 'format'): what a disk move's `format` resolves against
    formats: ClassVar[tuple[str, ...]] = ("raw",)
    # PVE's volume_has_feature('rename'): `rename_volume` hands a volume to another guest
    can_rename: ClassVar[bool] = False

    def __init__(self, config: StorageConfig, node: str = "") -> None:
        self.config = config
        self.node = node

    @property
    def id(self) -> str:
        return self.config.storage

    @abstractmethod
    async def alloc(self, vmid: int, size: int, fmt: str = "raw",
                    name: str | None = None) -> str:
        """Create a volume for `vmid`; returns its volid."""

    @abstractmethod
    async def free(self, volid: str) -> None: ...

    @abstractmethod
    async def resize(self, volid: str, size: int) -> None: ...

    @abstractmethod
    async def copy(self, volid: str, vmid: int, fmt: str | None = None) -> str:
        """Full copy of a volume for another guest; returns the new volid."""

    @abstractmethod
    def source(self, volid: str) -> VolumeSource: ...

    @abstractmethod
    async def size(self, volid: str) -> int: ...

    @abstractmethod
    async def list(self, content: str | None = None,
                   vmid: int | None = None) -> list[dict[str, Any]]: ...

    @abstractmethod
    async def status(self) -> dict[str, Any]: ...

    def volume_format(self, volid: str) -> str:
        """The image format of an existing volume (PVE's parse_volname format)."""
        return self.formats[0]

    def resolve_format(self, wanted: str | None) -> str:
        """PVE's resolve_format_hint: `wanted` if this type can hold it, else the
        default format."""
        return wanted if wanted in self.formats else self.formats[0]

    async def create_base(self, volid: str) -> str:
        """Make the volume a template's read-only base image (PVE's create_base, for a
        VM converted to a template); the new volid. Types without base images keep the
        volume as it is."""
        return volid

    async def clone_image(self, volid: str, vmid: int) -> str:
        """A linked clone of base volume `volid` for guest `vmid` (PVE's clone_image): a
        new volume that reads the base and writes only its own changes; its volid."""
        raise StorageError(f"storage type '{self.config.type}' has no linked clones")

    def can_link(self, volid: str) -> bool:
        """PVE's volume_has_feature('clone'): the volume is a base image a linked clone
        can be made of."""
        return False

    async def base_users(self, volid: str) -> builtins.list[str]:
        """The linked clones' volumes backed by base volume `volid` (PVE's
        volume_is_base_and_used); none for other volumes."""
        return []

    async def rename_volume(self, volid: str, vmid: int) -> str:
        """Hand a volume no guest has open to guest `vmid` under a name of its own (PVE's
        rename_volume, for a disk moved to another VM); the new volid."""
        raise StorageError("Storage does not support moving of this disk to another VM")

    # ------------------------------------------------------------ use by a guest here

    async def volume_state(self, volid: str) -> VolumeState:
        """This node's copy of the volume (exists, active, data state, link)."""
        try:
            self.source(volid)
        except StorageError:
            return VolumeState(exists=False, active=False, disk="DUnknown")
        return VolumeState()

    async def usable_here(self, volid: str) -> str | None:
        """Why a guest on this node may not use the volume now; None: it may."""
        return unusable_reason(volid.partition(":")[2], self.node,
                               await self.volume_state(volid))

    async def activate_volume(self, volid: str, *, task: Task | None = None) -> bool:
        """Make the volume usable by a guest on this node; True if this call changed
        anything (False: it was already). Types without per-node activation only
        check that it exists."""
        self.source(volid)
        return False

    async def deactivate_volume(self, volid: str) -> VolumeState:
        """Give up this node's use of the volume once no guest here opens it (refused,
        with StorageError, while one does); the state after."""
        return await self.volume_state(volid)

    async def migration_blocker(self, volid: str, target: str, *, live: bool) -> str | None:
        """Why node `target` cannot take the volume over from this node now, by a live
        migration (`live`) or a stopped guest's move; None: it can."""
        if self.config.shared and self.config.available_on(target):
            return None
        return f"volume {volid} is local to {self.node}"

    # ------------------------------------------------------------ HA recovery

    async def take_over_volume(self, volid: str, *, reason: str,
                               task: Task | None = None) -> None:
        """Activate the volume here although the peer node's copy is still active,
        because that node is proven fenced (`reason` says how; the caller proved it).
        Only for types with per-node activation."""
        raise StorageError(f"storage type '{self.config.type}' has no per-node copies to "
                           f"take over")

    async def release_fenced_copy(self, volid: str, *, still_idle: Callable[[], bool],
                                  timeout: float, owner: str | None = None) -> str | None:
        """On a node that was fenced and is back: if its peer recorded this node's copy
        Outdated and no guest here uses it (`still_idle()`, asked under the volume's
        lock), deactivate it so it resyncs from the peer. Also, without a mark, when the
        guest's config belongs to another node (`owner`, not this one) and the copy is
        connected to a Secondary peer: demoted so that the owner can start it. Returns
        the node it was released for, None when there was nothing to release."""
        return None

    # ------------------------------------------------------------ snapshots

    async def snapshot_blocker(self, volid: str, *, state_bytes: int | None = 0) -> str | None:
        """Why the volume cannot have snapshots (None: it can): PVE's
        volume_has_feature('snapshot'), with the reason for the log. `state_bytes`: a
        guest's RAM about to be saved into it with a new snapshot; None: no snapshot
        is being taken (a rollback), only whether the volume has snapshots at all."""
        return f"storage type '{self.config.type}' has no volume snapshots"

    def qemu_snapshots_internal(self, volid: str) -> bool:
        """True: while a guest runs, its QEMU takes, drops and loads the volume's
        snapshots (qcow2 internal snapshots); False: the storage does, QEMU or not."""
        return False

    def backup_store(self) -> DumpStore | RemoteDumpStore:
        """The datastore of this storage's backups; StorageError if it holds none."""
        raise StorageError(f"storage '{self.id}' cannot hold backups (type {self.config.type})")

    async def set_backup_attributes(self, volid: str, *, notes: str | None = None,
                                    protected: bool | None = None) -> None:
        """Change a backup volume's notes or protection; StorageError if none here."""
        raise StorageError(f"storage '{self.id}' cannot hold backups (type {self.config.type})")

    async def snapshot(self, volid: str, snap: str) -> None:
        """Take snapshot `snap` of the volume (PVE's volume_snapshot); no QEMU has it
        open, or `qemu_snapshots_internal` is False."""
        raise StorageError(SNAPSHOT_UNAVAILABLE)

    async def rollback_snapshot(self, volid: str, snap: str) -> None:
        """Return the volume to snapshot `snap` (PVE's volume_snapshot_rollback); no
        QEMU has it open."""
        raise StorageError(SNAPSHOT_UNAVAILABLE)

    async def delete_snapshot(self, volid: str, snap: str) -> None:
        """Remove snapshot `snap` (PVE's volume_snapshot_delete); no QEMU has it open,
        or `qemu_snapshots_internal` is False."""
        raise StorageError(SNAPSHOT_UNAVAILABLE)

    async def snapshots(self, volid: str) -> builtins.list[str]:
        """The names of the volume's snapshots (PVE's volume_snapshot_info)."""
        return []

    # ------------------------------------------------------------ hooks (no type yet)

    async def activate_storage(self) -> None:
        """Make the storage itself usable on this node before any of its volumes (a
        network mount, an iSCSI login, an LVM volume group): nothing for local types."""
        return None

    async def deactivate_storage(self) -> None:
        """Undo `activate_storage`: nothing for local types."""
        return None
