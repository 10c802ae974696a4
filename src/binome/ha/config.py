"""The HA configuration in etcd: the one module that reads and writes it (PVE::HA::Config).

Owns the keys under `/binome/ha/` that administrators change or read: the
resources and groups documents (single JSON documents, edited with
compare-and-swap), the datacenter-wide settings, the admin command queue the
CRM master reads, the administrator's power-off confirmations, and the
read side of what the daemons publish (manager status, LRM reports) for
`ha status`. The API validates its input and shapes its answers; everything
that touches these keys is here. The decoders (`decode_*`) turn the stored
documents into the model (`binome.ha.model`) for the daemons' Env too.

Refusals (no such resource, group in use, a changed digest...) are
`HaConfigError`: a `BinomeError`, so the API answers them as PVE does (500,
the message as reason).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from binome.errors import BinomeError
from binome.ha.model import (
    FenceConfirmation,
    GroupConfig,
    HaSettings,
    ResourceConfig,
    parse_group_nodes,
)
from binome.store import keys
from binome.store.client import StoreUnavailable

if TYPE_CHECKING:
    from binome.store.client import Store

RESOURCE_KEYS = ("state", "group", "max_restart", "max_relocate", "comment",
                 "availability_target")
GROUP_KEYS = ("nodes", "restricted", "nofailback", "comment")
# qm stop/shutdown's hint to the LRM of how long the guest may take to shut down
STOP_TIMEOUT = "stop_timeout"


class HaConfigError(BinomeError):
    """A refused HA configuration change or a missing entry (the message says which)."""


# ---------------------------------------------------------------- pure helpers


def sid_of(vmid: int) -> str:
    return f"vm:{vmid}"


def vmid_of_sid(sid: str) -> int | None:
    kind, _, vmid = sid.partition(":")
    return int(vmid) if kind == "vm" and vmid.isdigit() else None


def config_digest(doc: Mapping[str, Any] | None) -> str:
    """PVE's `digest` of a config document: refuses a change made on a stale read."""
    return hashlib.sha1(json.dumps(doc or {}, sort_keys=True).encode()).hexdigest()


def merge_resource(old: Mapping[str, Any], changes: Mapping[str, Any],
                   delete: Iterable[str] = ()) -> dict[str, Any]:
    """A resource entry with `changes` applied and `delete` removed, validated."""
    gone = set(delete)
    out = {k: v for k, v in old.items() if k not in gone}
    out.pop(STOP_TIMEOUT, None)   # a hint of the last qm stop/shutdown only
    for key in RESOURCE_KEYS:
        if changes.get(key) is not None:
            out[key] = changes[key]
    if out.get("state") == "enabled":
        out["state"] = "started"
    ResourceConfig.from_dict("vm:0", out)   # validates
    return out


def merge_group(old: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """A group entry with `changes` applied (`nodes` as `node[:priority],...`), validated."""
    out = dict(old)
    if changes.get("nodes") is not None:
        nodes = changes["nodes"]
        out["nodes"] = parse_group_nodes(nodes) if isinstance(nodes, str) else dict(nodes)
    for key in ("restricted", "nofailback", "comment"):
        if changes.get(key) is not None:
            out[key] = changes[key]
    GroupConfig.from_dict("g", out)   # validates
    return out


def decode_resources(doc: Mapping[str, Any] | None) -> dict[str, ResourceConfig]:
    return {sid: ResourceConfig.from_dict(sid, d) for sid, d in (doc or {}).items()}


def decode_groups(doc: Mapping[str, Any] | None) -> dict[str, GroupConfig]:
    return {name: GroupConfig.from_dict(name, d) for name, d in (doc or {}).items()}


def decode_settings(doc: Mapping[str, Any] | None) -> HaSettings:
    return HaSettings.from_dict(dict(doc) if doc else None)


def decode_commands(entries: Iterable[tuple[str, Any]]) -> list[tuple[str, str]]:
    """The queued admin commands among `(key, value)` entries, oldest first, as (id, line)."""
    return [(k, str(v)) for k, v in sorted(entries, key=lambda kv: kv[0])
            if k.startswith(keys.HA_COMMANDS)]


# ---------------------------------------------------------------- the repository


class HaConfig:
    """Reads and compare-and-swap writes of the HA configuration, on one store client."""

    def __init__(self, store: Store) -> None:
        self.store = store

    # ------------------------------------------------------------ resources

    async def resources(self, *, serializable: bool = False) -> dict[str, dict[str, Any]]:
        """`{sid: entry}` as stored (serializable: this node's copy, no quorum needed)."""
        return await self.store.get_value(keys.HA_RESOURCES, {},
                                          serializable=serializable) or {}

    async def resource(self, sid: str) -> dict[str, Any]:
        """One resource's entry; HaConfigError if there is none."""
        doc = await self.resources()
        if sid not in doc:
            raise HaConfigError(f"no such resource '{sid}'")
        return doc[sid]

    async def add_resource(self, sid: str, changes: Mapping[str, Any]) -> None:
        vmid = vmid_of_sid(sid)
        if vmid is None or await self.store.get(keys.vmid(vmid)) is None:
            raise HaConfigError(f"no such VM '{vmid}'")
        group = changes.get("group")
        if group and group not in await self.groups():
            raise HaConfigError(f"no such ha group '{group}'")
        cfg = merge_resource({"state": "started"}, changes)
        await self._edit(keys.HA_RESOURCES, sid, lambda _old: cfg,
                         exists=f"resource ID '{sid}' already defined")

    async def update_resource(self, sid: str, changes: Mapping[str, Any],
                              delete: Iterable[str] = (), digest: str | None = None) -> None:
        """Apply `changes`, remove `delete`; refused if `digest` is not the document's or
        the group to move it into does not exist (as `add_resource`)."""
        gone = list(delete)
        group = changes.get("group")
        if group and group not in await self.groups():
            raise HaConfigError(f"no such ha group '{group}'")

        def same_digest(doc: dict[str, Any]) -> None:
            if digest and digest != config_digest(doc):
                raise HaConfigError("detected modified configuration - file changed by other "
                                    "user? Try again.")

        await self._edit(keys.HA_RESOURCES, sid,
                         lambda old: merge_resource(old or {}, changes, gone),
                         missing=f"no such resource '{sid}'", check=same_digest)

    async def remove_resource(self, sid: str) -> None:
        await self._edit(keys.HA_RESOURCES, sid, lambda _old: None,
                         missing=f"no such resource '{sid}'")

    async def set_requested_state(self, sid: str, state: str,
                                  stop_timeout: float | None = None) -> None:
        """Set the requested state; `stop_timeout` tells the LRM how long the guest may take
        to shut down before it is stopped hard (0: at once, `qm stop`)."""
        def change(old: dict[str, Any] | None) -> dict[str, Any]:
            cfg = {k: v for k, v in (old or {}).items() if k != STOP_TIMEOUT}
            if stop_timeout is not None:
                cfg[STOP_TIMEOUT] = stop_timeout
            return {**cfg, "state": state}

        await self._edit(keys.HA_RESOURCES, sid, change, missing=f"no such resource '{sid}'")

    async def managed_resource(self, vmid: int) -> dict[str, Any] | None:
        """The resource entry of `vm:<vmid>` if the manager handles it (not `ignored`).

        Serializable and None when the store cannot answer: stopping a non-HA guest
        needs no quorum and must not start to (an HA guest's request needs quorum
        anyway, checked by the caller)."""
        try:
            doc = await self.resources(serializable=True)
        except StoreUnavailable:
            return None
        cfg = doc.get(sid_of(vmid))
        if cfg is None or cfg.get("state") == "ignored":
            return None
        return cfg

    async def poll_service(self, sid: str
                           ) -> tuple[dict[str, Any], dict[str, Any] | None] | None:
        """(the manager's status of `sid`, its resource entry or None if removed), or
        None while the store cannot answer (no quorum for a moment)."""
        try:
            status = await self.service_status(sid)
            doc = await self.resources()
        except StoreUnavailable:
            return None
        return status, doc.get(sid)

    # ------------------------------------------------------------ groups

    async def groups(self, *, serializable: bool = False) -> dict[str, dict[str, Any]]:
        return await self.store.get_value(keys.HA_GROUPS, {}, serializable=serializable) or {}

    async def group(self, name: str) -> dict[str, Any]:
        doc = await self.groups()
        if name not in doc:
            raise HaConfigError(f"no such ha group '{name}'")
        return doc[name]

    async def add_group(self, name: str, changes: Mapping[str, Any]) -> None:
        cfg = merge_group({}, changes)
        await self._edit(keys.HA_GROUPS, name, lambda _old: cfg,
                         exists=f"ha group '{name}' already defined")

    async def update_group(self, name: str, changes: Mapping[str, Any]) -> None:
        await self._edit(keys.HA_GROUPS, name, lambda old: merge_group(old or {}, changes),
                         missing=f"no such ha group '{name}'")

    async def remove_group(self, name: str) -> None:
        """Refused while a resource uses the group."""
        resources = await self.resources()
        users = sorted(sid for sid, cfg in resources.items() if cfg.get("group") == name)
        if users:
            raise HaConfigError(f"ha group '{name}' is used by {', '.join(users)}")
        await self._edit(keys.HA_GROUPS, name, lambda _old: None,
                         missing=f"no such ha group '{name}'")

    # ------------------------------------------------------------ settings and commands

    async def settings(self) -> dict[str, Any]:
        return await self.store.get_value(keys.HA_SETTINGS, {}) or {}

    async def set_settings(self, settings: HaSettings | None) -> None:
        """Store the settings; None deletes them (the defaults apply)."""
        if settings is None:
            await self.store.delete(keys.HA_SETTINGS)
        else:
            await self.store.put(keys.HA_SETTINGS, settings.to_dict())

    async def queue_command(self, line: str, origin: str) -> str:
        """Append an admin command (`migrate vm:100 n2`...) for the CRM master; its id."""
        seq = f"{time.time_ns():020d}-{origin}"
        await self.store.put(keys.ha_command(seq), line)
        return seq

    # ------------------------------------------------------------ what the daemons publish

    async def manager_status(self, *, serializable: bool = False) -> dict[str, Any]:
        return await self.store.get_value(keys.HA_MANAGER_STATUS, {},
                                          serializable=serializable) or {}

    async def service_status(self, sid: str, *, serializable: bool = False) -> dict[str, Any]:
        ms = await self.manager_status(serializable=serializable)
        return (ms.get("service_status") or {}).get(sid) or {}

    async def status_snapshot(self, *, serializable: bool = False) -> dict[str, Any]:
        """One read of everything `ha status` shows: `ms` (manager status), `lock` (the
        master's name), `resources`, `settings` (the datacenter-wide HA settings),
        `lrms` {node: report}, `confirms` {node: doc}."""
        entries = {e.key: e.value for e in await self.store.get_prefix(
            keys.HA, serializable=serializable)}
        lrms = {k[len(keys.HA_LRM):]: v for k, v in entries.items() if k.startswith(keys.HA_LRM)}
        confirms = {k[len(keys.HA_FENCE_CONFIRM):]: v for k, v in entries.items()
                    if k.startswith(keys.HA_FENCE_CONFIRM) and isinstance(v, dict)}
        return {"ms": entries.get(keys.HA_MANAGER_STATUS) or {},
                "lock": entries.get(keys.HA_MANAGER_LOCK),
                "resources": entries.get(keys.HA_RESOURCES) or {},
                "settings": entries.get(keys.HA_SETTINGS) or {}, "lrms": lrms,
                "confirms": confirms}

    async def hastates(self) -> dict[int, str]:
        """vmid -> PVE's `hastate`: the CRM state if it has one, else the requested state
        (serializable: the resources index answers without quorum)."""
        resources = await self.resources(serializable=True)
        if not resources:
            return {}
        services = (await self.manager_status(serializable=True)).get("service_status") or {}
        out = {}
        for sid, cfg in resources.items():
            vmid = vmid_of_sid(sid)
            if vmid is not None:
                out[vmid] = str((services.get(sid) or {}).get("state")
                                or cfg.get("state", "started"))
        return out

    # ------------------------------------------------------------ manual fence confirmation

    async def node_lease_alive(self, node: str) -> bool:
        """Whether the node's HA heartbeat or cluster alive key (both lease-bound) exists."""
        return (await self.store.get(keys.ha_heartbeat(node)) is not None
                or await self.store.get(keys.alive(node)) is not None)

    async def record_fence_confirmation(self, confirmation: FenceConfirmation) -> None:
        await self.store.put(keys.ha_fence_confirm(confirmation.node), confirmation.to_dict())

    async def settle_power_on(self, node: str) -> None:
        """The node was powered on by hand: a reboot's power-on the fencer still owed
        (`power_on: owed` in its fence request record) is no longer owed."""
        key = keys.ha_fence_request(node)
        for _ in range(5):
            raw = await self.store.get(key)
            if raw is None or not isinstance(raw.value, dict) \
                    or raw.value.get("power_on") != "owed":
                return
            new = {**raw.value, "power_on": "done by hand"}
            if await self.store.txn([(key, "mod", raw.mod_revision)], {key: (new, 0)}):
                return

    # ------------------------------------------------------------ internals

    async def _edit(self, key: str, name: str,
                    change: Callable[[dict[str, Any] | None], dict[str, Any] | None], *,
                    missing: str | None = None, exists: str | None = None,
                    check: Callable[[dict[str, Any]], None] | None = None) -> None:
        """One compare-and-swap edit of an entry of the resources or groups document.

        `change(old)` gives the new entry (None deletes it); `missing` / `exists` are
        the errors for an entry that must / must not be there already; `check(doc)`
        runs first on the whole document read.
        """
        def mutate(doc: dict[str, Any] | None) -> dict[str, Any]:
            doc = dict(doc or {})
            if check is not None:
                check(doc)
            if exists is not None and name in doc:
                raise HaConfigError(exists)
            if missing is not None and name not in doc:
                raise HaConfigError(missing)
            new = change(doc.get(name))
            if new is None:
                doc.pop(name, None)
            else:
                doc[name] = new
            return doc

        await self.store.update(key, mutate)
