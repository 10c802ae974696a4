"""`binome.daemon.nodeinfo`: the host's interfaces, DNS and time in PVE's shapes.

The interface input is `ip -j -d addr` as iproute2 prints it (recorded on this
machine's kernel for the bridge and veth; bonds and VLANs, which this kernel cannot
create, in the same format with iproute2's field names), so the shaping is checked on
what the reader really gets. The integration test reads the real host.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from binome.daemon import nodeinfo

pytestmark = pytest.mark.unit

LINKS = [
    {"ifindex": 1, "ifname": "lo", "flags": ["LOOPBACK", "UP", "LOWER_UP"], "mtu": 65536,
     "operstate": "UNKNOWN", "link_type": "loopback",
     "addr_info": [{"family": "inet", "local": "127.0.0.1", "prefixlen": 8, "scope": "host"}]},
    {"ifindex": 2, "ifname": "br0", "flags": ["BROADCAST", "MULTICAST", "UP", "LOWER_UP"],
     "mtu": 1500, "operstate": "UP", "link_type": "ether",
     "linkinfo": {"info_kind": "bridge",
                  "info_data": {"forward_delay": 1500, "stp_state": 0, "vlan_filtering": 1}},
     "addr_info": [
         {"family": "inet", "local": "198.51.100.1", "prefixlen": 24, "scope": "global"},
         {"family": "inet6", "local": "2001:db8::1", "prefixlen": 64, "scope": "global"},
         {"family": "inet6", "local": "fe80::1", "prefixlen": 64, "scope": "link"}]},
    {"ifindex": 3, "ifname": "eno1", "flags": ["BROADCAST", "MULTICAST", "UP", "LOWER_UP"],
     "mtu": 9000, "master": "br0", "operstate": "UP", "link_type": "ether",
     "linkinfo": {"info_slave_kind": "bridge"}, "altnames": ["enp3s0"],
     "addr_info": [{"family": "inet6", "local": "fe80::2", "prefixlen": 64, "scope": "link"}]},
    {"ifindex": 4, "ifname": "eth1", "flags": ["BROADCAST", "MULTICAST", "SLAVE"],
     "mtu": 1500, "master": "bond0", "operstate": "DOWN", "link_type": "ether",
     "linkinfo": {"info_slave_kind": "bond"}, "addr_info": []},
    {"ifindex": 5, "ifname": "eth2", "flags": ["BROADCAST", "MULTICAST", "SLAVE", "UP"],
     "mtu": 1500, "master": "bond0", "operstate": "UP", "link_type": "ether",
     "linkinfo": {"info_slave_kind": "bond"}, "addr_info": []},
    {"ifindex": 6, "ifname": "bond0", "flags": ["BROADCAST", "MULTICAST", "MASTER", "UP"],
     "mtu": 1500, "operstate": "UP", "link_type": "ether",
     "linkinfo": {"info_kind": "bond",
                  "info_data": {"mode": "active-backup", "miimon": 100, "primary": "eth2",
                                "xmit_hash_policy": "layer3+4"}},
     "addr_info": [{"family": "inet", "local": "10.1.0.5", "prefixlen": 16,
                    "scope": "global"}]},
    {"ifindex": 7, "link": "bond0", "ifname": "bond0.42",
     "flags": ["BROADCAST", "MULTICAST", "UP"], "mtu": 1500, "operstate": "UP",
     "link_type": "ether",
     "linkinfo": {"info_kind": "vlan", "info_data": {"protocol": "802.1Q", "id": 42}},
     "addr_info": []},
    {"ifindex": 8, "ifname": "tap100i0", "flags": ["BROADCAST", "UP"], "master": "br0",
     "mtu": 1500, "link_type": "ether", "linkinfo": {"info_kind": "tun"}, "addr_info": []},
    {"ifindex": 9, "link": "v1", "ifname": "v0", "flags": ["BROADCAST", "UP"], "master": "br0",
     "mtu": 1500, "link_type": "ether", "linkinfo": {"info_kind": "veth"}, "addr_info": []},
    {"ifindex": 10, "link": "v0", "ifname": "wg0", "flags": ["POINTOPOINT", "UP"],
     "mtu": 1420, "link_type": "none", "linkinfo": {"info_kind": "wireguard"},
     "addr_info": [{"family": "inet", "local": "10.9.0.1", "prefixlen": 24,
                    "scope": "global"}]},
]
ROUTES4 = [{"dst": "default", "gateway": "198.51.100.254", "dev": "br0", "flags": []}]
ROUTES6 = [{"dst": "default", "gateway": "2001:db8::fe", "dev": "br0", "metric": 1024}]


def shaped() -> dict[str, dict]:
    return nodeinfo.shape_interfaces(LINKS, ROUTES4, ROUTES6, is_physical=lambda n: False)


def test_lists_what_pve_lists_and_leaves_out_taps_bare_veths_and_loopback() -> None:
    assert sorted(shaped()) == ["bond0", "bond0.42", "br0", "eno1", "eth1", "eth2", "wg0"]


def test_bridge_with_pve_field_names() -> None:
    br = shaped()["br0"]
    assert br == {
        "iface": "br0", "type": "bridge", "priority": 2, "active": 1, "autostart": 1,
        "bridge_ports": "eno1 v0", "bridge_stp": "off", "bridge_fd": "15",
        "bridge_vlan_aware": 1, "method": "static", "address": "198.51.100.1",
        "netmask": "255.255.255.0", "cidr": "198.51.100.1/24", "gateway": "198.51.100.254",
        "method6": "static", "address6": "2001:db8::1", "netmask6": 64,
        "cidr6": "2001:db8::1/64", "gateway6": "2001:db8::fe", "families": ["inet", "inet6"]}
    # the tap of a guest on the bridge is no port of the host's configuration; the veth
    # is one, though not listed itself (no address: nothing of the host's config)
    assert "tap100i0" not in br["bridge_ports"] and "v0" not in shaped()


def test_physical_port_bond_and_vlan() -> None:
    s = shaped()
    eno1 = s["eno1"]
    assert (eno1["type"], eno1["exists"], eno1["method"], eno1["method6"]) == \
        ("eth", 1, "manual", "manual")
    assert eno1["mtu"] == 9000 and eno1["altnames"] == ["enp3s0"] and "address" not in eno1
    bond = s["bond0"]
    assert bond["type"] == "bond" and bond["slaves"] == "eth1 eth2"
    assert (bond["bond_mode"], bond["bond_miimon"], bond["bond-primary"],
            bond["bond_xmit_hash_policy"]) == ("active-backup", "100", "eth2", "layer3+4")
    assert bond["cidr"] == "10.1.0.5/16" and bond["netmask"] == "255.255.0.0"
    assert "gateway" not in bond
    vlan = s["bond0.42"]
    assert (vlan["type"], vlan["vlan-id"], vlan["vlan-raw-device"], vlan["vlan-protocol"]) == \
        ("vlan", 42, "bond0", "802.1q")
    # a link that is down is neither active nor autostarted
    assert "active" not in s["eth1"] and "autostart" not in s["eth1"]
    assert s["eth1"]["master"] == "bond0"
    # an interface PVE would not know, carrying an address: listed as `unknown`
    assert s["wg0"]["type"] == "unknown" and s["wg0"]["cidr"] == "10.9.0.1/24"


def test_a_nic_behind_a_device_is_eth_whatever_its_name() -> None:
    links = [{"ifindex": 2, "ifname": "lan0", "flags": ["UP"], "mtu": 1500,
              "link_type": "ether", "addr_info": []}]
    assert nodeinfo.shape_interfaces(links, [], [], is_physical=lambda n: n == "lan0")[
        "lan0"]["type"] == "eth"
    assert nodeinfo.shape_interfaces(links, [], [], is_physical=lambda n: False) == {}


def test_real_host_read_matches_ip() -> None:
    """The reader on this machine: every listed interface exists, loopback never."""
    got = asyncio.run(nodeinfo.read_interfaces())
    assert "lo" not in got
    for name, entry in got.items():
        assert Path(f"/sys/class/net/{name}").exists()
        assert entry["iface"] == name and entry["type"] in ("eth", "bridge", "bond", "vlan",
                                                            "unknown")
        json.dumps(entry)


@pytest.mark.parametrize(("text", "want"), [
    ("nameserver 10.0.0.1\n", {"dns1": "10.0.0.1"}),
    ("# generated\nsearch example.com lab.example\nnameserver 10.0.0.1\n"
     "nameserver 2001:db8::53 # v6\nnameserver 10.0.0.3\nnameserver 10.0.0.4\n",
     {"search": "example.com lab.example", "dns1": "10.0.0.1", "dns2": "2001:db8::53",
      "dns3": "10.0.0.3"}),
    ("domain corp.example\nsearch other.example\n", {"search": "corp.example"}),
    ("options ndots:2\nnameserver\n", {}),
])
def test_resolv_conf(text: str, want: dict[str, str]) -> None:
    assert nodeinfo.parse_resolv_conf(text) == want


def test_missing_resolv_conf_is_empty(tmp_path: Path) -> None:
    assert nodeinfo.read_dns(tmp_path / "none") == {}


def test_timezone_from_localtime_link_or_timezone_file(tmp_path: Path) -> None:
    (tmp_path / "localtime").symlink_to("/usr/share/zoneinfo/Europe/Paris")
    assert nodeinfo.timezone_name(tmp_path) == "Europe/Paris"
    other = tmp_path / "other"
    other.mkdir()
    (other / "timezone").write_text("America/New_York\n")
    assert nodeinfo.timezone_name(other) == "America/New_York"


def test_time_info_shape() -> None:
    now = time.time()
    info = nodeinfo.time_info(now)
    assert info["time"] == int(now)
    assert info["localtime"] - info["time"] == time.localtime(now).tm_gmtoff
    assert isinstance(info["timezone"], str) and info["timezone"]


def test_read_hosts_is_pves_read_etc_hosts(tmp_path) -> None:
    import hashlib

    from binome.daemon.nodeinfo import read_hosts

    raw = "127.0.0.1 localhost\n# caf\u00e9\n10.0.0.1 n1.example n1\n".encode()
    path = tmp_path / "hosts"
    path.write_bytes(raw)
    assert read_hosts(path) == {"data": raw.decode(), "digest": hashlib.sha1(raw).hexdigest()}
    assert read_hosts(tmp_path / "none") == {"data": "", "digest": hashlib.sha1(b"").hexdigest()}


def _pci_tree(tmp_path: Path) -> tuple[Path, Path]:
    """A sysfs /sys/bus/pci as the kernel lays it out: a GPU with an IOMMU group and a
    virtual function, a host bridge, a NIC without a group; and a pci.ids file."""
    sysfs = tmp_path / "pci"
    groups = tmp_path / "kernel" / "iommu_groups"
    devices = {
        "0000:00:00.0": ("0x8086", "0x3e30", "0x060000", "0x1028", "0x0869"),
        "0000:01:00.0": ("0x10de", "0x1eb8", "0x030200", "0x10de", "0x12a2"),
        "0000:03:00.1": ("0x8086", "0x1533", "0x020000", "0x15d9", "0x1533"),
    }
    for name, (vendor, device, cls, sv, sd) in devices.items():
        d = sysfs / "devices" / name
        d.mkdir(parents=True)
        for f, v in (("vendor", vendor), ("device", device), ("class", cls),
                     ("subsystem_vendor", sv), ("subsystem_device", sd)):
            (d / f).write_text(v + "\n")
    (groups / "17").mkdir(parents=True)
    (sysfs / "devices" / "0000:01:00.0" / "iommu_group").symlink_to(groups / "17")
    (sysfs / "devices" / "0000:01:00.0" / "mdev_supported_types").mkdir()
    (sysfs / "devices" / "0000:01:00.0" / "virtfn0").symlink_to("../0000:01:00.4")
    (sysfs / "devices" / "README").write_text("not a device")
    ids = tmp_path / "pci.ids"
    ids.write_text("# comment\n10de  NVIDIA Corporation\n\t1eb8  TU104GL [Tesla T4]\n"
                   "\t\t10de 12a2  Tesla T4\n8086  Intel Corporation\n"
                   "\t1533  I210 Gigabit Network Connection\n")
    return sysfs, ids


def test_pci_devices_as_pves_lspci(tmp_path) -> None:
    sysfs, ids = _pci_tree(tmp_path)
    devs = nodeinfo.pci_devices(["05", "06", "0b"], True, sysfs=sysfs, pci_ids=ids)
    # the bridge (class 06) is left out; by id
    assert [d["id"] for d in devs] == ["0000:01:00.0", "0000:03:00.1"]
    gpu, nic = devs
    assert gpu == {"id": "0000:01:00.0", "vendor": "0x10de", "device": "0x1eb8",
                   "class": "0x030200", "iommugroup": 17, "mdev": 1,
                   "vendor_name": "NVIDIA Corporation", "device_name": "TU104GL [Tesla T4]",
                   "subsystem_vendor": "0x10de", "subsystem_device": "0x12a2",
                   "subsystem_vendor_name": "NVIDIA Corporation",
                   "subsystem_device_name": "Tesla T4", "virtfns": {"virtfn0": "0000:01:00.4"}}
    assert nic["iommugroup"] == -1 and nic["device_name"] == "I210 Gigabit Network Connection"
    assert "subsystem_vendor_name" not in nic        # 0x15d9 is not in the file
    # not verbose: the IDs only; an empty blacklist keeps the bridge; no pci.ids: no names
    brief = nodeinfo.pci_devices([], False, sysfs=sysfs, pci_ids=ids)
    assert len(brief) == 3 and set(brief[1]) == {"id", "vendor", "device", "class",
                                                   "iommugroup", "mdev"}
    assert "vendor_name" not in nodeinfo.pci_devices([], True, sysfs=sysfs,
                                                     pci_ids=tmp_path / "none")[1]
