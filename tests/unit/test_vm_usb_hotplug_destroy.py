"""USB hot-plug and destroy's unreferenced volumes, below the API: which `usbN` change
reaches a running VM (PVE's vmconfig_hotplug_pending with `usb`), the QMP conversation
of qemu_usb_hotplug against a recording channel that keeps QEMU's peripherals, the
volume-name rule of `destroy-unreferenced-disks`, and `_free_unreferenced` over a real
dir storage (PVE's vdisk_list with the VM's id)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from binome.backup.jobs import without_vmid
from binome.guest import config as vmconf
from binome.guest import pending as pm
from binome.guest import qemu_hotplug
from binome.guest.errors import GuestError
from binome.guest.lifecycle import Lifecycle
from binome.guest.qmp import QmpChannel
from binome.storage.base import StorageConfig
from binome.storage.manager import StorageManager

pytestmark = pytest.mark.unit

HOST = "host=1d6b:0002"


@pytest.mark.parametrize("key, old, new, hotplug, ostype, action", [
    ("usb0", None, HOST, None, "l26", "usb"),               # default hotplug has usb
    ("usb0", HOST, None, None, "l26", "usb"),
    ("usb0", HOST, "host=1-2", None, "l26", "usb"),          # changed: replugged
    ("usb3", None, "mapping=cam", "usb", "win10", "usb"),
    ("usb0", None, HOST, "network,disk", "l26", "pending"),  # no usb in hotplug
    ("usb0", None, HOST, None, None, "pending"),             # PVE: ostype must be set
    ("usb0", None, HOST, None, "other", "pending"),
    ("usb0", None, HOST, None, "win7", "pending"),           # windows_version > 7
    ("usb0", None, "spice", None, "l26", "pending"),         # SPICE redirection: start
    ("usb0", "host=spice,usb3=1", HOST, None, "l26", "pending"),
])
def test_usb_live_action(key, old, new, hotplug, ostype, action):
    features = vmconf.hotplug_features(hotplug)
    assert pm.live_action(key, old, new, features, ostype=ostype) == action


class Peripherals(QmpChannel):
    """A QMP channel keeping QEMU's /machine/peripheral ids: device_add adds the id
    (refused for a driver in `refuse`), device_del removes it; records what is sent."""

    def __init__(self, devices: set[str], refuse: tuple[str, ...] = ()) -> None:
        super().__init__(100, Path("/nonexistent/100.qmp"))
        self.devices = set(devices)
        self.refuse = refuse
        self.sent: list[tuple[str, dict[str, Any] | None]] = []

    async def command(self, cmd: str, args: dict[str, Any] | None = None,
                      timeout: float = 10.0) -> Any:
        self.sent.append((cmd, args))
        assert args is not None
        if cmd == "qom-list":
            return [{"name": d, "type": "child<x>"} for d in sorted(self.devices)]
        if cmd == "device_add":
            if args["driver"] in self.refuse:
                raise GuestError(f"could not add {args['driver']}")
            self.devices.add(args["id"])
        elif cmd == "device_del":
            self.devices.discard(args["id"])
        return {}

    def changes(self) -> list[tuple[str, Any]]:
        return [(c, a.get("id") if a else None) for c, a in self.sent if c != "qom-list"]


async def test_usb_plug_is_the_start_s_device_at_port_n_plus_2() -> None:
    qmp = Peripherals({"xhci", "tablet"})
    await qemu_hotplug.plug_usb(qmp, 3, "vendorid=0x1d6b,productid=0x0002")
    assert qmp.sent[-1] == ("device_add", {
        "driver": "usb-host", "bus": "xhci.0", "port": "5", "vendorid": "0x1d6b",
        "productid": "0x0002", "id": "usb3"})
    await qemu_hotplug.unplug_usb(qmp, "usb3")
    assert "usb3" not in qmp.devices and ("device_del", "usb3") in qmp.changes()
    await qemu_hotplug.unplug_usb(qmp, "usb3")               # already gone: nothing sent
    assert qmp.changes().count(("device_del", "usb3")) == 1


async def test_usb_plug_adds_the_controller_and_removes_it_on_failure() -> None:
    qmp = Peripherals(set())                                  # no tablet, no usbN
    await qemu_hotplug.plug_usb(qmp, 0, "hostbus=1,hostport=2")
    assert qmp.changes() == [("device_add", "xhci"), ("device_add", "usb0")]
    assert qmp.sent[1][1] == {"driver": "qemu-xhci", "p2": "15", "p3": "15", "id": "xhci"}
    failing = Peripherals(set(), refuse=("usb-host",))
    with pytest.raises(GuestError, match="could not add usb-host"):
        await qemu_hotplug.plug_usb(failing, 0, "hostbus=1,hostport=2")
    assert failing.devices == set()                           # PVE: the xhci goes again
    kept = Peripherals({"xhci", "tablet"}, refuse=("usb-host",))
    with pytest.raises(GuestError):
        await qemu_hotplug.plug_usb(kept, 0, "hostbus=1,hostport=2")
    assert kept.devices == {"xhci", "tablet"}                 # the start's controller stays


@pytest.mark.parametrize("volid, named", [
    ("local:100/vm-100-disk-0.raw", True),
    ("local:100/vm-100-cloudinit.qcow2", True),
    ("local:100/vm-100-state-snap1.raw", True),
    ("local:100/base-100-disk-1.qcow2", True),
    ("rep:vm-100-disk-2", True),
    ("local:100/vm-101-disk-0.raw", False),                   # another VM's name
    ("local:101/vm-100-disk-0.raw", False),                   # in another VM's folder
    ("local:100/vm-1000-disk-0.raw", False),
    ("rep:vm-1000-disk-0", False),
    ("local:iso/vm-100-disk-0.iso", False),
])
def test_volume_named_for_a_vm(volid, named):
    assert vmconf.is_named_for(100, volid) is named


class Log:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def log(self, message: str) -> None:
        self.lines.append(message)

    def warn(self, message: str) -> None:
        self.lines.append(f"WARN: {message}")


async def test_free_unreferenced_frees_only_the_vm_s_own_volumes(tmp_path: Path) -> None:
    storages = StorageManager("n1", tmp_path, SimpleNamespace(store=None))  # type: ignore[arg-type]
    local = await storages.get("local")
    mine = [await local.alloc(100, 1 << 20), await local.alloc(100, 1 << 20)]
    other = await local.alloc(101, 1 << 20)
    # a file named for VM 101 in VM 100's folder: listed for 100, never freed for it
    stray = Path(local.config.path) / "images" / "100" / "vm-101-disk-7.raw"
    stray.write_bytes(b"")
    life = Lifecycle(SimpleNamespace(storages=storages, node="n1"))  # type: ignore[arg-type]
    task = Log()
    await life._free_unreferenced(task, 100, {mine[0]})      # type: ignore[arg-type]
    left = {e["volid"] for e in await local.list("images")}
    assert mine[0] in left and mine[1] not in left            # `seen` is left alone
    assert other in left and stray.exists()
    assert task.lines == [f"removed unreferenced volume {mine[1]}"]


async def test_free_unreferenced_skips_storages_without_images(tmp_path: Path,
                                                                monkeypatch) -> None:
    storages = StorageManager("n1", tmp_path, SimpleNamespace(store=None))  # type: ignore[arg-type]
    local = await storages.get("local")
    vol = await local.alloc(100, 1 << 20)
    for cfg in (StorageConfig("local", "dir", path=local.config.path, content=("iso",)),
                StorageConfig("local", "dir", path=local.config.path, disable=True),
                StorageConfig("local", "dir", path=local.config.path, nodes=("n2",))):
        async def only(cfg: StorageConfig = cfg) -> list[StorageConfig]:
            return [cfg]
        monkeypatch.setattr(storages, "configs", only)
        life = Lifecycle(SimpleNamespace(storages=storages, node="n1"))  # type: ignore[arg-type]
        await life._free_unreferenced(Log(), 100, set())      # type: ignore[arg-type]
        assert (Path(local.config.path) / "images" / vol.split(":", 1)[1]).exists(), cfg


@pytest.mark.parametrize("record, after", [
    ({"vmid": "100,101"}, {"vmid": "101"}),
    ({"vmid": "101 100;102"}, {"vmid": "101,102"}),
    ({"vmid": "100"}, None),                                 # the job goes
    ({"vmid": "1000,1001"}, {"vmid": "1000,1001"}),          # not a prefix match
    ({"all": 1, "exclude": "100,105"}, {"all": 1, "exclude": "105"}),
    ({"all": 1, "exclude": "100"}, {"all": 1}),
    ({"pool": "web"}, {"pool": "web"}),
])
def test_purge_takes_a_vm_out_of_backup_jobs(record, after):
    assert without_vmid(record, 100) == after
