"""Memory hot-plug's rules, as qemu-server's PVE/QemuServer/Memory.pm (pure but for
reading the host's physical address width; owns no state).

With `hotplug` containing `memory` (PVE requires `numa: 1`), QEMU starts with
`-m size=1024,slots=255,maxmem=<max>M`: 1024 MiB of static memory, split over the
NUMA nodes, and the rest of `memory` as DIMMs (`pc-dimm` devices on
`memory-backend-ram` objects ``mem-dimmN``) whose sizes grow as PVE's
`foreach_dimm` lays them out: 32 DIMMs of 512 MiB, then 32 of 1 GiB, 2 GiB, ...,
spread round-robin over the NUMA nodes. Raising `memory` on a running guest adds the
next DIMMs of that layout; lowering it removes the last ones (the guest must let them
go). A start and a live change refuse what PVE refuses, with its texts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STATIC_MEMORY = 1024        # MiB the guest starts with (PVE's $STATICMEM)
SLOTS = 255
MAX_NUMA = 8


@dataclass(frozen=True)
class Dimm:
    name: str        # dimmN (the device id; its memory backend is mem-dimmN)
    size: int        # MiB
    node: int        # guest NUMA node
    total: int       # the guest's memory with this DIMM and those before it, MiB


def host_phys_bits(cpuinfo: str | None = None) -> int | None:
    """The host's physical address width (PVE's get_host_phys_address_bits)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return None
    m = re.search(r"address sizes\s*:\s*(\d+) bits physical", cpuinfo)
    return int(m.group(1)) if m else None


def max_memory(cputype: str, phys_bits: str | None, host_bits: int | None) -> int:
    """PVE's get_max_mem, MiB: half the guest's physical address space (QEMU needs
    some for itself), at most 4 TiB; the CPU's `phys-bits`, else the host's (at most
    40 bits unless the model is host or max)."""
    bits: int | None = None
    if phys_bits == "host":
        bits = host_bits
    elif phys_bits and phys_bits.isdigit():
        bits = int(phys_bits)
    if bits is None:
        host = host_bits or 36
        bits = host if cputype in ("host", "max") else min(host, 40)
    bits &= ~1
    return min(1 << (bits - 21), 4 * 1024 * 1024)


def dimm_layout(memory: int, nodes: int, static: int = STATIC_MEMORY) -> list[Dimm]:
    """PVE's foreach_dimm: the DIMMs that bring `static` MiB to `memory` MiB, over
    `nodes` guest NUMA nodes; ValueError when `memory` does not end on a DIMM
    (PVE's "memory size (X) must be aligned to Y for hotplugging")."""
    out: list[Dimm] = []
    total, size, dimm_id = static, 512, 0
    if total >= memory:
        return out
    for _ in range(8):
        for i in range(32):
            total += size
            out.append(Dimm(f"dimm{dimm_id}", size, i % max(nodes, 1), total))
            dimm_id += 1
            if total >= memory:
                if total > memory:
                    raise ValueError(f"memory size ({memory}) must be aligned to {size} "
                                     f"for hotplugging")
                return out
        size *= 2
    raise ValueError(f"memory size ({memory}) is beyond the {SLOTS} memory slots")


def hotplug_limits(config: dict[str, Any], cputype: str, phys_bits: str | None,
                   host_bits: int | None) -> int:
    """The start's checks of memory hot-plug (PVE's Memory.pm config, its texts):
    NUMA on, no custom NUMA nodes, at least the static memory, at most the maximum,
    aligned on the DIMM layout; the maximum memory (maxmem) in MiB."""
    memory = int(config.get("memory") or 512)
    if not int(config.get("numa") or 0):
        raise ValueError("NUMA needs to be enabled for memory hotplug")
    limit = max_memory(cputype, phys_bits, host_bits)
    if memory > limit:
        raise ValueError(f"Total memory is bigger than {limit}MB")
    if any(config.get(f"numa{i}") for i in range(MAX_NUMA)):
        raise ValueError("cannot enable memory hotplugging with custom NUMA topology")
    if memory < STATIC_MEMORY:
        raise ValueError(f"minimum memory must be {STATIC_MEMORY}MB")
    dimm_layout(memory, int(config.get("sockets") or 1))
    return limit


def live_change_problem(old: int, new: int, limit: int, nodes: int) -> str | None:
    """Why `memory` cannot go from `old` to `new` MiB on a running guest with memory
    hot-plug (PVE's qemu_memory_hotplug texts); None: it can."""
    if new < STATIC_MEMORY:
        return f"memory can't be lower than {STATIC_MEMORY} MB"
    if new > limit:
        return f"you cannot add more memory than max mem {limit} MB!"
    try:
        dimm_layout(new, nodes)
    except ValueError as exc:
        return str(exc)
    return None
