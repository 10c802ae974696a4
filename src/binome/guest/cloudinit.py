"""Cloud-init as Proxmox VE does it: the ``ci*`` config keys and the NoCloud seed.

This module owns the cloud-init keys of a VM config (``ciuser``, ``cipassword``,
``sshkeys``, ``ipconfigN``, ``nameserver``, ``searchdomain``, ``citype``,
``cicustom``, ``ciupgrade``: their schema and how a value is stored), the
``vm-<vmid>-cloudinit`` drive (``STORAGE:cloudinit`` asks for one), the data
that goes on it (user-data, meta-data with PVE's instance-id, network-config
v1; configdrive2's files) with qemu-server's exact texts
(``PVE/QemuServer/Cloudinit.pm``), the ISO image (Debian's ``genisoimage``,
the tool and options PVE itself runs) and writing it to the drive's volume.

Everything above :func:`regenerate` is pure; :func:`regenerate` reaches the
volumes through the storage interface only.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import ipaddress
import re
import secrets
import subprocess
import tempfile
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from binome.schema import Param, PropertyString, register_format
from binome.storage.base import StorageError

if TYPE_CHECKING:
    from binome.storage.manager import StorageManager

#: the keys PVE's API lists as cloud-init options ($cloudinitoptions), plus ipconfigN
OPTIONS = ("cicustom", "cipassword", "citype", "ciupgrade", "ciuser", "nameserver",
           "searchdomain", "sshkeys")
MAX_IPCONFIGS = 32
DISK_SIZE = 4 * 1024 * 1024   # PVE's CLOUDINIT_DISK_SIZE
MAX_DATA = 3 * 1024 * 1024    # PVE: all files together below 3 MiB (the ISO fits in 4 MiB)
MASK = "**********"
FORMATS = ("configdrive2", "nocloud", "opennebula")
WINDOWS_OSTYPES = ("wxp", "w2k", "w2k3", "w2k8", "wvista", "win7", "win8", "win10", "win11")
SSH_KEY_TYPES = ("ssh-rsa", "ssh-dss", "ssh-ed25519", "ecdsa-sha2-nistp256",
                 "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
                 "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com")


class CloudinitError(ValueError):
    """Cloud-init data cannot be generated (PVE's text)."""


# ---------------------------------------------------------------- schema
def _check_ipconfig(value: str) -> None:
    parse_ipconfig(value)


def _check_cicustom(value: str) -> None:
    for kind, volid in CICUSTOM_FORMAT.split(value):
        if kind not in CICUSTOM_FORMAT.keys:   # PVE's parse_property_string text
            raise ValueError(f"invalid key in comma-separated list property: {kind}")
        if not re.fullmatch(r"[a-z][a-z0-9\-_.]*:[^\s,]+", volid, re.IGNORECASE):
            raise ValueError(f"invalid volume ID '{volid}' for '{kind}'")


IPCONFIG_FORMAT = PropertyString(keys={
    "ip": Param(optional=True, description="IPv4 address in CIDR format, or 'dhcp'."),
    "gw": Param(optional=True, description="Default gateway for IPv4 traffic."),
    "ip6": Param(optional=True, description="IPv6 address in CIDR format, 'dhcp' or 'auto'."),
    "gw6": Param(optional=True, description="Default gateway for IPv6 traffic."),
}, verify=_check_ipconfig)
_VOLUME = Param(optional=True, description="A volume of content 'snippets'.")
CICUSTOM_FORMAT = PropertyString(keys={
    "user": _VOLUME, "network": _VOLUME, "meta": _VOLUME, "vendor": _VOLUME,
}, verify=_check_cicustom)


def schema_keys() -> dict[str, Param]:
    """The cloud-init keys of the VM config schema (qemu-server's $confdesc_cloudinit)."""
    keys = {
        "citype": Param(optional=True, enum=FORMATS, description=(
            "cloud-init format (default: nocloud; configdrive2 for Windows ostypes).")),
        "ciuser": Param(optional=True, description=(
            "cloud-init: user name to change ssh keys and password for.")),
        "cipassword": Param(optional=True, secret=True, description=(
            "cloud-init: password for the user (stored as a SHA-256 crypt hash; "
            "shown as '**********').")),
        "ciupgrade": Param(type="boolean", optional=True, description=(
            "cloud-init: do an automatic package upgrade after the first boot (default 1).")),
        "cicustom": Param(optional=True, props=CICUSTOM_FORMAT, description=(
            "cloud-init: custom files replacing the generated ones "
            "('user=<volume>,network=<volume>,meta=<volume>,vendor=<volume>').")),
        "searchdomain": Param(optional=True, description="cloud-init: DNS search domains."),
        "nameserver": Param(optional=True, description=(
            "cloud-init: DNS server IP addresses (space separated).")),
        "sshkeys": Param(optional=True, max_length=16384, format="pve-qm-sshkeys", description=(
            "cloud-init: public SSH keys, one per line, OpenSSH format, URL-encoded.")),
    }
    for i in range(MAX_IPCONFIGS):
        keys[f"ipconfig{i}"] = Param(optional=True, props=IPCONFIG_FORMAT, description=(
            f"cloud-init: IP addresses and gateways of net{i} "
            "('ip=CIDR|dhcp,gw=IP,ip6=CIDR|dhcp|auto,gw6=IP')."))
    return keys


def is_ipconfig_key(key: str) -> bool:
    m = re.fullmatch(r"ipconfig(0|[1-9]\d*)", key)
    return m is not None and int(m.group(1)) < MAX_IPCONFIGS


def is_cloudinit_key(key: str) -> bool:
    """A key whose change makes the cloud-init drive out of date."""
    return key in OPTIONS or is_ipconfig_key(key)


def is_cloudinit_volid(volid: str | None) -> bool:
    """PVE's drive_is_cloudinit: the volume name is vm-<vmid>-cloudinit."""
    return volid is not None and re.search(r"(?:^|[:/])vm-\d+-cloudinit(?:\.\w+)?$",
                                           volid) is not None


def cloudinit_request(file: str) -> str | None:
    """'local:cloudinit' -> 'local' (a drive to allocate), else None."""
    m = re.fullmatch(r"([a-z][a-z0-9\-_.]*):cloudinit", file, re.IGNORECASE)
    return m.group(1) if m else None


# ---------------------------------------------------------------- values
def parse_ipconfig(text: str) -> dict[str, str]:
    """PVE's parse_ipconfig with its checks (ValueError with PVE's texts)."""
    out = {k: str(v) for k, v in IPCONFIG_FORMAT.split(text)}
    unknown = set(out) - {"ip", "gw", "ip6", "gw6"}
    if unknown:
        raise ValueError(f"invalid key in comma-separated list property: "
                         f"{sorted(unknown)[0]}")
    ip, gw, ip6, gw6 = (out.get(k) for k in ("ip", "gw", "ip6", "gw6"))
    if ip is not None and ip != "dhcp":
        try:
            iface = ipaddress.IPv4Interface(ip)
        except ValueError:
            raise ValueError(f"invalid format - ip: value does not look like a valid "
                             f"IPv4 network configuration: {ip}") from None
        if "/" not in ip:
            raise ValueError(f"invalid format - ip: not a CIDR: {ip}")
        del iface
    if ip6 is not None and ip6 not in ("dhcp", "auto"):
        try:
            ipaddress.IPv6Interface(ip6)
        except ValueError:
            raise ValueError(f"invalid format - ip6: value does not look like a valid "
                             f"IPv6 network configuration: {ip6}") from None
    for key, version in (("gw", 4), ("gw6", 6)):
        if out.get(key) is not None:
            try:
                addr = ipaddress.ip_address(out[key])
            except ValueError:
                addr = None
            if addr is None or addr.version != version:
                raise ValueError(f"invalid format - {key}: value does not look like a valid "
                                 f"IPv{version} address: {out[key]}")
    if gw and not ip:
        raise ValueError("gateway specified without specifying an IP address")
    if gw6 and not ip6:
        raise ValueError("IPv6 gateway specified without specifying an IPv6 address")
    if gw and ip == "dhcp":
        raise ValueError("gateway specified together with DHCP")
    if gw6 and ip6 in ("dhcp", "auto"):
        raise ValueError(f"IPv6 gateway specified together with {ip6} address")
    return out


def ssh_keys(encoded: str) -> list[str]:
    """The keys of an URL-encoded `sshkeys` value, one per non-blank line (PVE)."""
    text = urllib.parse.unquote(encoded)
    return [line.rstrip("\r") for line in text.split("\n") if line.strip()]


def check_ssh_keys(encoded: str) -> None:
    """PVE's validate_ssh_public_keys: each line an OpenSSH public key (or a comment)."""
    for line in ssh_keys(encoded):
        if line.lstrip().startswith("#"):
            continue
        words = line.split()
        # options may precede the key type (authorized_keys format)
        index = next((i for i, w in enumerate(words) if w in SSH_KEY_TYPES), None)
        ok = index is not None and index + 1 < len(words)
        if ok:
            try:
                blob = base64.b64decode(words[index + 1], validate=True)   # type: ignore[operator]
                ok = blob[4:4 + len(words[index])] == words[index].encode()  # type: ignore[index]
            except (binascii.Error, ValueError):
                ok = False
        if not ok:
            raise ValueError("SSH public key validation error")


def _sshkeys_format(value: str) -> str:
    check_ssh_keys(value)
    return value


# checked with the other parameters, so one answer names every bad key
register_format("pve-qm-sshkeys", _sshkeys_format)


def hash_password(password: str) -> str:
    """PVE's encrypt_pw: a SHA-256 crypt hash ('$5$salt$...') with a random salt."""
    salt = "".join(secrets.choice(_CRYPT_ALPHABET) for _ in range(16))
    return sha256_crypt(password, salt)


def is_hashed(password: str) -> bool:
    """Already a crypt hash: stored as given (PVE's regex)."""
    return re.match(r"^\$(?:[156]|2[ay])(\$.+){2}", password) is not None


def is_windows(config: dict[str, Any]) -> bool:
    return str(config.get("ostype", "")) in WINDOWS_OSTYPES


def store_value(key: str, value: str, config: dict[str, Any]) -> str:
    """What the config stores for a cloud-init key: the password hashed (not for
    Windows guests, whose cloudbase-init wants it in clear, as PVE), the rest checked."""
    if key == "cipassword":
        if not is_windows(config) and not is_hashed(value):
            return hash_password(value)
        return value
    if key == "sshkeys":
        check_ssh_keys(value)
        return value
    if is_ipconfig_key(key):
        parse_ipconfig(value)
        return value
    if key == "nameserver":
        for item in value.split():
            try:
                ipaddress.ip_address(item)
            except ValueError:
                raise ValueError(f"value does not look like a valid address list: "
                                 f"{value}") from None
    return value


def masked(config: dict[str, Any]) -> dict[str, Any]:
    """The config as GET shows it: the password as PVE's '**********'."""
    if config.get("cipassword"):
        return {**config, "cipassword": MASK}
    return config


# ---------------------------------------------------------------- generated data
def format_of(config: dict[str, Any]) -> str:
    """PVE's get_cloudinit_format: citype, else configdrive2 for Windows, else nocloud."""
    if config.get("citype"):
        return str(config["citype"])
    return "configdrive2" if is_windows(config) else "nocloud"


def hostname_fqdn(config: dict[str, Any], vmid: int) -> tuple[str, str]:
    hostname = str(config.get("name") or f"VM{vmid}")
    if "." in hostname:
        return hostname.split(".", 1)[0], hostname
    if config.get("searchdomain"):
        return hostname, f"{hostname}.{config['searchdomain']}"
    return hostname, hostname


def host_dns(resolv_conf: str = "/etc/resolv.conf") -> tuple[list[str], list[str]]:
    """(search domains, first three nameservers) of the node (PVE's 'resolvconf')."""
    search: list[str] = []
    servers: list[str] = []
    try:
        text = Path(resolv_conf).read_text()
    except OSError:
        return search, servers
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "search":
            search = words[1:]
        elif len(words) >= 2 and words[0] == "nameserver" and len(servers) < 3:
            servers.append(words[1])
    return search, servers


def dns_conf(config: dict[str, Any], host: tuple[list[str], list[str]]) -> tuple[list[str],
                                                                                list[str]]:
    """PVE's get_dns_conf: the config's values, else the node's."""
    search = (str(config["searchdomain"]).split() if config.get("searchdomain") is not None
              else host[0])
    servers = (str(config["nameserver"]).split() if config.get("nameserver") is not None
               else host[1])
    return search, servers


def user_data(config: dict[str, Any], vmid: int, mask_password: bool = False) -> str:
    """PVE's cloudinit_userdata, line for line."""
    hostname, fqdn = hostname_fqdn(config, vmid)
    out = ["#cloud-config", f"hostname: {hostname}", "manage_etc_hosts: true", f"fqdn: {fqdn}"]
    username = config.get("ciuser")
    if username is not None:
        out.append(f"user: {username}")
        if username == "root":
            out.append("disable_root: False")
    if config.get("cipassword") is not None:
        out.append(f"password: {MASK if mask_password else config['cipassword']}")
    if config.get("sshkeys") is not None:
        out.append("ssh_authorized_keys:")
        out += [f"  - {key}" for key in ssh_keys(str(config["sshkeys"]))]
    out += ["chpasswd:", "  expire: False"]
    if username is None or username != "root":
        out += ["users:", "  - default"]
    if config.get("ciupgrade") is None or int(config["ciupgrade"]):
        out.append("package_upgrade: true")
    return "\n".join(out) + "\n"


def _net_ids(config: dict[str, Any]) -> list[tuple[str, str]]:
    """(netN key, N) with an ipconfigN, in PVE's order (sorted key names)."""
    return [(key, key[3:]) for key in sorted(k for k in config if re.fullmatch(r"net\d+", k))
            if config.get(f"ipconfig{key[3:]}")]


def _mac(net_value: str) -> str:
    head = net_value.split(",")[0]
    _model, _sep, mac = head.partition("=")
    if not mac:
        for item in net_value.split(",")[1:]:
            if item.startswith("macaddr="):
                mac = item[len("macaddr="):]
    return mac.lower()


def _netmask(ip: str) -> tuple[str, str]:
    if "/" not in ip:
        raise CloudinitError(f"not a CIDR: {ip}")
    iface = ipaddress.IPv4Interface(ip)
    return str(iface.ip), str(iface.netmask)


def nocloud_network(config: dict[str, Any], host: tuple[list[str], list[str]]) -> str:
    """PVE's nocloud_network: network-config version 1."""
    content = "version: 1\nconfig:\n"
    for key, n in _net_ids(config):
        i = "    "
        mac = _mac(str(config[key]))
        if not mac:
            raise CloudinitError(f"network interface '{key}' has no mac address")
        ipconfig = parse_ipconfig(str(config[f"ipconfig{n}"]))
        content += (f"{i}- type: physical\n{i}  name: eth{n}\n{i}  mac_address: '{mac}'\n"
                    f"{i}  subnets:\n")
        i += "  "
        ip = ipconfig.get("ip")
        if ip is not None:
            if ip == "dhcp":
                content += f"{i}- type: dhcp4\n"
            else:
                addr, mask = _netmask(ip)
                content += (f"{i}- type: static\n{i}  address: '{addr}'\n"
                            f"{i}  netmask: '{mask}'\n")
                if ipconfig.get("gw") is not None:
                    content += f"{i}  gateway: '{ipconfig['gw']}'\n"
        ip6 = ipconfig.get("ip6")
        if ip6 is not None:
            if ip6 == "dhcp":
                content += f"{i}- type: dhcp6\n"
            elif ip6 == "auto":
                content += f"{i}- type: ipv6_slaac\n"
            else:
                content += f"{i}- type: static6\n{i}  address: '{ip6}'\n"
                if ipconfig.get("gw6") is not None:
                    content += f"{i}  gateway: '{ipconfig['gw6']}'\n"
    i = "    "
    search, servers = dns_conf(config, host)
    # PVE tests two array references here: always true, so the entry is always written
    content += f"{i}- type: nameserver\n"
    if servers:
        content += f"{i}  address:\n" + "".join(f"{i}  - '{s}'\n" for s in servers)
    if search:
        content += f"{i}  search:\n" + "".join(f"{i}  - '{s}'\n" for s in search)
    return content


def configdrive2_network(config: dict[str, Any], host: tuple[list[str], list[str]]) -> str:
    """PVE's configdrive2_network: an ifupdown 'interfaces' file."""
    content = "auto lo\niface lo inet loopback\n\n"
    search, servers = dns_conf(config, host)
    if servers:
        content += f"        dns_nameservers {' '.join(servers)}\n"
    if search:
        content += f"        dns_search {' '.join(search)}\n"
    for _key, n in _net_ids(config):
        ipconfig = parse_ipconfig(str(config[f"ipconfig{n}"]))
        dev = f"eth{n}"
        content += f"auto {dev}\n"
        ip = ipconfig.get("ip")
        if ip:
            if ip == "dhcp":
                content += f"iface {dev} inet dhcp\n"
            else:
                addr, mask = _netmask(ip)
                content += (f"iface {dev} inet static\n        address {addr}\n"
                            f"        netmask {mask}\n")
                if ipconfig.get("gw"):
                    content += f"        gateway {ipconfig['gw']}\n"
        ip6 = ipconfig.get("ip6")
        if ip6:
            if ip6 in ("auto", "dhcp"):
                content += f"iface {dev} inet6 {ip6}\n"
            else:
                addr, _sep, prefix = ip6.partition("/")
                content += (f"iface {dev} inet6 static\n        address {addr}\n"
                            f"        netmask {prefix}\n")
                if ipconfig.get("gw6"):
                    content += f"        gateway {ipconfig['gw6']}\n"
    return content


def instance_id(user: str, network: str) -> str:
    """PVE's instance-id: sha1_hex(user-data . network-config)."""
    return hashlib.sha1((user + network).encode()).hexdigest()


def nocloud_meta_data(user: str, network: str) -> str:
    return f"instance-id: {instance_id(user, network)}\n"


def configdrive2_meta_data(user: str, network: str) -> str:
    return ('{\n     "uuid": "' + instance_id(user, network) + '",\n'
            '     "network_config": { "content_path": "/content/0000" }\n}\n')


def dump(config: dict[str, Any], vmid: int, kind: str, mask_password: bool,
         host: tuple[list[str], list[str]]) -> str:
    """PVE's dump_cloudinit_config (`GET .../cloudinit/dump?type=user|network|meta`)."""
    fmt = format_of(config)
    network = nocloud_network if fmt == "nocloud" else configdrive2_network
    if kind == "user":
        return user_data(config, vmid, mask_password)
    if kind == "network":
        return network(config, host)
    # the instance-id hashes the real user-data, never the masked one
    user, net = user_data(config, vmid), network(config, host)
    if fmt == "nocloud":
        return nocloud_meta_data(user, net)
    return configdrive2_meta_data(user, net)


def seed_files(config: dict[str, Any], vmid: int, custom: dict[str, str],
               host: tuple[list[str], list[str]]) -> tuple[str, dict[str, str]]:
    """(volume label, {path: content}) of the drive: PVE's generate_nocloud /
    generate_configdrive2; `custom` holds the cicustom files read (user, network, meta,
    vendor)."""
    fmt = format_of(config)
    if fmt not in ("nocloud", "configdrive2"):
        raise CloudinitError(f"cloud-init format '{fmt}' is not supported by binome")
    if fmt == "configdrive2" and is_windows(config):
        raise CloudinitError("configdrive2 for Windows guests (cloudbase-init) is not "
                             "supported by binome")
    user = custom.get("user") or user_data(config, vmid)
    if fmt == "nocloud":
        network = custom.get("network") or nocloud_network(config, host)
        meta = custom.get("meta") or nocloud_meta_data(user, network)
    else:
        network = custom.get("network") or configdrive2_network(config, host)
        meta = custom.get("meta") or configdrive2_meta_data(user, network)
    vendor = custom.get("vendor", "")
    if sum(len(x) for x in (user, network, meta, vendor)) > MAX_DATA:
        raise CloudinitError("Cloud-Init sum of snippets too big (> 3 MiB)")
    if fmt == "nocloud":
        return "cidata", {"user-data": user, "network-config": network, "meta-data": meta,
                          "vendor-data": vendor}
    return "config-2", {"openstack/latest/user_data": user, "openstack/content/0000": network,
                        "openstack/latest/meta_data.json": meta,
                        "openstack/latest/vendor_data.json": vendor}


def custom_volumes(config: dict[str, Any]) -> dict[str, str]:
    """cicustom's volumes by kind (user, network, meta, vendor)."""
    if not config.get("cicustom"):
        return {}
    return {k: str(v) for k, v in CICUSTOM_FORMAT.split(str(config["cicustom"]))}


# ---------------------------------------------------------------- the ISO image
def build_iso(label: str, files: dict[str, str]) -> bytes:
    """An ISO 9660 image (Rock Ridge + Joliet) holding `files`, made by Debian's
    genisoimage with PVE's options (`-iso-level 3 -J -R -V <label>`)."""
    with tempfile.TemporaryDirectory(prefix="binome-cloudinit-") as tmp:
        root = Path(tmp) / "root"
        for rel, content in files.items():
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
        try:
            proc = subprocess.run(
                ["genisoimage", "-quiet", "-iso-level", "3", "-J", "-R", "-V", label,
                 str(root)], capture_output=True, check=False)
        except FileNotFoundError:
            raise CloudinitError("genisoimage not found (Debian package 'genisoimage' "
                                 "builds the cloud-init drive)") from None
        if proc.returncode != 0:
            raise CloudinitError(f"genisoimage failed: "
                                 f"{proc.stderr.decode(errors='replace').strip()}")
        return proc.stdout


def cloudinit_drive(config: dict[str, Any]) -> tuple[str, str] | None:
    """(drive key, volid) of the VM's cloud-init drive, if it has one."""
    for key in sorted(config):
        if re.fullmatch(r"(ide|sata|scsi|virtio)\d+", key):
            volid = str(config[key]).split(",")[0]
            if is_cloudinit_volid(volid):
                return key, volid
    return None


async def read_snippet(storages: StorageManager, volid: str) -> str:
    """A cicustom file: a volume of content 'snippets' (PVE: at most 1 MiB)."""
    storage = await storages.for_volid(volid)
    if ":snippets/" not in volid:
        raise CloudinitError(f"{volid} is not in the snippets directory")
    path = Path(storage.source(volid).source)
    data = await asyncio.to_thread(path.read_bytes)
    return data[:1024 * 1024].decode(errors="replace")


async def regenerate(storages: StorageManager, config: dict[str, Any], vmid: int) -> str | None:
    """Generate the seed of a VM with a cloud-init drive and write it to the drive's
    volume (PVE's generate_cloudinit_config); returns the volid written, or None when
    the VM has no cloud-init drive."""
    drive = cloudinit_drive(config)
    if drive is None:
        return None
    _key, volid = drive
    owner = re.search(r"vm-(\d+)-cloudinit", volid)
    if owner is None or int(owner.group(1)) != vmid:
        # never overwrite another VM's seed (a config edited by hand to point at it)
        raise CloudinitError(f"cloud-init drive '{volid}' does not belong to VM {vmid}")
    custom = {kind: await read_snippet(storages, vol)
              for kind, vol in custom_volumes(config).items()}
    label, files = seed_files(config, vmid, custom, host_dns())
    iso = await asyncio.to_thread(build_iso, label, files)
    storage = await storages.for_volid(volid)
    if storage.per_node_activation:
        raise CloudinitError(f"cloud-init drive on storage '{storage.id}': binome writes "
                             f"cloud-init drives only on storages without node-bound "
                             f"volumes (e.g. 'dir')")
    try:
        source = storage.source(volid)
    except StorageError:
        # PVE's commit_cloudinit_disk: a missing drive (a VM moved to a node whose local
        # storage lacks it) is allocated again under its name
        m = re.search(r"(vm-(\d+)-cloudinit)(?:\.(raw|qcow2))?$", volid)
        if m is None or int(m.group(2)) != vmid:
            raise
        await storage.alloc(vmid, DISK_SIZE, m.group(3) or "raw", name=m.group(1))
        source = storage.source(volid)
    if len(iso) > await storage.size(volid):
        await storage.resize(volid, (len(iso) + DISK_SIZE - 1) // DISK_SIZE * DISK_SIZE)
    with tempfile.NamedTemporaryFile(prefix="binome-cloudinit-", suffix=".iso") as f:
        f.write(iso)
        f.flush()
        proc = await asyncio.create_subprocess_exec(
            "qemu-img", "convert", "-n", "-f", "raw", "-O", source.format or "raw", f.name,
            source.source, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        _out, err = await proc.communicate()
    if proc.returncode != 0:
        raise CloudinitError(f"writing the cloud-init drive {volid} failed: "
                             f"{err.decode(errors='replace').strip()}")
    return volid


# ---------------------------------------------------------------- SHA-256 crypt
# Python 3.13 drops the `crypt` module: Drepper's SHA-crypt ($5$), written out
# (https://www.akkadia.org/drepper/SHA-crypt.txt), 5000 rounds as glibc's default.
_CRYPT_ALPHABET = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def sha256_crypt(password: str, salt: str, rounds: int = 5000) -> str:
    pw, sl = password.encode(), salt[:16].encode()
    b = hashlib.sha256(pw + sl + pw).digest()
    a = hashlib.sha256(pw + sl)
    n = len(pw)
    while n > 32:
        a.update(b)
        n -= 32
    a.update(b[:n])
    n = len(pw)
    while n:
        a.update(b if n & 1 else pw)
        n >>= 1
    da = a.digest()
    dp_ctx = hashlib.sha256()
    for _ in range(len(pw)):
        dp_ctx.update(pw)
    dp = dp_ctx.digest()
    p = dp * (len(pw) // 32) + dp[:len(pw) % 32]
    ds_ctx = hashlib.sha256()
    for _ in range(16 + da[0]):
        ds_ctx.update(sl)
    ds = ds_ctx.digest()
    s = ds * (len(sl) // 32) + ds[:len(sl) % 32]
    c = da
    for i in range(rounds):
        h = hashlib.sha256()
        h.update(p if i & 1 else c)
        if i % 3:
            h.update(s)
        if i % 7:
            h.update(p)
        h.update(c if i & 1 else p)
        c = h.digest()
    order = [(0, 10, 20), (21, 1, 11), (12, 22, 2), (3, 13, 23), (24, 4, 14), (15, 25, 5),
             (6, 16, 26), (27, 7, 17), (18, 28, 8), (9, 19, 29)]
    out = ""
    for x, y, z in order:
        out += _b64_24(c[x], c[y], c[z], 4)
    out += _b64_24(0, c[31], c[30], 3)
    return f"$5${sl.decode()}${out}"


def _b64_24(b2: int, b1: int, b0: int, n: int) -> str:
    w = (b2 << 16) | (b1 << 8) | b0
    out = ""
    for _ in range(n):
        out += _CRYPT_ALPHABET[w & 0x3F]
        w >>= 6
    return out
