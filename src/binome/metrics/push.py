"""The push to external metric servers (PVE's `pvestatd` side of `status.cfg`).

Every `PUSH_INTERVAL` seconds (PVE's pvestatd loop, 10 s) each node sends its own data
to every enabled server: one record set for the node and one per VM whose config is on
it, in PVE's formats, so dashboards built for PVE's InfluxDB and Graphite data read it:

- **InfluxDB line protocol** (`influx_lines`, PVE's `build_influxdb_payload`): top-level
  scalars go to measurement `system`, each sub-table becomes a measurement named by its
  key, a second level becomes an `instance=<key>` tag; tags `object=nodes,host=<node>`
  or `object=qemu,vmid=<id>,nodename=<node>[,host=<name>]`; nanosecond timestamps.
  Over UDP in datagrams of at most `mtu - 50` bytes, or HTTP(S) POST to
  `<proto>://<server>:<port><prefix>api/v2/write?org=<org>&bucket=<bucket>` with
  `Authorization: Token <token>`, batched up to `max-body-size`.
- **Graphite plaintext** (`graphite_lines`): `<path>.nodes.<node>.<key>[.<sub>] <value>
  <epoch>`, numbers only, over UDP (datagrams of `mtu - 50`) or TCP.

The servers are re-read (serializably: the local etcd member) every second, so a new
server gets its first data within a second or two; a failed send is logged once per
change of its error and retried at the next interval. A push never blocks the daemon's
other work (its own task; `timeout` bounds every send).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import ssl
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import aiohttp

from binome.metrics.servers import DEFAULTS, MetricServers, port_of
from binome.store.client import StoreUnavailable

if TYPE_CHECKING:
    from binome.metrics.sources import MetricSources

log = logging.getLogger("binome.metrics")

PUSH_INTERVAL = 10.0
CONFIG_POLL = 1.0
UDP_OVERHEAD = 50                   # PVE: a datagram carries at most mtu - 50 bytes
GRAPHITE_TCP_BATCH = 56000
GRAPHITE_SKIP = ("template", "pid", "agent", "serial")
FORCE_QUOTE = ("name", "tags")      # 'abc' and '123' are both valid names: always strings


class PushError(Exception):
    """A send failed (the message names the server, never a token)."""


# ---------------------------------------------------------------- what is sent

def node_data(src: MetricSources) -> dict[str, Any]:
    """The node's record set (PVE's node data: uptime, cpustat, memory, nics)."""
    h = src.host.summary()
    load = os.getloadavg()
    return {
        "uptime": h["uptime"],
        "cpustat": {"cpu": h["cpu"], "cpus": h["maxcpu"], "avg1": load[0], "avg5": load[1],
                    "avg15": load[2]},
        "memory": {"memtotal": h["maxmem"], "memused": h["mem"],
                   "memfree": h["maxmem"] - h["mem"]},
        "blockstat": {"total": h["maxdisk"], "used": h["disk"]},
        "nics": {dev: {"receive": rx, "transmit": tx}
                 for dev, (rx, tx) in src.host.net_devices().items()},
    }


def guest_data(src: MetricSources) -> dict[int, dict[str, Any]]:
    """{vmid: the VM's status entry} (PVE's vmstatus), for the VMs on this node."""
    guests = src.guests
    return {} if guests is None else {vmid: dict(st) for vmid, st in
                                      guests.last_status.items()}


# ---------------------------------------------------------------- InfluxDB

def _escape_tag(value: str) -> str:
    return value.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=") \
        .replace(" ", "\\ ")


def _field(value: Any, force_quote: bool = False) -> str | None:
    """A field value as PVE writes it: numbers bare (NaN and Inf dropped), the rest
    double-quoted with `"` escaped."""
    if isinstance(value, bool):
        value = int(value)
    if not force_quote and isinstance(value, int | float):
        if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
            return None
        return repr(value) if isinstance(value, float) else str(value)
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def _flat(table: Mapping[str, Any]) -> list[str]:
    out = []
    for key in sorted(table):
        value = table[key]
        if isinstance(value, Mapping):
            out.extend(_flat(value))
        elif value is not None and value != "":
            v = _field(value)
            if v is not None:
                out.append(f"{key}={v}")
    return out


def influx_lines(data: Mapping[str, Any], tags: str, ns: int,
                 excluded: Iterable[str] = ()) -> list[str]:
    """PVE's build_influxdb_payload for one object."""
    lines: list[str] = []

    def build(table: Mapping[str, Any], measurement: str | None,
              instance: str | None) -> None:
        values = []
        for key in sorted(table):
            if key in excluded:
                continue
            value = table[key]
            if value is None:
                continue
            if isinstance(value, Mapping):
                if measurement is None:
                    build(value, key, None)
                elif instance is None:
                    build(value, measurement, key)
                else:
                    values.extend(_flat(value))
            elif value != "":
                v = _field(value, key in FORCE_QUOTE)
                if v is not None:
                    values.append(f"{key}={v}")
        if values:
            tagstr = tags + (f",instance={_escape_tag(instance)}" if instance else "")
            lines.append(f"{measurement or 'system'},{tagstr} {','.join(values)} {ns}")

    build(data, None, None)
    return lines


def node_tags(node: str) -> str:
    return f"object=nodes,host={_escape_tag(node)}"


def qemu_tags(vmid: int, node: str, name: str | None) -> str:
    tags = f"object=qemu,vmid={vmid},nodename={_escape_tag(node)}"
    return tags + (f",host={_escape_tag(name)}" if name else "")


# ---------------------------------------------------------------- Graphite

def graphite_lines(data: Mapping[str, Any], path: str, epoch: int) -> list[str]:
    """PVE's write_graphite_hash: numbers only, dots in keys become '-'."""
    out = []
    for key in sorted(data):
        if key in GRAPHITE_SKIP:
            continue
        value = data[key]
        name = f"{path}.{key.replace('.', '-')}"
        if isinstance(value, Mapping):
            out.extend(graphite_lines(value, name, epoch))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            if not (isinstance(value, float) and (math.isnan(value) or math.isinf(value))):
                out.append(f"{name} {value} {epoch}")
    return out


# ---------------------------------------------------------------- batching and sending

def batches(lines: Iterable[str], limit: int) -> list[bytes]:
    """Lines joined into payloads of at most `limit` bytes (a longer line goes alone)."""
    out: list[bytes] = []
    current = b""
    for line in lines:
        raw = line.encode() + b"\n"
        if current and len(current) + len(raw) > limit:
            out.append(current)
            current = b""
        current += raw
    if current:
        out.append(current)
    return out


def payload_lines(record: Mapping[str, Any], node: str, node_set: Mapping[str, Any],
                  guests: Mapping[int, Mapping[str, Any]], now: float) -> list[str]:
    if record["type"] == "influxdb":
        ns = int(now) * 1_000_000_000
        lines = influx_lines(node_set, node_tags(node), ns)
        for vmid, st in sorted(guests.items()):
            lines += influx_lines(st, qemu_tags(vmid, node, st.get("name")), ns,
                                  excluded=("vmid",))
        return lines
    path = str(record.get("path") or DEFAULTS["path"])
    lines = graphite_lines(node_set, f"{path}.nodes.{node}", int(now))
    for vmid, st in sorted(guests.items()):
        lines += graphite_lines({k: v for k, v in st.items() if k != "vmid"},
                                f"{path}.qemu.{vmid}", int(now))
    return lines


def _influx_url(record: Mapping[str, Any], api_path: str) -> str:
    """PVE's _get_v2url."""
    prefix = str(record.get("api-path-prefix") or "/")
    if prefix != "/":
        prefix = "/" + prefix.strip("/") + "/"
    if api_path != "health":
        api_path = f"api/v2/{api_path}"
    host = str(record["server"])
    host = f"[{host}]" if ":" in host else host
    return f"{record.get('influxdbproto')}://{host}:{record['port']}{prefix}{api_path}"


def _ssl(record: Mapping[str, Any]) -> ssl.SSLContext | bool:
    if record.get("influxdbproto") != "https":
        return False
    if int(record.get("verify-certificate", 1)):
        return ssl.create_default_context()
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _udp_send(host: str, port: int, payloads: list[bytes]) -> None:
    info = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
    with socket.socket(info[0], socket.SOCK_DGRAM) as s:
        for p in payloads:
            s.sendto(p, info[4])


async def send(record: Mapping[str, Any], token: str | None, lines: list[str],
               session: aiohttp.ClientSession) -> None:
    """Send `lines` to one server; PushError on failure."""
    kind = record["type"]
    host, port = str(record["server"]), port_of(record)
    timeout = float(record.get("timeout") or DEFAULTS["timeout"])
    mtu = int(record.get("mtu") or DEFAULTS["mtu"])
    proto = record.get("influxdbproto" if kind == "influxdb" else "proto") or "udp"
    try:
        if proto == "udp":
            await asyncio.wait_for(asyncio.to_thread(
                _udp_send, host, port, batches(lines, mtu - UDP_OVERHEAD)), timeout)
        elif kind == "graphite":       # tcp
            _reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port),
                                                    timeout)
            try:
                for p in batches(lines, GRAPHITE_TCP_BATCH):
                    writer.write(p)
                    await asyncio.wait_for(writer.drain(), timeout)
            finally:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
        else:                          # influxdb over http(s)
            org = record.get("organization") or DEFAULTS["organization"]
            bucket = record.get("bucket") or DEFAULTS["bucket"]
            url = _influx_url(record, f"write?org={org}&bucket={bucket}")
            headers = {"Authorization": f"Token {token}"} if token else {}
            limit = int(record.get("max-body-size") or DEFAULTS["max-body-size"])
            for body in batches(lines, limit):
                async with session.post(url, data=body, headers=headers, ssl=_ssl(record),
                                        timeout=aiohttp.ClientTimeout(total=timeout)) as r:
                    if r.status >= 300:
                        raise PushError(f"{r.status} {r.reason}")
    except PushError:
        raise
    except (OSError, TimeoutError, aiohttp.ClientError) as exc:
        raise PushError(f"{type(exc).__name__}: {exc}" if str(exc) else
                        type(exc).__name__) from None


async def check_connection(record: Mapping[str, Any], token: str | None) -> None:
    """PVE's test_connection, before a server is saved: UDP resolves and opens a socket;
    Graphite TCP connects; InfluxDB HTTP(S) GETs `<url>health`. PushError on failure
    (a disabled server is not tested)."""
    if record.get("disable"):
        return
    kind = record["type"]
    host, port = str(record["server"]), port_of(record)
    timeout = float(record.get("timeout") or DEFAULTS["timeout"])
    proto = record.get("influxdbproto" if kind == "influxdb" else "proto") or "udp"
    try:
        if proto == "udp":
            await asyncio.wait_for(asyncio.to_thread(_udp_send, host, port, []), timeout)
        elif kind == "graphite":
            _r, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
            writer.close()
        else:
            headers = {"Authorization": f"Token {token}"} if token else {}
            async with aiohttp.ClientSession() as session, session.get(
                    _influx_url(record, "health"), headers=headers, ssl=_ssl(record),
                    timeout=aiohttp.ClientTimeout(total=timeout)) as r:
                if r.status >= 300:
                    raise PushError(f"{r.status} {r.reason}")
    except PushError:
        raise
    except (OSError, TimeoutError, aiohttp.ClientError) as exc:
        raise PushError(f"{type(exc).__name__}: {exc}" if str(exc) else
                        type(exc).__name__) from None


# ---------------------------------------------------------------- the loop

class MetricPusher:
    """The node's push loop (started by the daemon; one task)."""

    def __init__(self, sources: MetricSources,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.sources = sources
        self._clock = clock
        self._next: dict[str, float] = {}        # server id -> when it is due
        self._errors: dict[str, str] = {}        # server id -> last error (logged once)

    async def run(self) -> None:
        async with aiohttp.ClientSession() as session:
            while True:
                try:
                    await self.tick(session)
                except StoreUnavailable:
                    pass                         # no etcd member now: try again
                except Exception:
                    log.exception("metric server push failed")
                await asyncio.sleep(CONFIG_POLL)

    async def tick(self, session: aiohttp.ClientSession) -> None:
        store = self.sources.cluster.store
        if store is None:
            return
        servers = MetricServers(store)
        records = await servers.records(serializable=True)
        for sid in [s for s in self._next if s not in records]:
            self._next.pop(sid, None)
            self._errors.pop(sid, None)
        now = self._clock()
        due = {sid: r for sid, r in records.items()
               if not r.get("disable") and self._next.get(sid, 0.0) <= now}
        if not due:
            return
        tokens = await servers.tokens(serializable=True)
        node = self.sources.config.name
        node_set, guests, wall = node_data(self.sources), guest_data(self.sources), time.time()
        for sid, record in due.items():
            self._next[sid] = now + PUSH_INTERVAL
            try:
                await send(record, tokens.get(sid),
                           payload_lines(record, node, node_set, guests, wall), session)
            except PushError as exc:
                if self._errors.get(sid) != str(exc):
                    log.warning("metric server '%s' (%s): send failed: %s", sid,
                                record["type"], exc)
                self._errors[sid] = str(exc)
            else:
                if sid in self._errors:
                    log.info("metric server '%s': sending again", sid)
                    del self._errors[sid]
