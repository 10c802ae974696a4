"""Which guests a node's bulk actions act on, and in which order (pure).

PVE's `startall`, `stopall` and `migrateall` (`PVE/API2/Nodes.pm`: `get_filtered_vmlist`,
`get_start_stop_list`) choose this node's guests, then go through them grouped by the
`order` of their `startup` property (guests without one last), ascending for a start,
descending for a stop (and by VMID inside a group, the same way). This module computes
that plan from the configs; the API runs it (one task per guest, at most `max-workers`
at a time). It owns no state.

Rules kept from PVE:
- templates are never started or stopped; `migrateall` moves them too;
- `startall` without `force` takes only guests with `onboot=1`;
- HA-managed guests are left to the HA manager unless a `vms` list names them (then
  their start and stop go through the manager, as `qm start` of an HA guest does);
  `migrateall` includes them (the manager migrates them);
- a `vms` list restricts the choice to those guests (of this node).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from binome.guest.options import parse_startup

LAST = 2**63 - 1   # PVE's LONG_MAX: the order of guests without `startup: order=`


@dataclass(frozen=True)
class BulkGuest:
    vmid: int
    order: int
    up: int | None      # seconds to wait after starting it (`startup: up=`)
    down: int | None    # seconds its shutdown may take (`startup: down=`)
    ha: bool


def startup_of(config: dict[str, Any]) -> dict[str, int]:
    # a malformed value (PVE would not have stored it) counts as none
    return parse_startup(str(config.get("startup") or "")) or {}


def start_stop_plan(configs: Iterable[tuple[int, dict[str, Any]]], ha_managed: set[int],
                    vms: list[int] | None, *, autostart: bool,
                    reverse: bool = False) -> list[list[BulkGuest]]:
    """PVE's get_start_stop_list, as groups of guests to act on one group after another.

    `configs`: (vmid, config) of this node's guests. `autostart`: only `onboot` guests.
    `reverse`: stop order (highest `order` first, higher VMIDs first)."""
    wanted = None if vms is None else set(vms)
    groups: dict[int, list[BulkGuest]] = {}
    for vmid, conf in configs:
        if wanted is not None and vmid not in wanted:
            continue
        if conf.get("template"):
            continue
        ha = vmid in ha_managed
        if ha and wanted is None:
            continue
        if autostart and not conf.get("onboot"):
            continue
        st = startup_of(conf)
        order = st.get("order", LAST)
        groups.setdefault(order, []).append(
            BulkGuest(vmid=vmid, order=order, up=st.get("up"), down=st.get("down"), ha=ha))
    return [sorted(groups[o], key=lambda g: g.vmid, reverse=reverse)
            for o in sorted(groups, reverse=reverse)]


def migrate_plan(configs: Iterable[tuple[int, dict[str, Any]]], ha_managed: set[int],
                 vms: list[int] | None) -> list[BulkGuest]:
    """PVE's migrateall choice: every guest here (templates and HA guests included),
    restricted to `vms` if given, by VMID."""
    wanted = None if vms is None else set(vms)
    out = []
    for vmid, conf in configs:
        if wanted is not None and vmid not in wanted:
            continue
        st = startup_of(conf)
        out.append(BulkGuest(vmid=vmid, order=st.get("order", LAST), up=st.get("up"),
                             down=st.get("down"), ha=vmid in ha_managed))
    return sorted(out, key=lambda g: g.vmid)


def default_max_workers(cpus: int) -> int:
    """PVE's get_max_workers fallback: the CPU threads less one, between 1 and 8."""
    return min(max(1, cpus - 1), 8)
