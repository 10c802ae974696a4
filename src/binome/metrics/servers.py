"""External metric servers (PVE's `status.cfg`, `/cluster/metrics/server`): the records in
etcd and the one place that builds and checks them.

Owns `/binome/metrics/servers/<id>` (the server's settings: PVE's section, `type` plus
its options) and `/binome/metrics/server-secrets/<id>` (an InfluxDB `token`,
**write-only**: stored apart like PVE's `/etc/pve/priv/metricserver/<id>.pw`, read only
by the pusher, never returned by a method, never in an error). `build_record` applies
an administrator's settings to a record with PVE's rules (`PVE::Status::Plugin` and its
`InfluxDB`/`Graphite` plugins: the options each type has, their ranges and defaults);
the push itself is `binome.metrics.push`.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from binome.errors import BinomeError
from binome.schema import is_host_address

if TYPE_CHECKING:
    from binome.store.client import Store

SERVERS = "/binome/metrics/servers/"
SECRETS = "/binome/metrics/server-secrets/"

TYPES = ("influxdb", "graphite")
ID_RE = re.compile(r"[a-z][a-z0-9_-]+", re.IGNORECASE)     # PVE's pve-configid
GRAPHITE_PATH_RE = re.compile(r"[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*")
COMMON = ("server", "port", "disable", "mtu", "timeout")
#: the options each type takes (PVE's `options` of each plugin), besides `type`
OPTIONS: dict[str, tuple[str, ...]] = {
    "influxdb": (*COMMON, "influxdbproto", "organization", "bucket", "token",
                 "api-path-prefix", "max-body-size", "verify-certificate"),
    "graphite": (*COMMON, "path", "proto"),
}
REQUIRED: dict[str, tuple[str, ...]] = {"influxdb": ("server", "port"),
                                        "graphite": ("server",)}
SECRET_OPTIONS = ("token",)
DEFAULTS: dict[str, Any] = {"mtu": 1500, "timeout": 1, "influxdbproto": "udp",
                            "organization": "proxmox", "bucket": "proxmox",
                            "max-body-size": 25_000_000, "verify-certificate": 1,
                            "path": "proxmox", "proto": "udp", "graphite-port": 2003}
_MISSING = "property is missing and it is not optional"


class MetricServerError(BinomeError):
    """A missing, duplicate or concurrently changed server (the API answers 500)."""


class MetricServerSettingsError(ValueError):
    """Settings that make no valid record; `errors` maps each option to its problem."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


def digest(record: Mapping[str, Any]) -> str:
    """The record's digest (PVE's `digest`: SHA-1 of what is stored)."""
    return hashlib.sha1(json.dumps(record, sort_keys=True).encode()).hexdigest()


def port_of(record: Mapping[str, Any]) -> int:
    return int(record.get("port") or DEFAULTS["graphite-port"])


def build_record(old: Mapping[str, Any] | None, settings: Mapping[str, Any],
                 delete: Sequence[str] = ()) -> dict[str, Any]:
    """The record to store: `old` (None on create) changed by `settings` (typed values,
    None: not given; `type` only on create) less `delete`. The token is not part of the
    record (see `MetricServers.set_token`). Raises MetricServerSettingsError."""
    kind = (old or {}).get("type") or settings.get("type")
    errors: dict[str, str] = {}
    if kind not in TYPES:
        raise MetricServerSettingsError({"type": _MISSING if kind is None else
                                         f"value '{kind}' does not have a value in the "
                                         f"enumeration '{', '.join(TYPES)}'"})
    if old is not None and settings.get("type") not in (None, kind):
        errors["type"] = "the type of a metric server cannot be changed"
    allowed = OPTIONS[kind]
    for name, value in settings.items():
        if value is not None and name != "type" and name not in allowed:
            errors[name] = f"option '{name}' is not allowed for type '{kind}'"
    for name in delete:
        if name not in allowed:
            errors["delete"] = f"no such option '{name}'"
        elif name in REQUIRED[kind]:
            errors["delete"] = f"unable to delete required option '{name}'"
        elif settings.get(name) is not None:
            errors["delete"] = f"cannot set and delete property '{name}' at the same time!"
    if errors:
        raise MetricServerSettingsError(errors)
    record = {k: v for k, v in (old or {}).items() if k not in delete}
    record["type"] = kind
    for name in allowed:
        if name not in SECRET_OPTIONS and settings.get(name) is not None:
            record[name] = settings[name]
    for name in ("disable", "verify-certificate"):
        if name in record:
            record[name] = int(bool(record[name]))
    for name in REQUIRED[kind]:
        if record.get(name) in (None, ""):
            errors[name] = _MISSING
    if record.get("server") and not is_host_address(str(record["server"])):
        errors["server"] = f"invalid address '{record['server']}'"
    if "path" in record and not GRAPHITE_PATH_RE.fullmatch(str(record["path"])):
        errors["path"] = "value does not match the regex pattern"
    if errors:
        raise MetricServerSettingsError(errors)
    return record


def public_record(sid: str, record: Mapping[str, Any]) -> dict[str, Any]:
    """What GET returns: the stored section (never the token)."""
    return {k: v for k, v in record.items() if k not in SECRET_OPTIONS}


def list_entry(sid: str, record: Mapping[str, Any]) -> dict[str, Any]:
    """PVE's `server_index` row."""
    return {"id": sid, "disable": int(record.get("disable") or 0), "type": record["type"],
            "server": record.get("server"), "port": record.get("port")}


class MetricServers:
    """The stored metric servers, on one store client."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def records(self, *, serializable: bool = False) -> dict[str, dict[str, Any]]:
        entries = await self.store.get_prefix(SERVERS, serializable=serializable)
        return {e.key[len(SERVERS):]: e.value for e in entries if isinstance(e.value, dict)}

    async def record(self, sid: str) -> dict[str, Any]:
        rec = await self.store.get_value(SERVERS + sid)
        if not isinstance(rec, dict):
            raise MetricServerError(f"status server entry '{sid}' does not exist")
        return rec

    async def tokens(self, *, serializable: bool = False) -> dict[str, str]:
        """{id: token} for the pusher (nothing else reads them)."""
        entries = await self.store.get_prefix(SECRETS, serializable=serializable)
        return {e.key[len(SECRETS):]: str(e.value.get("token"))
                for e in entries if isinstance(e.value, dict) and e.value.get("token")}

    async def token(self, sid: str) -> str | None:
        doc = await self.store.get_value(SECRETS + sid)
        return str(doc["token"]) if isinstance(doc, dict) and doc.get("token") else None

    async def create(self, sid: str, record: Mapping[str, Any], token: str | None) -> None:
        key = SERVERS + sid
        puts: dict[str, Any] = {key: dict(record)}
        if token:
            puts[SECRETS + sid] = {"token": token}
        if not await self.store.commit({key: 0}, puts, () if token else [SECRETS + sid]):
            raise MetricServerError(f"Metric server '{sid}' already exists")

    async def replace(self, sid: str, old: Mapping[str, Any], record: Mapping[str, Any],
                      token: str | None, drop_token: bool) -> None:
        """Store `record` if the stored one is still `old`; `token` replaces the secret,
        `drop_token` removes it."""
        entry = await self.store.get(SERVERS + sid)
        if entry is None or entry.value != old:
            raise MetricServerError("metric server changed meanwhile - try again")
        puts: dict[str, Any] = {SERVERS + sid: dict(record)}
        if token:
            puts[SECRETS + sid] = {"token": token}
        deletes = [SECRETS + sid] if drop_token and not token else []
        if not await self.store.commit({SERVERS + sid: entry.mod_revision}, puts, deletes):
            raise MetricServerError("metric server changed meanwhile - try again")

    async def remove(self, sid: str) -> None:
        entry = await self.store.get(SERVERS + sid)
        if entry is None:
            raise MetricServerError(f"status server entry '{sid}' does not exist")
        await self.store.commit({SERVERS + sid: entry.mod_revision}, None,
                                [SERVERS + sid, SECRETS + sid])
