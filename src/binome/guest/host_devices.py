"""The host devices a VM start asks for (`usbN`, `hostpciN`), resolved on the node that
starts it, as qemu-server's `parse_usb_device` and `parse_hostpci` do.

Owns no state: it reads the cluster mappings through `binome.cluster.mappings` (their
owner) and this node's sysfs. A `mapping=ID` becomes the node's entry (USB: its `path`
`BUS-PORT`, else its `id` `VENDOR:PRODUCT`; PCI: its `path`); a mapping without an entry
for this node fails the start with PVE's text. A USB device needs not be plugged in:
QEMU's `usb-host` waits for it (PVE's `assert_valid` refuses the start instead; binome
logs the problem in the task and starts). A PCI address must exist on the node; PCI
passthrough itself (VFIO) is not available here, so such a VM still does not start, with
the reason.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from binome.cluster.mappings import (
    MappingError,
    Mappings,
    assert_valid_usb,
    node_entries,
    pci_device_path,
)
from binome.guest.errors import GuestFailure
from binome.guest.options import HOSTPCI_FORMAT, USB_FORMAT

if TYPE_CHECKING:
    from binome.store.client import Store


async def resolve(config: dict[str, Any], node: str, store: Store | None,
                  warn: Callable[[str], None] = lambda _m: None,
                  pci_root: str = "/sys/bus/pci/devices") -> dict[str, Any]:
    """`config` with each `usbN: mapping=ID` replaced by the node's `host=...`; a
    GuestFailure (PVE's text) for a mapping with no entry here or a PCI device that does
    not exist on this node."""
    out = dict(config)
    for key in sorted(config):
        if re.fullmatch(r"usb\d+", key):
            device = USB_FORMAT.parse(str(config[key]))
            mid = device.get("mapping")
            if not mid:
                continue
            if device.get("host"):
                raise GuestFailure(f"{key}: cannot set both 'host' and 'mapping'")
            entries = await _entries(store, "usb", str(mid), node)
            if not entries:
                raise GuestFailure(f"USB device mapping not found for '{mid}'")
            if len(entries) > 1:
                raise GuestFailure("More than one USB mapping per host not supported")
            try:
                assert_valid_usb(str(mid), entries[0])
            except MappingError as exc:
                warn(f"{key}: USB mapping '{mid}': {exc} on node {node}; QEMU waits for "
                     f"the device")
            host = entries[0].get("path") or entries[0]["id"]
            rest = {k: v for k, v in device.items() if k not in ("mapping", "host")}
            out[key] = USB_FORMAT.format({"host": host, **rest})
        elif re.fullmatch(r"hostpci\d+", key):
            device = HOSTPCI_FORMAT.parse(str(config[key]))
            host, mid = device.get("host"), device.get("mapping")
            if host and mid:
                raise GuestFailure("Cannot set both 'host' and 'mapping'.")
            if mid:
                entries = await _entries(store, "pci", str(mid), node)
                if not entries:
                    raise GuestFailure(f"PCI device mapping not found for '{mid}'")
                paths = [p for e in entries for p in str(e["path"]).split(";")]
            elif host:
                paths = str(host).split(";")
            else:
                raise GuestFailure("Either 'host' or 'mapping' must be set.")
            for path in paths:
                dev = pci_device_path(path if "." in path else f"{path}.0", pci_root)
                if not dev.is_dir():
                    raise GuestFailure(f"{key}: no PCI device found for '{path}' on node "
                                       f"{node}")
    return out


async def _entries(store: Store | None, kind: str, mid: str,
                   node: str) -> list[dict[str, Any]]:
    if store is None:
        return []
    record = await Mappings(store, kind).record(mid)
    return node_entries(kind, record, node) if record is not None else []
