"""Cluster resource mappings (PVE's `/etc/pve/mapping/{pci,usb,dir}.cfg`,
`/cluster/mapping/{type}`): the records in etcd and the one place that builds, checks
and resolves them.

Owns `/binome/mappings/<type>/<id>` (one record per logical mapping: PVE's section,
`type`, `map` (a list of per-node property strings), `description`, and for PCI `mdev`
and `live-migration-capable`). Every write bumps the cluster config version in the same
transaction. The formats and rules are pve-guest-common's `PVE::Mapping::{PCI,USB,Dir}`
(the map entry formats, `check_config`'s required options, `delete_from_config`, the
directory map's one-entry-per-node rule) and their `assert_valid` node checks, run on
this node's sysfs (`checks_on_node`). `node_entries` is what a VM start on a node reads
(PVE's `get_node_mapping`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from binome.errors import BinomeError
from binome.schema import Param, PropertyString

if TYPE_CHECKING:
    from binome.store.client import Store

PREFIX = "/binome/mappings/"
TYPES = ("dir", "pci", "usb")
_USB_ID = r"[0-9A-Fa-f]{4}:[0-9A-Fa-f]{4}"
_PCI_RE = r"[a-f0-9]{4,}:[a-f0-9]{2}:[a-f0-9]{2}(?:\.[a-f0-9])?"
NODE = Param(format="pve-node", description="The cluster node name.")

USB_MAP = PropertyString(keys={
    "node": NODE,
    "id": Param(pattern=_USB_ID, description=(
        "The vendor and device ID that is expected. If a USB path is given, it is only "
        "used for detecting hardware changes")),
    "path": Param(optional=True, pattern=r"(\d+)\-(\d+(\.\d+)*)",
                  description="The path to the usb device."),
    "description": Param(optional=True, max_length=4096,
                         description="Description of the node specific device."),
})
PCI_MAP = PropertyString(keys={
    "node": NODE,
    "id": Param(pattern=_USB_ID, description=(
        "The vendor and device ID that is expected. Used for detecting hardware changes")),
    "subsystem-id": Param(optional=True, pattern=_USB_ID, description=(
        "The subsystem vendor and device ID that is expected. Used for detecting "
        "hardware changes.")),
    "path": Param(pattern=f"(?:{_PCI_RE};)*{_PCI_RE}", description=(
        "The path to the device. If the function is omitted, the whole device is mapped. "
        "You can give multiple paths as a semicolon separated list, the first available "
        "will then be chosen on guest start.")),
    "iommugroup": Param(type="integer", optional=True, description=(
        "The IOMMU group in which the device is to be expected in.")),
    "description": Param(optional=True, max_length=4096,
                         description="Description of the node specific device."),
})
DIR_MAP = PropertyString(keys={
    "node": NODE,
    # PVE's pve-storage-path-in-property-string (`^/[^;,=\(\)]+`)
    "path": Param(pattern=r"/[^;,=()]+.*", description=(
        "Absolute directory path that should be shared with the guest.")),
})
MAP_FORMATS: dict[str, PropertyString] = {"usb": USB_MAP, "pci": PCI_MAP, "dir": DIR_MAP}
#: the options of each type besides `map` (which every type requires)
OPTIONS: dict[str, tuple[str, ...]] = {
    "usb": ("description", "map"),
    "pci": ("description", "mdev", "live-migration-capable", "map"),
    "dir": ("description", "map"),
}
BOOLEANS = ("mdev", "live-migration-capable")
#: PVE's error prefixes (the lock's `$errmsg`) and the ID noun of each type
_NOUN = {"usb": "hardware mapping", "pci": "hardware mapping", "dir": "directory mapping"}


class MappingError(BinomeError):
    """A refused mapping operation, with PVE's text (the API answers 500)."""


def create_failed(kind: str) -> str:
    return f"create {_NOUN[kind]} failed"


def update_failed(kind: str) -> str:
    return f"update {_NOUN[kind]} failed"


def key(kind: str, mid: str) -> str:
    return f"{PREFIX}{kind}/{mid}"


def digest(records: Mapping[str, Mapping[str, Any]]) -> str:
    """The digest of one type's whole configuration (PVE's digest of the `.cfg` file: any
    change to any mapping of that type changes it)."""
    return hashlib.sha1(json.dumps(records, sort_keys=True).encode()).hexdigest()


def parse_map(kind: str, entry: str) -> dict[str, Any]:
    """One map entry's values; ValueError with PVE's text."""
    return MAP_FORMATS[kind].parse(entry)


def build_record(kind: str, old: Mapping[str, Any] | None, settings: Mapping[str, Any],
                 delete: Sequence[str] = ()) -> dict[str, Any]:
    """The record to store: `old` (None on create) changed by `settings` (typed values;
    None: not given) less `delete`, with PVE's `check_config(create=1)` (both create and
    update: `map` must be given) and `delete_from_config` rules. MappingError with PVE's
    text (its API answers 500 for these)."""
    if settings.get("map") is None:
        raise MappingError("missing value for required option 'map'")
    allowed = OPTIONS[kind]
    for name in delete:
        if name not in allowed:
            raise MappingError(f"no such option '{name}'")
        if name == "map":
            raise MappingError(f"unable to delete required option '{name}'")
        if settings.get(name) is not None:
            raise MappingError(f"cannot set and delete property '{name}' at the same time!")
    record: dict[str, Any] = {k: v for k, v in (old or {}).items() if k not in delete}
    record["type"] = kind
    for name in allowed:
        value = settings.get(name)
        if value is None:
            continue
        if name in BOOLEANS:
            value = int(bool(value))
        elif name == "map":
            value = [str(v) for v in value]
        record[name] = value
    return record


def check_dir_map_list(entries: Sequence[str], local_node: str) -> None:
    """PVE's `assert_valid_map_list`: the local node's path must be a directory here, and
    no node may appear twice. MappingError with PVE's text."""
    count: dict[str, int] = {}
    for entry in entries:
        values = parse_map("dir", entry)
        if values["node"] == local_node:
            assert_valid_dir(str(values["path"]))
        count[values["node"]] = count.get(values["node"], 0) + 1
    for node, n in count.items():
        if n > 1:
            raise MappingError(f"Node '{node}' is specified {n} times.")


def assert_valid_dir(path: str) -> None:
    if not os.path.exists(path):
        raise MappingError(f"Path {path} does not exist")
    if not os.path.isdir(path):
        raise MappingError(f"Path {path} exists, but is not a directory")


def node_entries(kind: str, record: Mapping[str, Any], node: str) -> list[dict[str, Any]]:
    """PVE's `get_node_mapping`: the parsed map entries for `node` (malformed ones are
    skipped, as PVE warns and skips them)."""
    out = []
    for entry in record.get("map") or []:
        try:
            values = parse_map(kind, str(entry))
        except ValueError:
            continue
        if values["node"] == node:
            out.append(values)
    return out


# ---------------------------------------------------------------- node checks (sysfs)

@dataclass(frozen=True)
class UsbDevice:
    busnum: int
    devpath: str        # "1.2" (the port chain)
    vendor: str         # "1d6b"
    product: str


def scan_usb(root: str = "/sys/bus/usb/devices") -> list[UsbDevice]:
    """PVE's `SysFSTools::scan_usb`: the host's USB devices (not interfaces)."""
    out: list[UsbDevice] = []
    base = Path(root)
    if not base.is_dir():
        return out
    for dev in sorted(base.iterdir()):
        try:
            vendor = (dev / "idVendor").read_text().strip()
            product = (dev / "idProduct").read_text().strip()
            busnum = int((dev / "busnum").read_text().strip())
            devpath = (dev / "devpath").read_text().strip()
        except (OSError, ValueError):
            continue
        out.append(UsbDevice(busnum, devpath, vendor.lower(), product.lower()))
    return out


def assert_valid_usb(name: str, values: Mapping[str, Any],
                     devices: Sequence[UsbDevice] | None = None) -> None:
    """PVE's `PVE::Mapping::USB::assert_valid` on this node's devices."""
    devices = scan_usb() if devices is None else devices
    want = str(values["id"]).lower()
    path = values.get("path")
    if path:
        found = [d for d in devices if d.devpath and f"{d.busnum}-{d.devpath}" == path]
        if not found:
            raise MappingError(f"usb device '{path}' not found")
        real = f"{found[-1].vendor}:{found[-1].product}"
        if real != want:
            raise MappingError(f"'id' does not match for '{name}' ({real} != {values['id']})")
    elif not any(f"{d.vendor}:{d.product}" == want for d in devices):
        raise MappingError(f"usb device '{values['id']}' not found")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def pci_device_path(address: str, root: str = "/sys/bus/pci/devices") -> Path:
    """The sysfs directory of a PCI address (the domain 0000 added when missing)."""
    full = address if address.count(":") == 2 else f"0000:{address}"
    return Path(root) / full


def assert_valid_pci(name: str, values: Mapping[str, Any], mdev: bool | None = None,
                     root: str = "/sys/bus/pci/devices") -> None:
    """PVE's `PVE::Mapping::PCI::assert_valid` on this node's sysfs: each path exists
    and its ids (and the first one's IOMMU group) are those configured."""
    for idx, path in enumerate(str(values["path"]).split(";")):
        if "." not in path:
            path = f"{path}.0"      # whole device: its function 0 must exist
        dev = pci_device_path(path, root)
        if not dev.is_dir():
            raise MappingError(f"pci device '{path}' not found")
        vendor, device = _read(dev / "vendor"), _read(dev / "device")
        sub_v, sub_d = _read(dev / "subsystem_vendor"), _read(dev / "subsystem_device")
        group = os.path.basename(os.path.realpath(dev / "iommu_group")) \
            if (dev / "iommu_group").exists() else None
        expected: dict[str, Any] = {
            "id": f"{vendor}:{device}",
            "iommugroup": group,
            "subsystem-id": f"{sub_v}:{sub_d}" if sub_v and sub_d else None,
        }
        configured: dict[str, Any] = {k: values.get(k) for k in expected}
        if mdev is not None:
            expected["mdev"] = 1 if (dev / "mdev_supported_types").is_dir() else 0
            configured["mdev"] = 1 if mdev else 0
        for prop in sorted(expected):
            if prop == "iommugroup" and idx > 0:
                continue
            exp, conf = expected[prop], configured[prop]
            if exp is None and conf is None:
                continue
            if exp is not None and conf is None:
                raise MappingError(f"missing expected property '{prop}' for device '{path}'")
            if exp is None and conf is not None:
                raise MappingError(f"unexpected property '{prop}' configured for device "
                                   f"'{path}'")
            e, c = str(exp).replace("0x", ""), str(conf).replace("0x", "")
            if e != c:
                raise MappingError(f"'{prop}' does not match for '{name}' ({e} != {c})")


def checks_on_node(kind: str, mid: str, record: Mapping[str, Any],
                   node: str) -> list[dict[str, str]]:
    """The `checks` (`errors` for USB) of the list's `check-node`: a warning when the node
    has no entry, an error per entry that is not valid on this node."""
    entries = node_entries(kind, record, node)
    out: list[dict[str, str]] = []
    if not entries:
        out.append({"severity": "warning", "message": f"No mapping for node {node}."})
    for values in entries:
        try:
            if kind == "usb":
                assert_valid_usb(mid, values)
            elif kind == "pci":
                assert_valid_pci(mid, values, bool(record.get("mdev")))
            else:
                assert_valid_dir(str(values["path"]))
        except MappingError as exc:
            out.append({"severity": "error", "message": f"Invalid configuration: {exc}"})
    return out


# ---------------------------------------------------------------- the store

class Mappings:
    """The stored mappings of one type, on one store client."""

    def __init__(self, store: Store, kind: str) -> None:
        if kind not in TYPES:
            raise ValueError(f"unknown mapping type {kind!r}")
        self.store = store
        self.kind = kind

    async def records(self) -> dict[str, dict[str, Any]]:
        prefix = f"{PREFIX}{self.kind}/"
        entries = await self.store.get_prefix(prefix)
        return {e.key[len(prefix):]: e.value for e in entries if isinstance(e.value, dict)}

    async def record(self, mid: str) -> dict[str, Any] | None:
        rec = await self.store.get_value(key(self.kind, mid))
        return rec if isinstance(rec, dict) else None

    async def create(self, mid: str, record: Mapping[str, Any]) -> None:
        k = key(self.kind, mid)
        if not await self.store.commit({k: 0}, {k: dict(record)}, bump_config=True):
            if await self.record(mid) is not None:
                raise MappingError(f"{create_failed(self.kind)}: {self.kind} ID '{mid}' "
                                   f"already defined")
            raise MappingError(f"{create_failed(self.kind)}: cluster configuration changed "
                               f"meanwhile - try again")

    async def update(self, mid: str, settings: Mapping[str, Any], delete: Sequence[str],
                     expect_digest: str | None, local_node: str) -> dict[str, Any]:
        """Apply `settings`/`delete` to the stored mapping (PVE's update under its lock:
        the digest of the whole type first, then the ID, then the options)."""
        fail = update_failed(self.kind)
        prefix = f"{PREFIX}{self.kind}/"
        entries = await self.store.get_prefix(prefix)
        records = {e.key[len(prefix):]: e.value for e in entries if isinstance(e.value, dict)}
        revisions = {e.key: e.mod_revision for e in entries}
        if expect_digest is not None and expect_digest != digest(records):
            raise MappingError(f"{fail}: detected modified configuration - file changed by "
                               f"other user? Try again.")
        old = records.get(mid)
        if old is None:
            raise MappingError(f"{fail}: {self.kind} ID '{mid}' does not exist")
        try:
            if self.kind == "dir" and settings.get("map") is not None:
                check_dir_map_list(settings["map"], local_node)
            record = build_record(self.kind, old, settings, delete)
        except MappingError as exc:
            raise MappingError(f"{fail}: {exc}") from None
        k = key(self.kind, mid)
        if not await self.store.commit({k: revisions[k]}, {k: record}, bump_config=True):
            raise MappingError(f"{fail}: detected modified configuration - file changed by "
                               f"other user? Try again.")
        return record

    async def remove(self, mid: str) -> bool:
        """Remove the mapping; False if there was none (PVE: not an error)."""
        k = key(self.kind, mid)
        entry = await self.store.get(k)
        if entry is None:
            return False
        if not await self.store.commit({k: entry.mod_revision}, None, [k], bump_config=True):
            raise MappingError(f"delete {self.kind} mapping failed: cluster configuration "
                               f"changed meanwhile - try again")
        return True
