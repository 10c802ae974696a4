"""The neutral schema: PVE property strings (typed keys, a default key), -list formats,
the HA formats, and their PVE-style per-parameter errors."""

from __future__ import annotations

import pytest

from binome.api.errors import ParamError
from binome.api.schema import validate
from binome.schema import (
    Param,
    PropertyString,
    SchemaError,
    check,
    check_format,
    split_list,
)

NIC = PropertyString(keys={
    "model": Param(enum=("virtio", "e1000")),
    "bridge": Param(pattern=r"[A-Za-z0-9_.\-]{1,15}"),
    "tag": Param(type="integer", optional=True, minimum=1, maximum=4094),
    "firewall": Param(type="boolean", optional=True, default=False),
}, default_key="model")


def test_property_string_default_key_and_types() -> None:
    assert NIC.parse("virtio,bridge=vmbr0,tag=10") == {
        "model": "virtio", "bridge": "vmbr0", "tag": 10, "firewall": False}
    assert NIC.parse("model=e1000, bridge=vmbr1,firewall=1") == {
        "model": "e1000", "bridge": "vmbr1", "firewall": True}


@pytest.mark.parametrize("text, error", [
    ("virtio,bridge=vmbr0,speed=1", "invalid format - unknown key 'speed'"),
    ("virtio,bridge=vmbr0,bridge=vmbr1",
     "invalid format - duplicate key in comma-separated list property: bridge"),
    ("bridge=vmbr0,virtio", "invalid format - missing key in comma-separated list property"),
    ("virtio", "invalid format - bridge: property is missing and it is not optional"),
    ("rtl,bridge=vmbr0", "invalid format - model: value 'rtl' does not have a value in the "
                         "enumeration 'virtio, e1000'"),
    ("virtio,bridge=vmbr0,tag=0", "invalid format - tag: value must have a minimum value of 1"),
])
def test_property_string_errors(text: str, error: str) -> None:
    with pytest.raises(ValueError) as info:
        NIC.parse(text)
    assert str(info.value) == error


def test_property_string_parameter_is_checked_and_kept_as_text() -> None:
    params = {"net0": Param(props=NIC, optional=True)}
    assert check(params, {"net0": "virtio,bridge=vmbr0"}) == {"net0": "virtio,bridge=vmbr0"}
    with pytest.raises(ParamError) as info:
        validate(params, {"net0": "virtio,bridge=vmbr0,x=1"})
    assert info.value.errors == {"net0": "invalid format - unknown key 'x'"}


def test_property_string_format_and_help() -> None:
    assert NIC.format({"model": "virtio", "bridge": "vmbr0", "tag": 5}) == \
        "virtio,bridge=vmbr0,tag=5"
    assert NIC.typetext().startswith("[model=]<virtio|e1000> ,bridge=<string>")
    schema = Param(props=NIC).json_schema()
    assert schema["format"]["model"]["default_key"] == 1
    assert schema["typetext"] == NIC.typetext()


def test_additional_keys() -> None:
    free = PropertyString(keys={}, additional=Param(), key_pattern=r"[a-z]+")
    assert free.parse("ip=10.0.0.1,lanplus=1") == {"ip": "10.0.0.1", "lanplus": "1"}
    with pytest.raises(ValueError, match="unknown key 'A-B'"):
        free.parse("A-B=1")


def test_ha_formats() -> None:
    assert check_format("pve-ha-resource-or-vm-id", "100") == "vm:100"
    assert check_format("pve-ha-resource-or-vm-id", "vm:0100") == "vm:100"
    with pytest.raises(ValueError, match="containers are not supported"):
        check_format("pve-ha-resource-or-vm-id", "ct:100")
    with pytest.raises(ValueError, match="unable to parse service id 'foo'"):
        check_format("pve-ha-resource-or-vm-id", "foo")
    assert check_format("pve-ha-group-node-list", "n1:2, n2:1;n3") == "n1:2,n2:1,n3"
    for bad in ("n1:x", "-n1", "n1:2,n_2"):
        with pytest.raises(ValueError, match="valid ha group node"):
            check_format("pve-ha-group-node-list", bad)
    assert split_list("a, b;c  d") == ["a", "b", "c", "d"]


def test_host_address_format() -> None:
    for good in ("10.0.0.1", "::1", "bmc-n2.example.org", "bmc"):
        assert check_format("host-address", good) == good
    for bad in ("10.0.0.300", "bmc_1.example", "-bmc", "a..b"):
        with pytest.raises(ValueError, match="invalid address"):
            check_format("host-address", bad)


def test_schema_error_lists_every_parameter() -> None:
    with pytest.raises(SchemaError) as info:
        check({"a": Param(), "b": Param(type="integer")}, {"b": "x", "c": 1})
    assert set(info.value.errors) == {"a", "b", "c"}
