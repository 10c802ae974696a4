"""The VM config repository: the only code that reads or writes a guest's config keys.

A VM's config lives under its owner node, ``/binome/config/nodes/<node>/qemu/
<vmid>.conf`` (the text of a PVE .conf file), and its vmid is reserved
cluster-wide by ``/binome/vmids/<vmid>`` (``{"node": owner}``), written in the
same transaction, so two nodes can never hold the same vmid. Updates are
compare-and-swap on the config key's revision.

Moving a VM between nodes (migration, HA relocation, HA recovery) is one
transaction: the config goes from the source key to the target key and the
vmid owner to the target, conditioned on the source config's revision, the
owner record's revision and an absent target config. `plan_move` reads and
returns those parts (`ConfigMove`), so the HA manager can put them into its
own larger transaction (with its lock and status); `move` commits one alone.

One policy for every move:
- the `lock` key travels with the config, except the lock the mover itself
  set for the move (`release_lock`, e.g. "migrate"), which the move removes;
- an unknown outcome (etcd did not answer the commit) is resolved by reading
  the owner record again with quorum: the move happened exactly when the owner
  is the target. `move` does it itself; a caller composing the parts into its
  own transaction resolves it from its next quorum read (the HA manager's next
  round snapshot).
"""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from binome.guest import config as vmconf
from binome.guest.errors import GuestFailure
from binome.store import keys
from binome.store.client import Store, StoreUnavailable

# re-reads of the owner after an unknown commit outcome (seconds apart)
OUTCOME_ATTEMPTS = 10
OUTCOME_RETRY = 1.0


def conf_missing(node: str, vmid: int) -> GuestFailure:
    return GuestFailure(f"Configuration file 'nodes/{node}/qemu-server/{vmid}.conf' does not "
                        f"exist")


@dataclass
class VmConfig:
    vmid: int
    node: str
    config: dict[str, Any]
    digest: str
    revision: int
    # the snapshot sections of the config text, by name (see config.parse_conf_sections)
    snapshots: dict[str, dict[str, Any]] = field(default_factory=dict)
    # the [PENDING] section: changes waiting for a hot-plug or the next start
    # (see guest.pending); it travels with the config on every move
    pending: dict[str, Any] = field(default_factory=dict)


def _vm_config(vmid: int, node: str, text: str, revision: int) -> VmConfig:
    config, snapshots = vmconf.parse_conf_sections(text)
    return VmConfig(vmid, node, config, vmconf.digest(text), revision, snapshots,
                    vmconf.parse_conf_pending(text))


class MoveRefused(GuestFailure):
    """The move did not happen: the config or its owner is not what the mover expected."""


class MoveOutcomeUnknown(GuestFailure):
    """etcd did not answer the commit nor, afterwards, the owner read: moved or not is
    unknown. Nothing may act as if either node held the guest until a quorum read tells."""


@dataclass(frozen=True)
class ConfigMove:
    """One move's share of an etcd transaction (see `Store.txn`)."""

    vmid: int
    source: str
    target: str
    compare: list[tuple[str, str, int]] = field(default_factory=list)
    puts: dict[str, tuple[Any, int]] = field(default_factory=dict)
    deletes: list[str] = field(default_factory=list)


def moved_text(text: str, release_lock: str | None,
               volids: dict[str, str] | None = None) -> str:
    """The config text written at the target: unchanged, except the mover's own lock
    and the volumes copied to the target (`volids`: old -> new, in the config and its
    pending section)."""
    if release_lock is None and not volids:
        return text
    config, snapshots = vmconf.parse_conf_sections(text)
    pending = vmconf.parse_conf_pending(text)
    if volids:
        config = rename_volumes(config, volids)
        pending = rename_volumes(pending, volids)
    elif config.get("lock") != release_lock:
        return text
    if release_lock is not None and config.get("lock") == release_lock:
        config = {k: v for k, v in config.items() if k != "lock"}
    return vmconf.format_conf(config, snapshots, pending)


def rename_volumes(config: dict[str, Any], volids: dict[str, str]) -> dict[str, Any]:
    """The config with each volume of `volids` (old -> new) renamed, in its drives and
    `unusedN`, their options kept; pure."""
    out = dict(config)
    for key, value in config.items():
        if vmconf.is_drive_key(key) or vmconf.is_unused_key(key):
            head, sep, rest = str(value).partition(",")
            if head in volids:
                out[key] = volids[head] + sep + rest
    return out


def move_parts(vmid: int, source: str, target: str, config_text: str, config_revision: int,
               owner: dict[str, Any], owner_revision: int, *,
               release_lock: str | None = None,
               volids: dict[str, str] | None = None) -> ConfigMove:
    """The compare/put/delete parts of moving `vmid` from `source` to `target`, given
    the source config and owner record as read (pure: no I/O)."""
    src_key, dst_key, own_key = (keys.vm_conf(source, vmid), keys.vm_conf(target, vmid),
                                 keys.vmid(vmid))
    return ConfigMove(
        vmid, source, target,
        compare=[(src_key, "mod", config_revision), (own_key, "mod", owner_revision),
                 (dst_key, "create", 0)],
        puts={dst_key: (moved_text(config_text, release_lock, volids), 0),
              own_key: ({**owner, "node": target}, 0)},
        deletes=[src_key])


async def plan_move(store: Store, vmid: int, source: str, target: str, *,
                    expect_revision: int | None = None, release_lock: str | None = None,
                    volids: dict[str, str] | None = None) -> ConfigMove:
    """Read (linearizable) the source config and the owner, and return the move's parts.

    Raises MoveRefused when the owner is not `source`, the config is missing, or
    (`expect_revision`) the config changed since the mover read it."""
    cur = await store.get(keys.vm_conf(source, vmid))
    own = await store.get(keys.vmid(vmid))
    if cur is None or own is None or (own.value or {}).get("node") != source:
        raise MoveRefused(f"VM {vmid}: config is not on {source}; not moved")
    if expect_revision is not None and cur.mod_revision != expect_revision:
        raise MoveRefused(f"VM {vmid}: config changed while moving it; not moved")
    return move_parts(vmid, source, target, str(cur.value), cur.mod_revision,
                      dict(own.value), own.mod_revision, release_lock=release_lock,
                      volids=volids)


async def resolve_outcome(store: Store, vmid: int, target: str, *,
                          attempts: int = OUTCOME_ATTEMPTS, retry: float = OUTCOME_RETRY
                          ) -> bool:
    """After an unanswered commit: did the move to `target` happen? (a quorum read of
    the owner); raises MoveOutcomeUnknown if etcd does not answer that either."""
    for attempt in range(attempts):
        try:
            now = await store.get_value(keys.vmid(vmid))
            return (now or {}).get("node") == target
        except StoreUnavailable:
            if attempt + 1 < attempts:
                await asyncio.sleep(retry)
    raise MoveOutcomeUnknown(f"VM {vmid}: cluster store unavailable: cannot tell whether "
                             f"the config moved to {target}")


async def move(store: Store, vmid: int, source: str, target: str, *,
               expect_revision: int | None = None, release_lock: str | None = None,
               timeout: float | None = None, attempts: int = OUTCOME_ATTEMPTS,
               retry: float = OUTCOME_RETRY, volids: dict[str, str] | None = None) -> None:
    """Move the config and the vmid owner of `vmid` from `source` to `target`, alone.

    Returns once moved; raises MoveRefused when it did not happen (nothing was
    written) and MoveOutcomeUnknown when that cannot be learnt (see the module
    docstring)."""
    plan = await plan_move(store, vmid, source, target, expect_revision=expect_revision,
                           release_lock=release_lock, volids=volids)
    try:
        rev = await store.txn(plan.compare, plan.puts, plan.deletes, timeout)
        moved = rev is not None
    except (StoreUnavailable, TimeoutError):
        moved = await resolve_outcome(store, vmid, target, attempts=attempts, retry=retry)
    if not moved:
        raise MoveRefused(f"VM {vmid}: config changed while moving it; not moved")


class VmConfigs:
    """The config keys of the guests, over the cluster store `store_of()` returns
    (None: this node is not in a cluster)."""

    def __init__(self, node: str, store_of: Callable[[], Store | None]) -> None:
        self.node = node
        self._store_of = store_of

    @property
    def available(self) -> bool:
        return self._store_of() is not None

    @property
    def store(self) -> Store:
        store = self._store_of()
        if store is None:
            raise GuestFailure("this node is not part of a cluster: create or join one first")
        return store

    async def read(self, vmid: int, node: str | None = None, *, fresh: bool = True
                   ) -> VmConfig:
        """The VM's config (see `GuestService.read` for `fresh`)."""
        node = node or self.node
        entry = await self.store.get(keys.vm_conf(node, vmid), serializable=not fresh)
        if entry is None:
            raise conf_missing(node, vmid)
        return _vm_config(vmid, node, str(entry.value), entry.mod_revision)

    async def list(self, node: str | None = None) -> list[VmConfig]:
        """The configs held by `node` (this one by default), by vmid; local read."""
        node = node or self.node
        if self._store_of() is None:
            return []
        prefix = keys.CONFIG_NODES + f"{node}/qemu/"
        out = []
        for entry in await self.store.get_prefix(prefix, serializable=True):
            name = entry.key[len(prefix):]
            if not name.endswith(".conf") or not name[:-5].isdigit():
                continue
            out.append(_vm_config(int(name[:-5]), node, str(entry.value),
                                  entry.mod_revision))
        return sorted(out, key=lambda v: v.vmid)

    async def list_all(self) -> builtins.list[tuple[str, int, dict[str, Any]]]:
        """(node, vmid, config) of every VM of the cluster; local read."""
        out = []
        for entry in await self.store.get_prefix(keys.CONFIG_NODES, serializable=True):
            rest = entry.key[len(keys.CONFIG_NODES):]
            node, _, tail = rest.partition("/qemu/")
            if not tail.endswith(".conf") or not tail[:-5].isdigit():
                continue
            out.append((node, int(tail[:-5]), vmconf.parse_conf(str(entry.value))))
        return out

    async def volume_users(self) -> dict[str, builtins.list[int]]:
        """{volid: the VMs whose config (snapshots and pending changes included) names
        it}, over the whole cluster; local read."""
        out: dict[str, builtins.list[int]] = {}
        for entry in await self.store.get_prefix(keys.CONFIG_NODES, serializable=True):
            rest = entry.key[len(keys.CONFIG_NODES):]
            _node, _, tail = rest.partition("/qemu/")
            if not tail.endswith(".conf") or not tail[:-5].isdigit():
                continue
            for volid in vmconf.referenced_volids(str(entry.value)):
                out.setdefault(volid, []).append(int(tail[:-5]))
        return {volid: sorted(vmids) for volid, vmids in out.items()}

    async def owner(self, vmid: int) -> str | None:
        """The node that owns `vmid` (quorum read), None if the vmid is free."""
        value = await self.store.get_value(keys.vmid(vmid))
        return value["node"] if value else None

    async def next_free_vmid(self, start: int = 100) -> int:
        used = {int(e.key[len(keys.VMIDS):]) for e in await self.store.get_prefix(keys.VMIDS)}
        vmid = start
        while vmid in used:
            vmid += 1
        return vmid

    async def reserve(self, vmid: int, placeholder: dict[str, Any], node: str | None = None
                      ) -> bool:
        """Take `vmid` for this node (or `node`: a clone to another node) with a
        placeholder config (a create or clone in progress); False if the vmid is taken."""
        node = node or self.node
        conf_key = keys.vm_conf(node, vmid)
        return await self.store.commit({keys.vmid(vmid): 0, conf_key: 0},
                                       {keys.vmid(vmid): {"node": node},
                                        conf_key: vmconf.format_conf(placeholder)})

    async def unreserve(self, vmid: int, node: str | None = None) -> None:
        """Undo `reserve` (a failed create or clone)."""
        await self.store.commit({}, None, [keys.vmid(vmid),
                                           keys.vm_conf(node or self.node, vmid)])

    async def remove(self, vm: VmConfig) -> None:
        """Delete the config and free the vmid, if the config is still as read."""
        await self.store.commit({keys.vm_conf(vm.node, vm.vmid): vm.revision}, None,
                                [keys.vm_conf(vm.node, vm.vmid), keys.vmid(vm.vmid)])

    async def write(self, vm: VmConfig, new: dict[str, Any],
                    snapshots: dict[str, dict[str, Any]] | None = None, *,
                    pending: dict[str, Any] | None = None) -> VmConfig:
        """Replace the config, if unchanged since `vm` was read (CAS); the new one. The
        snapshot and pending sections are kept as read unless `snapshots` / `pending`
        replace them."""
        text = vmconf.format_conf(new, vm.snapshots if snapshots is None else snapshots,
                                  vm.pending if pending is None else pending)
        ok = await self.store.commit({keys.vm_conf(vm.node, vm.vmid): vm.revision},
                                     {keys.vm_conf(vm.node, vm.vmid): text})
        if not ok:
            raise GuestFailure(f"VM {vm.vmid}: configuration changed concurrently; try again")
        return await self.read(vm.vmid, vm.node)

    async def set_lock(self, vm: VmConfig, lock: str | None) -> VmConfig:
        new = dict(vm.config)
        if lock:
            new["lock"] = lock
        else:
            new.pop("lock", None)
        return await self.write(vm, new)

    async def move(self, vm: VmConfig, target: str, *, release_lock: str | None = None,
                   timeout: float | None = None, volids: dict[str, str] | None = None
                   ) -> None:
        """Move `vm` (as read) from its node to `target`: module function `move`
        (`volids`: volumes copied to the target, renamed in the moved config)."""
        await move(self.store, vm.vmid, vm.node, target, expect_revision=vm.revision,
                   release_lock=release_lock, timeout=timeout, volids=volids)
