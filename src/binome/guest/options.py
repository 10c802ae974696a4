"""The general keys of a VM config (pure: no I/O): PVE's formats beside disks and NICs.

Owns what qemu-server's ``$confdesc`` says of the keys that are not devices: the CPU
model list and flag subset with ``parse_cpu`` (PVE's validate_vm_cpu_conf and its
texts), ``agent``, ``vga``, ``smbios1``, ``machine``, ``watchdog``, ``serialN``,
``hotplug`` features, ``startup`` order, ``tags`` (``unique_tags`` as
GuestHelpers::get_unique_tags), cpusets and volume ids, and registers their named
formats with ``binome.schema``. ``guest.config`` builds the key schema from them
(split out of it to keep each module readable).
"""

from __future__ import annotations

import re
from typing import Any

from binome.schema import Param, PropertyString, register_format, split_list

# PVE's x86_64 models (CPUConfig.pm, the list used when QEMU ships no model file),
# its built-in 'x86-64-vN' models and 'host': what `cpu` accepts
CPU_MODELS = (
    "486", "pentium", "pentium2", "pentium3", "coreduo", "core2duo", "Conroe", "Penryn",
    "Nehalem", "Nehalem-IBRS", "Westmere", "Westmere-IBRS", "SandyBridge", "SandyBridge-IBRS",
    "IvyBridge", "IvyBridge-IBRS", "Haswell", "Haswell-IBRS", "Haswell-noTSX",
    "Haswell-noTSX-IBRS", "Broadwell", "Broadwell-IBRS", "Broadwell-noTSX",
    "Broadwell-noTSX-IBRS", "Skylake-Client", "Skylake-Client-IBRS",
    "Skylake-Client-noTSX-IBRS", "Skylake-Client-v4", "Skylake-Server", "Skylake-Server-IBRS",
    "Skylake-Server-noTSX-IBRS", "Skylake-Server-v4", "Skylake-Server-v5",
    "Cascadelake-Server", "Cascadelake-Server-v2", "Cascadelake-Server-noTSX",
    "Cascadelake-Server-v4", "Cascadelake-Server-v5", "Cooperlake", "Cooperlake-v2",
    "KnightsMill", "Icelake-Client", "Icelake-Client-noTSX", "Icelake-Server",
    "Icelake-Server-noTSX", "Icelake-Server-v3", "Icelake-Server-v4", "Icelake-Server-v5",
    "Icelake-Server-v6", "Icelake-Server-v7", "SapphireRapids", "SapphireRapids-v2",
    "SapphireRapids-v3", "SapphireRapids-v4", "GraniteRapids", "GraniteRapids-v2",
    "GraniteRapids-v3", "SierraForest", "SierraForest-v2", "SierraForest-v3",
    "ClearwaterForest", "athlon", "phenom", "Opteron_G1", "Opteron_G2", "Opteron_G3",
    "Opteron_G4", "Opteron_G5", "EPYC", "EPYC-IBPB", "EPYC-v3", "EPYC-v4", "EPYC-v5",
    "EPYC-Rome", "EPYC-Rome-v2", "EPYC-Rome-v3", "EPYC-Rome-v4", "EPYC-Rome-v5", "EPYC-Milan",
    "EPYC-Milan-v2", "EPYC-Milan-v3", "EPYC-Genoa", "EPYC-Genoa-v2", "EPYC-Turin",
    "kvm32", "kvm64", "qemu32", "qemu64", "max", "host")
# PVE's built-in models are QEMU's qemu64 plus these flags (CPUConfig.pm)
BUILTIN_CPU_MODELS: dict[str, tuple[str, ...]] = {
    "x86-64-v2": ("+popcnt", "+pni", "+sse4.1", "+sse4.2", "+ssse3"),
    "x86-64-v2-AES": ("+aes", "+popcnt", "+pni", "+sse4.1", "+sse4.2", "+ssse3"),
    "x86-64-v3": ("+aes", "+popcnt", "+pni", "+sse4.1", "+sse4.2", "+ssse3", "+avx", "+avx2",
                  "+bmi1", "+bmi2", "+f16c", "+fma", "+abm", "+movbe", "+xsave"),
    "x86-64-v4": ("+aes", "+popcnt", "+pni", "+sse4.1", "+sse4.2", "+ssse3", "+avx", "+avx2",
                  "+bmi1", "+bmi2", "+f16c", "+fma", "+abm", "+movbe", "+xsave", "+avx512f",
                  "+avx512bw", "+avx512cd", "+avx512dq", "+avx512vl"),
}
# the flags a VM's own cpu string may set (CPUFlags.pm, x86_64)
CPU_FLAGS = ("nested-virt", "md-clear", "pcid", "spec-ctrl", "ssbd", "ibpb", "virt-ssbd",
             "amd-ssbd", "amd-no-ssb", "pdpe1gb", "hv-tlbflush", "hv-evmcs", "aes")
CPU_TYPES = (*CPU_MODELS, *BUILTIN_CPU_MODELS)
OSTYPES = ("other", "wxp", "w2k", "w2k3", "w2k8", "wvista", "win7", "win8", "win10", "win11",
           "l24", "l26", "solaris")
WINDOWS_OSTYPES = ("wxp", "w2k", "w2k3", "w2k8", "wvista", "win7", "win8", "win10", "win11")
VGA_TYPES = ("cirrus", "qxl", "qxl2", "qxl3", "qxl4", "none", "serial0", "serial1", "serial2",
             "serial3", "std", "virtio", "virtio-gl", "vmware")
# PVE::Tools::kvmkeymaplist
KEYMAPS = ("de", "de-ch", "da", "en-gb", "en-us", "es", "fi", "fr", "fr-be", "fr-ca", "fr-ch",
           "hu", "is", "it", "ja", "lt", "mk", "nl", "no", "pl", "pt", "pt-br", "sv", "sl", "tr")
HOTPLUG_FEATURES = ("network", "disk", "cpu", "memory", "usb", "cloudinit")
HOTPLUG_DEFAULT = "network,disk,usb"
SCSI_HW = ("lsi", "lsi53c810", "virtio-scsi-pci", "virtio-scsi-single", "megasas", "pvscsi")

_UUID_RE = r"[a-fA-F0-9]{8}(?:-[a-fA-F0-9]{4}){3}-[a-fA-F0-9]{12}"
_BASE64_RE = r"[A-Za-z0-9+\/]+={0,2}"
_TAG_RE = re.compile(r"[a-z0-9_][a-z0-9_\-+.]*", re.IGNORECASE)
_VOLUME_ID_RE = re.compile(r"[a-z][a-z0-9\-_.]*[a-z0-9]:.+", re.IGNORECASE)


def parse_hotplug(value: str) -> set[str]:
    """PVE's parse_hotplug_features: '0' none, '1' the default, else a list of features."""
    if value == "0":
        return set()
    if value == "1":
        value = HOTPLUG_DEFAULT
    features = set()
    for feature in split_list(value):
        if feature not in HOTPLUG_FEATURES:
            raise ValueError(f"invalid hotplug feature '{feature}'")
        features.add(feature)
    return features


def _hotplug(value: str) -> str:
    parse_hotplug(value)
    return value


def parse_startup(value: str) -> dict[str, int] | None:
    """PVE's pve_parse_startup_order: '[order=]N,up=N,down=N'; None if malformed."""
    if not value:
        return None
    out: dict[str, int] = {}
    for part in value.split(","):
        if not part.strip():
            continue
        m = re.fullmatch(r"(?:order=)?(\d+)|up=(\d+)|down=(\d+)", part)
        if m is None:
            return None
        if m.group(1) is not None:
            out["order"] = int(m.group(1))
        elif m.group(2) is not None:
            out["up"] = int(m.group(2))
        else:
            out["down"] = int(m.group(3))
    return out


def _startup(value: str) -> str:
    if parse_startup(value) is None:
        raise ValueError("unable to parse startup options")
    return value


def _tag(value: str) -> str:
    if not _TAG_RE.fullmatch(value):
        raise ValueError("invalid characters in tag")
    return value


def unique_tags(value: str) -> str:
    """GuestHelpers::get_unique_tags with the datacenter defaults: lower-case,
    de-duplicated, sorted, joined with ';'."""
    return ";".join(sorted({t.lower() for t in split_list(value)}))


def _cpuset(value: str) -> str:
    """PVE's pve-cpuset: '0,5,8-11' (ids below 8192, ranges ascending)."""
    for part in value.split(","):
        m = re.fullmatch(r"\s*(\d+)(?:-(\d+))?\s*", part)
        if m is None or int(m.group(1)) >= 8192 or (
                m.group(2) is not None and not int(m.group(1)) <= int(m.group(2)) < 8192):
            raise ValueError("unable to parse cpuset option")
    return value


def _volume_id(value: str) -> str:
    if not _VOLUME_ID_RE.fullmatch(value):
        raise ValueError(f"unable to parse volume ID '{value}'")
    return value


for _name, _check in (("pve-hotplug-features", _hotplug), ("pve-startup-order", _startup),
                      ("pve-tag", _tag), ("pve-cpuset", _cpuset),
                      ("pve-volume-id", _volume_id)):
    register_format(_name, _check)

_BOOL = Param(type="boolean", optional=True)

AGENT_FORMAT = PropertyString(keys={
    "enabled": Param(type="boolean", description="Enable/disable communication with a QEMU "
                     "Guest Agent (QGA) running in the VM."),
    "fstrim_cloned_disks": _BOOL,
    # PVE 9 calls it freeze-fs and keeps freeze-fs-on-backup (PVE 8's name) as an alias
    "freeze-fs": _BOOL, "freeze-fs-on-backup": _BOOL,
    "type": Param(optional=True, enum=("virtio", "isa")),
}, default_key="enabled")

_CPU_KEYS = {
    "cputype": Param(optional=True, description="Emulated CPU type."),
    # valid in PVE's custom model definitions only: parse_cpu refuses it, as PVE does
    "reported-model": Param(optional=True, description="Custom CPU models only."),
    "hidden": _BOOL,
    "hv-vendor-id": Param(optional=True, pattern=r"[a-zA-Z0-9]{1,12}"),
    "flags": Param(optional=True, pattern=r"[+-][a-zA-Z0-9\-_.]+(?:;[+-][a-zA-Z0-9\-_.]+)*",
                   description="+FLAG[;-FLAG...]"),
    "guest-phys-bits": Param(type="integer", optional=True, minimum=32, maximum=64),
    "phys-bits": Param(optional=True, pattern=r"host|[1-9]\d?"),
    "level": Param(type="integer", optional=True, minimum=0, maximum=4294967295),
}
_CPU_PLAIN = PropertyString(keys=_CPU_KEYS, default_key="cputype")


def parse_cpu(value: str) -> dict[str, Any]:
    """A VM's `cpu` value, checked as PVE's validate_vm_cpu_conf does."""
    cpu = _CPU_PLAIN.parse(value)
    cputype = cpu.get("cputype") or "kvm64"
    if cputype.startswith("custom-"):
        # binome has no cluster-wide custom model file (cpu-models.conf)
        raise ValueError(f"Custom cputype '{cputype[len('custom-'):]}' not found")
    if cputype not in CPU_TYPES:
        raise ValueError(f"Built-in cputype '{cputype}' is not defined (missing 'custom-' "
                         "prefix?)")
    flags = [f for f in str(cpu.get("flags") or "").split(";") if f]
    if any(f[1:] not in CPU_FLAGS for f in flags):
        raise ValueError("VM-specific CPU flags must be a subset of: "
                         + ", ".join(sorted(CPU_FLAGS)))
    if "reported-model" in cpu:
        raise ValueError("Property 'reported-model' not allowed in VM-specific CPU config.")
    phys = cpu.get("phys-bits")
    if phys is not None and phys != "host" and not 8 <= int(phys) <= 64:
        raise ValueError(f"invalid format - phys-bits: value '{phys}' not in 8-64|host")
    cpu["cputype"] = cputype
    return cpu


CPU_FORMAT = PropertyString(keys=_CPU_KEYS, default_key="cputype", verify=parse_cpu)
VGA_FORMAT = PropertyString(keys={
    "type": Param(optional=True, enum=VGA_TYPES, default="std"),
    "memory": Param(type="integer", optional=True, minimum=4, maximum=512,
                    description="VGA memory (in MiB)."),
    "clipboard": Param(optional=True, enum=("vnc",)),
}, default_key="type")
SMBIOS1_FORMAT = PropertyString(keys={
    "uuid": Param(optional=True, pattern=_UUID_RE),
    **{k: Param(optional=True, pattern=_BASE64_RE, description="Base64 encoded string")
       for k in ("version", "serial", "manufacturer", "product", "sku", "family")},
    "base64": _BOOL,
})
MACHINE_FORMAT = PropertyString(keys={
    "type": Param(optional=True, max_length=40, pattern=(
        r"(pc|pc(-i440fx)?-\d+(\.\d+)+(\+pve\d+)?(\.pxe)?|q35|pc-q35-\d+(\.\d+)+"
        r"(\+pve\d+)?(\.pxe)?|virt(?:-\d+(\.\d+)+)?(\+pve\d+)?)")),
    "viommu": Param(optional=True, enum=("intel", "virtio")),
    "aw-bits": Param(type="number", optional=True, minimum=32, maximum=64),
    "enable-s3": _BOOL, "enable-s4": _BOOL,
}, default_key="type")
WATCHDOG_FORMAT = PropertyString(keys={
    "model": Param(optional=True, enum=("i6300esb", "ib700"), default="i6300esb"),
    "action": Param(optional=True, enum=("reset", "shutdown", "poweroff", "pause", "debug",
                                         "none")),
}, default_key="model")
_SERIAL = Param(optional=True, pattern=r"(/dev/[^,]+|socket)",
                description="A serial port: 'socket' (a unix socket on the host) or a host "
                            "device /dev/... (root only).")

# ---------------------------------------------------------------- devices (qemu-server
# Memory.pm numa_fmt, RNG.pm, USB.pm, PCI.pm, Virtiofs.pm, QemuServer.pm, CPUConfig.pm)
# No `default=` on their keys: a value is stored as given, as PVE does (the defaults
# apply where the value is used)
_NUMBER_SETS = r"\d+(?:-\d+)?(?:;\d+(?:-\d+)?)*"
NUMA_NODE_FORMAT = PropertyString(keys={
    "cpus": Param(pattern=_NUMBER_SETS, description="CPUs accessing this NUMA node."),
    "memory": Param(type="number", optional=True, description="Memory of this node (MiB)."),
    "hostnodes": Param(optional=True, pattern=_NUMBER_SETS, description="Host NUMA nodes."),
    "policy": Param(optional=True, enum=("preferred", "bind", "interleave")),
})
RNG_FORMAT = PropertyString(keys={
    "source": Param(enum=("/dev/urandom", "/dev/random", "/dev/hwrng"),
                    description="The host's entropy source."),
    "max_bytes": Param(type="integer", optional=True,
                       description="Maximum bytes of entropy per 'period' (0: no limit)."),
    "period": Param(type="integer", optional=True,
                    description="Every 'period' ms the guest may take 'max_bytes' more."),
}, default_key="source")
_USB_ID = r"(0x)?([0-9A-Fa-f]{4}):(0x)?([0-9A-Fa-f]{4})"
_USB_PATH = r"(\d+)\-(\d+(\.\d+)*)"
USB_FORMAT = PropertyString(keys={
    "host": Param(optional=True, pattern=f"(?:(?:{_USB_ID})|(?:{_USB_PATH})|[Ss][Pp][Ii][Cc][Ee])",
                  description="Host USB device or port, or 'spice'."),
    "mapping": Param(optional=True, format="pve-configid",
                     description="A cluster-wide USB mapping."),
    "usb3": Param(type="boolean", optional=True),
}, default_key="host")
_PCI = r"(?:[a-f0-9]{4,}:)?[a-f0-9]{2}:[a-f0-9]{2}(?:\.[a-f0-9])?"
_PCI_ID = r"0x[0-9a-fA-F]{4}"
HOSTPCI_FORMAT = PropertyString(keys={
    "host": Param(optional=True, pattern=f"{_PCI}(;{_PCI})*",
                  description="Host PCI device(s)."),
    "mapping": Param(optional=True, format="pve-configid",
                     description="A cluster-wide PCI mapping."),
    "rombar": Param(type="boolean", optional=True),
    "romfile": Param(optional=True, pattern=r"[^,;]+"),
    "pcie": Param(type="boolean", optional=True),
    "x-vga": Param(type="boolean", optional=True),
    "legacy-igd": Param(type="boolean", optional=True),
    "mdev": Param(optional=True, pattern=r"[^/\.:]+"),
    "vendor-id": Param(optional=True, pattern=_PCI_ID),
    "device-id": Param(optional=True, pattern=_PCI_ID),
    "sub-vendor-id": Param(optional=True, pattern=_PCI_ID),
    "sub-device-id": Param(optional=True, pattern=_PCI_ID),
    "driver": Param(optional=True, enum=("vfio", "keep")),
}, default_key="host")
VIRTIOFS_FORMAT = PropertyString(keys={
    "dirid": Param(format="pve-configid", description="A directory mapping."),
    "cache": Param(optional=True, enum=("auto", "always", "metadata", "never")),
    "direct-io": _BOOL, "expose-xattr": _BOOL, "expose-acl": _BOOL,
}, default_key="dirid")
IVSHMEM_FORMAT = PropertyString(keys={
    "size": Param(type="integer", minimum=1, description="Size of the file in MB."),
    "name": Param(optional=True, pattern=r"[a-zA-Z0-9\-]+"),
})
AUDIO_FORMAT = PropertyString(keys={
    "device": Param(enum=("ich9-intel-hda", "intel-hda", "AC97")),
    "driver": Param(optional=True, enum=("spice", "none")),
})
SPICE_ENHANCEMENTS_FORMAT = PropertyString(keys={
    "foldersharing": Param(type="boolean", optional=True),
    "videostreaming": Param(optional=True, enum=("off", "all", "filter")),
})
SEV_FORMAT = PropertyString(keys={
    "type": Param(enum=("std", "es", "snp"), max_length=3),
    "no-debug": _BOOL, "no-key-sharing": _BOOL, "allow-smt": _BOOL, "kernel-hashes": _BOOL,
}, default_key="type")
TDX_FORMAT = PropertyString(keys={
    "type": Param(enum=("tdx",)),
    "attestation": _BOOL,
    "vsock-cid": Param(type="integer", optional=True, minimum=2),
    "vsock-port": Param(type="integer", optional=True, minimum=0),
}, default_key="type")
PARALLEL = Param(optional=True, pattern=r"/dev/parport\d+|/dev/usb/lp\d+",
                 description="A host parallel device (root only).")
