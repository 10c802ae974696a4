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

The general keys of PVE's ``$confdesc`` (qemu-server ``PVE/QemuServer.pm``)
are declared with PVE's types, ranges, enums and formats, so what Terraform
(bpg, Telmate) and Ansible send is accepted or refused as PVE would, with
PVE's texts: ``acpi``, ``agent``, ``bios``, ``cpu`` (PVE's model list and
flag subset), ``hotplug``, ``startup``, ``tags`` (stored de-duplicated,
lower-case, sorted, ``;``-joined, as GuestHelpers::get_unique_tags does),
``vmgenid`` (``1`` becomes a new UUID), ``smbios1``, ``vga``, ``watchdog``,
``serial0``-``serial3``... Which privilege each key needs is the API's
business; :func:`root_only` says which keys (``args``, ``affinity``,
``hookscript``, ``vmgenid``...) PVE lets only ``root@pam`` set.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import random
import re
import shlex
import uuid as uuidlib
from dataclasses import dataclass, field
from typing import Any

from binome.guest import cloudinit
from binome.guest import memory as guest_memory
from binome.guest.options import (
    _SERIAL,
    _UUID_RE,
    AGENT_FORMAT,
    AUDIO_FORMAT,
    BUILTIN_CPU_MODELS,
    CPU_FORMAT,
    HOSTPCI_FORMAT,
    IVSHMEM_FORMAT,
    KEYMAPS,
    MACHINE_FORMAT,
    NUMA_NODE_FORMAT,
    OSTYPES,
    PARALLEL,
    RNG_FORMAT,
    SCSI_HW,
    SEV_FORMAT,
    SMBIOS1_FORMAT,
    SPICE_ENHANCEMENTS_FORMAT,
    TDX_FORMAT,
    USB_FORMAT,
    VGA_FORMAT,
    VIRTIOFS_FORMAT,
    WATCHDOG_FORMAT,
    WINDOWS_OSTYPES,
    parse_cpu,
    unique_tags,
)
from binome.schema import (
    Param,
    PropertyString,
    SchemaError,
    check_value,
    register_format,
)

DISK_BUSES: dict[str, int] = {"virtio": 16, "scsi": 31, "ide": 4, "sata": 6}
MAX_NETS = 32
MAX_SERIALS = 4
MAX_UNUSED = 256
MAX_NUMA_NODES = 8
MAX_USB = 14
MAX_HOSTPCI = 16
MAX_PARALLEL = 3
MAX_VIRTIOFS = 10
NIC_MODELS = ("virtio", "e1000", "rtl8139")
MAC_PREFIX = "BC:24:11"
DISK_OPTIONS = {"size", "cache", "discard", "iothread", "ssd", "media", "backup", "format",
                "serial", "aio", "replicate", "ro"}
CACHE_MODES = ("none", "writeback", "writethrough", "unsafe")

# PVE's lock values (AbstractConfig / QemuServer $confdesc->{lock})
LOCKS = ("backup", "clone", "create", "destroyed", "migrate", "rollback", "snapshot",
         "snapshot-delete", "suspending", "suspended")

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


def is_unused_key(key: str) -> bool:
    """`unusedN` (0-255): a volume of the VM no drive uses (a detached disk, a
    rollback's leftover)."""
    m = re.fullmatch(r"unused(0|[1-9]\d*)", key)
    return m is not None and int(m.group(1)) < MAX_UNUSED


def is_owned_volume(vmid: int, volid: str) -> bool:
    """PVE's vm_is_volid_owner: the volume's name says it belongs to `vmid`
    ('local:100/vm-100-disk-0.raw', 'rep:vm-100-disk-1'); others (ISOs, another VM's
    disk, another VM's base image) are never freed or registered as unused on its
    behalf. A template's own base images ('local:100/base-100-disk-0.qcow2') are its;
    a linked clone's volume ('local:100/base-100-disk-0.qcow2/101/vm-101-disk-0.qcow2')
    is the clone's."""
    name = volid.partition(":")[2]
    return re.search(rf"(?:^|/)(?:vm|base)-{vmid}-disk-\d+(?:\.\w+)?$", name) is not None


def is_named_for(vmid: int, volid: str) -> bool:
    """PVE's parse_volname owner is `vmid`: the volume's name is one of its images
    (`vm-<vmid>-disk-N`, `vm-<vmid>-cloudinit`, `vm-<vmid>-state-...`, `base-<vmid>-...`)
    and, on a dir storage, it sits in the VM's own `<vmid>/` directory."""
    name = volid.partition(":")[2]
    folder, _, base = name.rpartition("/")
    if folder and folder != str(vmid):
        return False
    return re.fullmatch(rf"(?:vm|base)-{vmid}-[^/]+", base) is not None


def add_unused_volume(config: dict[str, Any], volid: str) -> str | None:
    """GuestHelpers/AbstractConfig::add_unused_volume: record `volid` under the lowest
    free `unusedN` key (None if it is already recorded); ValueError with PVE's text when
    all 256 are taken."""
    free = None
    for index in range(MAX_UNUSED - 1, -1, -1):
        key = f"unused{index}"
        if key in config:
            if str(config[key]).split(",")[0] == volid:
                return None
        else:
            free = key
    if free is None:
        raise ValueError("Too many unused volumes - please delete them first.")
    config[free] = volid
    return free


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

# PVE's efidisk0 and tpmstate0 (QemuServer/Drive.pm $efidisk_fmt, $tpmstate_fmt)
SPECIAL_DRIVES = ("efidisk0", "tpmstate0")
TPMSTATE_SIZE = 4 * 1024 * 1024     # PVE's TPMSTATE_DISK_SIZE, raw
_DRIVE_BASE = {
    "file": Param(description="The drive's backing volume (STORAGE:VOLNAME), or "
                              "STORAGE:SIZE to allocate one (the size is ignored)."),
    "format": Param(optional=True, enum=("raw", "qcow2")),
    "size": Param(optional=True, description="Disk size (informational)."),
}
EFIDISK_FORMAT = PropertyString(keys={
    **_DRIVE_BASE,
    "efitype": Param(optional=True, enum=("2m", "4m"), description=(
        "Size and type of the OVMF EFI vars; '4m' is needed for Secure Boot.")),
    "pre-enrolled-keys": Param(type="boolean", optional=True, description=(
        "With efitype=4m: vars with Microsoft and distribution keys enrolled "
        "(Secure Boot on).")),
    "ms-cert": Param(optional=True, enum=("2011", "2023", "2023w", "2023k")),
}, default_key="file")
TPMSTATE_FORMAT = PropertyString(keys={
    **_DRIVE_BASE,
    "version": Param(optional=True, enum=("v1.2", "v2.0"),
                     description="TPM interface version (cannot be changed later)."),
}, default_key="file")
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


# ---------------------------------------------------------------- PVE's formats
#
# Each raises ValueError with PVE's text (JSONSchema.pm, QemuServer.pm); the
# schema module reports it under the parameter's name.


def _bootdev(dev: str) -> str:
    """PVE's verify_bootdev: a disk, netN, usbN or hostpciN key (no efidisk/tpmstate)."""
    m = re.fullmatch(r"(net|usb|hostpci)(0|[1-9]\d*)", dev)
    limits = {"net": MAX_NETS, "usb": 14, "hostpci": 16}
    if is_disk_key(dev) or (m is not None and int(m.group(2)) < limits[m.group(1)]):
        return dev
    raise ValueError(f"invalid boot device '{dev}'")


register_format("pve-qm-bootdev", _bootdev)


def _configid(value: str) -> str:
    """PVE's pve_verify_configid (snapshot names among others)."""
    if not re.fullmatch(r"[a-z][a-z0-9_-]+", value, re.IGNORECASE | re.ASCII):
        raise ValueError(f"invalid configuration ID '{value}'")
    return value


register_format("pve-configid", _configid)

BOOT_FORMAT = PropertyString(keys={
    "legacy": Param(optional=True, pattern=r"[acdn]{1,4}",
                    description="Deprecated: floppy (a), disk (c), CD-ROM (d), network (n)."),
    "order": Param(optional=True, format="pve-qm-bootdev-list",
                   description="device[;device...]"),
}, default_key="legacy")


def schema() -> dict[str, Param]:
    """Every config key a VM may carry, with its type (shared by the API methods)."""
    keys: dict[str, Param] = {
        "name": Param(format="pve-node", description="Name of the VM (a DNS name).",
                      optional=True, max_length=63),
        "memory": Param(type="integer", optional=True, minimum=16, maximum=4 * 1024 * 1024,
                        description="Memory in MiB (default 512)."),
        "balloon": Param(type="integer", optional=True, minimum=0, description=(
            "Target RAM in MiB for the balloon driver; 0 removes the balloon device.")),
        "shares": Param(type="integer", optional=True, minimum=0, maximum=50000,
                        description="Auto-ballooning weight (stored; no auto-ballooning)."),
        "cores": Param(type="integer", optional=True, minimum=1, maximum=128,
                       description="Cores per socket (default 1)."),
        "sockets": Param(type="integer", optional=True, minimum=1, maximum=4,
                         description="CPU sockets (default 1)."),
        "vcpus": Param(type="integer", optional=True, minimum=1,
                       description="vCPUs online at start (default: cores x sockets)."),
        "cpu": Param(optional=True, props=CPU_FORMAT, description="Emulated CPU type."),
        "cpulimit": Param(type="number", optional=True, minimum=0, maximum=128,
                          description="Limit of CPU usage (stored, no effect)."),
        "cpuunits": Param(type="integer", optional=True, minimum=1, maximum=262144,
                          description="CPU weight (stored, no effect)."),
        "affinity": Param(optional=True, format="pve-cpuset",
                          description="Host cores for the guest (root only; stored)."),
        "numa": Param(type="boolean", optional=True, description="Enable/disable NUMA."),
        "hugepages": Param(optional=True, enum=("any", "2", "1024"),
                           description="Hugepage size (root only; stored, no effect)."),
        "keephugepages": Param(type="boolean", optional=True,
                               description="Keep hugepages (root only; stored, no effect)."),
        "arch": Param(optional=True, enum=("x86_64", "aarch64"),
                      description="Virtual processor architecture (root only; only x86_64 "
                                  "runs)."),
        "ostype": Param(optional=True, enum=OSTYPES, description="Guest operating system."),
        "boot": Param(optional=True, max_length=256, props=BOOT_FORMAT,
                      description="Boot order, 'order=virtio0;net0'."),
        "bootdisk": Param(optional=True, pattern=r"(ide|sata|scsi|virtio)\d+",
                          description="Deprecated: use 'boot: order=...'."),
        "bios": Param(optional=True, enum=("seabios", "ovmf"), description="BIOS."),
        "machine": Param(optional=True, props=MACHINE_FORMAT,
                         description="QEMU machine (stored; binome runs q35)."),
        "acpi": Param(type="boolean", optional=True, description="Enable/disable ACPI."),
        "kvm": Param(type="boolean", optional=True,
                     description="Enable/disable KVM hardware virtualization."),
        "tablet": Param(type="boolean", optional=True,
                        description="Enable/disable the USB tablet device."),
        "localtime": Param(type="boolean", optional=True,
                           description="Set the real time clock to local time."),
        "startdate": Param(optional=True, pattern=(
            r"(now|\d{4}-\d{1,2}-\d{1,2}(T\d{1,2}:\d{1,2}:\d{1,2})?)"),
            description="Initial date of the real time clock."),
        "tdf": Param(type="boolean", optional=True, description="Time drift fix."),
        "freeze": Param(type="boolean", optional=True, description="Freeze CPU at startup."),
        "reboot": Param(type="boolean", optional=True,
                        description="Allow reboot; 0: a guest reboot stops the VM."),
        "keyboard": Param(optional=True, enum=KEYMAPS, description="VNC keyboard layout."),
        "hotplug": Param(optional=True, format="pve-hotplug-features",
                         description="Hotplug features (stored; binome applies changes at "
                                     "the next start)."),
        "onboot": Param(type="boolean", optional=True,
                        description="Start at boot of the node (or of the cluster)."),
        "autostart": Param(type="boolean", optional=True,
                           description="Automatic restart after crash (ignored, as in PVE)."),
        "startup": Param(optional=True, format="pve-startup-order",
                         description="'[[order=]N][,up=N][,down=N]' (stored)."),
        "protection": Param(type="boolean", optional=True, description=(
            "Protection flag: the VM and its disks cannot be removed.")),
        "description": Param(optional=True, max_length=8192, description="Notes.",
                             extra={"multiline": True}),
        "tags": Param(optional=True, format="pve-tag-list", max_length=4096,
                      description="Tags, separated by ';'."),
        "template": Param(type="boolean", optional=True, description="Is a template."),
        "scsihw": Param(optional=True, enum=SCSI_HW, description="SCSI controller."),
        "agent": Param(optional=True, props=AGENT_FORMAT, description="QEMU guest agent."),
        "vga": Param(optional=True, props=VGA_FORMAT, description="The display."),
        "watchdog": Param(optional=True, props=WATCHDOG_FORMAT,
                          description="Virtual hardware watchdog."),
        "smbios1": Param(optional=True, max_length=512, props=SMBIOS1_FORMAT,
                         description="SMBIOS type 1 fields."),
        "vmgenid": Param(optional=True, pattern=f"(?:{_UUID_RE}|[01])", description=(
            "VM generation ID: '1' generates one, '0' disables it (root only).")),
        "hookscript": Param(optional=True, format="pve-volume-id",
                            description="Hook script (root only; stored, not run)."),
        "args": Param(optional=True, description="Arbitrary arguments for QEMU (root only)."),
        "migrate_speed": Param(type="integer", optional=True, minimum=0,
                               description="Migration speed limit in MB/s (0: none), when the "
                                           "migration asks no bwlimit."),
        "migrate_downtime": Param(type="number", optional=True, minimum=0,
                                  description="Tolerated migration downtime in seconds (QEMU's "
                                              "downtime-limit; default 0.03)."),
        "vmstatestorage": Param(optional=True, pattern=r"[a-z][a-z0-9\-_.]*[a-z0-9]",
                                description="Storage for VM state volumes (stored)."),
        "kernel": Param(optional=True, max_length=256,
                        description="binome: boot this kernel (volume of content iso)."),
        "initrd": Param(optional=True, max_length=256,
                        description="binome: initrd for 'kernel' (volume of content iso)."),
        "append": Param(optional=True, max_length=2048,
                        description="binome: kernel command line for 'kernel'."),
        "lock": Param(optional=True, enum=LOCKS,
                      description="Lock held by a running operation."),
        # PVE's snapshot keys (written by the snapshot operations, never set by a client)
        "parent": Param(optional=True, format="pve-configid", max_length=40,
                        description="Parent snapshot name (internal: do not modify)."),
        "snaptime": Param(type="integer", optional=True, minimum=0,
                          description="Timestamp of a snapshot (internal)."),
        "vmstate": Param(optional=True, description=(
            "The volume holding a snapshot's RAM state (internal).")),
        "snapstate": Param(optional=True, enum=("prepare", "delete"),
                           description="State of a snapshot operation under way (internal)."),
    }
    for i in range(MAX_SERIALS):
        keys[f"serial{i}"] = _SERIAL
    for key in _disk_keys():
        keys[key] = Param(optional=True, max_length=512, props=DISK_FORMAT, description=(
            f"Disk {key}: STORAGE:SIZE_GiB to allocate, or a volume "
            f"'STORAGE:VOLNAME[,size=..][,cache=..][,media=cdrom]'."))
    keys.update({
        "smp": Param(type="integer", optional=True, minimum=1,
                     description="Deprecated: use 'sockets' (stored)."),
        "allow-ksm": Param(type="boolean", optional=True, description=(
            "Allow KSM to merge the guest's memory (0: QEMU's mem-merge=off).")),
        "amd-sev": Param(optional=True, props=SEV_FORMAT, description=(
            "AMD SEV (root only; refused at start: no SEV here).")),
        "intel-tdx": Param(optional=True, props=TDX_FORMAT, description=(
            "Intel TDX (root only; refused at start: no TDX here).")),
        "ivshmem": Param(optional=True, props=IVSHMEM_FORMAT, description=(
            "Inter-VM shared memory: /dev/shm/pve-shm-NAME (root only).")),
        "audio0": Param(optional=True, props=AUDIO_FORMAT, description=(
            "An audio device (its backend is always 'none': no SPICE here).")),
        "spice_enhancements": Param(optional=True, props=SPICE_ENHANCEMENTS_FORMAT,
                                    description="SPICE enhancements (root only; stored: "
                                                "no SPICE here)."),
        "rng0": Param(optional=True, props=RNG_FORMAT, description=(
            "A VirtIO RNG fed from the host's entropy source.")),
    })
    for i in range(MAX_NUMA_NODES):
        keys[f"numa{i}"] = Param(optional=True, props=NUMA_NODE_FORMAT, description=(
            "A guest NUMA node (with numa: 1)."))
    for i in range(MAX_USB):
        keys[f"usb{i}"] = Param(optional=True, props=USB_FORMAT, description=(
            "A USB device ('spice' is stored; host devices are refused at start)."))
    for i in range(MAX_HOSTPCI):
        keys[f"hostpci{i}"] = Param(optional=True, props=HOSTPCI_FORMAT, description=(
            "PCI passthrough (root only; refused at start: no passthrough here)."))
    for i in range(MAX_PARALLEL):
        keys[f"parallel{i}"] = PARALLEL
    for i in range(MAX_VIRTIOFS):
        keys[f"virtiofs{i}"] = Param(optional=True, props=VIRTIOFS_FORMAT, description=(
            "A host directory over virtio-fs (refused at start: no directory mappings)."))
    keys["cdrom"] = Param(optional=True, max_length=512, props=DISK_FORMAT, description=(
        "An alias for ide2 (media=cdrom is added): stored as ide2."))
    keys["efidisk0"] = Param(optional=True, max_length=512, props=EFIDISK_FORMAT, description=(
        "A disk for the EFI vars (bios: ovmf): STORAGE:1 allocates it from the template."))
    keys["tpmstate0"] = Param(optional=True, max_length=512, props=TPMSTATE_FORMAT,
                              description="A disk for the TPM state (swtpm), 4 MiB raw.")
    for i in range(MAX_NETS):
        keys[f"net{i}"] = Param(optional=True, max_length=256, props=NET_FORMAT, description=(
            f"NIC net{i}: 'MODEL[=MAC],bridge=BRIDGE[,tag=VLAN]', MODEL in "
            f"{'|'.join(NIC_MODELS)}."))
    keys.update(cloudinit.schema_keys())   # the ci* keys: binome.guest.cloudinit owns them
    return keys


SCHEMA = schema()
# keys the snapshot operations write and no client sets (PVE: 'lock' too)
INTERNAL_KEYS = ("lock", "parent", "snaptime", "vmstate", "snapstate")
DEFAULTS: dict[str, Any] = {"memory": 512, "cores": 1, "sockets": 1, "cpu": "qemu64",
                            "ostype": "other", "vga": "std"}
# only root@pam may set these (PVE's check_vm_modify_config_perm: keys outside its tables)
# ('lock' is not settable at all; deleting it is binome's `qm unlock` for admins)
ROOT_ONLY = ("affinity", "amd-sev", "args", "arch", "hookscript", "hugepages", "intel-tdx",
             "ivshmem", "keephugepages", "spice_enhancements", "vmgenid")


def root_only(key: str, value: Any) -> str | None:
    """PVE's message if only root@pam may set `key` to `value`, else None."""
    if key in ROOT_ONLY:
        return f"only root can set '{key}' config"
    if re.fullmatch(r"serial\d+", key) and value is not None and str(value) != "socket":
        return f"only root can set '{key}' config for real devices"
    if re.fullmatch(r"parallel\d+", key):
        return f"only root can set '{key}' config"
    if re.fullmatch(r"usb\d+", key) and value is not None:
        # PVE's check_usb_perm: 'spice' is HW; a host device root's; a mapping needs
        # Mapping.Use on it (the API checks it: `mapping_uses`)
        try:
            device = USB_FORMAT.parse(str(value))
        except ValueError:
            device = {}
        host = str(device.get("host") or "")
        if host and host.lower() != "spice":
            return f"only root can set '{key}' config for real devices"
        if not host and not device.get("mapping"):
            return "either 'host' or 'mapping' must be set."
    if re.fullmatch(r"hostpci\d+", key):
        # PVE's check_hostpci_perm (a deletion: binome keeps it root's)
        try:
            pci = HOSTPCI_FORMAT.parse(str(value)) if value is not None else {"host": "?"}
        except ValueError:
            pci = {"host": "?"}
        if pci.get("host"):
            return f"only root can set '{key}' config for non-mapped devices"
        if not pci.get("mapping"):
            return "either 'host' or 'mapping' must be set."
    return None


def mapping_uses(key: str, value: Any) -> tuple[str, str] | None:
    """The cluster mapping a `usbN`/`hostpciN`/`virtiofsN` value uses: (type, id), or
    None (PVE's check_usb_perm, check_hostpci_perm and check_dir_perm ask Mapping.Use on
    `/mapping/<type>/<id>` for it)."""
    fmt, kind, field_ = ((USB_FORMAT, "usb", "mapping") if re.fullmatch(r"usb\d+", key) else
                         (HOSTPCI_FORMAT, "pci", "mapping")
                         if re.fullmatch(r"hostpci\d+", key) else
                         (VIRTIOFS_FORMAT, "dir", "dirid")
                         if re.fullmatch(r"virtiofs\d+", key) else (None, "", ""))
    if fmt is None or value is None:
        return None
    try:
        mid = fmt.parse(str(value)).get(field_)
    except ValueError:
        return None
    return (kind, str(mid)) if mid else None


# PVE's default when `hotplug` is unset or 1
DEFAULT_HOTPLUG = frozenset({"network", "disk", "usb"})


def hotplug_features(value: Any) -> frozenset[str]:
    """The features of a `hotplug` value: unset or ``1`` the default, ``0`` none."""
    if value is None:
        return DEFAULT_HOTPLUG
    text = str(value).strip()
    if text == "1":
        return DEFAULT_HOTPLUG
    if text in ("0", ""):
        return frozenset()
    return frozenset(f.strip() for f in text.split(",") if f.strip())


def cpu_count(config: dict[str, Any]) -> int:
    """The vCPUs PVE's status reports: `vcpus` if set, else cores x sockets."""
    if config.get("vcpus"):
        return int(config["vcpus"])
    return int(config.get("cores", 1)) * int(config.get("sockets", 1))


def is_windows(config: dict[str, Any]) -> bool:
    return str(config.get("ostype", "other")) in WINDOWS_OSTYPES


# ---------------------------------------------------------------- text format
_SECTION_RE = re.compile(r"^\[([^\]]+)\]\s*$")


def _parse_block(lines: list[str]) -> dict[str, Any]:
    """One section's ``key: value`` lines, its description from leading '#' lines."""
    config: dict[str, Any] = {}
    description: list[str] = []
    for line in lines:
        if not line.strip():
            continue
        if line.startswith("#"):
            description.append(line[1:])
            continue
        key, sep, value = line.partition(":")
        if not sep:
            continue
        config[key.strip()] = _typed(key.strip(), value.strip())
    if description:
        config["description"] = "\n".join(description)
    return config


PENDING_SECTION = "PENDING"


def parse_conf_sections(text: str) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Parse a .conf text into (the current config, {snapshot name: its config}).

    PVE's layout: the current config first, then one ``[name]`` section per
    snapshot holding the config as it was then (with ``snaptime``, ``parent``,
    ``vmstate``, its own description). The ``[PENDING]`` section is read by
    `parse_conf_pending`; ``[special:...]`` sections are not binome's and are dropped."""
    blocks: list[tuple[str | None, list[str]]] = [(None, [])]
    for line in text.splitlines():
        m = _SECTION_RE.match(line)
        if m:
            blocks.append((m.group(1), []))
        else:
            blocks[-1][1].append(line)
    config = _parse_block(blocks[0][1])
    snapshots = {name: _parse_block(lines) for name, lines in blocks[1:]
                 if name is not None and name != PENDING_SECTION
                 and not name.startswith("special:")}
    return config, snapshots


def parse_conf_pending(text: str) -> dict[str, Any]:
    """The ``[PENDING]`` section of a .conf text (see `guest.pending`), {} if none."""
    lines: list[str] | None = None
    for line in text.splitlines():
        m = _SECTION_RE.match(line)
        if m:
            if lines is not None:
                break
            if m.group(1) == PENDING_SECTION:
                lines = []
        elif lines is not None:
            lines.append(line)
    return _parse_block(lines) if lines else {}


def referenced_volids(text: str) -> set[str]:
    """Every volume ID a VM's .conf text refers to (PVE's foreach_volume with snapshots
    and pending changes): its drives (CD-ROM images too), efidisk0, tpmstate0, `unusedN`,
    in the current config, every snapshot and the [PENDING] section. Values that do
    not parse are skipped: this answers "is the volume still named", not "is the config
    valid"."""
    config, snapshots = parse_conf_sections(text)
    out: set[str] = set()
    for conf in (config, *snapshots.values(), parse_conf_pending(text)):
        for key, value in conf.items():
            if not (is_drive_key(key) or is_unused_key(key)) or value is None:
                continue
            try:
                volid = parse_property_string(str(value), "file").get("file", "")
            except ValueError:
                continue
            if ":" in volid:
                out.add(volid)
    return out


def parse_conf(text: str) -> dict[str, Any]:
    """Parse a .conf text into typed values: the current config (no snapshot sections)."""
    return parse_conf_sections(text)[0]


def _format_block(config: dict[str, Any]) -> list[str]:
    lines = []
    desc = config.get("description")
    if desc:
        lines += [f"#{line}" for line in str(desc).split("\n")]
    for key in sorted(k for k in config if k != "description"):
        lines.append(f"{key}: {_text(config[key])}")
    return lines


def format_conf(config: dict[str, Any],
                snapshots: dict[str, dict[str, Any]] | None = None,
                pending: dict[str, Any] | None = None) -> str:
    """The .conf text: the current config, its ``[PENDING]`` section if any (PVE's
    order), then each snapshot's section by name."""
    lines = _format_block(config)
    if pending:
        lines += ["", f"[{PENDING_SECTION}]", *_format_block(pending)]
    for name in sorted(snapshots or {}):
        lines += ["", f"[{name}]", *_format_block((snapshots or {})[name])]
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
    if p.type == "number":
        try:
            number = float(value)
        except ValueError:
            return value
        # PVE answers '2' for 2 and 1.5 for 1.5: JSON numbers, no trailing '.0'
        return int(number) if number.is_integer() else number
    return value


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
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


def is_drive_key(key: str) -> bool:
    """A key whose value is a drive (a bus disk, efidisk0 or tpmstate0)."""
    return is_disk_key(key) or key in SPECIAL_DRIVES


def parse_special_drive(key: str, value: str) -> DiskEntry:
    """efidisk0 / tpmstate0: an existing volume or 'STORAGE:SIZE' to allocate (PVE
    ignores the size: the EFI vars template or 4 MiB decide it)."""
    fmt = {"efidisk0": EFIDISK_FORMAT, "tpmstate0": TPMSTATE_FORMAT}.get(key)
    if fmt is None:
        raise ValueError(f"invalid drive key '{key}'")
    props = {k: str(v) for k, v in fmt.parse(value).items()}
    file = props.pop("file", None)
    if not file:
        raise ValueError("missing volume")
    if "size" in props:
        parse_size(props["size"])
    if key == "tpmstate0" and props.get("format", "raw") != "raw":
        raise ValueError("the format of a TPM state is fixed to 'raw'")
    bus = key[:-1]
    new = _NEW_DISK_RE.match(file)
    if new:
        return DiskEntry(key, bus, 0, None, float(new.group(2)),
                         {**props, "_storage": new.group(1)})
    if not _VOLID_RE.match(file):
        raise ValueError(f"invalid volume '{file}' (expected STORAGE:VOLNAME or STORAGE:SIZE)")
    return DiskEntry(key, bus, 0, file, None, props)


def parse_drive(key: str, value: str) -> DiskEntry:
    """Any drive key: a bus disk (parse_disk) or efidisk0/tpmstate0."""
    return parse_special_drive(key, value) if key in SPECIAL_DRIVES else parse_disk(key, value)


def special_drives(config: dict[str, Any]) -> list[DiskEntry]:
    """The VM's efidisk0 / tpmstate0 entries (not among `disks`: QEMU does not see them
    as disks; pflash and swtpm use them)."""
    return [parse_special_drive(k, str(config[k])) for k in SPECIAL_DRIVES if config.get(k)]


def drive_volumes(config: dict[str, Any]) -> list[DiskEntry]:
    """Every drive that holds a volume of the VM's own: disks (not CD-ROMs), efidisk0
    and tpmstate0."""
    return [d for d in (*disks(config), *special_drives(config))
            if d.volid and not d.is_cdrom]


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
    """Check values against the schema and PVE's extra rules; returns them normalised.

    Every bad key is reported at once (PVE's texts). The API has type-checked
    the values already; checking again here keeps internal callers honest.
    NICs without a MAC get one; disk values are parsed (allocation requests are
    kept as 'STORAGE:SIZE' for the caller to allocate); tags are de-duplicated
    and sorted; vmgenid '1' becomes a new UUID, as PVE's create and update do.
    """
    errors: dict[str, str] = {}
    out: dict[str, Any] = {}
    if changes.get("cdrom"):
        # PVE's resolve_cdrom_alias: 'cdrom' is ide2 with media=cdrom, and wins over it
        changes = dict(changes)
        value = str(changes.pop("cdrom"))
        changes["ide2"] = value if "media=" in value else f"{value},media=cdrom"
    for key, value in changes.items():
        try:
            text = str(value)
            if any(c in text for c in "\r\0") or ("\n" in text and key != "description"):
                # one key per line in the .conf text: a line break would inject keys
                raise ValueError("value must not contain line breaks or NUL characters")
            p = SCHEMA.get(key)
            if p is not None and not is_net_key(key):
                value = p.coerce(value)
                text = str(value)
            if is_drive_key(key):
                parse_drive(key, text)
                out[key] = text
            elif is_net_key(key):
                out[key] = parse_net(key, text, assign_mac=assign_macs).format()
            elif key in ("kernel", "initrd"):
                if not _VOLID_RE.match(text):
                    raise ValueError("expected a volume 'STORAGE:iso/FILE'")
                out[key] = text
            elif cloudinit.is_cloudinit_key(key):
                out[key] = cloudinit.store_value(key, text, changes)
            elif key == "tags":
                out[key] = unique_tags(text)
            elif key == "vmgenid":
                out[key] = str(uuidlib.uuid4()) if text == "1" else text
            elif key == "args":
                try:
                    shlex.split(text)
                except ValueError as exc:
                    raise ValueError(f"unable to parse arguments - {exc}") from None
                out[key] = text
            elif key == "hookscript":
                # PVE's check_hookscript: only a snippets volume can be a hook script
                if not re.fullmatch(r"[^:]+:snippets/[^/]+", text):
                    raise ValueError(f"'{text}' is not in the snippets directory")
                out[key] = text
            else:
                out[key] = value
        except ValueError as exc:
            errors[key] = str(exc)
    if errors:
        raise ConfigError(errors)
    return out


def check_params(given: dict[str, Any]) -> dict[str, Any]:
    """What the API does with config keys: unknown keys refused with PVE's text, the
    rest validated by `validate_changes`; ConfigError lists every problem."""
    errors: dict[str, str] = {}
    known: dict[str, Any] = {}
    for key, value in given.items():
        if key not in SCHEMA:
            errors[key] = ("property is not defined in schema and the schema does not allow "
                           "additional properties")
            continue
        try:
            known[key] = check_value(key, SCHEMA[key], value)
        except SchemaError as exc:
            errors.update(exc.errors)
    try:
        out = validate_changes(known)
    except ConfigError as exc:
        errors.update(exc.errors)
    if errors:
        raise ConfigError(errors)
    return out


def check_boot_devices(config: dict[str, Any], given: dict[str, Any] | None = None) -> None:
    """The boot order names only devices the VM has (PVE checks this when `boot` is set by
    an update; a create stores it as given)."""
    for dev in boot_order({"boot": config.get("boot", "")}):
        if dev not in config and dev not in (given or {}):
            raise ConfigError({"boot": f"invalid bootorder: device '{dev}' does not exist'"})


def drop_from_boot_order(config: dict[str, Any], removed: str) -> None:
    """A device removed from the config leaves the boot order too (PVE's update)."""
    order = boot_order({"boot": config.get("boot", "")})
    if str(config.get("boot", "")).find("order=") >= 0 and removed in order:
        config["boot"] = "order=" + ";".join(d for d in order if d != removed)
        if config["boot"] == "order=":
            config.pop("boot")


def balloon_error(config: dict[str, Any]) -> str | None:
    """PVE's check that the balloon target does not exceed the memory."""
    balloon = int(config.get("balloon") or 0)
    if balloon and balloon > int(config.get("memory", DEFAULTS["memory"])):
        return "balloon value too large (must be smaller than assigned memory)"
    return None


def protection_error(config: dict[str, Any], what: str) -> str | None:
    """PVE's check_protection: '<what> - protection mode enabled' when the flag is set."""
    return f"{what} - protection mode enabled" if config.get("protection") else None


# ---------------------------------------------------------------- launch-time values
def smbios1_fields(value: str) -> list[tuple[str, str]]:
    """The SMBIOS type 1 fields to give QEMU: base64 values decoded (PVE), uuid kept."""
    props = SMBIOS1_FORMAT.parse(value)
    encoded = bool(props.pop("base64", False))
    out = []
    for key, raw in props.items():
        text = str(raw)
        if encoded and key != "uuid":
            try:
                text = base64.b64decode(text, validate=True).decode("utf-8", "replace")
            except (binascii.Error, ValueError):
                raise ValueError(f"smbios1: {key} is not valid base64") from None
        out.append((key, text))
    return out


def cpu_model(value: str | None) -> tuple[str, tuple[str, ...]]:
    """(QEMU model, flags) for a `cpu` value; PVE's built-in models are qemu64 + flags."""
    if not value:
        return DEFAULTS["cpu"], ()
    cpu = parse_cpu(value)
    flags = tuple(f for f in str(cpu.get("flags") or "").split(";") if f)
    model = cpu["cputype"]
    if model in BUILTIN_CPU_MODELS:
        return "qemu64", BUILTIN_CPU_MODELS[model] + flags
    return model, flags


def agent_settings(config: dict[str, Any]) -> dict[str, Any]:
    """PVE's parse_guest_agent: the `agent` options, {} when it is absent or disabled
    (the other options then do not count; an unparsable value counts as absent, as
    PVE's eval there)."""
    value = config.get("agent")
    if value in (None, ""):
        return {}
    try:
        settings = AGENT_FORMAT.parse(str(value))
    except ValueError:
        return {}
    if not int(settings.get("enabled") or 0):
        return {}
    return settings


def agent_freeze_fs(config: dict[str, Any]) -> bool:
    """PVE's should_fs_freeze: with an enabled agent, freeze unless `freeze-fs` (or its
    PVE 8 alias `freeze-fs-on-backup`) says 0."""
    settings = agent_settings(config)
    if not settings:
        return False
    flag = settings.get("freeze-fs", settings.get("freeze-fs-on-backup", 1))
    return bool(int(flag))


def launch_options(config: dict[str, Any]) -> dict[str, Any]:
    """The LaunchSpec fields that PVE's options decide, with PVE's defaults
    (qemu-server's config_to_command); ValueError for what cannot run here."""
    c = config
    windows = is_windows(c)
    model, flags = cpu_model(str(c["cpu"]) if c.get("cpu") else None)
    vga = VGA_FORMAT.parse(str(c.get("vga") or "std"))
    vga_type = str(vga.get("type") or "std")
    if vga_type == "virtio-gl":
        raise ValueError("vga type 'virtio-gl' needs an OpenGL display (SPICE), which "
                         "binome does not provide")
    acpi = bool(int(c.get("acpi", 1)))
    localtime = bool(int(c["localtime"])) if "localtime" in c else windows
    # PVE (Cfg2Cmd/Timer.pm): Windows gets driftfix=slew with ACPI unless tdf says no
    driftfix = bool(int(c["tdf"])) if "tdf" in c else (windows and acpi)
    startdate = str(c.get("startdate", "now"))
    rtc_base = startdate if startdate != "now" else ("localtime" if localtime else None)
    # PVE: a tablet by default, except with a serial terminal or SPICE (qxl) display
    tablet = (bool(int(c["tablet"])) if "tablet" in c
              else not vga_type.startswith(("serial", "qxl")))
    vcpus = int(c["vcpus"]) if c.get("vcpus") else None
    total = int(c.get("cores", 1)) * int(c.get("sockets", 1))
    if vcpus is not None and vcpus > total:
        raise ValueError(f"vcpus ({vcpus}) must not exceed cores x sockets ({total})")
    vmgenid = str(c.get("vmgenid") or "0")
    watchdog = WATCHDOG_FORMAT.parse(str(c["watchdog"])) if c.get("watchdog") else {}
    smbios = smbios1_fields(str(c["smbios1"])) if c.get("smbios1") else []
    unavailable_here(c)
    numa_nodes = numa_layout(c)
    ivshmem = IVSHMEM_FORMAT.parse(str(c["ivshmem"])) if c.get("ivshmem") else None
    rng = RNG_FORMAT.parse(str(c["rng0"])) if c.get("rng0") else None
    audio = AUDIO_FORMAT.parse(str(c["audio0"])) if c.get("audio0") else None
    hotplug = hotplug_features(c.get("hotplug"))
    maxmem = None
    if "memory" in hotplug:
        cpu = parse_cpu(str(c["cpu"])) if c.get("cpu") else {}
        phys_bits = cpu.get("phys-bits")
        maxmem = guest_memory.hotplug_limits(
            c, str(cpu.get("cputype") or "kvm64"),
            None if phys_bits is None else str(phys_bits), guest_memory.host_phys_bits())
    try:
        args = tuple(shlex.split(str(c.get("args") or "")))
    except ValueError as exc:
        raise ValueError(f"unable to parse args - {exc}") from None
    return {
        "cpu": model, "cpu_flags": flags, "vcpus_online": vcpus,
        "kvm": bool(int(c.get("kvm", 1))), "acpi": acpi,
        "vga": vga_type, "vga_memory_mb": vga.get("memory"),
        "keyboard": c.get("keyboard"), "tablet": tablet,
        "rtc_base": rtc_base, "rtc_driftfix": driftfix,
        "uuid": dict(smbios).get("uuid"), "smbios1": tuple(smbios),
        "vmgenid": vmgenid if vmgenid != "0" else None,
        "numa": bool(int(c.get("numa", 0))),
        # PVE: the balloon device is there unless balloon is explicitly 0
        "balloon": int(c.get("balloon", 1)) != 0,
        "serials": tuple((i, str(c[f"serial{i}"])) for i in range(MAX_SERIALS)
                         if c.get(f"serial{i}")),
        "watchdog": watchdog.get("model"), "watchdog_action": watchdog.get("action"),
        "no_reboot": not bool(int(c.get("reboot", 1))),
        "freeze": bool(int(c.get("freeze", 0))),
        "args": args,
        "rng": ((str(rng["source"]), int(rng.get("max_bytes", 1024)),
                 int(rng.get("period", 1000))) if rng else None),
        "audio": str(audio["device"]) if audio else None,
        "mem_merge": bool(int(c.get("allow-ksm", 1))),
        "numa_nodes": numa_nodes,
        # PVE: /dev/shm/pve-shm-<name, default the vmid>, removed when the VM stops
        "ivshmem_size_mb": int(ivshmem["size"]) if ivshmem else None,
        "ivshmem_name": str(ivshmem["name"]) if ivshmem and ivshmem.get("name") else None,
        "hotplug_pci": bool(hotplug & {"network", "disk"}),
        "hotplug_scsi": "disk" in hotplug,
        "usb_hosts": usb_host_devices(c),
        "memory_hotplug_max_mb": maxmem,
        "agent": (str(agent.get("type") or "virtio")
                  if (agent := agent_settings(c)).get("enabled") else None),
    }


def numa_layout(config: dict[str, Any]) -> tuple[tuple[int, str, int, str | None,
                                                         str | None], ...]:
    """PVE's explicit guest NUMA nodes (Memory.pm config): with `numa: 1`, each numaN as
    (N, cpus 'a-b;c', MiB, host nodes 'a-b;c' or None, policy or None); () when no numaN
    is set (one node per socket then). ValueError with PVE's texts."""
    if not int(config.get("numa", 0)):
        return ()
    nodes = []
    total = 0
    for i in range(MAX_NUMA_NODES):
        if not config.get(f"numa{i}"):
            continue
        numa = NUMA_NODE_FORMAT.parse(str(config[f"numa{i}"]))
        if not numa.get("memory"):
            raise ValueError(f"missing NUMA node{i} memory value")
        memory = int(float(numa["memory"]))
        total += memory
        hostnodes = numa.get("hostnodes")
        if hostnodes is not None and not numa.get("policy"):
            raise ValueError(f"you need to define a policy for hostnode "
                             f"{str(hostnodes).replace(';', ',')}")
        nodes.append((i, str(numa["cpus"]), memory,
                      str(hostnodes) if hostnodes is not None else None,
                      str(numa["policy"]) if hostnodes is not None else None))
    if nodes and total != int(config.get("memory", DEFAULTS["memory"])):
        raise ValueError("total memory for NUMA nodes must be equal to vm static memory")
    return tuple(nodes)


_USB_ID_RE = re.compile(r"(?:0x)?([0-9a-fA-F]{4}):(?:0x)?([0-9a-fA-F]{4})")
_USB_PATH_RE = re.compile(r"(\d+)-(\d+(?:\.\d+)*)")


def usb_host_devices(config: dict[str, Any]) -> tuple[tuple[int, str], ...]:
    """qemu-server's print_usbdevice_full for the host devices: (index, the usb-host
    selector: `vendorid=0x..,productid=0x..` or `hostbus=B,hostport=P`). 'spice' slots
    are left out (no SPICE here)."""
    out = []
    for i in range(MAX_USB):
        value = config.get(f"usb{i}")
        if not value:
            continue
        host = str(USB_FORMAT.parse(str(value)).get("host") or "")
        if m := _USB_ID_RE.fullmatch(host):
            out.append((i, f"vendorid=0x{m[1].lower()},productid=0x{m[2].lower()}"))
        elif m := _USB_PATH_RE.fullmatch(host):
            out.append((i, f"hostbus={m[1]},hostport={m[2]}"))
    return tuple(out)


def unavailable_here(config: dict[str, Any]) -> None:
    """ValueError (a clear start failure) for keys a VM cannot run without and binome
    cannot provide: host device passthrough, confidential computing, virtio-fs."""
    reasons = []
    for key in sorted(config):
        if re.fullmatch(r"hostpci\d+", key):
            reasons.append(f"{key}: PCI passthrough is not available on binome nodes")
        elif re.fullmatch(r"usb\d+", key):
            # a host device (a mapping resolved at start: guest.host_devices) is QEMU's
            # usb-host; 'spice' is a redirection slot, and there is no SPICE here
            if not USB_FORMAT.parse(str(config[key])).get("host"):
                reasons.append(f"{key}: a USB mapping must be resolved on the node")
        elif re.fullmatch(r"parallel\d+", key):
            reasons.append(f"{key}: host parallel ports are not passed through here")
        elif re.fullmatch(r"virtiofs\d+", key):
            reasons.append(f"{key}: virtio-fs directory mappings are not available here")
        elif key in ("amd-sev", "intel-tdx"):
            reasons.append(f"{key}: confidential computing is not available on binome nodes")
    if reasons:
        raise ValueError("; ".join(reasons))
