"""The VM configuration model, in Proxmox `qm` style (pure: no I/O).

A config is stored as the text of a PVE `.conf` file (``key: value`` lines,
the description as leading ``#`` comments) and exchanged as a dict of typed
values. This module owns the key schema (which keys exist, their types and
ranges), property strings (``virtio=BC:24:11:..,bridge=vmbr0``), disk and NIC
specs, sizes, the boot order and the config digest that makes updates
compare-and-swap.

binome additions to the qm keys: ``kernel``, ``initrd`` (volumes of content
``iso`` on a storage, e.g. ``local:iso/vmlinuz``) and ``append`` (the kernel
command line), so a guest can boot a kernel directly, as the lab image does.
There is no ``args`` (raw QEMU passthrough) on purpose.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass, field
from typing import Any

from binome.schema import Param, PropertyString

DISK_BUSES: dict[str, int] = {"virtio": 16, "scsi": 31, "ide": 4, "sata": 6}
MAX_NETS = 32
NIC_MODELS = ("virtio", "e1000", "rtl8139")
CPU_TYPES = ("qemu64", "kvm64", "host", "max", "x86-64-v2", "x86-64-v2-AES", "x86-64-v3")
OSTYPES = ("other", "wxp", "w2k", "w2k3", "w2k8", "wvista", "win7", "win8", "win10", "win11",
           "l24", "l26", "solaris")
VGA_TYPES = ("std", "virtio", "none", "serial0")
MAC_PREFIX = "BC:24:11"
DISK_OPTIONS = {"size", "cache", "discard", "iothread", "ssd", "media", "backup", "format",
                "serial", "aio", "replicate", "ro"}
CACHE_MODES = ("none", "writeback", "writethrough", "unsafe")

_SIZE_RE = re.compile(r"^(\d+(?:\.\d+)?)([KMGT]?)$")
_MAC_RE = re.compile(r"^[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){5}$")
_VOLID_RE = re.compile(r"^[a-z][a-z0-9\-_.]*:[\w./-]+$", re.IGNORECASE)
_NEW_DISK_RE = re.compile(r"^([a-z][a-z0-9\-_.]*):(\d+(?:\.\d+)?)$", re.IGNORECASE)


class ConfigError(ValueError):
    """Invalid config values; `errors` maps each key to its problem (PVE style)."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


def _disk_keys() -> list[str]:
    return [f"{bus}{i}" for bus, count in DISK_BUSES.items() for i in range(count)]


def is_disk_key(key: str) -> bool:
    m = re.fullmatch(r"(virtio|scsi|ide|sata)(0|[1-9]\d*)", key)
    return m is not None and int(m.group(2)) < DISK_BUSES[m.group(1)]


def is_net_key(key: str) -> bool:
    m = re.fullmatch(r"net(0|[1-9]\d*)", key)
    return m is not None and int(m.group(1)) < MAX_NETS


_ON_OFF = Param(type="boolean", optional=True)


def _check_disk(value: str) -> None:
    parse_disk("virtio0", value)


def _check_net(value: str) -> None:
    parse_net("net0", value, assign_mac=True)


# The typed keys of a disk and of a NIC (what OpenAPI and `--help` show); values are
# checked by parse_disk / parse_net, which know the rules beyond the keys (an allocation
# request 'STORAGE:SIZE', a NIC's 'MODEL=MAC' head) and give the model's messages.
DISK_FORMAT = PropertyString(keys={
    "file": Param(description="The volume (STORAGE:VOLNAME), STORAGE:SIZE_GiB to "
                              "allocate, or 'none' (empty drive)."),
    "size": Param(optional=True, description="Disk size (e.g. 4G)."),
    "cache": Param(optional=True, enum=CACHE_MODES),
    "media": Param(optional=True, enum=("disk", "cdrom")),
    "format": Param(optional=True, enum=("raw", "qcow2")),
    "discard": Param(optional=True, enum=("ignore", "on")),
    "iothread": _ON_OFF, "ssd": _ON_OFF, "backup": _ON_OFF, "replicate": _ON_OFF,
    "ro": _ON_OFF,
    "serial": Param(optional=True, max_length=60),
    "aio": Param(optional=True, enum=("native", "threads", "io_uring")),
}, default_key="file", verify=_check_disk)
_MAC = Param(optional=True, description="The MAC address (assigned if not given).")
NET_FORMAT = PropertyString(keys={
    **{model: _MAC for model in NIC_MODELS},
    "model": Param(optional=True, enum=NIC_MODELS, description="NIC model (or MODEL=MAC)."),
    "macaddr": _MAC,
    "bridge": Param(pattern=r"[A-Za-z0-9_.\-]{1,15}", description="The bridge to attach to."),
    "tag": Param(type="integer", optional=True, minimum=1, maximum=4094,
                 description="VLAN tag."),
    "firewall": _ON_OFF, "link_down": _ON_OFF,
    "rate": Param(type="number", optional=True, minimum=0, description="Rate limit in MB/s."),
    "mtu": Param(type="integer", optional=True, minimum=1, maximum=65520),
    "queues": Param(type="integer", optional=True, minimum=0, maximum=64),
}, verify=_check_net)


def schema() -> dict[str, Param]:
    """Every config key a VM may carry, with its type (shared by the API methods)."""
    keys: dict[str, Param] = {
        "name": Param(format="pve-node", description="Name of the VM (a DNS name).",
                      optional=True, max_length=63),
        "memory": Param(type="integer", optional=True, minimum=16, maximum=4 * 1024 * 1024,
                        description="Memory in MiB (default 512)."),
        "cores": Param(type="integer", optional=True, minimum=1, maximum=128,
                       description="Cores per socket (default 1)."),
        "sockets": Param(type="integer", optional=True, minimum=1, maximum=4,
                         description="CPU sockets (default 1)."),
        "cpu": Param(optional=True, enum=CPU_TYPES, description="Emulated CPU type."),
        "ostype": Param(optional=True, enum=OSTYPES, description="Guest operating system."),
        "boot": Param(optional=True, max_length=256,
                      description="Boot order, 'order=virtio0;net0'."),
        "onboot": Param(type="boolean", optional=True,
                        description="Start at boot of the node (or of the cluster)."),
        "description": Param(optional=True, max_length=8192, description="Notes.",
                             extra={"multiline": True}),
        "tags": Param(optional=True, pattern=r"[\w\-+.]+(?:[;, ][\w\-+.]+)*", max_length=512,
                      description="Tags, separated by ';'."),
        "template": Param(type="boolean", optional=True, description="Is a template."),
        "scsihw": Param(optional=True, enum=("virtio-scsi-pci", "virtio-scsi-single", "lsi",
                                             "megasas"), description="SCSI controller."),
        "agent": Param(optional=True, max_length=128, description="QEMU guest agent (0/1)."),
        "vga": Param(optional=True, max_length=64,
                     description="Display: std, virtio, none or serial0."),
        "serial0": Param(optional=True, enum=("socket",), description="Serial port."),
        "kernel": Param(optional=True, max_length=256,
                        description="binome: boot this kernel (volume of content iso)."),
        "initrd": Param(optional=True, max_length=256,
                        description="binome: initrd for 'kernel' (volume of content iso)."),
        "append": Param(optional=True, max_length=2048,
                        description="binome: kernel command line for 'kernel'."),
        "smbios1": Param(optional=True, max_length=512, description="SMBIOS type 1 fields."),
        "lock": Param(optional=True, enum=("clone", "create", "destroyed", "migrate"),
                      description="Lock held by a running operation."),
    }
    for key in _disk_keys():
        keys[key] = Param(optional=True, max_length=512, props=DISK_FORMAT, description=(
            f"Disk {key}: STORAGE:SIZE_GiB to allocate, or a volume "
            f"'STORAGE:VOLNAME[,size=..][,cache=..][,media=cdrom]'."))
    for i in range(MAX_NETS):
        keys[f"net{i}"] = Param(optional=True, max_length=256, props=NET_FORMAT, description=(
            f"NIC net{i}: 'MODEL[=MAC],bridge=BRIDGE[,tag=VLAN]', MODEL in "
            f"{'|'.join(NIC_MODELS)}."))
    return keys


SCHEMA = schema()
DEFAULTS: dict[str, Any] = {"memory": 512, "cores": 1, "sockets": 1, "cpu": "qemu64",
                            "ostype": "other", "vga": "std"}


# ---------------------------------------------------------------- text format
def parse_conf(text: str) -> dict[str, Any]:
    """Parse a .conf text into typed values (description from leading '#' lines)."""
    config: dict[str, Any] = {}
    description: list[str] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        if line.startswith("#"):
            description.append(line[1:])
            continue
        if line.startswith("["):
            break   # snapshot sections (not supported yet) follow the main config
        key, sep, value = line.partition(":")
        if not sep:
            continue
        config[key.strip()] = _typed(key.strip(), value.strip())
    if description:
        config["description"] = "\n".join(description)
    return config


def format_conf(config: dict[str, Any]) -> str:
    lines = []
    desc = config.get("description")
    if desc:
        lines += [f"#{line}" for line in str(desc).split("\n")]
    for key in sorted(k for k in config if k != "description"):
        lines.append(f"{key}: {_text(config[key])}")
    return "\n".join(lines) + "\n"


def digest(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def _typed(key: str, value: str) -> Any:
    p = SCHEMA.get(key)
    if p is None:
        return value
    if p.type == "integer":
        try:
            return int(value)
        except ValueError:
            return value
    if p.type == "boolean":
        return 1 if value in ("1", "true", "yes", "on") else 0
    return value


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


# ---------------------------------------------------------------- property strings
def parse_property_string(value: str, default_key: str | None = None) -> dict[str, str]:
    """'a=1,b=2' -> {'a': '1', 'b': '2'}; a first bare item goes to `default_key`."""
    out: dict[str, str] = {}
    for i, item in enumerate(p for p in value.split(",") if p != ""):
        key, sep, val = item.partition("=")
        if not sep:
            if i == 0 and default_key:
                out[default_key] = item
                continue
            raise ValueError(f"invalid property '{item}'")
        if key in out:
            raise ValueError(f"duplicate property '{key}'")
        out[key] = val
    return out


# ---------------------------------------------------------------- sizes
def parse_size(text: str) -> int:
    """'32G' / '512M' / '1.5T' / bare bytes -> bytes."""
    m = _SIZE_RE.match(text.strip())
    if not m:
        raise ValueError(f"invalid size '{text}'")
    number, unit = float(m.group(1)), m.group(2)
    return int(number * {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[unit])


def format_size(size: int) -> str:
    for unit, factor in (("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


# ---------------------------------------------------------------- disks and NICs
@dataclass(frozen=True)
class DiskEntry:
    key: str
    bus: str
    index: int
    volid: str | None          # None for 'none' (empty cdrom drive)
    new_size_gib: float | None = None   # set when the value asks to allocate ('local:4')
    options: dict[str, str] = field(default_factory=dict)

    @property
    def is_cdrom(self) -> bool:
        return self.options.get("media") == "cdrom"

    @property
    def size(self) -> int | None:
        return parse_size(self.options["size"]) if "size" in self.options else None

    @property
    def storage(self) -> str | None:
        return self.volid.split(":", 1)[0] if self.volid else None

    def format(self) -> str:
        head = self.volid or "none"
        rest = [f"{k}={v}" for k, v in self.options.items()]
        return ",".join([head, *rest])


def parse_disk(key: str, value: str) -> DiskEntry:
    m = re.fullmatch(r"(virtio|scsi|ide|sata)(\d+)", key)
    if not m or not is_disk_key(key):
        raise ValueError(f"invalid disk key '{key}'")
    props = parse_property_string(value, "file")
    file = props.pop("file", None)
    if file is None:
        raise ValueError("missing volume")
    unknown = set(props) - DISK_OPTIONS
    if unknown:
        raise ValueError(f"unknown disk option '{sorted(unknown)[0]}'")
    if "cache" in props and props["cache"] not in CACHE_MODES:
        raise ValueError(f"invalid cache mode '{props['cache']}'")
    if "media" in props and props["media"] not in ("disk", "cdrom"):
        raise ValueError(f"invalid media '{props['media']}'")
    if "size" in props:
        parse_size(props["size"])
    new = _NEW_DISK_RE.match(file)
    if new:
        size = float(new.group(2))
        if size <= 0:
            raise ValueError("size must be positive")
        return DiskEntry(key, m.group(1), int(m.group(2)), None, size,
                         {**props, "_storage": new.group(1)})
    if file in ("none", "cdrom"):
        return DiskEntry(key, m.group(1), int(m.group(2)), None, None,
                         {**props, "media": "cdrom"})
    if not _VOLID_RE.match(file):
        raise ValueError(f"invalid volume '{file}' (expected STORAGE:VOLNAME or STORAGE:SIZE)")
    return DiskEntry(key, m.group(1), int(m.group(2)), file, None, props)


@dataclass(frozen=True)
class NetEntry:
    key: str
    index: int
    model: str
    mac: str
    bridge: str
    tag: int | None = None
    options: dict[str, str] = field(default_factory=dict)

    def format(self) -> str:
        parts = [f"{self.model}={self.mac}", f"bridge={self.bridge}"]
        if self.tag is not None:
            parts.append(f"tag={self.tag}")
        parts += [f"{k}={v}" for k, v in self.options.items()]
        return ",".join(parts)


def random_mac(rng: random.Random | None = None) -> str:
    r = rng or random.SystemRandom()
    return MAC_PREFIX + "".join(f":{r.randrange(256):02X}" for _ in range(3))


def parse_net(key: str, value: str, *, assign_mac: bool = False) -> NetEntry:
    if not is_net_key(key):
        raise ValueError(f"invalid NIC key '{key}'")
    items = [p for p in value.split(",") if p]
    if not items:
        raise ValueError("empty NIC specification")
    model, _, mac = items[0].partition("=")
    if model == "model":   # 'model=virtio,macaddr=...' form
        model, mac = mac, ""
    props = parse_property_string(",".join(items[1:]))
    mac = mac or props.pop("macaddr", "")
    if model not in NIC_MODELS:
        raise ValueError(f"invalid NIC model '{model}'")
    if not mac:
        if not assign_mac:
            raise ValueError("missing MAC address")
        mac = random_mac()
    if not _MAC_RE.match(mac) or int(mac[:2], 16) & 1:
        raise ValueError(f"invalid MAC address '{mac}'")
    bridge = props.pop("bridge", "")
    if not re.fullmatch(r"[A-Za-z0-9_.\-]{1,15}", bridge):
        raise ValueError("missing or invalid bridge")
    tag = None
    if "tag" in props:
        raw = props.pop("tag")
        if not raw.isdigit() or not 1 <= int(raw) <= 4094:
            raise ValueError(f"invalid VLAN tag '{raw}'")
        tag = int(raw)
    unknown = set(props) - {"firewall", "link_down", "rate", "mtu", "queues"}
    if unknown:
        raise ValueError(f"unknown NIC option '{sorted(unknown)[0]}'")
    return NetEntry(key, int(key[3:]), model, mac.upper(), bridge, tag, props)


def disks(config: dict[str, Any]) -> list[DiskEntry]:
    return [parse_disk(k, str(v)) for k, v in sorted(config.items()) if is_disk_key(k)]


def nets(config: dict[str, Any]) -> list[NetEntry]:
    return sorted((parse_net(k, str(v)) for k, v in config.items() if is_net_key(k)),
                  key=lambda n: n.index)


def boot_order(config: dict[str, Any]) -> list[str]:
    """Devices in boot order: 'order=virtio0;net0', else disks then NICs as present."""
    boot = str(config.get("boot", ""))
    if boot.startswith("order="):
        return [d for d in boot[len("order="):].split(";") if d]
    present = [d.key for d in disks(config) if not d.is_cdrom] + [n.key for n in nets(config)]
    return present


# ---------------------------------------------------------------- validation
def validate_changes(changes: dict[str, Any], *, assign_macs: bool = True) -> dict[str, Any]:
    """Semantic checks of already type-checked values; returns them normalised.

    NICs without a MAC get one; disk values are parsed (allocation requests are
    kept as 'STORAGE:SIZE' for the caller to allocate).
    """
    errors: dict[str, str] = {}
    out: dict[str, Any] = {}
    for key, value in changes.items():
        try:
            text = str(value)
            if any(c in text for c in "\r\0") or ("\n" in text and key != "description"):
                # one key per line in the .conf text: a line break would inject keys
                raise ValueError("value must not contain line breaks or NUL characters")
            if is_disk_key(key):
                parse_disk(key, str(value))
                out[key] = str(value)
            elif is_net_key(key):
                out[key] = parse_net(key, str(value), assign_mac=assign_macs).format()
            elif key == "boot":
                text = str(value)
                if text and not text.startswith("order=") and not re.fullmatch(r"[acdn]{1,4}",
                                                                              text):
                    raise ValueError("expected 'order=DEV;DEV...'")
                if text.startswith("order="):
                    for dev in text[6:].split(";"):
                        if dev and not (is_disk_key(dev) or is_net_key(dev)):
                            raise ValueError(f"invalid boot device '{dev}'")
                out[key] = text
            elif key == "vga":
                head = str(value).split(",", 1)[0]
                if head not in VGA_TYPES:
                    raise ValueError(f"invalid display type '{head}'")
                out[key] = str(value)
            elif key in ("kernel", "initrd"):
                if not _VOLID_RE.match(str(value)):
                    raise ValueError("expected a volume 'STORAGE:iso/FILE'")
                out[key] = str(value)
            else:
                out[key] = value
        except ValueError as exc:
            errors[key] = str(exc)
    if errors:
        raise ConfigError(errors)
    return out


def check_boot_devices(config: dict[str, Any]) -> None:
    """The boot order may only name devices the VM has."""
    boot = str(config.get("boot", ""))
    if boot.startswith("order="):
        missing = [d for d in boot[6:].split(";") if d and d not in config]
        if missing:
            raise ConfigError({"boot": f"boot device '{missing[0]}' does not exist"})
