"""This host's local disks as PVE's `GET /nodes/{node}/disks/list` shows them
(`PVE::Diskmanage::get_disks`).

Owns nothing in the cluster: it reads the host on demand. The facts come from
`lsblk --json --bytes -O` (util-linux: no new dependency), completed where this host has
them: the udev database (`/run/udev/data/b<major>:<minor>`, what PVE's `udevadm info`
reads: serial, rpm, bus, WWN, partition table type, `/dev/disk/by-id` links), a
low-level `blkid -p` probe when lsblk knows no partition table or filesystem (a host or
container without udev), `/proc/mounts`, and `pvs`/`zpool` when installed (as PVE).

Which devices: PVE's (`hdX`, `sdX`, `vdX`, `xvdX`, `nvmeXnY`, `cciss!cXdY`, with a
`device` in sysfs and a size), and also attached loop devices (PVE skips them): an
image attached with `losetup` is a disk an administrator may want to see. `health` is
`UNKNOWN` (binome runs no `smartctl`), `wearout` `N/A`, `osdid` -1 (no Ceph).
`parse` is pure: it takes what was read (`HostFacts`) and answers PVE's entries.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DISK_NAME = re.compile(r"(?:(?:h|s|x?v)d[a-z]+|nvme\d+n\d+|cciss!c\d+d\d+|loop\d+)")
# partition type GUIDs PVE names (Diskmanage.pm's determine_usage, get_zfs/lvm_devices)
PARTTYPES = {
    "21686148-6449-6e6f-744e-656564454649": "BIOS boot",
    "c12a7328-f81f-11d2-ba4b-00a0c93ec93b": "EFI",
    "6a945a3b-1dd2-11b2-99a6-080020736631": "ZFS reserved",
}
ZFS_PARTTYPES = ("6a898cc3-1dd2-11b2-99a6-080020736631", "516e7cba-6ecf-11d6-8ff8-00022d09712b")
LVM_PARTTYPE = "e6d6d379-f507-44c2-a23c-238f2a3df928"
BY_ID = re.compile(r"^/dev/disk/by-id/(?:ata|scsi|nvme(?!-eui))")
TIMEOUT = 10.0


@dataclass
class HostFacts:
    """What `parse` needs, read from the host (`read_facts`) or recorded (tests)."""

    lsblk: dict[str, Any]
    mounts: dict[str, str] = field(default_factory=dict)      # device -> mount point
    udev: dict[str, dict[str, str]] = field(default_factory=dict)   # path -> E: properties
    probe: dict[str, dict[str, str]] = field(default_factory=dict)  # path -> blkid -p
    lvm_pvs: set[str] = field(default_factory=set)
    zfs: set[str] = field(default_factory=set)
    holders: dict[str, bool] = field(default_factory=dict)    # name -> has holders
    has_device: dict[str, bool] = field(default_factory=dict)  # name -> /sys/block/X/device


def _str(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _lower(value: str | None) -> str | None:
    return value.lower() if value else None


def _props(facts: HostFacts, dev: dict[str, Any]) -> dict[str, str | None]:
    """One device's partition and filesystem facts: lsblk's, else udev's, else blkid's."""
    path = dev.get("path") or ""
    udev = facts.udev.get(path, {})
    probe = facts.probe.get(path, {})
    return {
        "pttype": _str(dev.get("pttype")) or udev.get("ID_PART_TABLE_TYPE")
        or probe.get("PTTYPE"),
        "parttype": _lower(_str(dev.get("parttype")) or udev.get("ID_PART_ENTRY_TYPE")
                           or probe.get("PART_ENTRY_TYPE")),
        "fstype": _str(dev.get("fstype")) or udev.get("ID_FS_TYPE") or probe.get("TYPE"),
    }


def _usage(facts: HostFacts, dev: dict[str, Any], *, partition: bool) -> str | None:
    """PVE's determine_usage."""
    path = dev.get("path") or ""
    if path in facts.lvm_pvs:
        return "LVM"
    props = _props(facts, dev)
    if path in facts.zfs or props["parttype"] in ZFS_PARTTYPES:
        return "ZFS"
    if props["parttype"] == LVM_PARTTYPE:
        return "LVM"
    if props["parttype"] in PARTTYPES:
        return PARTTYPES[props["parttype"] or ""]
    if props["fstype"]:
        return props["fstype"]
    if path in facts.mounts:
        return "mounted"
    if partition and facts.holders.get(dev.get("kname") or dev.get("name") or ""):
        return "Device Mapper"
    return None


def _disk_type(dev: dict[str, Any], rpm: int) -> tuple[str, int]:
    """PVE's type from rotational, rpm and the bus: ssd, nvme, hdd, usb or unknown."""
    name = str(dev.get("name") or "")
    if not dev.get("rota"):
        return ("nvme" if re.fullmatch(r"nvme\d+n\d+", name) else "ssd"), 0
    if rpm != -1:
        return "hdd", rpm
    if dev.get("tran") == "usb":
        return "usb", 0
    return "unknown", rpm


def parse(facts: HostFacts, *, include_partitions: bool = False) -> list[dict[str, Any]]:
    """PVE's get_disks for `facts`, sorted by device name (PVE's order)."""
    out: dict[str, dict[str, Any]] = {}
    for dev in facts.lsblk.get("blockdevices") or []:
        name = str(dev.get("kname") or dev.get("name") or "")
        kind = dev.get("type")
        if not DISK_NAME.fullmatch(name) or kind not in ("disk", "loop"):
            continue
        if kind == "disk" and not facts.has_device.get(name, True):
            continue
        size = int(dev.get("size") or 0)
        if size <= 0 or str(dev.get("tran") or "") == "iscsi":
            continue
        path = str(dev.get("path") or f"/dev/{name}")
        udev = facts.udev.get(path, {})
        rpm = int(udev["ID_ATA_ROTATION_RATE_RPM"]) \
            if udev.get("ID_ATA_ROTATION_RATE_RPM", "").isdigit() else -1
        dtype, rpm = _disk_type(dev, rpm)
        if dtype == "unknown" and udev.get("ID_BUS") == "usb":
            dtype, rpm = "usb", 0
        gpt = 1 if _props(facts, dev)["pttype"] == "gpt" else 0
        entry: dict[str, Any] = {
            "devpath": path, "size": size,
            "vendor": _str(dev.get("vendor")) or "unknown",
            "model": udev.get("ID_MODEL") or _str(dev.get("model")) or "unknown",
            "serial": udev.get("ID_SERIAL_SHORT") or _str(dev.get("serial")) or "unknown",
            "wwn": udev.get("ID_WWN") or _str(dev.get("wwn")) or "unknown",
            "gpt": gpt, "rpm": rpm, "type": dtype, "health": "UNKNOWN", "wearout": "N/A",
            "osdid": -1, "osdid-list": None,
        }
        if path in facts.mounts:
            entry["mounted"] = 1
        links = [f"/dev/{link}" for link in udev.get("DEVLINKS", "").split() if link]
        links = [link for link in links if BY_ID.match(link)]
        if links:
            entry["by_id_link"] = links[0]
        partitions: dict[str, dict[str, Any]] = {}
        for child in dev.get("children") or []:
            if child.get("type") != "part":
                continue
            cpath = str(child.get("path") or f"/dev/{child.get('name')}")
            part: dict[str, Any] = {
                "devpath": cpath, "parent": path, "gpt": gpt, "type": "partition",
                "size": int(child.get("size") or 0), "osdid": -1, "osdid-list": None}
            if cpath in facts.mounts:
                part["mounted"] = 1
            used = _usage(facts, child, partition=True)
            if used:
                part["used"] = used
            partitions[str(child.get("kname") or child.get("name"))] = part
        used = _usage(facts, dev, partition=False)
        if not include_partitions:
            for pname in sorted(partitions):
                used = used or partitions[pname].get("used")
        elif partitions:
            used = "partitions"
        if not used and partitions:
            used = "partitions"
        if not used and facts.holders.get(name):
            used = "Device Mapper"
        if used:
            entry["used"] = used
        out[name] = entry
        if include_partitions:
            out.update(partitions)
    return [out[k] for k in sorted(out)]


def select(disks: list[dict[str, Any]], kind: str | None) -> list[dict[str, Any]]:
    """PVE's `type` filter: `unused` (nothing uses it), `journal_disks` (no OSD, and
    unused or a GPT disk with partitions or an LVM PV)."""
    if kind == "unused":
        return [d for d in disks if not d.get("used")]
    if kind == "journal_disks":
        return [d for d in disks if d.get("osdid", -1) < 0 and (
            not d.get("used") or (d["used"] == "partitions" and d.get("gpt"))
            or d["used"] == "LVM")]
    return disks


# ---------------------------------------------------------------- reading the host


def _run(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT,
                              check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout if done.returncode == 0 else ""


def _udev(majmin: str) -> dict[str, str]:
    try:
        text = Path(f"/run/udev/data/b{majmin}").read_text()
    except OSError:
        return {}
    props: dict[str, str] = {}
    links: list[str] = []
    for line in text.splitlines():
        if line.startswith("E:"):
            k, _, v = line[2:].partition("=")
            props[k] = v
        elif line.startswith("S:"):
            links.append(line[2:])
    if links:
        props["DEVLINKS"] = " ".join(links)
    return props


def _mounts() -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        lines = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        parts = line.split()
        if len(parts) >= 2 and parts[0].startswith("/dev/"):
            out.setdefault(os.path.realpath(parts[0]), parts[1].replace("\\040", " "))
    return out


def read_facts() -> HostFacts:
    """Read this host (blocking: run it in a thread). OSError when lsblk cannot run."""
    done = subprocess.run(["lsblk", "--json", "--bytes", "-O"], capture_output=True,
                          text=True, timeout=TIMEOUT, check=False)
    if done.returncode != 0:
        raise OSError(f"lsblk failed: {done.stderr.strip() or done.returncode}")
    facts = HostFacts(lsblk=json.loads(done.stdout or "{}"), mounts=_mounts())
    devices: list[dict[str, Any]] = []
    for dev in facts.lsblk.get("blockdevices") or []:
        devices.append(dev)
        devices.extend(dev.get("children") or [])
    for dev in devices:
        path, name = str(dev.get("path") or ""), str(dev.get("kname") or dev.get("name"))
        if not path:
            continue
        facts.udev[path] = _udev(str(dev.get("maj:min") or ""))
        sysdir = Path("/sys/class/block") / name
        holders = sysdir / "holders"
        facts.holders[name] = holders.is_dir() and any(holders.iterdir())
        facts.has_device[name] = (sysdir / "device").exists()
        if not (dev.get("pttype") or dev.get("fstype") or facts.udev[path]) \
                and int(dev.get("size") or 0) > 0 and DISK_NAME.fullmatch(
                    str(dev.get("pkname") or name)):
            facts.probe[path] = _blkid(path)
    if shutil.which("pvs"):
        facts.lvm_pvs = {line.strip() for line in _run(
            ["pvs", "--noheadings", "--readonly", "-o", "pv_name"]).splitlines()
            if line.strip().startswith("/dev/")}
    if shutil.which("zpool"):
        facts.zfs = {m.group(1) for m in re.finditer(
            r"^\t([^\t]+)\t", _run(["zpool", "list", "-HPLv"]), re.M)}
    return facts


def _blkid(path: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in _run(["blkid", "-p", "-o", "export", path]).splitlines():
        k, sep, v = line.partition("=")
        if sep:
            out[k] = v
    return out


def list_disks(include_partitions: bool, kind: str | None) -> list[dict[str, Any]]:
    """This host's disks in PVE's shape (blocking)."""
    return select(parse(read_facts(), include_partitions=include_partitions), kind)
