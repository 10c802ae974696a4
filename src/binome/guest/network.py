"""Guest networking on the node: one tap device per NIC, plugged into a Linux bridge.

Owns tap names (``tap<vmid>i<n>``, as Proxmox), their creation, bridge
membership, VLAN tagging, removal and traffic counters. Everything happens in
the network namespace of the calling process (``/sys/class/net`` and ``ip``
both see that namespace).

Taps are created persistent by us (``ip tuntap add``) before QEMU starts, so
a missing bridge or a refused VLAN is a clear error before any process
exists, and a failure half-way removes the taps already made. QEMU only
attaches to them (``script=no``). They outlive QEMU (persistent), so they are
removed explicitly: by the exit wrapper right after QEMU exits, by the
runtime when it sees the exit, and by ``adopt()`` for guests that died while
no daemon ran. Removal is idempotent.

VLANs follow Proxmox's VLAN-aware bridges: the bridge must have
``vlan_filtering`` on; the tap leaves the bridge's default PVID and becomes an
untagged member with PVID ``tag``. A non-VLAN-aware bridge with a tag is an
error rather than Proxmox's alternative (a ``vmbr0v5`` bridge per VLAN),
which would create host interfaces nobody asked for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shlex
from collections.abc import Iterable, Sequence
from pathlib import Path

from binome.guest.errors import GuestError
from binome.guest.spec import NicSpec

__all__ = [
    "SYS_NET",
    "create_taps",
    "delete_taps",
    "link_exists",
    "tap_counters",
    "tap_name",
    "validate_bridges",
]

log = logging.getLogger(__name__)

SYS_NET = Path("/sys/class/net")


def tap_name(vmid: int, index: int) -> str:
    """``tap<vmid>i<index>`` (at most 15 chars for vmids up to 999999999)."""
    return f"tap{vmid}i{index}"


def link_exists(name: str) -> bool:
    return (SYS_NET / name).exists()


def _read_sys(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def validate_bridges(nics: Iterable[NicSpec]) -> None:
    """Raise GuestError unless every NIC's bridge exists, is a bridge, and can take its tag."""
    for nic in nics:
        base = SYS_NET / nic.bridge
        if not base.exists():
            raise GuestError(f"bridge '{nic.bridge}' does not exist")
        if not (base / "bridge").is_dir():
            raise GuestError(f"interface '{nic.bridge}' is not a bridge")
        if nic.tag is not None and _read_sys(base / "bridge" / "vlan_filtering") != "1":
            raise GuestError(
                f"bridge '{nic.bridge}' is not VLAN aware (vlan_filtering off or unsupported): "
                f"cannot use tag {nic.tag} on {nic.name}"
            )


async def _run(*argv: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise GuestError(f"`{shlex.join(argv)}` failed: {err.decode(errors='replace').strip()}")


def _is_tap(name: str) -> bool:
    return (SYS_NET / name / "tun_flags").exists()


async def _plug(vmid: int, nic: NicSpec) -> str:
    name = tap_name(vmid, nic.index)
    await _run("ip", "tuntap", "add", "dev", name, "mode", "tap")
    # No IPv6 on the host side of a guest NIC: no link-local address, no DAD or
    # router solicitations leaking into the guest's LAN (Proxmox does the same).
    with contextlib.suppress(OSError):
        Path(f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6").write_text("1")
    mtu = _read_sys(SYS_NET / nic.bridge / "mtu") or "1500"
    await _run("ip", "link", "set", "dev", name, "mtu", mtu, "master", nic.bridge)
    if nic.tag is not None:
        pvid = _read_sys(SYS_NET / nic.bridge / "bridge" / "default_pvid") or "1"
        if pvid != "0":
            await _run("bridge", "vlan", "del", "dev", name, "vid", pvid)
        await _run("bridge", "vlan", "add", "dev", name, "vid", str(nic.tag), "pvid", "untagged")
    await _run("ip", "link", "set", "dev", name, "up")
    return name


async def create_taps(vmid: int, nics: Sequence[NicSpec]) -> list[str]:
    """Create and plug a tap per NIC; all or nothing.

    A tap left over with one of this VM's names (the VM is not running, so
    nobody uses it) is deleted and recreated; an interface of that name that
    is not a tap is an error.
    """
    validate_bridges(nics)
    created: list[str] = []
    try:
        for nic in nics:
            name = tap_name(vmid, nic.index)
            if link_exists(name):
                if not _is_tap(name):
                    raise GuestError(f"interface '{name}' exists and is not a tap device")
                log.warning("VM %s: removing stale tap %s", vmid, name)
                await delete_taps([name])
            created.append(name)
            await _plug(vmid, nic)
    except BaseException:
        await asyncio.shield(delete_taps(created))
        raise
    return created


async def delete_taps(names: Iterable[str]) -> None:
    """Delete these taps if they exist (idempotent; never raises for a missing one)."""
    for name in names:
        if not link_exists(name):
            continue
        try:
            await _run("ip", "link", "del", "dev", name)
        except GuestError as exc:
            if link_exists(name):  # gone meanwhile (e.g. the exit wrapper) is fine
                log.warning("could not delete tap %s: %s", name, exc)


def tap_counters(names: Iterable[str]) -> tuple[int, int]:
    """(netin, netout) of the guest over these taps, in bytes.

    The tap is the host's end: what it transmits goes into the guest
    (netin), what it receives came out of the guest (netout).
    """
    netin = netout = 0
    for name in names:
        stats = SYS_NET / name / "statistics"
        netin += int(_read_sys(stats / "tx_bytes") or 0)
        netout += int(_read_sys(stats / "rx_bytes") or 0)
    return netin, netout
