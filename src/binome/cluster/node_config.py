"""Each node's own options (PVE's `/etc/pve/nodes/<node>/config`, `PVE::NodeConfig`), and
the Wake-on-LAN packet sent from them.

Owns `/binome/nodeconfig/<node>`: the text of PVE's node config file (the description as
leading `#` comment lines, percent-encoded as PVE's `encode_text`, then `key: value`
lines sorted by key), so the `digest` is PVE's: the SHA-1 of that text. The keys are
PVE 9's (`NODE_SCHEMA`): `description`, `startall-onboot-delay` (honoured: the node's
start of its `onboot` guests after a host boot waits that long first,
`binome.guest.status`), `ballooning-target` (stored; binome has no auto-ballooning),
`wakeonlan` (used by `wake`), `location`, and the ACME keys `acme`, `acmedomain0..5`
(validated and stored as PVE does, domains unique across them; `binome.cluster.acme`
orders the node's certificate for them).

`wake(target, local)`: PVE's `POST /nodes/{node}/wakeonlan`, done on the node that got
the request (the target is asleep): the target's MAC from its config, the sending
node's `bind-interface` and `broadcast-address` from its own; the magic packet (6 x 0xFF,
then the MAC 16 times) as a UDP broadcast to port 9 (`discard`).
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import socket
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

from binome.errors import BinomeError
from binome.schema import Param, PropertyString, SchemaError, check
from binome.store import keys
from binome.store.client import Conflict

if TYPE_CHECKING:
    from binome.store.client import Store

MAX_DOMAINS = 5           # PVE's $MAXDOMAINS: acmedomain0 .. acmedomain5
WOL_PORT = 9              # getservbyname('discard', 'udp')
MODIFIED = "detected modified configuration - file changed by other user? Try again."

_CONFIGID = re.compile(r"[a-z][a-z0-9_-]+", re.IGNORECASE | re.ASCII)
_MAC = re.compile(r"[a-f0-9][02468ace](?::[a-f0-9]{2}){5}", re.IGNORECASE | re.ASCII)
_IFACE = re.compile(r"[a-z][a-z0-9_]{1,20}(?:[:.][0-9]+)?", re.IGNORECASE | re.ASCII)
_ACME_DOMAIN = re.compile(r"[a-z0-9][a-z0-9_-]*(?:\.[a-z0-9][a-z0-9_-]*)+",
                          re.IGNORECASE | re.ASCII)
_ACME_ALIAS = re.compile(r"[a-z0-9_][a-z0-9_-]*(?:\.[a-z0-9_][a-z0-9_-]*)+",
                         re.IGNORECASE | re.ASCII)


def key(node: str) -> str:
    return keys.node_options(node)


class NodeConfigError(BinomeError):
    """A refused change (a changed digest, duplicate ACME domains): the API's 500."""


# ---------------------------------------------------------------- formats (PVE's texts)


def _mac(value: str) -> str:
    if not _MAC.fullmatch(value):
        raise ValueError("value does not look like a valid unicast MAC address")
    return value


def _iface(value: str) -> str:
    if not _IFACE.fullmatch(value):
        raise ValueError(f"invalid network interface name '{value}'")
    return value


def _ipv4(value: str) -> str:
    try:
        ipaddress.IPv4Address(value)
    except ValueError:
        raise ValueError("value does not look like a valid IPv4 address") from None
    return value


def is_configid(value: str) -> bool:
    """PVE's pve-configid (an option name given to `delete`)."""
    return _CONFIGID.fullmatch(value) is not None


def _configid(value: str) -> str:
    if not _CONFIGID.fullmatch(value):
        raise ValueError(f"invalid configuration ID '{value}'")
    return value


def _acme_domain(value: str) -> str:
    if not _ACME_DOMAIN.fullmatch(value):
        raise ValueError(f"value '{value}' does not look like a valid domain name!")
    return value


def _acme_domains(value: str) -> str:
    for item in value.split(";"):
        _acme_domain(item)
    return value


def _acme_alias(value: str) -> str:
    if not _ACME_ALIAS.fullmatch(value):
        raise ValueError(f"value '{value}' does not look like a valid alias name!")
    return value


def _fmt(check_fn: Any, description: str, **kw: Any) -> Param:
    return Param(description=description, extra={"check": check_fn}, **kw)


# PropertyString keys: typed Params; the format checks run in `_property_check`
WAKEONLAN = PropertyString(keys={
    "mac": _fmt(_mac, "MAC address for wake on LAN"),
    "bind-interface": _fmt(_iface, "Bind to this interface when sending wake on LAN "
                                   "packet (default: the interface carrying the default "
                                   "route)", optional=True),
    "broadcast-address": _fmt(_ipv4, "IPv4 broadcast address to use when sending wake on "
                                     "LAN packet (default: 255.255.255.255)", optional=True),
}, default_key="mac")

ACME = PropertyString(keys={
    "account": _fmt(_configid, "ACME account config file name.", optional=True,
                    default="default"),
    "domains": _fmt(_acme_domains, "List of domains for this node's ACME certificate",
                    optional=True),
})

ACME_DOMAIN = PropertyString(keys={
    "domain": _fmt(_acme_domain, "domain for this node's ACME certificate"),
    "plugin": _fmt(_configid, "The ACME plugin ID", optional=True, default="standalone"),
    "alias": _fmt(_acme_alias, "Alias for the Domain to verify ACME Challenge over DNS",
                  optional=True),
}, default_key="domain")

LOCATION = PropertyString(keys={
    "name": Param(optional=True, max_length=128,
                  description="The name of the location of this node"),
    "latitude": Param(type="number", minimum=-90, maximum=90,
                      description="The latitude of the nodes location in degrees."),
    "longitude": Param(type="number", minimum=-180, maximum=180,
                       description="The longitude of the nodes location in degrees."),
})


def parse_property(fmt: PropertyString, text: str) -> dict[str, Any]:
    """`text` parsed with `fmt` and each key's named format checked; ValueError (PVE's
    text, `invalid format - KEY: ...`) on the first bad key."""
    values = fmt.parse(text)
    for name, value in values.items():
        checker = fmt.keys[name].extra.get("check") if name in fmt.keys else None
        if checker is not None:
            try:
                checker(str(value))
            except ValueError as exc:
                raise ValueError(f"invalid format - {name}: {exc}") from None
    return values


def _verifier(fmt: PropertyString) -> PropertyString:
    return PropertyString(keys=fmt.keys, default_key=fmt.default_key,
                          verify=lambda text: parse_property(fmt, text))


def parse_wakeonlan(text: str) -> dict[str, Any]:
    """PVE's get_wakeonlan_config: `[mac=]MAC[,bind-interface=IF][,broadcast-address=IP]`."""
    return parse_property(WAKEONLAN, text)


NODE_SCHEMA: dict[str, Param] = {
    "description": Param(max_length=64 * 1024, optional=True, extra={"multiline": True},
                         description="Description for the Node. Shown in the "
                                     "web-interface node notes panel. This is saved as "
                                     "comment inside the configuration file."),
    "startall-onboot-delay": Param(type="integer", minimum=0, maximum=300, default=None,
                                   optional=True,
                                   description="Initial delay in seconds, before starting "
                                               "all the Virtual Guests with on-boot "
                                               "enabled (default 0)."),
    "ballooning-target": Param(type="integer", minimum=0, maximum=100, optional=True,
                               description="RAM usage target for ballooning (in percent of "
                                           "total memory; default 80). Stored only: binome "
                                           "has no auto-ballooning."),
    "wakeonlan": Param(optional=True, props=_verifier(WAKEONLAN),
                       description="Node specific wake on LAN settings."),
    "acme": Param(optional=True, props=_verifier(ACME),
                  description="Node specific ACME settings."),
    "location": Param(optional=True, props=LOCATION,
                      description="The location of the node. Overrides the default from "
                                  "the datacenter config."),
    **{f"acmedomain{i}": Param(optional=True, props=_verifier(ACME_DOMAIN),
                               description="ACME domain and validation plugin.")
       for i in range(MAX_DOMAINS + 1)},
}
KEYS = tuple(sorted(NODE_SCHEMA))


# ---------------------------------------------------------------- the file text


def encode_text(text: str) -> str:
    """PVE's encode_text: control and non-ASCII characters, ':' and '%' percent-encoded."""
    safe = "".join(chr(c) for c in range(0x20, 0x7f) if chr(c) not in "%:")
    return quote(text, safe=safe)


def decode_text(text: str) -> str:
    return unquote(text, errors="replace")


def format_text(conf: Mapping[str, Any]) -> str:
    """PVE's write_node_config: the description as `#` lines, then sorted `key: value`."""
    lines = str(conf.get("description") or "").split("\n")
    while lines and not lines[-1]:       # Perl's split drops trailing empty fields only
        lines.pop()
    raw = "".join(f"#{encode_text(line)}\n" for line in lines)
    for name in sorted(conf):
        if name in ("description", "digest"):
            continue
        value = conf[name]
        text = ("1" if value else "0") if isinstance(value, bool) else str(value)
        if "\n" in text:
            raise NodeConfigError(f"detected invalid newline inside property '{name}'")
        raw += f"{name}: {text}\n"
    return raw


def parse_text(raw: str) -> dict[str, Any]:
    """PVE's parse_node_config (without the digest): `#` lines are the description (each
    line ending in a newline, as PVE returns it), values typed by `NODE_SCHEMA`; a line
    or value that does not validate is left out (PVE warns and drops it)."""
    conf: dict[str, Any] = {}
    comment = ""
    for line in raw.splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("#"):
            comment += decode_text(line[1:].rstrip()) + "\n"
            continue
        m = re.fullmatch(r"(\S+?):\s*(.*)", line)
        if m:
            conf[m.group(1)] = m.group(2)
    if comment:
        conf["description"] = comment
    out: dict[str, Any] = {}
    for name, value in conf.items():
        p = NODE_SCHEMA.get(name)
        if p is None:
            continue
        try:
            out[name] = p.coerce(value)
        except ValueError:
            continue
    return out


def digest(raw: str) -> str:
    return hashlib.sha1(raw.encode()).hexdigest()


def verify(conf: Mapping[str, Any]) -> None:
    """PVE's verify_conf: the ACME domains are unique across `acme` and `acmedomainN`."""
    seen: dict[str, str] = {}
    if conf.get("acme"):
        domains = parse_property(ACME, str(conf["acme"])).get("domains") or ""
        for domain in (d.lower() for d in str(domains).split(";") if d):
            if domain in seen:
                raise NodeConfigError(f"duplicate domain '{domain}' in ACME config properties")
            seen[domain] = "acme"
    for i in range(MAX_DOMAINS + 1):
        name = f"acmedomain{i}"
        if not conf.get(name):
            continue
        domain = str(parse_property(ACME_DOMAIN, str(conf[name]))["domain"]).lower()
        if domain in seen:
            raise NodeConfigError(f"duplicate domain '{domain}' in ACME config properties "
                                  f"'{name}' and '{seen[domain]}'")
        seen[domain] = name


def apply_changes(conf: Mapping[str, Any], changes: Mapping[str, Any],
                  delete: Iterable[str]) -> dict[str, Any]:
    """PVE's set_options: `changes` set, then `delete` removed; checked (SchemaError per
    key for a bad value or an unknown key, NodeConfigError for duplicate domains)."""
    given = dict(changes)
    bad = {k: "property is not defined in schema and the schema does not allow "
              "additional properties" for k in given if k not in NODE_SCHEMA}
    try:
        checked = check({k: NODE_SCHEMA[k] for k in given if k in NODE_SCHEMA},
                        {k: v for k, v in given.items() if k in NODE_SCHEMA})
    except SchemaError as exc:
        raise SchemaError({**bad, **exc.errors}) from None
    if bad:
        raise SchemaError(bad)
    out = {**conf, **checked}
    for name in delete:
        out.pop(name, None)
    verify(out)
    return out


# ---------------------------------------------------------------- the etcd records


@dataclass(frozen=True)
class NodeConf:
    values: dict[str, Any]
    raw: str
    revision: int             # the key's mod revision (0: no config yet)

    @property
    def digest(self) -> str:
        return digest(self.raw)

    def answer(self) -> dict[str, Any]:
        """PVE's GET shape: the values and the digest; `{}` for an empty config (PVE's
        load_config of an empty or missing file)."""
        return {**self.values, "digest": self.digest} if self.raw else {}


class NodeConfigs:
    """The node configs in etcd: read, changed under a digest check, compare-and-swap."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def load(self, node: str, *, serializable: bool = False) -> NodeConf:
        entry = await self.store.get(key(node), serializable=serializable)
        if entry is None:
            return NodeConf({}, "", 0)
        raw = str(entry.value)
        return NodeConf(parse_text(raw), raw, entry.mod_revision)

    async def update(self, node: str, changes: Mapping[str, Any], delete: Iterable[str],
                     want_digest: str | None,
                     check: Callable[[dict[str, Any]], object] | None = None) -> NodeConf:
        """Apply a PUT: SchemaError (bad values), NodeConfigError (digest, domains);
        `check(new values)` may refuse the result too (the ACME plugins named exist)."""
        gone = list(delete)
        for _ in range(10):
            cur = await self.load(node)
            # PVE's assert_if_modified: an empty config has no digest to compare
            if want_digest and cur.raw and want_digest != cur.digest:
                raise NodeConfigError(MODIFIED)
            new = apply_changes(cur.values, changes, gone)
            if check is not None:
                check(new)
            raw = format_text(new)
            if raw == cur.raw:
                return cur
            if not new:
                ok = await self.store.commit({key(node): cur.revision}, None,
                                             [key(node)] if cur.revision else [])
            else:
                ok = await self.store.commit({key(node): cur.revision}, {key(node): raw})
            if ok:
                return await self.load(node)
        raise Conflict(f"{key(node)}: too many concurrent updates")

    async def onboot_delay(self, node: str) -> int:
        """`startall-onboot-delay` of `node` (0 when unset or unreadable)."""
        conf = await self.load(node, serializable=True)
        return int(conf.values.get("startall-onboot-delay") or 0)


# ---------------------------------------------------------------- Wake on LAN


def magic_packet(mac: str) -> bytes:
    """6 x 0xFF, then the 6 bytes of `mac` 16 times (102 bytes)."""
    raw = bytes.fromhex(mac.replace(":", ""))
    if len(raw) != 6:
        raise ValueError(f"invalid MAC address '{mac}'")
    return b"\xff" * 6 + raw * 16


def send_magic_packet(mac: str, broadcast: str = "255.255.255.255",
                      bind_interface: str | None = None, port: int = WOL_PORT) -> None:
    """PVE's send: a UDP broadcast socket, bound to `bind_interface` (SO_BINDTODEVICE)
    when given; NodeConfigError with PVE's texts."""
    packet = magic_packet(mac)
    try:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    except OSError as exc:
        raise NodeConfigError(f"Unable to open socket: {exc.strerror}") from None
    with sock:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        except OSError as exc:
            raise NodeConfigError(f"Unable to set socket option: {exc.strerror}") from None
        if bind_interface is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE,
                                bind_interface.encode() + b"\0")
            except OSError as exc:
                raise NodeConfigError(f"Unable to bind socket to interface "
                                      f"'{bind_interface}': {exc.strerror}") from None
        try:
            sock.sendto(packet, (broadcast, port))
        except OSError as exc:
            raise NodeConfigError(f"Unable to send packet: {exc.strerror}") from None


async def wake(configs: NodeConfigs, target: str, local: str,
               members: Iterable[str]) -> str:
    """PVE's wakeonlan on the node handling the request; the MAC used."""
    if target in ("localhost", local):
        raise NodeConfigError(f"'{target}' is local node, cannot wake my self!")
    if target not in set(members):
        raise NodeConfigError(f"no such cluster node '{target}'")
    wol = (await configs.load(target)).values.get("wakeonlan")
    mac = parse_wakeonlan(str(wol)).get("mac") if wol else None
    if not mac:
        raise NodeConfigError(f"No wake on LAN MAC address defined for '{target}'!")
    own = (await configs.load(local)).values.get("wakeonlan")
    mine = parse_wakeonlan(str(own)) if own else {}
    send_magic_packet(str(mac), str(mine.get("broadcast-address") or "255.255.255.255"),
                      mine.get("bind-interface"))
    return str(mac)
