"""The `replicated` storage: VM disks on DRBD-like volumes mirrored to a peer node.

A storage definition `{"type": "replicated"}` (content `images`) makes
`alloc(vmid, size)` create the replicated volume `vm-<vmid>-disk-<n>` between
this node (the VM's node, which becomes Primary) and its peer, chosen by the
pairing rule: the storage's `nodes` when it names exactly two (this one and
the peer), otherwise the one other node of a two-node cluster. The volume's
record, secret and replication port go to etcd, and the peer's daemon creates
its copy from there (`replica.node.volumes`); the backing files live in each
node's engine state directory, or under the storage's `path` when set.

Volume IDs are `<storage>:vm-<vmid>-disk-<n>` (no format suffix). QEMU opens
`source()`: the engine's NBD unix socket, which serves I/O only while the
volume is Primary on this node: `activate_volume` makes it so (Primary),
`deactivate_volume` gives it up (Secondary). Resizing grows both copies.

Formats (docs/replicated-volumes.md, "Snapshots"): a volume is `raw` (the
default: the guest's disk is the device itself) or `qcow2`: a qcow2 image
written *inside* the raw device (QEMU opens the export with `format=qcow2`),
whose internal snapshots are then on both copies like every other write. The
device of a qcow2 volume is larger than the image's virtual size
(`qcow2_device_size`: the snapshot reserve). This module owns the `image`
entry of the volume's etcd record (`{"format", "size"}`: the format and the
virtual size), written through the volume service and read from its cache;
a volume whose record has none is raw (every volume created before formats).
Snapshots of a stopped guest's qcow2 volume are taken by `qemu-img` on this
node's export (the copy made Primary for the operation when it was not, never
next to a Primary peer); a running guest's QEMU takes them itself
(`qemu_snapshots_internal`). `snapshot_blocker` refuses a raw volume, and a
snapshot the image could outgrow the device with (`room_blocker`).

`ReplicaVolumes` is this node's side of every replicated storage: the one
object that knows the volume engine's commands and the volume service's
caches. `StorageManager` builds it once from the node's `VolumeService` and
gives it to each `ReplicatedStorage` it builds; guest and HA code reach it
only through the `Storage` interface.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import json
import os
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any

from binome.storage.base import (
    SNAPSHOT_UNAVAILABLE,
    PeerActive,
    StaleCopy,
    Storage,
    StorageConfig,
    StorageError,
    VolumeSource,
    VolumeState,
    convert_into,
    split_volid,
    unusable_reason,
)
from binome.storage.replica.core.views import CONNECTED_STATES, effective_disk_states
from binome.storage.replica.node import records as vkeys
from binome.storage.replica.node.errors import PeerPrimary, VolumeFailure
from binome.store.client import StoreUnavailable

if TYPE_CHECKING:
    from binome.storage.replica.node.volumes import VolumeService
    from binome.tasks.manager import Task

_NAME_RE = re.compile(r"^(?:vm|base)-(\d+)-disk-(\d+)$")
REFUSED_AS_PRIMARY = "but I am primary"   # the handshake's rr-conflict refusal
FORMATS = ("raw", "qcow2")                # raw first: the default, as before formats
MiB = 1 << 20
# what a snapshot itself adds to a qcow2 image (its table entry, the copied L1
# table, refcount updates) is far below this; a RAM state comes on top
SNAPSHOT_SLACK = 8 * MiB
CLOSE_WAIT = 5.0          # a just-stopped QEMU's NBD connections are being closed
HOLD_WAIT = 120.0         # a demotion waits this long for a snapshot/rollback here


def _align(size: int) -> int:
    return (size + 4095) // 4096 * 4096


def qcow2_device_size(virtual: int) -> int:
    """The device that carries a qcow2 image of `virtual` bytes: the image itself, as
    much again for what snapshots keep (a cluster written after a snapshot is
    copied, so a fully rewritten disk needs twice its size), and room for the
    qcow2 metadata (L2 and refcount tables, snapshot tables: at most ~1/64 of the
    virtual size with 64 KiB clusters). The backing files are sparse: unused
    reserve costs no disk, only a full resync's time."""
    return _align(2 * virtual + max(16 * MiB, virtual // 64))


def record_format(rec: dict[str, Any]) -> str:
    """The image format a volume record says (raw when it has no `image`)."""
    return str((rec.get("image") or {}).get("format") or "raw")


def virtual_size(rec: dict[str, Any]) -> int:
    """The size the guest sees: the qcow2 image's, else the device's."""
    image = rec.get("image") or {}
    return int(image["size"]) if image.get("size") else int(rec["size"])


def room_blocker(volid: str, device: int, end_offset: int, state_bytes: int = 0) -> str | None:
    """Why a snapshot of a qcow2 image ending at `end_offset` in a device of `device`
    bytes could make it outgrow the device (None: it fits), `state_bytes` of RAM
    being saved into it; pure."""
    needed = end_offset + state_bytes + SNAPSHOT_SLACK
    if needed <= device:
        return None
    what = f" and {state_bytes // MiB} MiB of RAM" if state_bytes else ""
    return (f"volume {volid}: its qcow2 image ends at {end_offset // MiB} MiB of a "
            f"{device // MiB} MiB device, no room for a snapshot{what}; delete snapshots "
            f"or move the disk")


def end_offset_of(check_output: str) -> int:
    """`image-end-offset` of `qemu-img check --output=json` (ValueError when absent)."""
    data = json.loads(check_output)
    return int(data["image-end-offset"])


async def _run(*argv: str, ok: tuple[int, ...] = (0,)) -> str:
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    if proc.returncode not in ok:
        raise StorageError(f"{argv[0]} {argv[1]} failed: "
                           f"{err.decode(errors='replace').strip() or proc.returncode}")
    return out.decode()


@contextmanager
def _engine_errors() -> Iterator[None]:
    try:
        yield
    except PeerPrimary as exc:
        raise PeerActive(str(exc)) from None
    except VolumeFailure as exc:
        raise StorageError(str(exc)) from None


def stuck_active(st: dict[str, Any]) -> bool:
    """This copy is Primary, or was left StandAlone because it was Primary at a handshake
    that made it SyncTarget (it refused the resync)."""
    if st.get("role") == "Primary":
        return True
    return (st.get("cstate") == "StandAlone"
            and REFUSED_AS_PRIMARY in str((st.get("peer") or {}).get("last_error") or ""))


def state_of(st: dict[str, Any], *, peer: str | None = None,
             outdated_by_peer: bool = False) -> VolumeState:
    """The engine's status of a volume, in storage terms (pure)."""
    up = st.get("cstate") != "Unconfigured"
    return VolumeState(exists=up, active=st.get("role") == "Primary",
                       disk=str(st.get("disk") or "DUnknown"), replicated=True,
                       peer=peer, peer_role=st.get("peer_role"),
                       peer_disk=st.get("peer_disk"), link=st.get("cstate"),
                       connected=st.get("cstate") in CONNECTED_STATES,
                       in_use=int(st.get("open_count") or 0),
                       outdated_by_peer=outdated_by_peer)


class ReplicaVolumes:
    """This node's replicated volumes, over its `VolumeService` (by volume name)."""

    def __init__(self, service: VolumeService) -> None:
        self.service = service
        # Storage operations (qemu-img on a stopped guest's image) holding a copy
        # Primary here: a demotion waits for them, so the HA agent demoting a guest's
        # volumes just after its stop cannot pull the export from under a rollback
        # the administrator started in the same second.
        self._holds: dict[str, int] = {}
        self._borrowed: set[str] = set()   # made Primary by a holder: demoted after
        self._released = asyncio.Condition()

    @property
    def node(self) -> str:
        return self.service.node

    async def _peer(self, name: str) -> str | None:
        """The node holding the other copy (the service's cache, else the record)."""
        try:
            rec = self.service.records.get(name) or await self.service.record(name)
            return self.service.peer_of(rec)
        except (VolumeFailure, StoreUnavailable):
            return None

    async def state(self, name: str, *, with_marks: bool = False) -> VolumeState:
        """The engine's status of the copy here; `with_marks`: also read (with quorum)
        whether the peer recorded it Outdated."""
        with _engine_errors():
            st = await self.service.call("status", name=name)
        outdated = False
        if with_marks:
            store = self.service.cluster.store
            if store is not None:
                entry = await store.get(vkeys.fencing(name))
                marks = ((entry.value if entry else None) or {}).get("outdated") or {}
                outdated = self.node in marks
        return state_of(st, peer=await self._peer(name), outdated_by_peer=outdated)

    async def activate(self, name: str, *, task: Task | None = None) -> bool:
        """Primary here (through the volume service's quorum-fencing rules, never
        forced); False if it already was. With the peer Primary too, this is a live
        migration's hand-over (the volume allows two Primaries)."""
        with _engine_errors():
            st = await self.service.call("status", name=name)
            if st.get("role") == "Primary":
                return False
            await self.service.promote(name, task=task)
        return True

    async def deactivate(self, name: str) -> VolumeState:
        """Secondary here, once no storage operation holds the copy (waiting up to
        HOLD_WAIT for them to end)."""
        async with self._released:
            try:
                await asyncio.wait_for(
                    self._released.wait_for(lambda: name not in self._holds), HOLD_WAIT)
            except TimeoutError:
                raise StorageError(f"volume {name} is in use by a storage operation on "
                                   f"{self.node} (a snapshot, rollback or copy)") from None
            with _engine_errors():
                st = await self.service.demote(name)
        return state_of(st, peer=await self._peer(name))

    @asynccontextmanager
    async def held(self, name: str) -> AsyncIterator[Callable[[], None]]:
        """Keep the copy here from being demoted (`deactivate` waits) while inside.
        The context gives `borrowed()`, to call once the holder made the copy Primary
        for itself: the last holder to leave then gives it up."""
        async with self._released:
            self._holds[name] = self._holds.get(name, 0) + 1
        try:
            yield lambda: self._borrowed.add(name)
        finally:
            async with self._released:
                self._holds[name] -= 1
                if not self._holds[name]:
                    del self._holds[name]
                    if name in self._borrowed:
                        self._borrowed.discard(name)
                        with contextlib.suppress(Exception), _engine_errors():
                            await self.service.demote(name)
                self._released.notify_all()

    async def migration_blocker(self, name: str, target: str, *, live: bool) -> str | None:
        """Why `target` cannot take volume `name` now (None: it can)."""
        try:
            view = await self.service.cluster_view(name)
        except VolumeFailure as exc:
            return str(exc)
        if target not in view["config"].get("nodes", {}):
            holders = ", ".join(sorted(view["config"].get("nodes", {})))
            return f"volume {name} has no copy on {target} (replicated between {holders})"
        disk = effective_disk_states(view).get(target, "DUnknown")
        if disk != "UpToDate":
            return f"the copy of volume {name} on {target} is {disk}, not UpToDate"
        if live:
            # the live link is what dual-primary writes go through: ask our engine
            try:
                st = await self.service.call("status", name=name)
            except Exception as exc:   # engine down, volume not up ...
                return f"volume {name}: {exc}"
            if st.get("cstate") != "Connected" or st.get("peer_disk") != "UpToDate":
                return (f"volume {name} is {st.get('cstate')} (peer disk "
                        f"{st.get('peer_disk')}) here: live migration needs it Connected "
                        f"with both copies UpToDate")
        return None

    async def take_over(self, name: str, *, reason: str, task: Task | None = None) -> None:
        """Primary here while the peer's engine is still Primary, its node proven fenced
        by the caller: disconnect from it, record its copy Outdated (quorum), promote,
        then connect again whatever happened.

        Connecting again at once is safe: our promotion started a new generation
        whose bitmap UUID is the peer's current one, so the handshake makes the
        peer SyncTarget; while it is still Primary it refuses that ("I shall
        become SyncTarget, but I am primary!") and nothing is exchanged, until
        `release_fenced` on its side demotes it; if it wrote on its own meanwhile
        (standalone mode) the generations diverged and the after-sb policies
        (disconnect) leave both StandAlone with the reason. Not promoted (we were
        fenced first): we are the Secondary, and the handshake makes *us*
        SyncTarget. So the fenced peer resyncs with no admin `volume connect`."""
        svc = self.service
        say = task.log if task is not None else (lambda _m: None)
        peer = await self._peer(name) or "the peer"
        with _engine_errors():
            await svc.call("disconnect", name=name)
            try:
                # the volume service's own check takes a peer whose etcd member answers
                # for an online Primary and would refuse
                async with svc.lock(name):
                    outcome = await svc.fence_peer(name, reason=reason)
                if outcome != "outdated-peer":
                    raise StaleCopy(f"volume {name}: the copy on {self.node} was recorded "
                                    f"Outdated by {peer}")
                await svc.promote(name, task=task)
                say(f"volume {name}: Primary on {self.node}")
            finally:
                await svc.call("connect", name=name)
                say(f"volume {name}: connecting to {peer} again (it resyncs once it is "
                    f"Secondary)")

    async def release_fenced(self, name: str, *, still_idle: Callable[[], bool],
                             timeout: float, owner: str | None = None) -> str | None:
        """See `Storage.release_fenced_copy`. The trigger is the fencing record: the
        survivor writes this node's mark (a quorum transaction) *before* it promotes,
        so a mark on a Primary copy nobody here uses means the guest lives on the
        other node now and this copy can only be stale. The engine is then told it is
        Outdated (held writes fail), Secondary, and connecting: the handshake makes it
        SyncTarget of the survivor, which clears the mark once both are UpToDate.

        Without a mark, `owner` (the node the guest's config belongs to) decides: a
        node whose watchdog killed the guest but which came back at once (a stall just
        past the self-fence deadline) finds its copy still Primary and *connected*,
        the survivor's copy Secondary and in sync, and the guest recovered to the
        survivor, which refuses to start it next to a Primary peer whose node lives.
        Nothing else would end that: the survivor never promoted, so it wrote no mark.
        The same holds with the peer Primary (its guest runs there: a migration's
        source whose demotion failed, a daemon restarted mid-hand-over): left Primary,
        a later cut of the replication link makes both copies race to fence, and this
        idle one can win (an outage). Demoting is then a role change only (no data is
        judged stale): the guest runs nowhere here and never will, its config being the
        other node's. An incoming live migration's copy is Primary before its QEMU opens
        it, with the config still the source's: `still_idle` must be False while a
        guest operation here holds the guest, and a storage operation's hold
        (`held`) keeps its copy too."""
        svc = self.service
        store = svc.cluster.store
        if store is None:
            return None
        rec = svc.records.get(name) or {}

        async def current_mark() -> dict[str, Any] | None:
            entry = await store.get(vkeys.fencing(name), timeout=timeout)   # linearizable
            return (((entry.value if entry else None) or {}).get("outdated") or {}
                    ).get(self.node)

        mark = await current_mark()
        if mark is None:
            if owner is None or owner == self.node:
                return None
            with _engine_errors():
                async with svc.lock(name):
                    cur = await svc.call("status", name=name)
                    if (cur.get("role") != "Primary" or cur.get("open_count")
                            or name in self._holds or not still_idle()
                            or cur.get("cstate") not in CONNECTED_STATES
                            or cur.get("peer_role") not in ("Secondary", "Primary")):
                        return None
                    await svc.demote(name, locked=True)
            return owner
        with _engine_errors():
            by = mark.get("by") or svc.peer_of(rec)
            async with svc.lock(name):
                cur = await svc.call("status", name=name)
                if not stuck_active(cur) or cur.get("open_count") or not still_idle():
                    return None
                # The mark is read again under the volume's lock, which a fence-peer may
                # hold for seconds after a partition heals: meanwhile the peer may have
                # resynced this copy, cleared the mark and died (issue 16: the copy, in
                # sync, was outdated here on the stale mark, and the HA manager could not
                # recover the guest onto it). Gone, the copy is still released (a role
                # change only: its guest was recovered on the peer), never outdated.
                if (cur.get("cstate") not in CONNECTED_STATES
                        and cur.get("disk") in ("UpToDate", "Consistent")
                        and await current_mark() is not None):
                    # what the volume service's reconcile loop would do next: the
                    # engine agrees the copy is stale before it stops being Primary
                    await svc.call("outdated-by-peer", name=name, by=by)
            if cur.get("role") == "Primary":
                await svc.demote(name)
            await svc.call("connect", name=name)
        return str(by)

    # ------------------------------------------------------------ node-wide views

    async def guest_volumes(self, vmid: int) -> list[str]:
        """Volids of guest `vmid`'s replicated volumes with a copy on this node."""
        try:
            records = await self.service.all_records()
        except VolumeFailure:
            return []
        return [f"{rec.get('storage')}:{name}" for name, rec in sorted(records.items())
                if rec.get("vmid") == vmid and self.node in rec.get("nodes", {})
                and not rec.get("deleting")]

    def idle_active_copies(self, exclude_vmids: set[int]) -> list[tuple[str, int]]:
        """(volid, vmid) of the guests' copies still Primary here (or refusing a resync
        because they were) that nothing opens, from the volume service's caches (no
        I/O): what `release_fenced` looks at. Guests in `exclude_vmids` are left out."""
        svc = self.service
        out = []
        for name, st in list(svc.statuses.items()):
            rec = svc.records.get(name) or {}
            vmid = rec.get("vmid")
            if (isinstance(vmid, int) and vmid not in exclude_vmids
                    and not rec.get("deleting") and stuck_active(st)
                    and not st.get("open_count")):
                out.append((f"{rec.get('storage')}:{name}", vmid))
        return out


class ReplicatedStorage(Storage):
    per_node_activation = True
    formats = FORMATS

    def __init__(self, config: StorageConfig, node: str = "",
                 replicas: ReplicaVolumes | None = None) -> None:
        super().__init__(config, node or (replicas.node if replicas else ""))
        self.replicas = replicas

    def _svc(self) -> VolumeService:
        if self.replicas is None:
            raise StorageError("replicated storage is not available on this node (no volume "
                               "service)")
        return self.replicas.service

    def _rep(self) -> ReplicaVolumes:
        self._svc()
        assert self.replicas is not None
        return self.replicas

    def volname(self, volid: str) -> str:
        storage, name = split_volid(volid)
        if storage != self.id:
            raise StorageError(f"volume '{volid}' is not on storage '{self.id}'")
        if not _NAME_RE.match(name):
            raise StorageError(f"unable to parse replicated volume name '{name}'")
        return name

    def _cached_record(self, name: str) -> dict[str, Any]:
        """The volume's record from the volume service's cache (no I/O). A copy that
        exists here but whose record the service has not loaded yet (just after a
        daemon start) is refused rather than guessed: a qcow2 image opened as raw
        would hand the guest the image's metadata."""
        rec = self._svc().records.get(name)
        if rec is None:
            raise StorageError(f"volume '{self.id}:{name}': its record is not loaded on "
                               f"{self.node} yet (try again in a few seconds)")
        return rec

    def _peer(self) -> str:
        try:
            return self._svc().default_peer(self.config.nodes)
        except VolumeFailure as exc:
            raise StorageError(f"storage '{self.id}': {exc}") from None

    async def _records(self) -> dict[str, dict[str, Any]]:
        try:
            return {n: r for n, r in (await self._svc().all_records()).items()
                    if r.get("storage") == self.id and not r.get("deleting")}
        except VolumeFailure as exc:
            raise StorageError(str(exc)) from None

    def image_name(self, name: str) -> str:
        """The qcow2 image inside volume `name`, as a qemu-img filename: this node's NBD
        export with the format stated, never probed."""
        spec = {"driver": "qcow2",
                "file": {"driver": "nbd", "export": name,
                         "server": {"type": "unix",
                                    "path": str(self._svc().socket_path(name))}}}
        return "json:" + json.dumps(spec, separators=(",", ":"))

    async def alloc(self, vmid: int, size: int, fmt: str = "raw",
                    name: str | None = None) -> str:
        if fmt not in FORMATS:
            raise StorageError(f"unsupported format '{fmt}' on replicated storage (raw or "
                               f"qcow2)")
        if size <= 0:
            raise StorageError("volume size must be positive")
        size = _align(size)
        service = self._svc()
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
        qcow2 = fmt == "qcow2"
        try:
            # A VM disk may be live-migrated: both nodes Primary during the hand-over.
            await service.create_volume(
                name, qcow2_device_size(size) if qcow2 else size, peer=peer,
                storage=self.id, vmid=vmid, backing_dir=self.config.path or None,
                allow_two_primaries=True,
                image={"format": "qcow2", "size": size} if qcow2 else None)
        except VolumeFailure as exc:
            raise StorageError(str(exc)) from None
        volid = f"{self.id}:{name}"
        if qcow2:
            # Primary here since its creation: the export serves; the image's writes
            # reach the peer like any other (its initial sync runs meanwhile)
            try:
                await _run("qemu-img", "create", "-q", "-f", "qcow2",
                           service.nbd_uri(name), str(size))
            except BaseException:
                with contextlib.suppress(Exception):
                    await self.free(volid)
                raise
        return volid

    async def free(self, volid: str) -> None:
        try:
            await self._svc().delete_volume(self.volname(volid))
        except VolumeFailure as exc:
            raise StorageError(str(exc)) from None

    async def resize(self, volid: str, size: int) -> None:
        """Grow both copies (the peer must be connected); running guests keep the size
        their NBD connection negotiated until they reconnect. A qcow2 volume's device
        grows by its reserve too, then the image (a stopped guest's: no QEMU has it)."""
        name = self.volname(volid)
        try:
            rec = await self._svc().record(name, serializable=False)
        except VolumeFailure as exc:
            raise StorageError(str(exc)) from None
        qcow2 = record_format(rec) == "qcow2"
        device = qcow2_device_size(_align(size)) if qcow2 else size
        try:
            if device > int(rec["size"]) or not qcow2:
                await self._svc().resize_volume(name, device)
        except VolumeFailure as exc:
            raise StorageError(str(exc)) from None
        if qcow2:
            async with self._image_here(volid) as image:
                await _run("qemu-img", "resize", "-q", image, str(size))
            try:
                await self._svc().set_image(name, {**rec["image"], "size": size})
            except (VolumeFailure, StoreUnavailable) as exc:
                raise StorageError(f"volume {name}: the image grew to {size} bytes but its "
                                   f"record could not say so: {exc}") from None

    async def copy(self, volid: str, vmid: int, fmt: str | None = None) -> str:
        """A new replicated volume with the same data (qemu-img over both NBD exports)."""
        src = self.source(volid)
        fmt = fmt if fmt in FORMATS else (src.format or "raw")
        new = await self.alloc(vmid, await self.size(volid), fmt)
        dst = self.source(new)
        try:
            await convert_into(src, dst)
        except StorageError as exc:
            await self.free(new)
            raise StorageError(f"copy of {volid} failed: {exc}") from None
        return new

    def source(self, volid: str) -> VolumeSource:
        name = self.volname(volid)
        service = self._svc()
        if not service.exists_locally(name):
            raise StorageError(f"volume '{volid}' does not exist on this node")
        fmt = record_format(self._cached_record(name))
        # a raw export is opened as raw data (format None: never probed)
        return VolumeSource(service.nbd_uri(name), "qcow2" if fmt == "qcow2" else None)

    def volume_format(self, volid: str) -> str:
        return record_format(self._cached_record(self.volname(volid)))

    async def size(self, volid: str) -> int:
        name = self.volname(volid)
        rec = (await self._records()).get(name)
        if rec is None:
            raise StorageError(f"volume '{volid}' does not exist")
        return virtual_size(rec)

    async def list(self, content: str | None = None,
                   vmid: int | None = None) -> builtins.list[dict[str, Any]]:
        if content not in (None, "images"):
            return []
        out = []
        for name, rec in sorted((await self._records()).items()):
            if vmid is not None and rec.get("vmid") != vmid:
                continue
            if self._svc().node not in rec.get("nodes", {}):
                continue
            out.append({"volid": f"{self.id}:{name}", "format": record_format(rec),
                        "content": "images", "size": virtual_size(rec),
                        "used": int(rec["size"]), "ctime": int(rec.get("created", 0)),
                        "vmid": rec.get("vmid"),
                        "peer": next((n for n in rec["nodes"] if n != self._svc().node), None)})
        return out

    async def status(self) -> dict[str, Any]:
        root = self.config.path or str(self._svc().engine_dir)
        os.makedirs(root, exist_ok=True)
        st = os.statvfs(root)
        total = st.f_blocks * st.f_frsize
        return {"total": total, "used": total - st.f_bfree * st.f_frsize,
                "avail": st.f_bavail * st.f_frsize, "active": 1,
                "enabled": 0 if self.config.disable else 1}

    # ------------------------------------------------------------ snapshots (qcow2)

    async def snapshot_blocker(self, volid: str, *, state_bytes: int | None = 0) -> str | None:
        try:
            name = self.volname(volid)
            rec = self._cached_record(name)
        except StorageError as exc:
            return str(exc)
        if record_format(rec) != "qcow2":
            return (f"volume {volid} is raw: snapshots need a qcow2 volume on replicated "
                    f"storage (a disk allocated with format=qcow2)")
        if state_bytes is None:
            return None
        try:
            state = await self._rep().state(name)
        except StorageError as exc:
            return str(exc)
        if state_bytes is None or not state.active:
            return None    # not taking one; or measured once active, by `snapshot`
        return await self._room(volid, name, int(rec["size"]), state_bytes)

    async def _room(self, volid: str, name: str, device: int, state_bytes: int) -> str | None:
        # a running guest's image may be mid-update: check reports leaks or errors
        # (exit 2, 3) yet still says where the image ends
        out = await _run("qemu-img", "check", "--output=json", self.image_name(name),
                         ok=(0, 2, 3))
        try:
            end = end_offset_of(out)
        except (ValueError, KeyError) as exc:
            return f"volume {volid}: cannot tell where its qcow2 image ends ({exc})"
        return room_blocker(volid, device, end, state_bytes)

    def qemu_snapshots_internal(self, volid: str) -> bool:
        return True

    @asynccontextmanager
    async def _image_here(self, volid: str, *, read_only: bool = False
                          ) -> AsyncIterator[str]:
        """The qcow2 image of a volume, reachable through this node's export for the
        block: the copy is made Primary for it when it was not (never next to a Primary
        peer: the guest may run there) and given up after. Unless `read_only`, no
        QEMU may have it open."""
        name = self.volname(volid)
        if record_format(self._cached_record(name)) != "qcow2":
            raise StorageError(f"{SNAPSHOT_UNAVAILABLE}: volume {volid} is raw")
        rep = self._rep()
        async with rep.held(name) as borrowed:
            state = await rep.state(name)
            if not state.exists:
                raise StorageError(f"volume '{volid}' does not exist on {self.node}")
            if not state.active:
                if state.peer_active:
                    raise StorageError(f"volume {name} is Primary on {state.peer}: its image "
                                       f"is changed there")
                if await rep.activate(name):
                    borrowed()
            if not read_only:
                deadline = time.monotonic() + CLOSE_WAIT
                while (state := await rep.state(name)).in_use:
                    if time.monotonic() > deadline:
                        raise StorageError(f"volume {name} is open on {self.node} "
                                           f"({state.in_use} connection(s)): stop the guest "
                                           f"first")
                    await asyncio.sleep(0.1)
            yield self.image_name(name)

    async def snapshot(self, volid: str, snap: str) -> None:
        async with self._image_here(volid) as image:
            if snap in await self._snapshot_names(image):
                raise StorageError(f"snapshot '{snap}' already exists in volume {volid}")
            name = self.volname(volid)
            reason = await self._room(volid, name, int(self._cached_record(name)["size"]), 0)
            if reason is not None:
                raise StorageError(f"{SNAPSHOT_UNAVAILABLE}: {reason}")
            await _run("qemu-img", "snapshot", "-q", "-c", snap, image)

    async def rollback_snapshot(self, volid: str, snap: str) -> None:
        async with self._image_here(volid) as image:
            await _run("qemu-img", "snapshot", "-q", "-a", snap, image)

    async def delete_snapshot(self, volid: str, snap: str) -> None:
        async with self._image_here(volid) as image:
            await _run("qemu-img", "snapshot", "-q", "-d", snap, image)

    async def snapshots(self, volid: str) -> builtins.list[str]:
        if self.volume_format(volid) != "qcow2":
            return []
        async with self._image_here(volid, read_only=True) as image:
            return await self._snapshot_names(image)

    @staticmethod
    async def _snapshot_names(image: str) -> builtins.list[str]:
        info = json.loads(await _run("qemu-img", "info", "--output=json", image))
        return [s["name"] for s in info.get("snapshots", [])]

    # ------------------------------------------------------------ use by a guest here

    async def volume_state(self, volid: str) -> VolumeState:
        return await self._rep().state(self.volname(volid))

    async def usable_here(self, volid: str) -> str | None:
        name = self.volname(volid)
        if not self._svc().exists_locally(name):
            return f"volume {name} has no copy on {self.node}"
        return unusable_reason(name, self.node,
                               await self._rep().state(name, with_marks=True))

    async def activate_volume(self, volid: str, *, task: Task | None = None) -> bool:
        return await self._rep().activate(self.volname(volid), task=task)

    async def deactivate_volume(self, volid: str) -> VolumeState:
        return await self._rep().deactivate(self.volname(volid))

    async def migration_blocker(self, volid: str, target: str, *, live: bool) -> str | None:
        if self.replicas is None:
            return "replicated storage is not available on this node"
        return await self.replicas.migration_blocker(self.volname(volid), target, live=live)

    # ------------------------------------------------------------ HA recovery

    async def take_over_volume(self, volid: str, *, reason: str,
                               task: Task | None = None) -> None:
        await self._rep().take_over(self.volname(volid), reason=reason, task=task)

    async def release_fenced_copy(self, volid: str, *, still_idle: Callable[[], bool],
                                  timeout: float, owner: str | None = None) -> str | None:
        return await self._rep().release_fenced(self.volname(volid), still_idle=still_idle,
                                                timeout=timeout, owner=owner)
