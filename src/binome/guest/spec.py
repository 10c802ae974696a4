"""What to launch: the runtime's input, as frozen dataclasses (pure, no I/O).

The config layer (``binome.guest.config``) turns a ``qm``-style VM config plus
its storage into a :class:`LaunchSpec`; the runtime turns that into a QEMU
process. Everything the runtime needs is here, already resolved: disk sources
are file paths or NBD URIs, not storage ids. Construction validates the values
the command line depends on and raises ``ValueError`` (the config layer is the
place for user-facing messages; these are a second line of defence so a bad
spec can never become a malformed QEMU option).

``to_dict``/``from_dict`` give the JSON shape the runtime persists next to a
running guest, so a restarted daemon knows what it adopted.
"""

from __future__ import annotations

import re
import uuid as uuidlib
from dataclasses import asdict, dataclass
from typing import Any

from binome.guest.memory import STATIC_MEMORY, Dimm, dimm_layout

__all__ = [
    "BUS_MAX_INDEX",
    "CACHE_MODES",
    "DISK_FORMATS",
    "MAX_NICS",
    "NIC_MODELS",
    "VGA_TYPES",
    "WATCHDOG_ACTIONS",
    "WATCHDOG_MODELS",
    "DiskSpec",
    "LaunchSpec",
    "NicSpec",
    "is_nbd_uri",
]

#: Highest disk index per bus, as Proxmox allows (virtio0-15, scsi0-30, ide0-3, sata0-5).
BUS_MAX_INDEX: dict[str, int] = {"virtio": 15, "scsi": 30, "ide": 3, "sata": 5}
DISK_FORMATS = ("raw", "qcow2")
CACHE_MODES = ("none", "writeback", "writethrough", "unsafe")
NIC_MODELS = ("virtio", "e1000", "rtl8139")
VGA_TYPES = ("std", "cirrus", "vmware", "qxl", "qxl2", "qxl3", "qxl4", "virtio", "none",
             "serial0", "serial1", "serial2", "serial3")
WATCHDOG_MODELS = ("i6300esb", "ib700")
WATCHDOG_ACTIONS = ("reset", "shutdown", "poweroff", "pause", "debug", "none")
MAX_SERIALS = 4  # serial0-serial3
MAX_NICS = 32  # net0-net31

_MAC_RE = re.compile(r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$")
# An interface name Linux accepts: 1-15 chars, no '/', ':' or whitespace.
_IFNAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
_CPU_RE = re.compile(r"^[A-Za-z0-9_.+=,-]+$")
_CPU_FLAG_RE = re.compile(r"^[+-][A-Za-z0-9_.-]+$")
_KEYMAP_RE = re.compile(r"^[a-z]{2}(-[a-z]{2})?$")
_RTC_BASE_RE = re.compile(r"^(localtime|utc|\d{4}-\d{1,2}-\d{1,2}(T\d{1,2}:\d{1,2}:\d{1,2})?)$")
_NBD_PREFIXES = ("nbd:", "nbd+unix:", "nbd+tcp:")


def is_nbd_uri(source: str) -> bool:
    """Whether a disk source is an NBD URI (``nbd+unix:///export?socket=...``)."""
    return source.startswith(_NBD_PREFIXES)


@dataclass(frozen=True)
class DiskSpec:
    """One disk: ``<bus><index>`` backed by a file or an NBD export."""

    bus: str  # virtio|scsi|ide|sata
    index: int
    source: str  # a file path, or an NBD URI "nbd+unix:///export?socket=/path"
    format: str | None = "raw"  # raw|qcow2; None for NBD (the export is raw data)
    readonly: bool = False
    cache: str = "none"  # none|writeback|writethrough|unsafe

    def __post_init__(self) -> None:
        if self.bus not in BUS_MAX_INDEX:
            raise ValueError(f"disk bus {self.bus!r}: want one of {', '.join(BUS_MAX_INDEX)}")
        top = BUS_MAX_INDEX[self.bus]
        if not isinstance(self.index, int) or not 0 <= self.index <= top:
            raise ValueError(f"disk {self.bus}{self.index}: index must be 0..{top}")
        if not self.source or "\n" in self.source or "\0" in self.source:
            raise ValueError(f"disk {self.name}: empty or malformed source")
        if self.format is not None and self.format not in DISK_FORMATS:
            raise ValueError(f"disk {self.name}: format {self.format!r} not in {DISK_FORMATS}")
        if self.format is None and not is_nbd_uri(self.source):
            # QEMU would probe the format of a file: a guest could then write a
            # qcow2 header into a raw image and read host files through it.
            raise ValueError(f"disk {self.name}: a file source needs an explicit format")
        if self.cache not in CACHE_MODES:
            raise ValueError(f"disk {self.name}: cache {self.cache!r} not in {CACHE_MODES}")

    @property
    def name(self) -> str:
        """The Proxmox key of this disk (``virtio0``, ``scsi3`` ...)."""
        return f"{self.bus}{self.index}"

    @property
    def is_nbd(self) -> bool:
        return is_nbd_uri(self.source)


@dataclass(frozen=True)
class NicSpec:
    """One NIC: ``net<index>``, a tap on a Linux bridge, optionally VLAN-tagged."""

    index: int
    model: str  # virtio|e1000|rtl8139
    mac: str
    bridge: str
    tag: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.index, int) or not 0 <= self.index < MAX_NICS:
            raise ValueError(f"nic net{self.index}: index must be 0..{MAX_NICS - 1}")
        if self.model not in NIC_MODELS:
            raise ValueError(f"nic {self.name}: model {self.model!r} not in {NIC_MODELS}")
        if not _MAC_RE.match(self.mac):
            raise ValueError(f"nic {self.name}: bad MAC address {self.mac!r}")
        if int(self.mac[:2], 16) & 1:
            raise ValueError(f"nic {self.name}: {self.mac} is a multicast address")
        if not _IFNAME_RE.match(self.bridge):
            raise ValueError(f"nic {self.name}: bad bridge name {self.bridge!r}")
        if self.tag is not None and not 1 <= self.tag <= 4094:
            raise ValueError(f"nic {self.name}: VLAN tag {self.tag} not in 1..4094")

    @property
    def name(self) -> str:
        return f"net{self.index}"


@dataclass(frozen=True)
class LaunchSpec:
    """Everything needed to start one guest's QEMU process."""

    vmid: int
    name: str
    memory_mb: int
    cores: int = 1
    sockets: int = 1
    cpu: str = "qemu64"
    disks: tuple[DiskSpec, ...] = ()
    nics: tuple[NicSpec, ...] = ()
    # Device order, e.g. ("virtio0", "net0") as in PVE 'order=virtio0;net0'.
    # Names of devices the spec does not have are ignored, as Proxmox does.
    boot: tuple[str, ...] = ()
    kernel: str | None = None
    initrd: str | None = None
    append: str | None = None
    vga: str = "std"  # see VGA_TYPES (none/serialN: no display device)
    uuid: str | None = None
    # The fields below default to "nothing added", so a spec persisted by an older
    # binome reads back as it ran; the config layer applies PVE's defaults.
    vga_memory_mb: int | None = None
    cpu_flags: tuple[str, ...] = ()   # '+aes', '-pcid' ... (PVE's flag syntax)
    vcpus_online: int | None = None   # PVE 'vcpus': fewer online at start (None: all)
    kvm: bool = True                  # False: TCG even where KVM works (PVE 'kvm: 0')
    acpi: bool = True
    tablet: bool = False              # a USB tablet (absolute pointer for VNC)
    keyboard: str | None = None       # VNC keymap ('de', 'en-us' ...)
    rtc_base: str | None = None       # 'localtime' or a start date
    rtc_driftfix: bool = False
    smbios1: tuple[tuple[str, str], ...] = ()   # SMBIOS type 1 fields, decoded
    vmgenid: str | None = None
    numa: bool = False                # one guest NUMA node per socket
    balloon: bool = False             # a virtio-balloon device
    # serial ports besides the ttyS0 console: (index, 'socket' or a host /dev path)
    serials: tuple[tuple[int, str], ...] = ()
    watchdog: str | None = None       # i6300esb|ib700
    watchdog_action: str | None = None
    no_reboot: bool = False           # PVE 'reboot: 0': a guest reboot stops QEMU
    freeze: bool = False              # start with the CPUs paused
    ovmf_code: str | None = None      # OVMF firmware (bios: ovmf): code, read-only,
    ovmf_vars_template: str | None = None   # and the vars template the runtime copies
    args: tuple[str, ...] = ()        # root's raw QEMU arguments (PVE 'args')
    # an efidisk0: the VM's own vars volume (file or NBD URI) instead of the template copy
    efivars_source: str | None = None
    efivars_format: str | None = None
    secure_boot: bool = False         # secboot OVMF code: SMM and a secure pflash
    # a tpmstate0: swtpm's state file (raw) and the TPM version (v1.2 | v2.0)
    tpm_state: str | None = None
    tpm_version: str | None = None
    # PVE rng0: (host source, max bytes per period, period ms) for a virtio-rng-pci
    rng: tuple[str, int, int] | None = None
    audio: str | None = None          # PVE audio0 device (ich9-intel-hda|intel-hda|AC97)
    mem_merge: bool = True            # PVE allow-ksm: 0 is QEMU's mem-merge=off
    # PVE numaN (with numa): (node id, cpus 'a-b;c', MiB, host nodes 'a-b;c', policy)
    numa_nodes: tuple[tuple[int, str, int, str | None, str | None], ...] = ()
    # PVE ivshmem: a shared file /dev/shm/pve-shm-<name or vmid> of this size
    ivshmem_size_mb: int | None = None
    ivshmem_name: str | None = None
    # PVE hotplug network/disk: VirtIO disks and NICs sit on PCI bridges at fixed slots
    # (so they can be plugged and unplugged, and a migration target rebuilds the same
    # layout from the config); with disk, a SCSI controller is always there
    hotplug_pci: bool = False
    hotplug_scsi: bool = False
    # PVE agent (enabled): the guest agent's port, virtio (virtio-serial) or isa
    agent: str | None = None
    # PVE usbN host devices: (N, usb-host selector 'vendorid=0x..,productid=0x..' or
    # 'hostbus=B,hostport=P'), on the xhci controller
    usb_hosts: tuple[tuple[int, str], ...] = ()
    # PVE hotplug memory: QEMU's maxmem in MiB; the guest starts with the static memory
    # (binome.guest.memory) and the rest of memory_mb as DIMMs (None: plain -m)
    memory_hotplug_max_mb: int | None = None
    # SPICE (PVE: vga qxl*/virtio*): QEMU's TLS port on 127.0.0.1 and the node's
    # certificate, key and cluster CA files it serves TLS with
    spice_port: int | None = None
    spice_x509: tuple[str, str, str] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.vmid, int) or not 100 <= self.vmid <= 999_999_999:
            raise ValueError(f"vmid {self.vmid!r} not in 100..999999999")
        if not self.name or any(c in self.name for c in "\0\n"):
            raise ValueError(f"VM {self.vmid}: bad name {self.name!r}")
        if not isinstance(self.memory_mb, int) or self.memory_mb < 16:
            raise ValueError(f"VM {self.vmid}: memory {self.memory_mb!r} MiB (minimum 16)")
        for what, value in (("cores", self.cores), ("sockets", self.sockets)):
            if not isinstance(value, int) or not 1 <= value <= 128:
                raise ValueError(f"VM {self.vmid}: {what} {value!r} not in 1..128")
        if not _CPU_RE.match(self.cpu):
            raise ValueError(f"VM {self.vmid}: bad cpu type {self.cpu!r}")
        # Tuples, not lists: the spec is hashable and its JSON form round-trips.
        object.__setattr__(self, "disks", tuple(self.disks))
        object.__setattr__(self, "nics", tuple(self.nics))
        object.__setattr__(self, "boot", tuple(self.boot))
        seen: set[str] = set()
        devices: tuple[DiskSpec | NicSpec, ...] = (*self.disks, *self.nics)
        for dev in devices:
            if dev.name in seen:
                raise ValueError(f"VM {self.vmid}: device {dev.name} given twice")
            seen.add(dev.name)
        if (self.initrd or self.append) and not self.kernel:
            raise ValueError(f"VM {self.vmid}: initrd/append need a kernel")
        if self.vga not in VGA_TYPES:
            raise ValueError(f"VM {self.vmid}: vga {self.vga!r} not in {VGA_TYPES}")
        for what, ident in (("uuid", self.uuid), ("vmgenid", self.vmgenid)):
            if ident is not None:
                try:
                    uuidlib.UUID(ident)
                except ValueError:
                    raise ValueError(f"VM {self.vmid}: bad {what} {ident!r}") from None
        object.__setattr__(self, "cpu_flags", tuple(self.cpu_flags))
        object.__setattr__(self, "args", tuple(self.args))
        object.__setattr__(self, "smbios1", tuple(tuple(f) for f in self.smbios1))
        object.__setattr__(self, "serials", tuple(tuple(s) for s in self.serials))
        for flag in self.cpu_flags:
            if not _CPU_FLAG_RE.match(flag):
                raise ValueError(f"VM {self.vmid}: bad cpu flag {flag!r}")
        if self.memory_hotplug_max_mb is not None:
            if not STATIC_MEMORY <= self.memory_mb <= self.memory_hotplug_max_mb:
                raise ValueError(f"VM {self.vmid}: memory {self.memory_mb} MiB not in "
                                 f"{STATIC_MEMORY}..{self.memory_hotplug_max_mb} (hotplug)")
            dimm_layout(self.memory_mb, self.sockets)
        if self.vcpus_online is not None and not 1 <= self.vcpus_online <= self.vcpus:
            raise ValueError(f"VM {self.vmid}: vcpus {self.vcpus_online} not in "
                             f"1..{self.vcpus} (cores x sockets)")
        if self.vga_memory_mb is not None and not 4 <= self.vga_memory_mb <= 512:
            raise ValueError(f"VM {self.vmid}: vga memory {self.vga_memory_mb} not in 4..512")
        if self.keyboard is not None and not _KEYMAP_RE.match(self.keyboard):
            raise ValueError(f"VM {self.vmid}: bad keyboard layout {self.keyboard!r}")
        if self.rtc_base is not None and not _RTC_BASE_RE.match(self.rtc_base):
            raise ValueError(f"VM {self.vmid}: bad rtc base {self.rtc_base!r}")
        for key, text in self.smbios1:
            if key not in ("uuid", "manufacturer", "product", "version", "serial", "sku",
                           "family") or any(c in text for c in "\0\n"):
                raise ValueError(f"VM {self.vmid}: bad smbios1 field {key}={text!r}")
        for index, port in self.serials:
            if not 0 <= index < MAX_SERIALS or not (
                    port == "socket" or (port.startswith("/dev/") and "," not in port)):
                raise ValueError(f"VM {self.vmid}: bad serial{index} {port!r}")
        if self.watchdog is not None and self.watchdog not in WATCHDOG_MODELS:
            raise ValueError(f"VM {self.vmid}: watchdog {self.watchdog!r} not in "
                             f"{WATCHDOG_MODELS}")
        if self.watchdog_action is not None and self.watchdog_action not in WATCHDOG_ACTIONS:
            raise ValueError(f"VM {self.vmid}: watchdog action {self.watchdog_action!r}")
        has_vars = self.ovmf_vars_template is not None or self.efivars_source is not None
        if (self.ovmf_code is None) != (not has_vars):
            raise ValueError(f"VM {self.vmid}: OVMF needs both its code and vars files")
        if self.efivars_source is not None and (
                any(c in self.efivars_source for c in "\0\n")
                or (self.efivars_format is None and not is_nbd_uri(self.efivars_source))
                or (self.efivars_format is not None
                    and self.efivars_format not in DISK_FORMATS)):
            raise ValueError(f"VM {self.vmid}: bad EFI vars volume {self.efivars_source!r}")
        if (self.tpm_state is None) != (self.tpm_version is None) or (
                self.tpm_version is not None and self.tpm_version not in ("v1.2", "v2.0")):
            raise ValueError(f"VM {self.vmid}: a TPM needs its state file and a version "
                             f"v1.2|v2.0")
        if self.rng is not None:
            object.__setattr__(self, "rng", tuple(self.rng))
            source, max_bytes, period = self.rng
            if source not in ("/dev/urandom", "/dev/random", "/dev/hwrng") \
                    or max_bytes < 0 or period < 1:
                raise ValueError(f"VM {self.vmid}: bad rng {self.rng!r}")
        object.__setattr__(self, "numa_nodes", tuple(tuple(n) for n in self.numa_nodes))
        sets = re.compile(r"^\d+(-\d+)?(;\d+(-\d+)?)*$")
        for node in self.numa_nodes:
            nodeid, cpus, memory, hostnodes, policy = node
            if not 0 <= nodeid < 8 or not sets.match(cpus) or memory < 1 or (
                    hostnodes is not None and (not sets.match(hostnodes) or policy not in (
                        "preferred", "bind", "interleave"))):
                raise ValueError(f"VM {self.vmid}: bad NUMA node {node!r}")
        if (self.ivshmem_size_mb is not None and self.ivshmem_size_mb < 1) or (
                self.ivshmem_name is not None
                and not re.fullmatch(r"[a-zA-Z0-9\-]+", self.ivshmem_name)):
            raise ValueError(f"VM {self.vmid}: bad ivshmem {self.ivshmem_name!r} "
                             f"{self.ivshmem_size_mb!r}")
        object.__setattr__(self, "usb_hosts", tuple(tuple(u) for u in self.usb_hosts))
        usb_selector = re.compile(r"vendorid=0x[0-9a-f]{4},productid=0x[0-9a-f]{4}"
                                  r"|hostbus=\d+,hostport=\d+(\.\d+)*")
        for index, selector in self.usb_hosts:
            if not 0 <= index < 14 or not usb_selector.fullmatch(selector):
                raise ValueError(f"VM {self.vmid}: bad USB host device {selector!r}")
        if self.agent is not None and self.agent not in ("virtio", "isa"):
            raise ValueError(f"VM {self.vmid}: bad agent type {self.agent!r}")
        if self.audio is not None and self.audio not in ("ich9-intel-hda", "intel-hda",
                                                         "AC97"):
            raise ValueError(f"VM {self.vmid}: bad audio device {self.audio!r}")
        if self.spice_x509 is not None:
            object.__setattr__(self, "spice_x509", tuple(self.spice_x509))
        if (self.spice_port is None) != (self.spice_x509 is None) or (
                self.spice_port is not None and (
                    not 1024 <= self.spice_port <= 65535
                    or not self.vga.startswith(("qxl", "virtio"))
                    or any(not p.startswith("/") or any(c in p for c in "\0\n")
                           for p in self.spice_x509 or ()))):
            raise ValueError(f"VM {self.vmid}: bad SPICE display {self.spice_port!r} "
                             f"{self.spice_x509!r} (vga {self.vga})")
        if self.tpm_state is not None and (not self.tpm_state.startswith("/")
                                           or any(c in self.tpm_state for c in "\0\n,")):
            raise ValueError(f"VM {self.vmid}: bad TPM state path {self.tpm_state!r}")

    @property
    def ivshmem_path(self) -> str | None:
        """PVE's shared memory file of `ivshmem` (None without one)."""
        if self.ivshmem_size_mb is None:
            return None
        return f"/dev/shm/pve-shm-{self.ivshmem_name or self.vmid}"

    @property
    def vcpus(self) -> int:
        return self.cores * self.sockets

    def dimms(self) -> list[Dimm]:
        """The DIMMs beyond the static memory, with memory hot-plug (binome.guest.memory's
        PVE layout, over the NUMA nodes: one per socket); [] without."""
        if self.memory_hotplug_max_mb is None:
            return []
        return list(dimm_layout(self.memory_mb, self.sockets))

    @property
    def static_memory_mb(self) -> int:
        """The memory QEMU's -m gives the guest at start (the NUMA nodes' total)."""
        if self.memory_hotplug_max_mb is None:
            return self.memory_mb
        return STATIC_MEMORY

    @property
    def maxmem(self) -> int:
        """Configured memory in bytes."""
        return self.memory_mb * 1024 * 1024

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (tuples become lists)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LaunchSpec:
        """Inverse of :meth:`to_dict`; validates like the constructor."""
        fields = dict(data)
        fields["disks"] = tuple(DiskSpec(**d) for d in fields.get("disks", ()))
        fields["nics"] = tuple(NicSpec(**n) for n in fields.get("nics", ()))
        fields["boot"] = tuple(fields.get("boot", ()))
        for key in ("cpu_flags", "args"):
            fields[key] = tuple(fields.get(key, ()))
        for key in ("smbios1", "serials", "usb_hosts"):
            fields[key] = tuple(tuple(item) for item in fields.get(key, ()))
        fields["numa_nodes"] = tuple(tuple(n) for n in fields.get("numa_nodes", ()))
        if fields.get("rng") is not None:
            fields["rng"] = tuple(fields["rng"])
        if fields.get("spice_x509") is not None:
            fields["spice_x509"] = tuple(fields["spice_x509"])
        return cls(**fields)
