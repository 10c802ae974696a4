"""Memory hot-plug as qemu-server's Memory.pm: the DIMM layout, the maximum memory,
the start's and a live change's refusals (PVE's texts), the command line, and which
pending `memory` change reaches a running guest."""

from __future__ import annotations

import pytest

from binome.guest import memory
from binome.guest import pending as pending_mod
from binome.guest.memory import Dimm, dimm_layout
from tests.unit.test_vm_options_argv import argv_of, values

pytestmark = pytest.mark.unit


def test_dimm_layout_is_pves_foreach_dimm():
    assert dimm_layout(1024, 1) == []
    assert dimm_layout(2048, 2) == [Dimm("dimm0", 512, 0, 1536), Dimm("dimm1", 512, 1, 2048)]
    # 32 DIMMs of 512 MiB, then they double; round-robin over the NUMA nodes
    layout = dimm_layout(1024 + 32 * 512 + 2 * 1024, 3)
    assert [d.size for d in layout] == [512] * 32 + [1024, 1024]
    assert [d.node for d in layout[:4]] == [0, 1, 2, 0]
    assert layout[32] == Dimm("dimm32", 1024, 0, 1024 + 32 * 512 + 1024)
    with pytest.raises(ValueError, match=r"^memory size \(1500\) must be aligned to 512 "
                                         r"for hotplugging$"):
        dimm_layout(1500, 1)


@pytest.mark.parametrize(("cputype", "phys_bits", "host", "expected"), [
    ("kvm64", None, 46, 1 << 19),          # at most 40 bits unless host/max
    ("host", None, 46, 1 << 23),           # 46 bits: 32 TiB, capped at 4 TiB
    ("max", None, 39, 1 << 17),            # odd widths round down
    ("kvm64", None, None, 1 << 15),        # unknown host: 36 bits
    ("kvm64", "42", 46, 1 << 21),
    ("kvm64", "host", 44, 1 << 23),
])
def test_max_memory_is_pves_get_max_mem(cputype, phys_bits, host, expected):
    assert memory.max_memory(cputype, phys_bits, host) == min(expected, 4 << 20)


def test_host_phys_bits_from_cpuinfo():
    assert memory.host_phys_bits("address sizes\t: 46 bits physical, 48 bits virtual") == 46
    assert memory.host_phys_bits("flags: fpu") is None


@pytest.mark.parametrize(("config", "error"), [
    ({"memory": "2048"}, "NUMA needs to be enabled for memory hotplug"),
    ({"memory": "512", "numa": "1"}, "minimum memory must be 1024MB"),
    ({"memory": "1500", "numa": "1"}, "memory size (1500) must be aligned to 512 for "
                                      "hotplugging"),
    ({"memory": "2048", "numa": "1", "numa0": "cpus=0,memory=2048"},
     "cannot enable memory hotplugging with custom NUMA topology"),
])
def test_start_refusals_are_pves(config, error):
    with pytest.raises(ValueError) as exc:
        argv_of({"hotplug": "memory", **config})
    assert str(exc.value) == error


def test_command_line_static_memory_numa_and_dimms():
    argv = argv_of({"hotplug": "network,disk,memory", "numa": "1", "sockets": "2",
                    "memory": "2048"})
    (m,) = values(argv, "-m")
    assert m.startswith("size=1024,slots=255,maxmem=") and m.endswith("M")
    assert values(argv, "-numa") == ["node,nodeid=0,cpus=0,memdev=ram-node0",
                                     "node,nodeid=1,cpus=1,memdev=ram-node1"]
    assert values(argv, "-object") == [
        "memory-backend-ram,id=ram-node0,size=512M", "memory-backend-ram,id=ram-node1,size=512M",
        "memory-backend-ram,id=mem-dimm0,size=512M", "memory-backend-ram,id=mem-dimm1,size=512M"]
    assert [d for d in values(argv, "-device") if d.startswith("pc-dimm")] == [
        "pc-dimm,id=dimm0,memdev=mem-dimm0,node=0", "pc-dimm,id=dimm1,memdev=mem-dimm1,node=1"]
    # without the feature: plain -m, as before
    assert values(argv_of({"numa": "1", "memory": "2048"}), "-m") == ["2048"]


def test_live_change_refusals_are_pves():
    assert memory.live_change_problem(1024, 2048, 4096, 1) is None
    assert memory.live_change_problem(2048, 1024, 4096, 1) is None
    assert memory.live_change_problem(2048, 512, 4096, 1) == "memory can't be lower than 1024 MB"
    assert memory.live_change_problem(1024, 8192, 4096, 1) == \
        "you cannot add more memory than max mem 4096 MB!"
    assert memory.live_change_problem(1024, 1100, 4096, 1) == \
        "memory size (1100) must be aligned to 512 for hotplugging"


def test_memory_is_live_only_with_the_hotplug_feature():
    on = frozenset({"memory"})
    assert pending_mod.live_action("memory", "1024", "2048", on) == "memory"
    assert pending_mod.live_action("memory", "1024", "2048", frozenset({"cpu"})) == "pending"
    assert pending_mod.live_action("memory", "2048", None, on) == "pending"   # a deletion
    # adding or dropping the feature itself waits for a start
    assert pending_mod.live_action("hotplug", "disk", "disk,memory", on) == "pending"
