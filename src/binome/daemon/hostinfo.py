"""What this host looks like: CPU, memory, load, uptime, root filesystem (read from /proc);
its network, DNS, time, /etc/hosts and PCI devices as `binome.daemon.nodeinfo` reads them."""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass, field
from typing import Any

from binome import __version__
from binome.daemon import disks, nodeinfo


def _meminfo() -> dict[str, int]:
    info = {}
    for line in open("/proc/meminfo"):
        key, _, rest = line.partition(":")
        info[key] = int(rest.split()[0]) * 1024
    return info


def _cpu_times() -> tuple[int, int]:
    fields = open("/proc/stat").readline().split()[1:]
    values = [int(v) for v in fields]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return sum(values), idle


def _cpu_model() -> str:
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _net_bytes() -> tuple[int, int]:
    rx = tx = 0
    for line in open("/proc/net/dev").readlines()[2:]:
        name, _, rest = line.partition(":")
        if name.strip() == "lo":
            continue
        fields = rest.split()
        rx, tx = rx + int(fields[0]), tx + int(fields[8])
    return rx, tx


def net_devices() -> dict[str, tuple[int, int]]:
    """Bytes received and sent per network device since boot (loopback left out)."""
    out = {}
    for line in open("/proc/net/dev").readlines()[2:]:
        name, _, rest = line.partition(":")
        fields = rest.split()
        if name.strip() != "lo" and len(fields) > 8:
            out[name.strip()] = (int(fields[0]), int(fields[8]))
    return out


def uptime() -> int:
    return int(float(open("/proc/uptime").read().split()[0]))


@dataclass
class HostInfo:
    """Samples CPU usage between calls; everything else is read on demand."""

    _last: tuple[int, int] = field(default_factory=_cpu_times)
    _cpu: float = 0.0
    _at: float = field(default_factory=time.monotonic)

    def cpu(self) -> float:
        now = time.monotonic()
        if now - self._at >= 1.0:
            total, idle = _cpu_times()
            d_total, d_idle = total - self._last[0], idle - self._last[1]
            self._cpu = max(0.0, 1.0 - d_idle / d_total) if d_total > 0 else 0.0
            self._last, self._at = (total, idle), now
        return round(self._cpu, 4)

    def summary(self) -> dict[str, Any]:
        mem = _meminfo()
        disk = os.statvfs("/")
        return {
            "cpu": self.cpu(), "maxcpu": os.cpu_count() or 1,
            "mem": mem["MemTotal"] - mem.get("MemAvailable", mem["MemFree"]),
            "maxmem": mem["MemTotal"],
            "disk": (disk.f_blocks - disk.f_bfree) * disk.f_frsize,
            "maxdisk": disk.f_blocks * disk.f_frsize, "uptime": uptime(),
        }

    def net_devices(self) -> dict[str, tuple[int, int]]:
        return net_devices()

    def rrd_sample(self) -> dict[str, float]:
        s = self.summary()
        rx, tx = _net_bytes()
        return {"cpu": s["cpu"], "maxcpu": s["maxcpu"], "memused": s["mem"],
                "memtotal": s["maxmem"], "rootused": s["disk"], "roottotal": s["maxdisk"],
                "loadavg": os.getloadavg()[0], "netin": rx, "netout": tx}

    def status(self) -> dict[str, Any]:
        mem = _meminfo()
        disk = os.statvfs("/")
        total_disk = disk.f_blocks * disk.f_frsize
        free_disk = disk.f_bavail * disk.f_frsize
        used = mem["MemTotal"] - mem.get("MemAvailable", mem["MemFree"])
        return {
            "cpu": self.cpu(),
            "memory": {"total": mem["MemTotal"], "used": used, "free": mem["MemTotal"] - used},
            "swap": {"total": mem.get("SwapTotal", 0),
                     "used": mem.get("SwapTotal", 0) - mem.get("SwapFree", 0),
                     "free": mem.get("SwapFree", 0)},
            "rootfs": {"total": total_disk, "avail": free_disk, "free": free_disk,
                       "used": total_disk - disk.f_bfree * disk.f_frsize},
            "cpuinfo": {"cpus": os.cpu_count() or 1, "sockets": 1,
                        "cores": os.cpu_count() or 1, "model": _cpu_model()},
            "loadavg": [f"{v:.2f}" for v in os.getloadavg()],
            "uptime": uptime(),
            "kversion": " ".join(platform.uname()[:3]),
            "pveversion": f"binome/{__version__}",
            "idle": 0, "wait": 0,
        }

    async def network(self) -> dict[str, dict[str, Any]]:
        """The host's interfaces in PVE's shape (`/nodes/{node}/network`)."""
        return await nodeinfo.read_interfaces()

    def dns(self) -> dict[str, str]:
        return nodeinfo.read_dns()

    def time(self) -> dict[str, Any]:
        return nodeinfo.time_info()

    def hosts(self) -> dict[str, str]:
        return nodeinfo.read_hosts()

    def pci(self, class_blacklist: list[str], verbose: bool) -> list[dict[str, Any]]:
        return nodeinfo.pci_devices(class_blacklist, verbose)

    def disks(self, include_partitions: bool, kind: str | None) -> list[dict[str, Any]]:
        return disks.list_disks(include_partitions, kind)
