"""The node options (PVE's NodeConfig.pm): property strings with PVE's texts, the file
text and its digest, a PUT's changes, the ACME domain check, the Wake-on-LAN packet, and
the on-boot delay read by the guest layer."""

from __future__ import annotations

import asyncio
import hashlib
import re
from types import SimpleNamespace

import pytest

from binome.cluster import node_config as nc
from binome.guest.status import GuestStatus
from binome.schema import SchemaError
from binome.store.client import Entry


def test_wakeonlan_property_string() -> None:
    assert nc.parse_wakeonlan("aa:bb:cc:dd:ee:f0") == {"mac": "aa:bb:cc:dd:ee:f0"}
    assert nc.parse_wakeonlan("mac=AA:BB:CC:DD:EE:F0,bind-interface=eno1,"
                              "broadcast-address=192.0.2.255") == {
        "mac": "AA:BB:CC:DD:EE:F0", "bind-interface": "eno1",
        "broadcast-address": "192.0.2.255"}
    for text, error in (
            ("ab:bb:cc:dd:ee:f0", "invalid format - mac: value does not look like a valid "
                                  "unicast MAC address"),        # the I/G bit set
            ("aa:bb:cc:dd:ee", "unicast MAC"),
            ("aa:bb:cc:dd:ee:f0,bind-interface=br-lan", "invalid network interface name "
                                                         "'br-lan'"),
            ("aa:bb:cc:dd:ee:f0,broadcast-address=2001:db8::1", "valid IPv4 address"),
            ("aa:bb:cc:dd:ee:f0,port=7", "unknown key 'port'"),
            ("bind-interface=eno1", "mac: property is missing")):
        with pytest.raises(ValueError, match=error):
            nc.parse_wakeonlan(text)


def test_schema_checks_each_key_with_pve_texts() -> None:
    good = {"description": "rack 3\nsecond line", "startall-onboot-delay": "30",
            "ballooning-target": 70, "wakeonlan": "aa:bb:cc:dd:ee:f0",
            "location": "name=Lab,latitude=48.8,longitude=2.35",
            "acme": "account=prod,domains=a.example;b.example",
            "acmedomain0": "c.example,plugin=dns1,alias=_acme.example.org"}
    out = nc.apply_changes({}, good, [])
    assert out["startall-onboot-delay"] == 30 and out["ballooning-target"] == 70
    with pytest.raises(SchemaError) as bad:
        nc.apply_changes({"description": "kept"}, {
            "startall-onboot-delay": 301, "ballooning-target": -1, "wakeonlan": "zz",
            "location": "name=x", "acmedomain6": "d.example", "acme": "domains=nodot"}, [])
    assert bad.value.errors == {
        "startall-onboot-delay": "value must have a maximum value of 300",
        "ballooning-target": "value must have a minimum value of 0",
        "wakeonlan": "invalid format - mac: value does not look like a valid unicast MAC "
                     "address",
        "location": "invalid format - latitude: property is missing and it is not optional",
        "acmedomain6": "property is not defined in schema and the schema does not allow "
                       "additional properties",
        "acme": "invalid format - domains: value 'nodot' does not look like a valid "
                "domain name!"}
    with pytest.raises(SchemaError) as long:
        nc.apply_changes({}, {"description": "x" * (64 * 1024 + 1)}, [])
    assert long.value.errors == {"description": "value may only be 65536 characters long"}


def test_acme_domains_unique_as_pve() -> None:
    with pytest.raises(nc.NodeConfigError, match=re.escape(
            "duplicate domain 'a.example' in ACME config properties 'acmedomain1' and "
            "'acme'")):
        nc.apply_changes({"acme": "domains=a.example"}, {"acmedomain1": "A.example"}, [])
    # deleting the other one in the same change is fine (PVE: set, then delete, then check)
    assert nc.apply_changes({"acme": "domains=a.example"}, {"acmedomain1": "a.example"},
                            ["acme"]) == {"acmedomain1": "a.example"}


def test_file_text_and_digest_are_pve_s() -> None:
    conf = {"wakeonlan": "aa:bb:cc:dd:ee:f0", "description": "Rack 3: 50%\nété",
            "startall-onboot-delay": 15, "ballooning-target": 80}
    raw = nc.format_text(conf)
    assert raw == ("#Rack 3%3A 50%25\n#%C3%A9t%C3%A9\nballooning-target: 80\n"
                   "startall-onboot-delay: 15\nwakeonlan: aa:bb:cc:dd:ee:f0\n")
    back = nc.parse_text(raw)
    # PVE answers the description with the newline each comment line ends with
    assert back == {**conf, "description": "Rack 3: 50%\nété\n"}
    assert nc.digest(raw) == hashlib.sha1(raw.encode()).hexdigest()
    # a value PVE would not accept is dropped on read, as PVE's parse_config does
    assert nc.parse_text("startall-onboot-delay: 900\nfoo: bar\nballooning-target: 5\n") \
        == {"ballooning-target": 5}
    # blank lines inside the description are kept, trailing ones dropped (Perl's split)
    assert nc.format_text({"description": "a\n\nb\n\n"}) == "#a\n#\n#b\n"
    assert nc.parse_text("#a\n#\n#b\n") == {"description": "a\n\nb\n"}
    with pytest.raises(nc.NodeConfigError, match="invalid newline inside property"):
        nc.format_text({"location": "a\nb"})


def test_magic_packet() -> None:
    packet = nc.magic_packet("0a:1B:2c:3d:4e:5f")
    assert len(packet) == 102 and packet[:6] == b"\xff" * 6
    assert packet[6:] == bytes([0x0A, 0x1B, 0x2C, 0x3D, 0x4E, 0x5F]) * 16


class _Store:
    def __init__(self, values: dict[str, str]) -> None:
        self.values = values

    async def get(self, key: str, **_kw: object) -> Entry | None:
        return Entry(key, self.values[key], 7) if key in self.values else None


def test_onboot_delay_waits_the_node_s_setting() -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    def status(values: dict[str, str]) -> GuestStatus:
        ctx = SimpleNamespace(node="n1", cluster=SimpleNamespace(store=_Store(values)))
        return GuestStatus(ctx, None, None)   # type: ignore[arg-type]

    raw = nc.format_text({"startall-onboot-delay": 12})
    assert asyncio.run(status({nc.key("n1"): raw}).onboot_delay(sleep)) == 12
    assert slept == [12]
    # another node's setting, or none: no wait
    assert asyncio.run(status({nc.key("n2"): raw}).onboot_delay(sleep)) == 0
    assert slept == [12]


def test_wake_refusals_with_pve_texts() -> None:
    configs = nc.NodeConfigs(_Store({nc.key("n2"): "description: x\n"}))  # type: ignore[arg-type]
    for target, text in (("n1", "'n1' is local node, cannot wake my self!"),
                         ("localhost", "'localhost' is local node"),
                         ("n9", "no such cluster node 'n9'"),
                         ("n2", "No wake on LAN MAC address defined for 'n2'!")):
        with pytest.raises(nc.NodeConfigError, match=text):
            asyncio.run(nc.wake(configs, target, "n1", ["n1", "n2"]))


def test_empty_config_answers_as_pve() -> None:
    empty = asyncio.run(nc.NodeConfigs(_Store({})).load("n1"))   # type: ignore[arg-type]
    assert empty.answer() == {}
    one = asyncio.run(nc.NodeConfigs(_Store({nc.key("n1"): "#x\n"})).load("n1"))  # type: ignore[arg-type]
    assert one.answer() == {"description": "x\n", "digest": hashlib.sha1(b"#x\n").hexdigest()}
