"""PVE's feature check of a VM (`GET .../qemu/{vmid}/feature`): can its volumes be
snapshotted, linked-cloned or copied, and on which nodes are they all available.

Owns no state: it reads the VM's config and asks the storage interface
(`StorageManager`) about each volume, as PVE's `QemuConfig->has_feature` and
`QemuServer::shared_nodes` ask the storage plugins.

- `snapshot`: every volume (not CD-ROMs, so not the cloud-init drive) can have
  snapshots (`snapshot_blocker`: qcow2 on `dir` and `replicated` storage);
- `clone` (PVE's linked clone from a template's base volumes): every volume is a base
  image a linked clone can read (`Storage.can_link`: a template's qcow2/raw on `dir`),
  never with `snapname`;
- `copy` (a full copy, what a full clone does): every volume's storage can copy it;
  with `snapname`, every volume is also qcow2 (the clone reads the snapshot inside the
  image, PVE's dir plugin's `copy => {snap => {qcow2 => 1}}`).

`nodes`: the nodes where every volume's storage is available (PVE's shared_nodes):
a disabled storage leaves none, a storage limited to `nodes` leaves those, a local
(not shared) storage leaves this node only, and a replicated volume leaves the nodes
holding its two copies. CD-ROM images count here, as in PVE.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from binome.guest import config as vmconf
from binome.guest.errors import GuestFailure
from binome.storage.base import StorageError

if TYPE_CHECKING:
    from binome.guest.context import GuestContext

FEATURES = ("snapshot", "clone", "copy")


async def vm_feature(ctx: GuestContext, vmid: int, feature: str,
                     snapname: str | None = None) -> dict[str, Any]:
    """PVE's answer: `{hasFeature: 0|1, nodes: [...]}`; GuestFailure for a missing
    snapshot (PVE's "snapshot 'X' does not exist")."""
    vm = await ctx.read(vmid)
    config: dict[str, Any] = vm.config
    if snapname:
        snap = vm.snapshots.get(snapname)
        if snap is None:
            raise GuestFailure(f"snapshot '{snapname}' does not exist")
        config = snap
    volids = [d.volid for d in vmconf.drive_volumes(config) if d.volid]
    nodes = await shared_nodes(ctx, config)
    return {"hasFeature": int(await has_feature(ctx, feature, volids, snapname)),
            "nodes": nodes}


async def has_feature(ctx: GuestContext, feature: str, volids: list[str],
                      snapname: str | None) -> bool:
    if feature == "clone":
        if snapname:
            return False
        for volid in volids:
            try:
                if not (await ctx.storages.for_volid(volid)).can_link(volid):
                    return False
            except StorageError:
                return False
        return True
    if feature == "copy":
        for volid in volids:
            try:
                storage = await ctx.storages.for_volid(volid)
                if snapname and storage.volume_format(volid) != "qcow2":
                    return False
            except StorageError:
                return False
        return True
    for volid in volids:    # snapshot
        try:
            if await ctx.storages.snapshot_blocker(volid, state_bytes=None) is not None:
                return False
        except StorageError:
            return False
    return True


async def shared_nodes(ctx: GuestContext, config: dict[str, Any]) -> list[str]:
    """PVE's shared_nodes over every drive with a volume, CD-ROMs (ISO images) included."""
    nodes = {ctx.node, *ctx.migration_nodes()}
    for d in (*vmconf.disks(config), *vmconf.special_drives(config)):
        if not d.volid or ":" not in d.volid:
            continue        # 'none', a CD-ROM drive without a medium
        try:
            cfg = await ctx.storages.config(d.volid.split(":", 1)[0])
        except StorageError:
            return []
        if cfg.disable:
            return []
        if cfg.nodes:
            nodes &= set(cfg.nodes)
        if not cfg.shared:
            state = await ctx.storages.volume_state(d.volid)
            if state.replicated:     # binome's replicated volume: its two copies
                nodes &= {ctx.node, *([state.peer] if state.peer else [])}
            elif not cfg.nodes:      # a local storage: this node
                nodes &= {ctx.node}
    return sorted(nodes)
