"""QEMU's side of hot-plug: the QMP conversations that add and remove a running
guest's disks, NICs, USB host devices, vCPUs and memory DIMMs (as qemu-server's
qemu_driveadd / qemu_deviceadd / qemu_devicedel / qemu_usb_hotplug / qemu_cpu_hotplug /
qemu_memory_hotplug). It owns
nothing: the runtime calls it with the guest's QMP channel and keeps its own record;
the device strings are the command line's own (`argv`), so a plugged device is the
one a start would make.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from binome.guest import qemu_mirror
from binome.guest.argv import (
    XHCI_CONTROLLER,
    dimm_device,
    disk_device,
    drive_option,
    nic_device,
    nic_netdev,
    usb_host_device,
)
from binome.guest.errors import GuestError
from binome.guest.memory import Dimm
from binome.guest.qmp import QmpChannel
from binome.guest.spec import DiskSpec, NicSpec

# how long a device may take to go after device_del (PVE waits about as long); a
# PCI device needs the guest's consent (ACPI/SHPC), a SCSI disk goes at once
UNPLUG_TIMEOUT = 10.0
UNPLUG_POLL = 0.1


def device_args(option: str) -> dict[str, Any]:
    """A ``-device`` value as device_add arguments: ``driver`` and the properties as
    strings (QEMU parses them as on the command line; PVE's qemu_deviceadd does the
    same)."""
    driver, _, rest = option.partition(",")
    args: dict[str, Any] = {"driver": driver}
    for item in rest.split(",") if rest else []:
        key, _, value = item.partition("=")
        args[key] = value
    return args


async def _hmp(qmp: QmpChannel, line: str) -> None:
    answer = await qmp.command("human-monitor-command", {"command-line": line})
    if isinstance(answer, str) and answer.strip() and "OK" not in answer:
        raise GuestError(answer.strip())


async def _peripherals(qmp: QmpChannel) -> set[str]:
    return {p["name"] for p in await qmp.command("qom-list", {"path": "/machine/peripheral"})}


async def _wait_gone(qmp: QmpChannel, device_id: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while device_id in await _peripherals(qmp):
        if time.monotonic() >= deadline:
            raise GuestError(f"error on hot-unplugging device '{device_id}'")
        await asyncio.sleep(UNPLUG_POLL)


async def plug_disk(qmp: QmpChannel, disk: DiskSpec, hotplug_pci: bool) -> None:
    """The drive (the command line's ``-drive`` text, through the monitor's drive_add
    as PVE does), then its device; the drive is removed again if the device fails."""
    await _hmp(qmp, f"drive_add auto \"{drive_option(disk)}\"")
    try:
        await qmp.command("device_add", device_args(disk_device(disk, None, hotplug_pci)))
    except GuestError:
        await _hmp(qmp, f"drive_del drive-{disk.name}")
        raise


def _holds(block: dict[str, Any], name: str) -> bool:
    qdev = str(block.get("qdev") or "")
    return (block.get("device") == f"drive-{name}" or qdev == name
            or qdev.startswith(f"/machine/peripheral/{name}/"))


async def unplug_disk(qmp: QmpChannel, name: str, timeout: float = UNPLUG_TIMEOUT) -> None:
    """device_del, wait until QEMU dropped the device, then until its drive (deleted
    with it, as a drive_add'ed one is) is gone too, or drive_del it."""
    deadline = time.monotonic() + timeout
    if name in await _peripherals(qmp):
        await qmp.command("device_del", {"id": name})
        await _wait_gone(qmp, name, timeout)
    while True:
        held = [b for b in await qmp.command("query-block") if _holds(b, name)]
        if not held:
            # a disk moved while the guest ran sits on a node the monitor added
            # (qemu_mirror): the drive's deletion leaves it open until blockdev-del
            for node in await qemu_mirror.owned_nodes(qmp, name):
                await qemu_mirror.detach(qmp, node)
            return
        # only the named drive is left, no device on it: a drive of its own to delete
        if time.monotonic() >= deadline or all(not b.get("qdev") for b in held):
            await _hmp(qmp, f"drive_del drive-{name}")
            return
        await asyncio.sleep(UNPLUG_POLL)


async def plug_nic(qmp: QmpChannel, vmid: int, nic: NicSpec, hotplug_pci: bool) -> None:
    """The tap backend (the tap exists and is on its bridge), then the device."""
    netdev = nic_netdev(vmid, nic)
    kind, _, rest = netdev.partition(",")
    args: dict[str, Any] = {"type": kind}
    for item in rest.split(","):
        key, _, value = item.partition("=")
        args[key] = value
    await qmp.command("netdev_add", args)
    try:
        await qmp.command("device_add", device_args(nic_device(nic, None, hotplug_pci)))
    except GuestError:
        await qmp.command("netdev_del", {"id": nic.name})
        raise


async def unplug_nic(qmp: QmpChannel, name: str, timeout: float = UNPLUG_TIMEOUT) -> None:
    if name in await _peripherals(qmp):
        await qmp.command("device_del", {"id": name})
        await _wait_gone(qmp, name, timeout)
    try:
        await qmp.command("netdev_del", {"id": name})
    except GuestError as exc:
        if "not found" not in str(exc).lower():
            raise


async def plug_usb(qmp: QmpChannel, index: int, selector: str) -> None:
    """PVE's qemu_usb_hotplug: `usbN` as a `usb-host` on the xhci controller at port
    N+2 (the command line's own device); the controller is added first when the guest
    has none (no tablet, no USB device at start) and removed again if the device fails."""
    added_xhci = False
    if "xhci" not in await _peripherals(qmp):
        await qmp.command("device_add", device_args(XHCI_CONTROLLER))
        added_xhci = True
    try:
        await qmp.command("device_add", device_args(usb_host_device(index, selector)))
    except GuestError:
        if added_xhci:
            await qmp.command("device_del", {"id": "xhci"})
        raise


async def unplug_usb(qmp: QmpChannel, device_id: str,
                     timeout: float = UNPLUG_TIMEOUT) -> None:
    """device_del and wait until QEMU dropped it (PVE's qemu_devicedelverify)."""
    if device_id in await _peripherals(qmp):
        await qmp.command("device_del", {"id": device_id})
        await _wait_gone(qmp, device_id, timeout)


async def set_vcpus(qmp: QmpChannel, count: int) -> None:
    """Bring the online vCPUs to `count` (PVE's qemu_cpu_hotplug): new ones are
    device_add'ed into free slots of query-hotpluggable-cpus as ``cpuN``; only
    those can go again (the start's vCPUs cannot be unplugged)."""
    slots = await qmp.command("query-hotpluggable-cpus")
    online = [s for s in slots if s.get("qom-path")]
    if count > len(online):
        free = sorted((s for s in slots if not s.get("qom-path")),
                      key=lambda s: tuple(sorted(s["props"].items())))
        for n, slot in enumerate(free[:count - len(online)], start=len(online) + 1):
            await qmp.command("device_add", {"driver": slot["type"], "id": f"cpu{n}",
                                             **slot["props"]})
        return
    plugged = sorted((s["qom-path"].rsplit("/", 1)[-1] for s in online
                      if s["qom-path"].startswith("/machine/peripheral/")),
                     key=lambda i: int(i[3:]) if i[3:].isdigit() else 0, reverse=True)
    excess = len(online) - count
    if excess > len(plugged):
        raise GuestError("online cpu unplug is only possible for hot-plugged vCPUs: "
                         "reduce 'vcpus' at the next start")
    for device_id in plugged[:excess]:
        await qmp.command("device_del", {"id": device_id})
        await _wait_gone(qmp, device_id, UNPLUG_TIMEOUT)


async def memory_dimms(qmp: QmpChannel) -> dict[str, int]:
    """The guest's hot-plugged DIMMs, id -> size in bytes (PVE's qemu_memdevices_list,
    from query-memory-devices)."""
    out: dict[str, int] = {}
    for device in await qmp.command("query-memory-devices"):
        data = device.get("data") or {}
        if str(data.get("id", "")).startswith("dimm"):
            out[str(data["id"])] = int(data.get("size") or 0)
    return out


async def set_memory(qmp: QmpChannel, wanted: list[Dimm],
                     timeout: float = UNPLUG_TIMEOUT) -> None:
    """Bring the guest's DIMMs to `wanted` (PVE's qemu_memory_hotplug): the missing
    ones are added in order (a `memory-backend-ram` object ``mem-dimmN``, then its
    `pc-dimm`), the ones beyond removed last first (device_del, which needs the
    guest's consent: one still there after `timeout` stops here with PVE's "error
    unplug memory module"; then its object). DIMMs already as wanted are kept, so a
    change half done is finished by the next call."""
    present = await memory_dimms(qmp)
    names = {d.name for d in wanted}
    for dimm in wanted:
        if dimm.name in present:
            continue
        await qmp.command("object-add", {"qom-type": "memory-backend-ram",
                                         "id": f"mem-{dimm.name}",
                                         "size": dimm.size << 20})
        try:
            await qmp.command("device_add", device_args(dimm_device(dimm)))
        except GuestError:
            await qmp.command("object-del", {"id": f"mem-{dimm.name}"})
            raise
    extra = sorted((n for n in present if n not in names),
                   key=lambda n: int(n[4:]) if n[4:].isdigit() else 0, reverse=True)
    for name in extra:
        await qmp.command("device_del", {"id": name})
        deadline = time.monotonic() + timeout
        while name in await memory_dimms(qmp):
            if time.monotonic() >= deadline:
                raise GuestError(f"{name}: error unplug memory module (the guest did not "
                                 f"release it)")
            await asyncio.sleep(UNPLUG_POLL * 5)
        try:
            await qmp.command("object-del", {"id": f"mem-{name}"})
        except GuestError as exc:
            if "not found" not in str(exc).lower():
                raise
