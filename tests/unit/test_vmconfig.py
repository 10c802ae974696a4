"""VM config model (qm style): .conf text, property strings, sizes, disks, NICs, boot, schema."""

import re

import pytest

from binome.guest import config as vmconf
from binome.guest.config import (
    ConfigError,
    boot_order,
    check_boot_devices,
    digest,
    format_conf,
    format_size,
    parse_conf,
    parse_disk,
    parse_net,
    parse_property_string,
    parse_size,
    validate_changes,
)

MAC_RE = re.compile(r"^BC:24:11(?::[0-9A-F]{2}){3}$")


# ---------------------------------------------------------------- .conf text
def test_parse_conf_types_and_description():
    text = ("#first line\n"
            "# second line\n"
            "boot: order=virtio0;net0\n"
            "cores: 2\n"
            "memory: 2048\n"
            "name: web1\n"
            "net0: virtio=BC:24:11:00:00:01,bridge=vmbr0\n"
            "onboot: 1\n"
            "template: 0\n"
            "virtio0: local:100/vm-100-disk-0.raw,size=4G\n")
    conf = parse_conf(text)
    assert conf == {
        "description": "first line\n second line",
        "boot": "order=virtio0;net0",
        "cores": 2,
        "memory": 2048,
        "name": "web1",
        "net0": "virtio=BC:24:11:00:00:01,bridge=vmbr0",
        "onboot": 1,
        "template": 0,
        "virtio0": "local:100/vm-100-disk-0.raw,size=4G",
    }
    assert type(conf["memory"]) is int
    assert type(conf["cores"]) is int
    # a value containing ':' is split on the first one only
    assert conf["virtio0"].startswith("local:100/")


def test_parse_conf_skips_blank_lines_and_leaves_out_snapshot_sections():
    text = "memory: 512\n\n   \ncores: 1\n[snap1]\nmemory: 4096\n"
    assert parse_conf(text) == {"memory": 512, "cores": 1}


def test_parse_conf_non_integer_value_kept_as_text():
    assert parse_conf("memory: lots\n") == {"memory": "lots"}


@pytest.mark.parametrize("raw, expected", [("1", 1), ("0", 0), ("true", 1), ("yes", 1),
                                           ("on", 1), ("no", 0), ("false", 0)])
def test_parse_conf_boolean_values(raw, expected):
    assert parse_conf(f"onboot: {raw}\n")["onboot"] == expected


def test_format_conf_sorted_keys_description_first_booleans_as_digits():
    conf = {"memory": 1024, "onboot": True, "template": False, "cores": 4,
            "description": "Line one\nLine two", "name": "vm1"}
    assert format_conf(conf) == ("#Line one\n#Line two\n"
                                 "cores: 4\nmemory: 1024\nname: vm1\n"
                                 "onboot: 1\ntemplate: 0\n")


def test_format_conf_empty_description_omitted():
    assert format_conf({"description": "", "cores": 1}) == "cores: 1\n"


def test_round_trip_multi_line_description_and_values():
    conf = {"description": "Notes\n\n  indented line\nlast", "memory": 4096, "cores": 2,
            "sockets": 1, "onboot": 1, "name": "db",
            "virtio0": "local:100/vm-100-disk-0.raw,size=32G,cache=writeback",
            "net0": "virtio=BC:24:11:AA:BB:CC,bridge=vmbr0,tag=10",
            "boot": "order=virtio0;net0"}
    text = format_conf(conf)
    assert parse_conf(text) == conf
    # canonical text is a fixed point
    assert format_conf(parse_conf(text)) == text


def test_round_trip_booleans_become_ints():
    conf = parse_conf(format_conf({"onboot": True, "template": False}))
    assert conf == {"onboot": 1, "template": 0}
    assert type(conf["onboot"]) is int


def test_digest_stable_and_content_sensitive():
    text = format_conf({"memory": 512, "cores": 1})
    assert digest(text) == digest(format_conf({"cores": 1, "memory": 512}))
    assert re.fullmatch(r"[0-9a-f]{40}", digest(text))
    assert digest(text) != digest(format_conf({"memory": 1024, "cores": 1}))
    assert digest(text) != digest(format_conf({"memory": 512, "cores": 1,
                                               "description": "x"}))


@pytest.mark.parametrize("key, value", [
    ("append", "console=ttyS0\nvirtio1: local:200/vm-200-disk-0.raw"),
    ("smbios1", "uuid=x\nlock: migrate"),
    ("vga", "std,memory=16\nargs: -monitor stdio"),
])
def test_newline_in_value_cannot_inject_config_keys(key, value):
    try:
        out = validate_changes({key: value})
    except ConfigError:
        return   # rejecting it is fine
    assert parse_conf(format_conf(out)) == out


# ---------------------------------------------------------------- property strings
def test_property_string_default_key():
    assert parse_property_string("local:4,size=4G", "file") == {"file": "local:4",
                                                                "size": "4G"}
    assert parse_property_string("a=1,b=2") == {"a": "1", "b": "2"}
    assert parse_property_string("a=1,,b=") == {"a": "1", "b": ""}
    assert parse_property_string("") == {}


def test_property_string_value_may_contain_equals():
    assert parse_property_string("k=a=b") == {"k": "a=b"}


def test_property_string_duplicate_rejected():
    with pytest.raises(ValueError, match="duplicate property 'a'"):
        parse_property_string("a=1,a=2")
    with pytest.raises(ValueError, match="duplicate property 'file'"):
        parse_property_string("x,file=y", "file")


@pytest.mark.parametrize("value, default", [
    ("bare", None),            # no default key
    ("a=1,bare", "file"),      # bare item that is not first
    ("x,y", "file"),
])
def test_property_string_bad_item_rejected(value, default):
    with pytest.raises(ValueError, match="invalid property"):
        parse_property_string(value, default)


# ---------------------------------------------------------------- sizes
@pytest.mark.parametrize("text, expected", [
    ("32G", 32 << 30), ("512M", 512 << 20), ("1.5T", 3 << 39), ("4K", 4096),
    ("1048576", 1 << 20), ("0", 0), (" 2G ", 2 << 30), ("0.5G", 512 << 20),
])
def test_parse_size(text, expected):
    assert parse_size(text) == expected
    assert type(parse_size(text)) is int


@pytest.mark.parametrize("text", ["", "G", "abc", "-1G", "1.5X", "1GB", "1 G", "1e3", "1.G"])
def test_parse_size_invalid(text):
    with pytest.raises(ValueError, match="invalid size"):
        parse_size(text)


@pytest.mark.parametrize("size, text", [
    (32 << 30, "32G"), (512 << 20, "512M"), (2 << 40, "2T"), (4096, "4K"),
    (1536 << 20, "1536M"), (1000, "1000"), (0, "0"), ((1 << 30) + 512, str((1 << 30) + 512)),
])
def test_format_size(size, text):
    assert format_size(size) == text
    assert parse_size(format_size(size)) == size


# ---------------------------------------------------------------- disks
def test_parse_disk_allocation_request():
    d = parse_disk("virtio0", "local:4")
    assert d.key == "virtio0" and d.bus == "virtio" and d.index == 0
    assert d.volid is None
    assert d.new_size_gib == 4.0
    assert d.options == {"_storage": "local"}
    assert not d.is_cdrom


def test_parse_disk_allocation_request_keeps_options():
    d = parse_disk("scsi1", "fast-ssd:0.5,cache=none,format=qcow2")
    assert d.new_size_gib == 0.5
    assert d.options == {"cache": "none", "format": "qcow2", "_storage": "fast-ssd"}


def test_parse_disk_allocation_size_must_be_positive():
    with pytest.raises(ValueError, match="positive"):
        parse_disk("virtio0", "local:0")


def test_parse_disk_existing_volume():
    d = parse_disk("virtio0", "local:100/vm-100-disk-0.raw,size=1G,cache=writeback")
    assert d.volid == "local:100/vm-100-disk-0.raw"
    assert d.storage == "local"
    assert d.new_size_gib is None
    assert d.options == {"size": "1G", "cache": "writeback"}
    assert d.size == 1 << 30
    assert d.format() == "local:100/vm-100-disk-0.raw,size=1G,cache=writeback"


def test_parse_disk_without_size_option():
    d = parse_disk("sata2", "local:iso/boot.iso,media=cdrom")
    assert d.size is None
    assert d.is_cdrom
    assert d.volid == "local:iso/boot.iso"


@pytest.mark.parametrize("value", ["none,media=cdrom", "none", "cdrom"])
def test_parse_disk_empty_cdrom(value):
    d = parse_disk("ide2", value)
    assert d.volid is None
    assert d.storage is None
    assert d.new_size_gib is None
    assert d.is_cdrom
    assert d.format().startswith("none")


def test_parse_disk_bad_cache_mode():
    with pytest.raises(ValueError, match="invalid cache mode 'directsync2'"):
        parse_disk("virtio0", "local:100/vm-100-disk-0.raw,cache=directsync2")


def test_parse_disk_bad_media():
    with pytest.raises(ValueError, match="invalid media"):
        parse_disk("ide2", "local:iso/x.iso,media=floppy")


def test_parse_disk_bad_size_option():
    with pytest.raises(ValueError, match="invalid size"):
        parse_disk("virtio0", "local:100/vm-100-disk-0.raw,size=big")


def test_parse_disk_unknown_option():
    with pytest.raises(ValueError, match="unknown disk option 'bogus'"):
        parse_disk("virtio0", "local:100/vm-100-disk-0.raw,bogus=1")


def test_parse_disk_internal_storage_option_not_accepted_from_user():
    with pytest.raises(ValueError, match="unknown disk option '_storage'"):
        parse_disk("virtio0", "local:4,_storage=other")


@pytest.mark.parametrize("key", ["virtio16", "ide4", "sata6", "scsi31", "net0", "virtio",
                                 "nvme0", "virtio-1", "VIRTIO0"])
def test_parse_disk_bad_key(key):
    with pytest.raises(ValueError, match="invalid disk key"):
        parse_disk(key, "local:4")


@pytest.mark.parametrize("key, bus, index", [("scsi30", "scsi", 30), ("virtio15", "virtio", 15),
                                             ("ide3", "ide", 3), ("sata5", "sata", 5)])
def test_parse_disk_key_upper_bounds_ok(key, bus, index):
    d = parse_disk(key, "local:1")
    assert (d.bus, d.index) == (bus, index)


@pytest.mark.parametrize("value", ["just-a-name", "local:", ":vol", "local:a b",
                                   "1local:100/x.raw", "local:100/x.raw;rm"])
def test_parse_disk_bad_volume(value):
    with pytest.raises(ValueError, match="invalid volume"):
        parse_disk("virtio0", value)


def test_parse_disk_missing_volume():
    with pytest.raises(ValueError, match="missing volume"):
        parse_disk("virtio0", "size=4G")


# ---------------------------------------------------------------- NICs
def test_parse_net_without_mac_needs_assign_mac():
    with pytest.raises(ValueError, match="missing MAC"):
        parse_net("net0", "virtio,bridge=vmbr0")
    n = parse_net("net0", "virtio,bridge=vmbr0", assign_mac=True)
    assert MAC_RE.match(n.mac), n.mac
    assert n.model == "virtio" and n.bridge == "vmbr0" and n.tag is None
    assert n.format() == f"virtio={n.mac},bridge=vmbr0"


def test_assigned_macs_are_random_and_unicast():
    macs = {parse_net("net0", "e1000,bridge=vmbr0", assign_mac=True).mac for _ in range(20)}
    assert len(macs) > 1
    for mac in macs:
        assert MAC_RE.match(mac)
        assert int(mac[:2], 16) & 1 == 0


def test_parse_net_full_spec_normalised():
    n = parse_net("net3", "virtio=bc:24:11:aa:bb:cc,bridge=vmbr0,tag=10")
    assert n.key == "net3" and n.index == 3
    assert n.mac == "BC:24:11:AA:BB:CC"
    assert n.tag == 10
    assert n.format() == "virtio=BC:24:11:AA:BB:CC,bridge=vmbr0,tag=10"


def test_parse_net_model_macaddr_form():
    n = parse_net("net1", "model=virtio,macaddr=bc:24:11:00:00:01,bridge=vmbr1")
    assert (n.model, n.mac, n.bridge) == ("virtio", "BC:24:11:00:00:01", "vmbr1")
    assert n.format() == "virtio=BC:24:11:00:00:01,bridge=vmbr1"


def test_parse_net_extra_options_kept():
    n = parse_net("net0", "rtl8139=BC:24:11:00:00:02,bridge=vmbr0,firewall=1,mtu=1400")
    assert n.options == {"firewall": "1", "mtu": "1400"}
    assert n.format() == "rtl8139=BC:24:11:00:00:02,bridge=vmbr0,firewall=1,mtu=1400"


@pytest.mark.parametrize("mac", ["01:00:5E:00:00:01", "FF:FF:FF:FF:FF:FF", "BD:24:11:00:00:01"])
def test_parse_net_multicast_mac_rejected(mac):
    with pytest.raises(ValueError, match="invalid MAC"):
        parse_net("net0", f"virtio={mac},bridge=vmbr0")


@pytest.mark.parametrize("mac", ["BC:24:11:00:00", "BC-24-11-00-00-01", "GG:24:11:00:00:01",
                                 "BC:24:11:00:00:01:02"])
def test_parse_net_malformed_mac_rejected(mac):
    with pytest.raises(ValueError, match="invalid MAC"):
        parse_net("net0", f"virtio={mac},bridge=vmbr0")


@pytest.mark.parametrize("tag", ["0", "4095", "abc", "-1", ""])
def test_parse_net_bad_vlan_tag(tag):
    with pytest.raises(ValueError, match="invalid VLAN tag"):
        parse_net("net0", f"virtio=BC:24:11:00:00:01,bridge=vmbr0,tag={tag}")


@pytest.mark.parametrize("tag", ["1", "4094"])
def test_parse_net_vlan_tag_bounds_ok(tag):
    assert parse_net("net0", f"virtio=BC:24:11:00:00:01,bridge=vmbr0,tag={tag}").tag == int(tag)


@pytest.mark.parametrize("value", ["virtio=BC:24:11:00:00:01",
                                   "virtio=BC:24:11:00:00:01,bridge=",
                                   "virtio=BC:24:11:00:00:01,bridge=vmbr0;rm",
                                   "virtio=BC:24:11:00:00:01,bridge=averyveryverylongbr"])
def test_parse_net_missing_or_bad_bridge(value):
    with pytest.raises(ValueError, match="bridge"):
        parse_net("net0", value)


@pytest.mark.parametrize("model", ["ne2k_pci", "vmxnet3", "VIRTIO", ""])
def test_parse_net_unknown_model(model):
    with pytest.raises(ValueError, match="invalid NIC model"):
        parse_net("net0", f"{model}=BC:24:11:00:00:01,bridge=vmbr0")


def test_parse_net_unknown_option():
    with pytest.raises(ValueError, match="unknown NIC option 'foo'"):
        parse_net("net0", "virtio=BC:24:11:00:00:01,bridge=vmbr0,foo=1")


@pytest.mark.parametrize("key", ["net32", "net", "eth0", "net-1"])
def test_parse_net_bad_key(key):
    with pytest.raises(ValueError, match="invalid NIC key"):
        parse_net(key, "virtio=BC:24:11:00:00:01,bridge=vmbr0")


def test_parse_net_empty():
    with pytest.raises(ValueError, match="empty"):
        parse_net("net0", "")


# ---------------------------------------------------------------- boot order
def test_boot_order_explicit():
    conf = {"boot": "order=net0;virtio0;;", "virtio0": "local:1", "net0": "x"}
    assert boot_order(conf) == ["net0", "virtio0"]


def test_boot_order_default_disks_then_nics_without_cdroms():
    conf = {
        "net1": "virtio=BC:24:11:00:00:02,bridge=vmbr0",
        "net0": "virtio=BC:24:11:00:00:01,bridge=vmbr0",
        "ide2": "none,media=cdrom",
        "virtio0": "local:100/vm-100-disk-0.raw,size=1G",
        "memory": 512,
    }
    assert boot_order(conf) == ["virtio0", "net0", "net1"]


def test_boot_order_legacy_value_falls_back_to_devices():
    conf = {"boot": "cdn", "scsi0": "local:100/vm-100-disk-0.raw"}
    assert boot_order(conf) == ["scsi0"]


def test_boot_order_empty_config():
    assert boot_order({}) == []


# ---------------------------------------------------------------- validation
def test_validate_changes_reports_every_bad_key():
    with pytest.raises(ConfigError) as info:
        validate_changes({
            "virtio0": "local:100/vm-100-disk-0.raw,cache=bogus",
            "net0": "virtio=BC:24:11:00:00:01,bridge=vmbr0,tag=0",
            "boot": "order=virtio0;floppy0",
            "vga": "matrox",
            "kernel": "vmlinuz",
            "memory": 1024,
            "scsi0": "local:4",
        })
    errors = info.value.errors
    assert set(errors) == {"virtio0", "net0", "boot", "vga", "kernel"}
    assert "cache" in errors["virtio0"]
    assert "VLAN" in errors["net0"]
    assert "floppy0" in errors["boot"]
    assert "matrox" in errors["vga"]
    assert isinstance(info.value, ValueError)
    for key in errors:
        assert key in str(info.value)


def test_validate_changes_normalises_nets_and_keeps_others():
    out = validate_changes({
        "net0": "model=virtio,macaddr=bc:24:11:00:00:01,bridge=vmbr0",
        "net1": "e1000,bridge=vmbr1,tag=20",
        "virtio0": "local:4",
        "boot": "order=virtio0;net0",
        "vga": "serial0",
        "kernel": "local:iso/vmlinuz",
        "memory": 1024,
    })
    assert out["net0"] == "virtio=BC:24:11:00:00:01,bridge=vmbr0"
    m = re.fullmatch(r"e1000=(BC:24:11(?::[0-9A-F]{2}){3}),bridge=vmbr1,tag=20", out["net1"])
    assert m, out["net1"]
    assert out["virtio0"] == "local:4"     # allocation request left for the caller
    assert out["boot"] == "order=virtio0;net0"
    assert out["vga"] == "serial0"
    assert out["kernel"] == "local:iso/vmlinuz"
    assert out["memory"] == 1024


def test_validate_changes_without_assigning_macs():
    with pytest.raises(ConfigError) as info:
        validate_changes({"net0": "virtio,bridge=vmbr0"}, assign_macs=False)
    assert set(info.value.errors) == {"net0"}


@pytest.mark.parametrize("boot", ["", "cdn", "c", "order=scsi30;net31;ide3"])
def test_validate_changes_boot_forms_accepted(boot):
    assert validate_changes({"boot": boot}) == {"boot": boot}


@pytest.mark.parametrize("boot", ["disk", "order=virtio16", "cdnx", "order=net32"])
def test_validate_changes_boot_forms_rejected(boot):
    with pytest.raises(ConfigError) as info:
        validate_changes({"boot": boot})
    assert set(info.value.errors) == {"boot"}


def test_check_boot_devices():
    conf = {"boot": "order=virtio0;net0", "virtio0": "local:100/vm-100-disk-0.raw"}
    with pytest.raises(ConfigError) as info:
        check_boot_devices(conf)
    # PVE's text, its unbalanced quote included
    assert info.value.errors == {"boot": "invalid bootorder: device 'net0' does not exist'"}
    conf["net0"] = "virtio=BC:24:11:00:00:01,bridge=vmbr0"
    check_boot_devices(conf)             # no error
    check_boot_devices({"boot": "cdn"})  # legacy form is not checked
    check_boot_devices({})


# ---------------------------------------------------------------- schema
def test_schema_device_keys():
    schema = vmconf.schema()
    for bus, count in (("virtio", 16), ("scsi", 31), ("ide", 4), ("sata", 6)):
        for i in range(count):
            assert f"{bus}{i}" in schema
        assert f"{bus}{count}" not in schema
    for i in range(32):
        assert f"net{i}" in schema
    assert "net32" not in schema
    assert "args" in schema and vmconf.root_only("args", "-S") is not None
    assert {"kernel", "initrd", "append", "memory", "cores", "boot"} <= set(schema)


def test_schema_types():
    schema = vmconf.schema()
    assert schema["memory"].type == "integer"
    assert schema["cores"].type == "integer"
    assert schema["onboot"].type == "boolean"
    assert schema["template"].type == "boolean"
    assert all(p.optional for p in schema.values())
    assert vmconf.SCHEMA.keys() == schema.keys()
