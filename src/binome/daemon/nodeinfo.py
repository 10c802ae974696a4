"""What PVE's node system pages read from the host: network interfaces, DNS, time,
/etc/hosts, PCI devices.

Owns nothing in the cluster: it reads this host, on demand, for
`/nodes/{node}/network`, `/dns`, `/time`, `/hosts` and `/hardware/pci` (PVE's `Network.pm`,
`Nodes.pm`, `Hardware/PCI.pm`).

PVE reads `/etc/network/interfaces` (ifupdown2's configuration) and marks what is live;
binome configures no host network, so the list is built from the *running* interfaces
(`ip -j -d addr`, `ip -j route show default`: iproute2, no new dependency) and shaped
with PVE's field names: `iface`, `type` (`eth`, `bridge`, `bond`, `vlan`, `unknown`),
`method`/`method6`, `address`/`netmask`/`cidr`, `address6`/`netmask6`/`cidr6`,
`gateway`/`gateway6`, `bridge_ports`, `bridge_stp`, `bridge_fd`, `bridge_vlan_aware`,
`slaves`, `bond_mode`, `bond_miimon`, `bond-primary`, `bond_xmit_hash_policy`,
`vlan-id`, `vlan-raw-device`, `vlan-protocol`, `active`, `autostart`, `exists`,
`families`, `priority`, `mtu`, `altnames`.

Which interfaces are listed follows PVE: bridges, bonds and VLANs always; physical
NICs (PVE's `physical_nic_regex`, or a device behind it in sysfs); anything else only
if it carries a global address (type `unknown`). Guests' tap devices and bare veth
peers are left out, as PVE leaves out what is not in its configuration. Loopback is
never listed (PVE deletes `lo`). A bridge's `bridge_ports` and a bond's `slaves` name
every member but guests' taps, listed or not (a veth into a namespace is a port).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import json
import os
import re
import time
from calendar import timegm
from pathlib import Path
from typing import Any

# PVE::Network::physical_nic_regex
PHYSICAL_NIC = re.compile(r"^(?:eth\d+|en[^:.]+|ib[^:.]+)$")
GUEST_TAP = re.compile(r"^tap\d+i\d+$")
# what PVE's bond_mode enum calls the kernel's modes (the kernel's names are the same)
BOND_XMIT = {"layer2": "layer2", "layer2+3": "layer2+3", "layer3+4": "layer3+4"}
IP_TIMEOUT = 5.0


def _netmask(prefixlen: int) -> str:
    return str(ipaddress.IPv4Network(f"0.0.0.0/{prefixlen}").netmask)


def _global(addrs: list[dict[str, Any]], family: str) -> dict[str, Any] | None:
    """The first global address of a family (PVE shows one address per family)."""
    for a in addrs:
        if a.get("family") == family and a.get("scope") == "global" and a.get("local"):
            return a
    return None


def _has_device(name: str) -> bool:
    return Path(f"/sys/class/net/{name}/device").exists()


def _guest_device(link: dict[str, Any]) -> bool:
    """A guest's tap (`tap<vmid>i<n>`, a tun device): plugged in by binome at the
    guest's start, no port of the host's configuration (PVE's bridge_ports)."""
    kind = (link.get("linkinfo") or {}).get("info_kind")
    return kind == "tun" or GUEST_TAP.match(link.get("ifname", "")) is not None


def shape_interfaces(links: list[dict[str, Any]], routes4: list[dict[str, Any]],
                     routes6: list[dict[str, Any]],
                     is_physical: Any = _has_device) -> dict[str, dict[str, Any]]:
    """`ip -j -d addr` and `ip -j [-6] route show default` -> PVE's interface entries,
    by name. `is_physical(name)`: whether a NIC sits behind the name (sysfs)."""
    gw4 = {r["dev"]: r["gateway"] for r in routes4 if r.get("dev") and r.get("gateway")}
    gw6 = {r["dev"]: r["gateway"] for r in routes6 if r.get("dev") and r.get("gateway")}
    ports: dict[str, list[str]] = {}
    for link in links:
        if link.get("master") and not _guest_device(link):
            ports.setdefault(link["master"], []).append(link["ifname"])
    out: dict[str, dict[str, Any]] = {}
    for link in links:
        name = link.get("ifname", "")
        if not name or link.get("link_type") == "loopback":
            continue
        info = link.get("linkinfo") or {}
        kind = info.get("info_kind")
        data = info.get("info_data") or {}
        addrs = link.get("addr_info") or []
        v4, v6 = _global(addrs, "inet"), _global(addrs, "inet6")
        entry: dict[str, Any] = {"iface": name, "priority": int(link.get("ifindex", 0))}
        if kind == "bridge":
            entry["type"] = "bridge"
            entry["bridge_ports"] = ""   # filled below, from the listed interfaces
            entry["bridge_stp"] = "on" if data.get("stp_state") else "off"
            if "forward_delay" in data:   # centiseconds in the kernel, seconds in PVE
                entry["bridge_fd"] = str(int(data["forward_delay"]) // 100)
            if data.get("vlan_filtering"):
                entry["bridge_vlan_aware"] = 1
        elif kind == "bond":
            entry["type"] = "bond"
            entry["slaves"] = ""
            if data.get("mode"):
                entry["bond_mode"] = str(data["mode"])
            if data.get("miimon") is not None:
                entry["bond_miimon"] = str(data["miimon"])
            if data.get("primary"):
                entry["bond-primary"] = str(data["primary"])
            if data.get("xmit_hash_policy") in BOND_XMIT:
                entry["bond_xmit_hash_policy"] = BOND_XMIT[data["xmit_hash_policy"]]
        elif kind == "vlan":
            entry["type"] = "vlan"
            if data.get("id") is not None:
                entry["vlan-id"] = int(data["id"])
            if link.get("link"):
                entry["vlan-raw-device"] = link["link"]
            if data.get("protocol"):
                entry["vlan-protocol"] = str(data["protocol"]).lower()
        elif (kind is None or kind == "veth") and (PHYSICAL_NIC.match(name)
                                                     or (kind is None and is_physical(name))):
            entry["type"] = "eth"
            entry["exists"] = 1
        elif v4 is not None or v6 is not None:
            entry["type"] = "unknown"
        else:
            continue   # a guest's tap, a bare veth peer, a tunnel: not host network config
        up = "UP" in (link.get("flags") or [])
        if up:
            entry["active"] = 1
            entry["autostart"] = 1
        families = []
        if v4 is not None:
            families.append("inet")
            entry.update(method="static", address=v4["local"],
                         netmask=_netmask(int(v4["prefixlen"])),
                         cidr=f"{v4['local']}/{v4['prefixlen']}")
            if name in gw4:
                entry["gateway"] = gw4[name]
        else:
            entry["method"] = "manual"
        if v6 is not None:
            families.append("inet6")
            entry.update(method6="static", address6=v6["local"],
                         netmask6=int(v6["prefixlen"]),
                         cidr6=f"{v6['local']}/{v6['prefixlen']}")
            if name in gw6:
                entry["gateway6"] = gw6[name]
        else:
            entry["method6"] = "manual"
        entry["families"] = families or ["inet"]
        if link.get("master") and kind != "bridge":
            entry["master"] = link["master"]   # not PVE's: which bridge or bond holds it
        if link.get("mtu") and int(link["mtu"]) != 1500:
            entry["mtu"] = int(link["mtu"])
        if link.get("altnames"):
            entry["altnames"] = list(link["altnames"])
        out[name] = entry
    for name, entry in out.items():
        members = " ".join(sorted(ports.get(name, [])))
        for key in ("bridge_ports", "slaves"):
            if key in entry:
                entry[key] = members
    return out


async def _ip_json(*args: str) -> list[dict[str, Any]]:
    proc = await asyncio.create_subprocess_exec(
        "ip", "-j", *args, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), IP_TIMEOUT)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise OSError(f"ip {' '.join(args)}: no answer within {IP_TIMEOUT:.0f}s") from None
    if proc.returncode != 0:
        raise OSError(f"ip {' '.join(args)}: {err.decode(errors='replace').strip()}")
    text = out.decode(errors="replace").strip()
    return json.loads(text) if text else []


async def read_interfaces() -> dict[str, dict[str, Any]]:
    """This host's interfaces in PVE's shape (see the module docstring)."""
    links = await _ip_json("-d", "addr", "show")
    routes4 = await _ip_json("route", "show", "default")
    routes6 = await _ip_json("-6", "route", "show", "default")
    return shape_interfaces(links, routes4, routes6)


def parse_resolv_conf(text: str) -> dict[str, str]:
    """PVE's read of /etc/resolv.conf: `search` (the first search or domain line) and
    the first three name servers as `dns1`..`dns3`."""
    out: dict[str, str] = {}
    servers: list[str] = []
    for raw in text.splitlines():
        words = raw.split("#", 1)[0].split(";", 1)[0].split()
        if len(words) < 2:
            continue
        if words[0] in ("search", "domain") and "search" not in out:
            out["search"] = " ".join(words[1:]) if words[0] == "search" else words[1]
        elif words[0] == "nameserver" and len(servers) < 3:
            servers.append(words[1])
    for i, server in enumerate(servers, 1):
        out[f"dns{i}"] = server
    return out


def read_dns(path: Path = Path("/etc/resolv.conf")) -> dict[str, str]:
    try:
        return parse_resolv_conf(path.read_text(errors="replace"))
    except OSError:
        return {}


def read_hosts(path: Path = Path("/etc/hosts")) -> dict[str, str]:
    """PVE's read_etc_hosts (`GET /nodes/{node}/hosts`): the file's text and the SHA-1
    of its bytes as `digest`. A missing file reads as empty."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raw = b""
    return {"digest": hashlib.sha1(raw).hexdigest(), "data": raw.decode("utf-8", errors="replace")}


PCI_ID = re.compile(r"^([a-f0-9]{4,}):([a-f0-9]{2}):([a-f0-9]{2})\.([a-f0-9])$")


def parse_pci_ids(text: str) -> dict[str, dict[str, Any]]:
    """pci.ids as PVE's SysFSTools parses it: {"0xVVVV": {name, devices: {"0xDDDD":
    {name, subs: {"0xSV": {"0xSD": name}}}}}}."""
    ids: dict[str, dict[str, Any]] = {}
    vendor: dict[str, Any] = {}
    device: dict[str, Any] = {}
    for line in text.splitlines():
        if m := re.match(r"^([0-9a-fA-F]{4})\s+(.*)$", line):
            vendor = ids[f"0x{m[1]}"] = {"name": m[2], "devices": {}}
        elif m := re.match(r"^\t([0-9a-fA-F]{4})\s+(.*)$", line):
            device = vendor.setdefault("devices", {})[f"0x{m[1]}"] = {"name": m[2], "subs": {}}
        elif m := re.match(r"^\t\t([0-9a-fA-F]{4}) ([0-9a-fA-F]{4})\s+(.*)$", line):
            device.setdefault("subs", {}).setdefault(f"0x{m[1]}", {})[f"0x{m[2]}"] = m[3]
    return ids


def _first_line(path: Path) -> str | None:
    try:
        return path.read_text().splitlines()[0].strip()
    except (OSError, IndexError):
        return None


def pci_devices(class_blacklist: list[str], verbose: bool, *,
                sysfs: Path = Path("/sys/bus/pci"),
                pci_ids: Path = Path("/usr/share/misc/pci.ids")) -> list[dict[str, Any]]:
    """PVE's SysFSTools::lspci (`GET /nodes/{node}/hardware/pci`): the host's PCI
    devices from sysfs, less the classes whose hex prefix is blacklisted; with `verbose`
    the subsystem IDs and the names pci.ids gives (none when it is not installed)."""
    ids: dict[str, dict[str, Any]] = {}
    if verbose:
        try:
            ids = parse_pci_ids(pci_ids.read_text(errors="replace"))
        except OSError:
            ids = {}
    out: list[dict[str, Any]] = []
    try:
        entries = sorted(p.name for p in (sysfs / "devices").iterdir())
    except OSError:
        return []
    for name in entries:
        if not PCI_ID.match(name):
            continue
        devdir = sysfs / "devices" / name
        res: dict[str, Any] = {"id": name, "vendor": _first_line(devdir / "vendor"),
                               "device": _first_line(devdir / "device"),
                               "class": _first_line(devdir / "class")}
        if any(str(res["class"] or "").startswith(f"0x{c}") for c in class_blacklist if c):
            continue
        res["iommugroup"] = -1
        group = devdir / "iommu_group"
        if group.exists():
            with contextlib.suppress(OSError, ValueError):
                res["iommugroup"] = int(os.readlink(group).rsplit("/", 1)[1])
        if (devdir / "mdev_supported_types").is_dir():
            res["mdev"] = 1
        elif (devdir / "nvidia").is_dir():
            res["mdev"] = 1
            res["nvidia"] = 1
        if verbose:
            vendor = ids.get(res["vendor"] or "", {})
            dev = vendor.get("devices", {}).get(res["device"] or "", {})
            sub_vendor = _first_line(devdir / "subsystem_vendor")
            sub_device = _first_line(devdir / "subsystem_device")
            names = {"vendor_name": vendor.get("name"), "device_name": dev.get("name"),
                     "subsystem_vendor": sub_vendor, "subsystem_device": sub_device,
                     "subsystem_vendor_name": ids.get(sub_vendor or "", {}).get("name"),
                     "subsystem_device_name": dev.get("subs", {}).get(sub_vendor or "", {})
                     .get(sub_device or "")}
            res.update({k: v for k, v in names.items() if v is not None})
            with contextlib.suppress(OSError):
                physfn = os.readlink(devdir / "physfn").rsplit("/", 1)[-1]
                if PCI_ID.match(physfn):
                    res["physfn"] = physfn
            virtfns = {}
            for link in sorted(devdir.glob("virtfn*")):
                if re.fullmatch(r"virtfn\d+", link.name):
                    with contextlib.suppress(OSError):
                        target = os.readlink(link).rsplit("/", 1)[-1]
                        if PCI_ID.match(target):
                            virtfns[link.name] = target
            if virtfns:
                res["virtfns"] = virtfns
        out.append(res)
    return out


def timezone_name(etc: Path = Path("/etc")) -> str:
    """PVE::Systemd::get_timezone: the link target of /etc/localtime under zoneinfo
    (or /etc/timezone, the Debian file), else UTC."""
    with contextlib.suppress(OSError):
        target = os.readlink(etc / "localtime")
        if "zoneinfo/" in target:
            return target.split("zoneinfo/", 1)[1]
    with contextlib.suppress(OSError):
        name = (etc / "timezone").read_text().strip()
        if name:
            return name
    return os.environ.get("TZ", "").lstrip(":") or "UTC"


def time_info(now: float | None = None) -> dict[str, Any]:
    """PVE's GET /nodes/{node}/time: `time` (UTC seconds), `localtime` (the local wall
    clock read as if it were UTC, PVE's timegm(localtime(t))) and `timezone`."""
    t = int(time.time() if now is None else now)
    return {"timezone": timezone_name(), "time": t, "localtime": timegm(time.localtime(t))}
