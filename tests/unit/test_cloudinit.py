"""Cloud-init data as qemu-server's PVE/QemuServer/Cloudinit.pm writes it, and the keys'
validation (binome.guest.cloudinit)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import struct
import urllib.parse
import warnings
from pathlib import Path

import pytest

from binome.guest import cloudinit as ci
from binome.guest import config as vmconf
from binome.storage.base import StorageConfig, parse_image_volname
from binome.storage.dir import DirStorage

NO_DNS: tuple[list[str], list[str]] = ([], [])


def key(comment: str = "me@host", seed: int = 1) -> str:
    blob = struct.pack(">I", 11) + b"ssh-ed25519" + struct.pack(">I", 32) + bytes([seed]) * 32
    return f"ssh-ed25519 {base64.b64encode(blob).decode()} {comment}"


K1, K2 = key("a@x", 1), key("b@y", 2)
BASE = {"name": "web1", "net0": "virtio=BC:24:11:AA:BB:CC,bridge=vmbr0"}


# ---------------------------------------------------------------- user-data
def test_user_data_as_pve_writes_it():
    config = {**BASE, "searchdomain": "example.com", "ciuser": "alice",
              "cipassword": "$5$salt$hash", "ciupgrade": 0,
              "sshkeys": urllib.parse.quote(f"{K1}\n\n{K2}\n", safe="")}
    assert ci.user_data(config, 100) == (
        "#cloud-config\n"
        "hostname: web1\n"
        "manage_etc_hosts: true\n"
        "fqdn: web1.example.com\n"
        "user: alice\n"
        "password: $5$salt$hash\n"
        "ssh_authorized_keys:\n"
        f"  - {K1}\n"
        f"  - {K2}\n"
        "chpasswd:\n"
        "  expire: False\n"
        "users:\n"
        "  - default\n")


def test_user_data_root_defaults_and_masking():
    config = {"ciuser": "root", "cipassword": "$5$s$h"}
    assert ci.user_data(config, 123, mask_password=True) == (
        "#cloud-config\nhostname: VM123\nmanage_etc_hosts: true\nfqdn: VM123\n"
        "user: root\ndisable_root: False\npassword: **********\n"
        "chpasswd:\n  expire: False\npackage_upgrade: true\n")


def test_hostname_with_a_dot_is_the_fqdn():
    assert ci.hostname_fqdn({"name": "db.lan", "searchdomain": "x"}, 1) == ("db", "db.lan")


# ---------------------------------------------------------------- network-config
def test_nocloud_network_v1_as_pve():
    config = {**BASE, "net1": "e1000=BC:24:11:00:00:01,bridge=vmbr1",
              "net2": "virtio=BC:24:11:00:00:02,bridge=vmbr1",   # no ipconfig2: left out
              "ipconfig0": "ip=192.0.2.10/24,gw=192.0.2.1,ip6=2001:db8::10/64,gw6=2001:db8::1",
              "ipconfig1": "ip=dhcp,ip6=auto", "nameserver": "192.0.2.53 192.0.2.54",
              "searchdomain": "example.com"}
    assert ci.nocloud_network(config, NO_DNS) == (
        "version: 1\n"
        "config:\n"
        "    - type: physical\n"
        "      name: eth0\n"
        "      mac_address: 'bc:24:11:aa:bb:cc'\n"
        "      subnets:\n"
        "      - type: static\n"
        "        address: '192.0.2.10'\n"
        "        netmask: '255.255.255.0'\n"
        "        gateway: '192.0.2.1'\n"
        "      - type: static6\n"
        "        address: '2001:db8::10/64'\n"
        "        gateway: '2001:db8::1'\n"
        "    - type: physical\n"
        "      name: eth1\n"
        "      mac_address: 'bc:24:11:00:00:01'\n"
        "      subnets:\n"
        "      - type: dhcp4\n"
        "      - type: ipv6_slaac\n"
        "    - type: nameserver\n"
        "      address:\n"
        "      - '192.0.2.53'\n"
        "      - '192.0.2.54'\n"
        "      search:\n"
        "      - 'example.com'\n")


def test_nocloud_network_takes_the_nodes_dns_when_unset():
    host = (["lan"], ["10.0.0.1", "10.0.0.2"])
    text = ci.nocloud_network(BASE, host)
    assert text.endswith("    - type: nameserver\n      address:\n      - '10.0.0.1'\n"
                         "      - '10.0.0.2'\n      search:\n      - 'lan'\n")
    # nothing anywhere: PVE still writes the (empty) nameserver entry
    assert ci.nocloud_network(BASE, NO_DNS) == "version: 1\nconfig:\n    - type: nameserver\n"


def test_host_dns_reads_resolv_conf(tmp_path: Path):
    conf = tmp_path / "resolv.conf"
    conf.write_text("# x\nsearch a.lan b.lan\nnameserver 1.1.1.1\nnameserver 2.2.2.2\n"
                    "nameserver 3.3.3.3\nnameserver 4.4.4.4\n")
    assert ci.host_dns(str(conf)) == (["a.lan", "b.lan"], ["1.1.1.1", "2.2.2.2", "3.3.3.3"])
    assert ci.host_dns(str(tmp_path / "missing")) == ([], [])


def test_configdrive2_network_as_pve():
    config = {**BASE, "ipconfig0": "ip=192.0.2.10/25,gw=192.0.2.1", "nameserver": "9.9.9.9"}
    assert ci.configdrive2_network(config, NO_DNS) == (
        "auto lo\niface lo inet loopback\n\n"
        "        dns_nameservers 9.9.9.9\n"
        "auto eth0\n"
        "iface eth0 inet static\n"
        "        address 192.0.2.10\n"
        "        netmask 255.255.255.128\n"
        "        gateway 192.0.2.1\n")


# ---------------------------------------------------------------- meta-data, dump, seed
def test_instance_id_is_sha1_of_user_and_network_data():
    config = {**BASE, "ipconfig0": "ip=dhcp", "sshkeys": urllib.parse.quote(K1)}
    user, net = ci.user_data(config, 100), ci.nocloud_network(config, NO_DNS)
    meta = ci.dump(config, 100, "meta", True, NO_DNS)
    assert meta == f"instance-id: {hashlib.sha1((user + net).encode()).hexdigest()}\n"
    # the masked dump still hashes the real password (PVE), and a change makes a new id
    assert ci.dump({**config, "cipassword": "$5$a$b"}, 100, "meta", True, NO_DNS) != meta
    assert ci.dump(config, 100, "network", False, NO_DNS) == net
    assert "password: **********" in ci.dump({**config, "cipassword": "$5$a$b"}, 100, "user",
                                             True, NO_DNS)


def test_configdrive2_meta_data_json():
    config = {**BASE, "citype": "configdrive2"}
    meta = ci.dump(config, 100, "meta", False, NO_DNS)
    assert meta.startswith('{\n     "uuid": "') and \
        meta.endswith('",\n     "network_config": { "content_path": "/content/0000" }\n}\n')


def test_seed_files_nocloud_configdrive2_and_custom():
    label, files = ci.seed_files(BASE, 100, {}, NO_DNS)
    assert label == "cidata"
    assert sorted(files) == ["meta-data", "network-config", "user-data", "vendor-data"]
    label, files = ci.seed_files(BASE, 100, {"user": "#cloud-config\n{}\n"}, NO_DNS)
    assert files["user-data"] == "#cloud-config\n{}\n"
    assert files["meta-data"] == ci.nocloud_meta_data(files["user-data"],
                                                      files["network-config"])
    label, files = ci.seed_files({**BASE, "citype": "configdrive2"}, 100, {}, NO_DNS)
    assert label == "config-2" and "openstack/latest/meta_data.json" in files
    with pytest.raises(ci.CloudinitError, match="too big"):
        ci.seed_files(BASE, 100, {"vendor": "x" * (3 * 1024 * 1024)}, NO_DNS)
    with pytest.raises(ci.CloudinitError, match="opennebula"):
        ci.seed_files({**BASE, "citype": "opennebula"}, 100, {}, NO_DNS)


def test_iso_has_pves_label_and_the_files():
    label, files = ci.seed_files({**BASE, "sshkeys": urllib.parse.quote(K1)}, 100, {}, NO_DNS)
    iso = ci.build_iso(label, files)
    assert iso[16 * 2048 + 1:16 * 2048 + 6] == b"CD001"
    assert iso[16 * 2048 + 40:16 * 2048 + 72].decode().strip() == "cidata"
    assert files["user-data"].encode() in iso and files["meta-data"].encode() in iso


# ---------------------------------------------------------------- keys and values
def test_ipconfig_rules():
    assert ci.parse_ipconfig("ip=10.0.0.2/24,gw=10.0.0.1") == {"ip": "10.0.0.2/24",
                                                               "gw": "10.0.0.1"}
    for bad, text in (("gw=10.0.0.1", "gateway specified without specifying an IP address"),
                      ("ip=dhcp,gw=10.0.0.1", "gateway specified together with DHCP"),
                      ("ip6=auto,gw6=2001:db8::1", "IPv6 gateway specified together with auto"),
                      ("ip=10.0.0.2", "not a CIDR"),
                      ("ip=10.0.0.2/24,gw=2001:db8::1", "valid IPv4 address"),
                      ("ip=bogus/24", "valid IPv4 network configuration"),
                      ("ipv4=1.2.3.4/8", "invalid key in comma-separated list property: ipv4")):
        with pytest.raises(ValueError, match=text):
            ci.parse_ipconfig(bad)


def test_ssh_keys_are_validated_decoded():
    ci.check_ssh_keys(urllib.parse.quote(f"{K1}\n# comment\n\n{K2}", safe=""))
    ci.check_ssh_keys(urllib.parse.quote(f'from="10.0.0.0/8" {K1}', safe=""))
    for bad in ("not a key", "ssh-rsa !!!notbase64", f"ssh-rsa {K1.split()[1]}"):
        with pytest.raises(ValueError, match="SSH public key validation error"):
            ci.check_ssh_keys(urllib.parse.quote(bad, safe=""))


def test_password_stored_as_sha256_crypt():
    stored = vmconf.check_params({"cipassword": "hunter2"})["cipassword"]
    assert stored.startswith("$5$") and "hunter2" not in stored
    salt = stored.split("$")[2]
    assert ci.sha256_crypt("hunter2", salt) == stored
    # an existing crypt hash is kept; a Windows guest's password is kept in clear (PVE)
    assert vmconf.check_params({"cipassword": stored})["cipassword"] == stored
    assert vmconf.check_params({"cipassword": "pw", "ostype": "win11"})["cipassword"] == "pw"
    assert ci.masked({"cipassword": stored, "name": "x"}) == {"cipassword": "**********",
                                                             "name": "x"}


def test_sha256_crypt_matches_glibc():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        crypt = pytest.importorskip("crypt")
    for password, salt in (("Hello world!", "saltstring"), ("x" * 70, "0123456789abcdef"),
                           ("", "s")):
        assert ci.sha256_crypt(password, salt) == crypt.crypt(password, f"$5${salt}")


def test_schema_knows_the_keys_and_refuses_bad_values():
    ok = vmconf.check_params({"ciuser": "bob", "citype": "nocloud", "ciupgrade": "0",
                              "nameserver": "1.1.1.1 2606:4700::1111", "searchdomain": "lan",
                              "ipconfig31": "ip=dhcp", "cicustom": "user=local:snippets/u.yml",
                              "sshkeys": urllib.parse.quote(K1, safe="")})
    assert ok["ciuser"] == "bob" and ok["ipconfig31"] == "ip=dhcp"
    with pytest.raises(vmconf.ConfigError) as exc:
        vmconf.check_params({"citype": "cloudbase", "ipconfig0": "gw=1.2.3.4",
                             "nameserver": "dns.example", "sshkeys": "garbage",
                             "ipconfig32": "ip=dhcp", "cicustom": "bogus=local:snippets/x"})
    assert set(exc.value.errors) == {"citype", "ipconfig0", "nameserver", "sshkeys",
                                     "ipconfig32", "cicustom"}


def test_cloudinit_drive_names():
    assert ci.cloudinit_request("local:cloudinit") == "local"
    assert ci.cloudinit_request("local:100/vm-100-cloudinit.qcow2") is None
    assert ci.is_cloudinit_volid("local:100/vm-100-cloudinit.qcow2")
    assert ci.is_cloudinit_volid("rep:vm-100-cloudinit")
    assert not ci.is_cloudinit_volid("local:100/vm-100-disk-0.raw")
    assert ci.cloudinit_drive({"ide2": "local:100/vm-100-cloudinit.qcow2,media=cdrom",
                               "virtio0": "local:100/vm-100-disk-0.raw"}) == (
        "ide2", "local:100/vm-100-cloudinit.qcow2")
    assert parse_image_volname("100/vm-100-cloudinit.qcow2") == (100, "vm-100-cloudinit",
                                                                "qcow2")


def test_dir_storage_holds_the_drive_and_snippets(tmp_path: Path):
    storage = DirStorage(StorageConfig("local", "dir", path=str(tmp_path),
                                       content=("images", "snippets")))
    volid = asyncio.run(storage.alloc(100, ci.DISK_SIZE, "qcow2", name="vm-100-cloudinit"))
    assert volid == "local:100/vm-100-cloudinit.qcow2"
    assert Path(storage.source(volid).source).exists()
    assert storage.path("local:snippets/user.yml") == tmp_path / "snippets" / "user.yml"
    with pytest.raises(Exception, match="invalid volume name"):
        storage.path("local:snippets/../x")


class _OneStorage:
    """The StorageManager surface `regenerate` uses, over one real dir storage."""

    def __init__(self, storage: DirStorage) -> None:
        self.storage = storage

    async def for_volid(self, volid: str) -> DirStorage:
        return self.storage


def test_regenerate_writes_the_iso_and_reallocates_a_missing_drive(tmp_path: Path):
    import subprocess

    storage = DirStorage(StorageConfig("local", "dir", path=str(tmp_path),
                                       content=("images", "snippets")))
    (tmp_path / "snippets").mkdir()
    (tmp_path / "snippets" / "user.yml").write_text("#cloud-config\nhostname: custom\n")
    config = {**BASE, "scsi1": "local:100/vm-100-cloudinit.qcow2,media=cdrom",
              "cicustom": "user=local:snippets/user.yml"}
    manager = _OneStorage(storage)
    # no volume yet (a VM moved to a node without it): allocated under its name, as PVE
    assert asyncio.run(ci.regenerate(manager, config, 100)) == \
        "local:100/vm-100-cloudinit.qcow2"   # type: ignore[arg-type]
    raw = tmp_path / "seed.raw"
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw",
                    str(tmp_path / "images" / "100" / "vm-100-cloudinit.qcow2"), str(raw)],
                   check=True)
    image = raw.read_bytes()
    assert image[16 * 2048 + 40:16 * 2048 + 72].decode().strip() == "cidata"
    assert b"#cloud-config\nhostname: custom\n" in image          # the snippet, not ours
    assert asyncio.run(ci.regenerate(manager, BASE, 100)) is None  # type: ignore[arg-type]
    with pytest.raises(ci.CloudinitError, match="not in the snippets directory"):
        asyncio.run(ci.regenerate(manager, {**config, "cicustom": "user=local:iso/x"},
                                  100))  # type: ignore[arg-type]


def test_regenerate_never_writes_another_vms_drive(tmp_path: Path):
    storage = DirStorage(StorageConfig("local", "dir", path=str(tmp_path)))
    config = {**BASE, "ide2": "local:100/vm-100-cloudinit.qcow2,media=cdrom"}
    with pytest.raises(ci.CloudinitError, match="does not belong to VM 101"):
        asyncio.run(ci.regenerate(_OneStorage(storage), config, 101))  # type: ignore[arg-type]
    assert not (tmp_path / "images").exists()


def test_no_cloudinit_key_has_a_default_the_api_would_fill_in():
    # a default here would be stored into every config a create or an update writes
    assert all(p.default is None for p in ci.schema_keys().values())
