"""The pending section of a VM config, as Proxmox VE keeps it (pure: no I/O).

A change to a running VM is first written to the config's ``[PENDING]``
section (PVE's ``$conf->{pending}``): a key set there holds the new value, and
the section's ``delete`` key lists the keys to remove, comma-separated, ``!key``
for a forced removal (the volume freed rather than kept as ``unusedN``). What
can be hot-plugged then moves into the config; the rest waits for the next
cold start, which applies it first. This module owns that section's shape and
the rules over it: recording an update (PVE's update_vm_api), reverting, the
config as it will be (GET .../config), the rows of GET .../pending
(PVE's config_with_pending_array), the `hotplug` feature set and which change
may be applied live (PVE's vmconfig_hotplug_pending). Applying a drive's
removal (unusedN, freeing) is the lifecycle's (`lifecycle.apply_pending`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Literal

from binome.guest import cloudinit
from binome.guest import config as vmconf
from binome.guest.options import USB_FORMAT

DELETE = "delete"
hotplug_features = vmconf.hotplug_features

# keys PVE applies to a running VM at once, whatever `hotplug` says: they change
# nothing QEMU runs with (vmconfig_hotplug_pending's first branch)
ALWAYS_LIVE = frozenset({
    "description", "hookscript", "lock", "migrate_downtime", "migrate_speed", "name",
    "onboot", "protection", "shares", "startup", "tags", "vmstatestorage", "autostart",
})
# deleting these never waits for a restart (PVE's update_vm_api deletes them directly)
DELETE_AT_ONCE = frozenset({"tags", "vmstate"})

LiveAction = Literal["config", "disk", "nic", "cpu", "memory", "balloon", "usb",
                     "pending"]


# ---------------------------------------------------------------- the delete list
def deletes(pending: dict[str, Any]) -> dict[str, bool]:
    """The pending deletions: key -> forced (``!key``), in their order."""
    out: dict[str, bool] = {}
    for item in str(pending.get(DELETE) or "").replace(";", ",").split(","):
        item = item.strip()
        if not item:
            continue
        force = item.startswith("!")
        out[item.lstrip("!")] = force
    return out


def _with_deletes(pending: dict[str, Any], dels: dict[str, bool]) -> dict[str, Any]:
    out = {k: v for k, v in pending.items() if k != DELETE}
    if dels:
        out[DELETE] = ",".join(("!" if force else "") + key for key, force in dels.items())
    return out


def values(pending: dict[str, Any]) -> dict[str, Any]:
    """The pending values (without the delete list)."""
    return {k: v for k, v in pending.items() if k != DELETE}


def keys(pending: dict[str, Any]) -> list[str]:
    """Every key with a pending change, sorted."""
    return sorted(set(values(pending)) | set(deletes(pending)))


# ---------------------------------------------------------------- recording an update
def record(config: dict[str, Any], pending: dict[str, Any], changes: dict[str, Any],
           delete: list[str], *, force: bool = False, revert: Sequence[str] = ()
           ) -> dict[str, Any]:
    """The pending section after an update, as PVE's update_vm_api writes it:

    - `revert` drops the keys' pending change (value and deletion);
    - a deleted key leaves the pending values and joins the delete list (``!key``
      with `force`), unless neither the config nor pending has it;
    - a set key goes to the pending values and leaves the delete list;
    - last PVE's cleanup: a pending value equal to the current one is dropped, and a
      deletion of a key the config does not have is dropped."""
    vals = values(pending)
    dels = deletes(pending)
    for key in revert:
        vals.pop(key, None)
        dels.pop(key, None)
    for key in delete:
        had = key in config or key in vals
        vals.pop(key, None)
        if had and key in config:
            dels[key] = force
    for key, value in changes.items():
        vals[key] = value
        dels.pop(key, None)
    for key in [k for k, v in vals.items() if k in config and str(config[k]) == str(v)]:
        del vals[key]
    dels = {k: f for k, f in dels.items() if k in config}
    return _with_deletes(vals, dels)


def drop(pending: dict[str, Any], key: str) -> dict[str, Any]:
    """`pending` without `key`'s change (applied, or reverted)."""
    vals = values(pending)
    vals.pop(key, None)
    dels = deletes(pending)
    dels.pop(key, None)
    return _with_deletes(vals, dels)


def single(pending: dict[str, Any], key: str) -> dict[str, Any]:
    """Only `key`'s change of `pending` (to apply it alone)."""
    dels = deletes(pending)
    if key in dels:
        return _with_deletes({}, {key: dels[key]})
    vals = values(pending)
    return {key: vals[key]} if key in vals else {}


def merged(config: dict[str, Any], pending: dict[str, Any]) -> dict[str, Any]:
    """The config as it will be once every pending change is applied (GET .../config
    without `current`): the values set, the deletions removed. Side effects of a
    drive's removal (unusedN) are not shown, as PVE's load_current_config."""
    out = dict(config)
    for key in deletes(pending):
        out.pop(key, None)
    out.update(values(pending))
    return out


def rows(config: dict[str, Any], pending: dict[str, Any]) -> list[dict[str, Any]]:
    """GET .../pending: one row per key of the config or of pending, sorted, as PVE's
    config_with_pending_array: ``value`` is the current one, ``pending`` the new one,
    ``delete`` 1 (2 when forced) for a pending deletion. Values are as stored: the
    caller types and masks them."""
    vals, dels = values(pending), deletes(pending)
    out = []
    for key in sorted(set(config) | set(vals) | set(dels)):
        row: dict[str, Any] = {"key": key}
        if key in config:
            row["value"] = config[key]
        if key in vals:
            row["pending"] = vals[key]
        if key in dels:
            row["delete"] = 2 if dels[key] else 1
        out.append(row)
    return out


# ---------------------------------------------------------------- hot-plug rules
def _drive_bus(key: str) -> str:
    return key.rstrip("0123456789")


def usb_hotplug_ostype(ostype: Any) -> bool:
    """PVE's is_usb_hotplug_supported, the guest's side: USB devices are plugged into a
    running guest of `ostype` l26 or a Windows after 7 (qemu-server's windows_version),
    the guests PVE gives a qemu-xhci; others wait for the start."""
    text = str(ostype or "")
    if text == "l26":
        return True
    m = re.fullmatch(r"win(\d+)", text)
    return m is not None and int(m.group(1)) > 7


def _is_spice_usb(value: Any) -> bool:
    if value is None:
        return False
    try:
        host = USB_FORMAT.parse(str(value)).get("host")
    except ValueError:
        return False
    return str(host or "").lower() == "spice"


def live_action(key: str, old: Any, new: Any, features: frozenset[str],
                ostype: Any = None) -> LiveAction:
    """How a pending change of `key` (from `old` to `new`; None: absent / deleted) may
    reach a running VM: ``config`` (just moves into the config), ``disk`` / ``nic`` /
    ``cpu`` (a device is plugged or unplugged first), ``balloon`` (a new balloon
    target), or ``pending`` (next start).

    binome's rules (PVE's vmconfig_hotplug_pending, restricted to what binome's
    QEMU command line allows; docs/api-compatibility.md lists them):
    - the ALWAYS_LIVE keys and the cloud-init keys (read at the next start or on
      PUT .../cloudinit, as PVE without the `cloudinit` feature);
    - `hotplug` itself, unless the change adds or drops `disk` or `network` (they
      shape binome's command line: PCI bridges, a SCSI controller), `cpu` or `memory`;
    - a SCSI or VirtIO disk added or removed, with `disk` (a CD-ROM or a drive whose
      value changes waits for the start);
    - a NIC added, removed or changed (unplugged and plugged again), with `network`;
    - `vcpus`, with `cpu` (binome starts QEMU with maxcpus = sockets x cores);
    - `memory`, with `memory` (DIMMs added or removed: binome.guest.memory);
    - `balloon`, a new target while the balloon device stays (not to or from 0);
    - a `usbN` host device or mapping added, changed (unplugged, plugged again) or
      removed, with `usb` and an `ostype` PVE hot-plugs USB for (`usb_hotplug_ostype`);
      a `spice` redirection slot waits for the start (it needs SPICE);
    - everything else at the next start."""
    if key in ALWAYS_LIVE or cloudinit.is_cloudinit_key(key):
        return "config"
    if key == "hotplug":
        before = hotplug_features(old)
        after = hotplug_features(new)
        return ("pending" if (before ^ after) & {"disk", "network", "cpu", "memory"}
                else "config")
    if vmconf.is_unused_key(key):
        return "config"
    if vmconf.is_disk_key(key) and _drive_bus(key) in ("scsi", "virtio"):
        if "disk" not in features:
            return "pending"
        if old is not None and new is not None:
            return "pending"             # another volume or other options: at start
        value = new if new is not None else old
        try:
            if vmconf.parse_disk(key, str(value)).is_cdrom:
                return "pending"
        except ValueError:
            return "pending"
        return "disk"
    if vmconf.is_net_key(key):
        return "nic" if "network" in features else "pending"
    if key == "vcpus":
        return "cpu" if "cpu" in features else "pending"
    if key == "memory":
        return "memory" if "memory" in features and new is not None else "pending"
    if re.fullmatch(r"usb\d+", key):
        if ("usb" not in features or not usb_hotplug_ostype(ostype)
                or _is_spice_usb(old) or _is_spice_usb(new)):
            return "pending"
        return "usb"
    if key == "balloon":
        # a new target for the balloon device; adding or removing the device (0) waits
        present_before = old is None or int(old) != 0
        present_after = new is None or int(new) != 0
        return "balloon" if present_before and present_after else "pending"
    return "pending"


def order(pending: dict[str, Any]) -> list[tuple[str, bool]]:
    """The order PVE's hot-plug goes through pending changes: (key, is_delete), the
    deletions first (a slot freed before a new device takes it), then the values."""
    return ([(k, True) for k in deletes(pending)]
            + [(k, False) for k in sorted(values(pending))])
