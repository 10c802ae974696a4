"""Cluster resource mappings (PVE's /cluster/mapping/{dir,pci,usb}): the declared
parameters refuse bad input per parameter (pve-guest-common's formats), the records
follow PVE's check_config/delete_from_config rules, the node checks read sysfs as PVE's
assert_valid, and a VM start resolves a mapping to the node's device."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

import binome.api.methods  # noqa: F401  (registers every method)
from binome.access.permission import describe
from binome.api.errors import ParamError
from binome.api.registry import registry
from binome.api.schema import validate
from binome.cluster.mappings import (
    MappingError,
    Mappings,
    UsbDevice,
    assert_valid_pci,
    assert_valid_usb,
    build_record,
    check_dir_map_list,
    checks_on_node,
    digest,
    node_entries,
    scan_usb,
)
from binome.guest import host_devices
from binome.guest.errors import GuestFailure

pytestmark = pytest.mark.unit


def method(verb: str, path: str):
    return next(m for m in registry.methods if m.method == verb and m.path == path)


def errors(verb: str, path: str, given: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ParamError) as info:
        validate(method(verb, path).parameters, given)
    return info.value.errors


def test_paths_and_permissions_are_pves() -> None:
    paths = {(m.method, m.path) for m in registry.methods if "/cluster/mapping" in m.path}
    assert len(paths) == 16 and ("GET", "/cluster/mapping") in paths
    for kind in ("dir", "pci", "usb"):
        get = describe(method("GET", f"/cluster/mapping/{kind}/{{id}}").permission)
        assert f"/mapping/{kind}/{{id}}" in get and "Mapping.Audit" in get \
            and "Mapping.Use" in get
        assert describe(method("POST", f"/cluster/mapping/{kind}").permission) == \
            describe(method("DELETE", f"/cluster/mapping/{kind}/{{id}}").permission)
        assert f"/mapping/{kind}," in describe(
            method("POST", f"/cluster/mapping/{kind}").permission) + ","
        assert f"/mapping/{kind}/{{id}}" in describe(
            method("PUT", f"/cluster/mapping/{kind}/{{id}}").permission)
    # CLI: binome mapping pci|usb|dir list|add|set|remove
    cmds = {spec.command for spec, m in registry.commands() if "/cluster/mapping/" in m.path}
    assert {("mapping", k, v) for k in ("dir", "pci", "usb")
            for v in ("list", "add", "set", "remove", "config")} == cmds


USB = "/cluster/mapping/usb"
PCI = "/cluster/mapping/pci"
DIR = "/cluster/mapping/dir"


def test_bad_input_is_refused_per_parameter() -> None:
    good = {"id": "webcam", "map": ["node=n1,id=046d:0825"]}
    assert validate(method("POST", USB).parameters, good)["map"] == ["node=n1,id=046d:0825"]
    assert errors("POST", USB, {"id": "webcam"}) == {
        "map": "property is missing and it is not optional"}
    assert set(errors("POST", USB, {"id": "1bad", "map": ["node=n1,id=046d:0825"]})) == {"id"}
    for bad in ("node=n1", "node=n1,id=46d:0825", "node=n1,id=046d:0825,path=1.2",
                "node=-x,id=046d:0825", "node=n1,id=046d:0825,vendor=1",
                "node=n1,id=046d:0825,description=" + "d" * 4097):
        assert set(errors("POST", USB, {**good, "map": [bad]})) == {"map"}, bad
    # USB has no mdev; PCI has
    assert "mdev" in errors("POST", USB, {**good, "mdev": "1"})
    pci = {"id": "gpu", "map": ["node=n1,id=10de:1234,path=0000:01:00.0;0000:01:00.1,"
                                "iommugroup=3,subsystem-id=1458:3000"], "mdev": "1"}
    assert validate(method("POST", PCI).parameters, pci)["mdev"] is True
    for bad in ("node=n1,id=10de:1234", "node=n1,id=10de:1234,path=01:00",
                "node=n1,id=10de:1234,path=0000:01:00.0,iommugroup=x",
                "node=n1,id=10de:1234,path=01:00.0"):
        assert set(errors("POST", PCI, {**pci, "map": [bad]})) == {"map"}, bad
    assert set(errors("POST", PCI, {**pci, "live-migration-capable": "maybe"})) == {
        "live-migration-capable"}
    assert set(errors("POST", DIR, {"id": "share", "map": ["node=n1,path=relative"]})) == {
        "map"}
    assert set(errors("POST", DIR, {"id": "share", "map": ["node=n1"]})) == {"map"}
    # update: USB requires map in its schema, PCI and Dir do not; delete and digest typed
    assert errors("PUT", f"{USB}/{{id}}", {"id": "webcam"}) == {
        "map": "property is missing and it is not optional"}
    validate(method("PUT", f"{PCI}/{{id}}").parameters, {"id": "gpu", "delete": "mdev"})
    assert set(errors("PUT", f"{DIR}/{{id}}", {"id": "share", "delete": "a b=c",
                                              "digest": "x" * 65})) == {"delete", "digest"}
    assert set(errors("GET", USB, {"check-node": "bad node"})) == {"check-node"}


def test_records_follow_check_config_and_delete_from_config() -> None:
    rec = build_record("pci", None, {"map": ["node=n1,id=10de:1234,path=01:00.0"],
                                     "mdev": True, "description": "GPU"})
    assert rec == {"type": "pci", "map": ["node=n1,id=10de:1234,path=01:00.0"], "mdev": 1,
                   "description": "GPU"}
    new = build_record("pci", rec, {"map": ["node=n2,id=10de:1234,path=02:00.0"]},
                       ["description", "mdev"])
    assert new == {"type": "pci", "map": ["node=n2,id=10de:1234,path=02:00.0"]}
    for settings, delete, text in (
            ({}, [], "missing value for required option 'map'"),
            ({"map": ["x"]}, ["map"], "unable to delete required option 'map'"),
            ({"map": ["x"]}, ["vendor"], "no such option 'vendor'"),
            ({"map": ["x"], "description": "d"}, ["description"],
             "cannot set and delete property 'description' at the same time!")):
        with pytest.raises(MappingError, match=text.replace("(", r"\(").replace(")", r"\)")):
            build_record("pci", rec, settings, delete)
    with pytest.raises(MappingError, match="no such option 'mdev'"):
        build_record("usb", None, {"map": ["x"]}, ["mdev"])
    a = {"webcam": {"type": "usb", "map": ["node=n1,id=046d:0825"]}}
    assert digest(a) != digest({"webcam": {**a["webcam"], "description": "x"}})
    assert len(digest(a)) == 40


def test_dir_map_list_rules(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    check_dir_map_list([f"node=n1,path={tmp_path}", "node=n2,path=/nowhere"], "n1")
    with pytest.raises(MappingError, match="Path /nowhere does not exist"):
        check_dir_map_list(["node=n1,path=/nowhere"], "n1")
    with pytest.raises(MappingError, match="exists, but is not a directory"):
        check_dir_map_list([f"node=n1,path={tmp_path}/file"], "n1")
    with pytest.raises(MappingError, match=r"Node 'n2' is specified 2 times\."):
        check_dir_map_list(["node=n2,path=/a", "node=n2,path=/b"], "n1")


def fake_usb(root: Path, name: str, vendor: str, product: str, bus: int, devpath: str) -> None:
    d = root / name
    d.mkdir(parents=True)
    for f, v in (("idVendor", vendor), ("idProduct", product), ("busnum", str(bus)),
                 ("devpath", devpath)):
        (d / f).write_text(v + "\n")


def fake_pci(root: Path, addr: str, vendor: str, device: str, group: str | None) -> None:
    d = root / "devices" / addr
    d.mkdir(parents=True)
    (d / "vendor").write_text(f"0x{vendor}\n")
    (d / "device").write_text(f"0x{device}\n")
    if group is not None:
        (root / "groups" / group).mkdir(parents=True)
        (d / "iommu_group").symlink_to(root / "groups" / group)


def test_usb_and_pci_node_checks_read_sysfs(tmp_path: Path) -> None:
    fake_usb(tmp_path / "usb", "1-2.3", "046d", "0825", 1, "2.3")
    (tmp_path / "usb" / "1-2.3:1.0").mkdir()              # an interface: skipped
    devices = scan_usb(str(tmp_path / "usb"))
    assert devices == [UsbDevice(1, "2.3", "046d", "0825")]
    assert_valid_usb("cam", {"id": "046D:0825"}, devices)
    assert_valid_usb("cam", {"id": "046d:0825", "path": "1-2.3"}, devices)
    with pytest.raises(MappingError, match="usb device '1-4' not found"):
        assert_valid_usb("cam", {"id": "046d:0825", "path": "1-4"}, devices)
    with pytest.raises(MappingError, match=r"'id' does not match for 'cam' \(046d:0825 != "):
        assert_valid_usb("cam", {"id": "046d:0999", "path": "1-2.3"}, devices)
    with pytest.raises(MappingError, match="usb device '1234:5678' not found"):
        assert_valid_usb("cam", {"id": "1234:5678"}, devices)
    root = tmp_path / "pci"
    fake_pci(root, "0000:01:00.0", "10de", "1234", "7")
    dev_root = str(root / "devices")
    assert_valid_pci("gpu", {"id": "10de:1234", "path": "01:00", "iommugroup": 7},
                     root=dev_root)
    with pytest.raises(MappingError, match=r"pci device '02:00\.0' not found"):
        assert_valid_pci("gpu", {"id": "10de:1234", "path": "02:00.0"}, root=dev_root)
    with pytest.raises(MappingError, match="missing expected property 'iommugroup'"):
        assert_valid_pci("gpu", {"id": "10de:1234", "path": "01:00.0"}, root=dev_root)
    with pytest.raises(MappingError, match=r"'id' does not match for 'gpu' \(10de:1234 != "):
        assert_valid_pci("gpu", {"id": "10de:9999", "path": "01:00.0", "iommugroup": 7},
                         root=dev_root)
    with pytest.raises(MappingError, match="unexpected property 'subsystem-id'"):
        assert_valid_pci("gpu", {"id": "10de:1234", "path": "01:00.0", "iommugroup": 7,
                                 "subsystem-id": "1458:3000"}, root=dev_root)


def test_check_node_diagnostics(tmp_path: Path) -> None:
    record = {"type": "dir", "map": [f"node=n1,path={tmp_path}", "node=n2,path=/nowhere",
                                     "garbage"]}
    assert checks_on_node("dir", "share", record, "n1") == []
    assert checks_on_node("dir", "share", record, "n2") == [
        {"severity": "error", "message": "Invalid configuration: Path /nowhere does not exist"}]
    assert checks_on_node("dir", "share", record, "n3") == [
        {"severity": "warning", "message": "No mapping for node n3."}]
    assert node_entries("dir", record, "n2") == [{"node": "n2", "path": "/nowhere"}]


class MemoryStore:
    """The three reads a VM start makes of the mappings."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data

    async def get_value(self, key: str, default: Any = None, **_kw: Any) -> Any:
        return self.data.get(key, default)


def test_vm_start_resolves_a_usb_mapping_and_checks_pci(tmp_path: Path) -> None:
    store = MemoryStore({
        "/binome/mappings/usb/cam": {"type": "usb", "map": [
            "node=n1,id=046d:0825", "node=n2,id=046d:0825,path=3-1.2"]},
        "/binome/mappings/pci/gpu": {"type": "pci", "map": [
            "node=n1,id=10de:1234,path=0000:01:00.0"]},
    })
    warnings: list[str] = []

    def resolve(config: dict[str, Any], node: str) -> dict[str, Any]:
        return asyncio.run(host_devices.resolve(config, node, store,  # type: ignore[arg-type]
                                                warn=warnings.append,
                                                pci_root=str(tmp_path / "devices")))

    out = resolve({"usb0": "mapping=cam,usb3=1", "memory": 64}, "n1")
    assert out == {"usb0": "046d:0825,usb3=1", "memory": 64}
    assert warnings and "usb device '046d:0825' not found" in warnings[0]
    assert resolve({"usb1": "mapping=cam"}, "n2") == {"usb1": "3-1.2"}
    with pytest.raises(GuestFailure, match="USB device mapping not found for 'cam'"):
        resolve({"usb0": "mapping=cam"}, "n3")
    with pytest.raises(GuestFailure, match="USB device mapping not found for 'nope'"):
        resolve({"usb0": "mapping=nope"}, "n1")
    with pytest.raises(GuestFailure, match="PCI device mapping not found for 'gpu'"):
        resolve({"hostpci0": "mapping=gpu"}, "n2")
    with pytest.raises(GuestFailure, match=r"hostpci0: no PCI device found for "
                                           r"'0000:01:00\.0' on node n1"):
        resolve({"hostpci0": "mapping=gpu,pcie=1"}, "n1")
    fake_pci(tmp_path, "0000:01:00.0", "10de", "1234", None)
    assert resolve({"hostpci0": "mapping=gpu"}, "n1") == {"hostpci0": "mapping=gpu"}


def test_mappings_refuse_an_unknown_type() -> None:
    with pytest.raises(ValueError):
        Mappings(None, "hwrng")  # type: ignore[arg-type]
