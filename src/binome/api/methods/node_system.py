"""A node's system pages, in PVE's shapes (`PVE/API2/Nodes.pm`, `Network.pm`,
`Services.pm`): `/nodes/{node}/version`, `network` (read only), `dns`, `time`,
`hosts` (read only), `certificates/info`, `subscription` (none), `hardware/pci`, `services`,
`report`, and `POST /nodes/{node}/status` (reboot or shut the host down).

The facts come from the node itself (`NodeServices.host`, `service_states`): every
method is proxied to the node named in the path. Nothing here writes the host's
configuration (binome manages no host network, DNS, time zone or /etc/hosts: the write
methods of PVE stay unimplemented, a 501).

A node reboot/shutdown (`command=reboot|shutdown`) cannot be what PVE's is (PVE runs
`/sbin/reboot` in the background and lets pve-ha-lrm and pve-guests react as systemd
stops them). binome does those steps itself, in a `nodereboot`/`nodeshutdown` task, in
the order a real shutdown would: the HA agent applies the datacenter's HA shutdown
policy to this node's HA guests (`prepare_host_shutdown`), the other running guests are
shut down as PVE's `stopall` at shutdown does, and only then the host is asked to go
down through `BINOME_HOST_POWER_COMMAND` (`systemctl reboot|poweroff` by default; see
`binome.ha.agent.shutdown.power_argv`).
"""

from __future__ import annotations

import asyncio
import os
import platform
import re
import time
from typing import Any

from binome import __version__
from binome.access.permission import AnyUser
from binome.api.context import RequestContext
from binome.api.errors import ApiError, param_error
from binome.api.methods import node_bulk
from binome.api.methods.certificates import CERT_INFO
from binome.api.methods.common import NODE
from binome.api.methods.version import PVE_COMPAT_VERSION
from binome.api.registry import CliSpec, privs, registry
from binome.api.schema import Param
from binome.guest import bulk
from binome.ha.agent.shutdown import power_argv, run_power_command
from binome.tasks.manager import Task, TaskFailed

AUDIT = privs("Sys.Audit", path="/nodes/{node}")
POWER = privs("Sys.PowerMgmt", path="/nodes/{node}")
IFACE = Param(pattern=r"[a-zA-Z][a-zA-Z0-9_.:-]{1,20}", description="Network interface name.")
# PVE's network type filter (`$network_type_enum` and the three pseudo-types)
NETWORK_TYPES = ("bridge", "bond", "eth", "alias", "vlan", "fabric", "OVSBridge", "OVSBond",
                 "OVSPort", "OVSIntPort", "vnet", "any_bridge", "any_local_bridge",
                 "include_sdn")
SERVICES = ("binomed", "etcd", "binome-volumes", "watchdog")
POLICY_WAIT = 300.0    # how long the HA shutdown policy may take before the host goes down

_power_running: set[str] = set()


@registry.register(
    "GET", "/nodes/{node}/version", name="node_version", proxyto="node",
    permission=AnyUser("PVE: user => 'all'"),
    description="API version details of this node.",
    parameters={"node": NODE},
    returns={"type": "object", "properties": {"version": {"type": "string"},
                                              "release": {"type": "string"},
                                              "repoid": {"type": "string"}}},
    cli=CliSpec(("node", "version"), positional=("node",)),
)
async def node_version(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    return {"version": PVE_COMPAT_VERSION, "release": PVE_COMPAT_VERSION.rsplit(".", 1)[0],
            "repoid": "b1a0e000", "product": "binome", "binome": __version__}


def _type_matches(entry: dict[str, Any], wanted: str) -> bool:
    kind = entry.get("type")
    if wanted == "include_sdn":
        return True
    if wanted in ("any_bridge", "any_local_bridge"):
        return kind in ("bridge", "OVSBridge")
    return kind == wanted


@registry.register(
    "GET", "/nodes/{node}/network", name="network_index", proxyto="node",
    permission=AnyUser("every interface; bridges only to root@pam or with SDN.Audit or "
                       "SDN.Use on /sdn/zones/localnetwork/<bridge>"),
    description="List the node's network interfaces (read from the running system: "
                "bridges, bonds, VLANs, physical NICs, with their addresses).",
    parameters={"node": NODE,
                "type": Param(optional=True, enum=NETWORK_TYPES,
                              description="Only list specific interface types.")},
    returns={"type": "array", "items": {"type": "object",
                                        "properties": {"iface": {"type": "string"},
                                                       "type": {"type": "string"}}}},
    cli=CliSpec(("node", "network"), positional=("node",),
                formatter="table:iface,type,active,method,cidr,gateway,cidr6,bridge_ports,"
                          "slaves"),
)
async def network_index(ctx: RequestContext, params: dict[str, Any]) -> list[dict[str, Any]]:
    ifaces = await _interfaces(ctx)
    wanted = params.get("type")
    ev = await ctx.services.access.evaluator()
    out = []
    for name in sorted(ifaces):
        entry = ifaces[name]
        if wanted is not None and not _type_matches(entry, wanted):
            continue
        if entry.get("type") in ("bridge", "OVSBridge") and ctx.userid != "root@pam" and \
                not ev.check(ctx.userid, f"/sdn/zones/localnetwork/{name}",
                             ["SDN.Audit", "SDN.Use"], any=True):
            continue
        out.append(entry)
    return out


async def _interfaces(ctx: RequestContext) -> dict[str, dict[str, Any]]:
    try:
        return await ctx.services.host.network()
    except (OSError, ValueError) as exc:
        raise ApiError(500, f"unable to read the network interfaces: {exc}") from None


@registry.register(
    "GET", "/nodes/{node}/network/{iface}", name="network_config", proxyto="node",
    permission=AUDIT, description="Read network device configuration.",
    parameters={"node": NODE, "iface": IFACE},
    returns={"type": "object", "properties": {"type": {"type": "string"},
                                              "method": {"type": "string"}}},
    cli=CliSpec(("node", "network-show"), positional=("node", "iface")),
)
async def network_config(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    ifaces = await _interfaces(ctx)
    entry = ifaces.get(params["iface"])
    if entry is None:
        raise param_error("iface", "interface does not exist")
    return {k: v for k, v in entry.items() if k != "iface"}


@registry.register(
    "GET", "/nodes/{node}/dns", name="node_dns", proxyto="node", permission=AUDIT,
    description="Read DNS settings (the node's /etc/resolv.conf).",
    parameters={"node": NODE},
    returns={"type": "object", "properties": {
        "search": {"type": "string", "optional": 1}, "dns1": {"type": "string", "optional": 1},
        "dns2": {"type": "string", "optional": 1}, "dns3": {"type": "string", "optional": 1}}},
    cli=CliSpec(("node", "dns"), positional=("node",)),
)
async def node_dns(ctx: RequestContext, params: dict[str, Any]) -> dict[str, str]:
    return ctx.services.host.dns()


@registry.register(
    "GET", "/nodes/{node}/time", name="node_time", proxyto="node", permission=AUDIT,
    description="Read server time and time zone settings.",
    parameters={"node": NODE},
    returns={"type": "object", "properties": {"timezone": {"type": "string"},
                                              "time": {"type": "integer"},
                                              "localtime": {"type": "integer"}}},
    cli=CliSpec(("node", "time"), positional=("node",)),
)
async def node_time(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    return ctx.services.host.time()


SERVICE_SCHEMA = {"service": {"type": "string"}, "name": {"type": "string"},
                  "desc": {"type": "string"}, "state": {"type": "string"},
                  "active-state": {"type": "string"}, "unit-state": {"type": "string"}}


@registry.register(
    "GET", "/nodes/{node}/services", name="node_services", proxyto="node", permission=AUDIT,
    description="Service list: binomed, its etcd member, the replicated volume engine and "
                "the HA watchdog supervisor (read only).",
    parameters={"node": NODE},
    returns={"type": "array", "items": {"type": "object", "properties": SERVICE_SCHEMA}},
    cli=CliSpec(("node", "services"), positional=("node",),
                formatter="table:service,state,active-state,unit-state,desc"),
)
async def node_services(ctx: RequestContext, params: dict[str, Any]) -> list[dict[str, Any]]:
    return sorted(ctx.services.service_states(), key=lambda s: s["service"])


@registry.register(
    "GET", "/nodes/{node}/services/{service}/state", name="node_service_state",
    proxyto="node", permission=AUDIT, description="Read service properties.",
    parameters={"node": NODE, "service": Param(enum=SERVICES, description="Service ID")},
    returns={"type": "object", "properties": SERVICE_SCHEMA},
)
async def node_service_state(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    for st in ctx.services.service_states():
        if st["service"] == params["service"]:
            return st
    raise ApiError(500, f"service '{params['service']}' does not run on this node")


async def _section(ctx: RequestContext, path: str, **params: Any) -> Any:
    method, found = registry.match("GET", path)
    return await method.handler(ctx, {**found, **params})


def _rows(items: list[dict[str, Any]], cols: tuple[str, ...]) -> list[str]:
    return ["  ".join(f"{k}={item[k]}" for k in cols if k in item) for item in items]


async def build_report(ctx: RequestContext) -> str:
    """PVE's `pvereport`: the node's facts as text sections, for a support request.
    No secret goes in (no config values beyond names, types and states)."""
    sections: list[tuple[str, list[str]]] = []
    st = ctx.services.host.status()
    sections.append(("general system info", [
        f"hostname: {ctx.node}", f"binome: {__version__} (PVE API {PVE_COMPAT_VERSION})",
        f"kernel: {st.get('kversion')}", f"uptime: {st.get('uptime')} s",
        f"load average: {' '.join(st.get('loadavg') or [])}",
        f"cpus: {st.get('cpuinfo', {}).get('cpus')} ({st.get('cpuinfo', {}).get('model')})",
        f"memory: {st.get('memory', {}).get('used')} / {st.get('memory', {}).get('total')}",
        f"python: {platform.python_version()}",
        f"time: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
    ]))
    parts: list[tuple[str, str, tuple[str, ...]]] = [
        ("cluster", "/cluster/status", ("type", "name", "online", "quorate", "nodes", "ip")),
        ("HA status", "/cluster/ha/status/current", ("id", "status")),
        ("storage", f"/nodes/{ctx.node}/storage", ("storage", "type", "active", "content")),
    ]
    for title, path, cols in parts:
        try:
            sections.append((title, _rows(await _section(ctx, path), cols)))
        except Exception as exc:   # a report reports: one part failing is one more fact
            sections.append((title, [f"unavailable: {getattr(exc, 'message', exc)}"]))
    guests = ctx.services.guests
    if guests is not None:
        sections.append(("guests on this node", _rows(
            [guests.last_status[v] for v in sorted(guests.last_status)],
            ("vmid", "name", "status", "uptime"))))
    try:
        ifaces = await ctx.services.host.network()
        sections.append(("network", _rows([ifaces[k] for k in sorted(ifaces)],
                                          ("iface", "type", "active", "cidr", "cidr6",
                                           "gateway", "bridge_ports", "slaves"))))
    except (OSError, ValueError) as exc:
        sections.append(("network", [f"unavailable: {exc}"]))
    sections.append(("dns", [f"{k}: {v}" for k, v in sorted(ctx.services.host.dns().items())]))
    sections.append(("services", _rows(ctx.services.service_states(),
                                       ("service", "state", "pid"))))
    disk = os.statvfs("/")
    sections.append(("disks", [f"/: {disk.f_blocks * disk.f_frsize} bytes, "
                               f"{disk.f_bavail * disk.f_frsize} available"]))
    return "".join(f"==== {title} ====\n\n" + "".join(line + "\n" for line in lines) + "\n"
                   for title, lines in sections)


@registry.register(
    "GET", "/nodes/{node}/report", name="node_report", proxyto="node", permission=AUDIT,
    description="Gather various systems information about a node.",
    parameters={"node": NODE},
    returns={"type": "string"},
    cli=CliSpec(("node", "report"), positional=("node",)),
)
async def node_report(ctx: RequestContext, params: dict[str, Any]) -> str:
    return await build_report(ctx)


@registry.register(
    "POST", "/nodes/{node}/status", name="node_cmd", proxyto="node", permission=POWER,
    description="Reboot or shutdown a node: the HA shutdown policy is applied to its HA "
                "guests, its other guests are shut down, then the host is asked to go "
                "down (BINOME_HOST_POWER_COMMAND, default systemctl). Runs as a "
                "nodereboot/nodeshutdown task.",
    parameters={"node": NODE,
                "command": Param(enum=("reboot", "shutdown"),
                                 description="Specify the command.")},
    cli=(CliSpec(("node", "reboot"), positional=("node",), fixed=(("command", "reboot"),),
                 confirm="this stops or moves every guest of the node, then reboots the "
                         "host",
                 help="Reboot the node: HA shutdown policy, other guests shut down, then "
                      "the host's reboot command (a nodereboot task)."),
         CliSpec(("node", "shutdown"), positional=("node",), fixed=(("command", "shutdown"),),
                 confirm="this stops or moves every guest of the node, then powers the "
                         "host off",
                 help="Power the node off: HA shutdown policy, other guests shut down, "
                      "then the host's power-off command (a nodeshutdown task).")),
)
async def node_cmd(ctx: RequestContext, params: dict[str, Any]) -> None:
    kind = "reboot" if params["command"] == "reboot" else "poweroff"
    power_argv(kind)   # a malformed BINOME_HOST_POWER_COMMAND fails here, before anything
    if ctx.node in _power_running:
        raise ApiError(500, f"a reboot or shutdown of node '{ctx.node}' is already running")
    _power_running.add(ctx.node)

    async def body(task: Task) -> None:
        try:
            await run_host_power(ctx, task, kind)
        finally:
            _power_running.discard(ctx.node)

    try:
        ctx.services.tasks.start("node" + params["command"], "", ctx.userid, body)
    except BaseException:
        _power_running.discard(ctx.node)
        raise


async def run_host_power(ctx: RequestContext, task: Task, kind: str) -> None:
    task.log(f"host {kind} requested by {ctx.userid}")
    ha = ctx.services.ha
    if ha is not None:
        task.log("applying the HA shutdown policy to this node's HA guests")
        if await ha.prepare_host_shutdown(kind, POLICY_WAIT):
            task.log("HA shutdown policy applied")
        else:
            task.warn(f"the HA shutdown policy was not done within {POLICY_WAIT:.0f} s "
                      "(no quorum?): the host goes down anyway, as it would on its own")
    await node_bulk.run_stopall(ctx, task, vms=None, timeout=node_bulk.STOP_TIMEOUT,
                                force_stop=True,
                                max_workers=bulk.default_max_workers(os.cpu_count() or 1))
    argv = power_argv(kind)
    task.log(f"asking the host to {kind}: {' '.join(argv)}")
    await ctx.services.clusterlog.write(f"node {ctx.node}: host {kind} requested by "
                                        f"{ctx.userid}", tag="node", user=ctx.userid)
    rc, out = await run_power_command(kind)
    if out:
        task.log(out)
    if rc != 0:
        raise TaskFailed(f"host {kind} command failed (exit status {rc}); the HA guests "
                         "stay as the shutdown policy left them until binomed restarts")


@registry.register(
    "GET", "/nodes/{node}/hosts", name="node_hosts", proxyto="node",
    permission=privs("Sys.Audit"),
    description="Get the content of /etc/hosts.",
    parameters={"node": NODE},
    returns={"type": "object", "properties": {
        "digest": {"type": "string", "optional": 1,
                   "description": "Prevent changes if current configuration file has a "
                                  "different digest."},
        "data": {"type": "string", "description": "The content of /etc/hosts."}}},
    cli=CliSpec(("node", "hosts"), positional=("node",)),
)
async def node_hosts(ctx: RequestContext, params: dict[str, Any]) -> dict[str, str]:
    return ctx.services.host.hosts()


@registry.register(
    "GET", "/nodes/{node}/certificates/info", name="node_certificates_info", proxyto="node",
    permission=AnyUser("PVE: user => 'all'"),
    description="Get information about node's certificates: the cluster CA's, the node's "
                "(self-signed before it joins a cluster) and the custom or ACME one "
                "(pveproxy-ssl.pem), if any.",
    parameters={"node": NODE},
    returns={"type": "array", "items": CERT_INFO},
    cli=CliSpec(("node", "certificates"), positional=("node",),
                formatter="table:filename,subject,issuer,notafter,fingerprint"),
)
async def node_certificates_info(ctx: RequestContext,
                                 params: dict[str, Any]) -> list[dict[str, Any]]:
    # PVE lists pve-root-ca.pem, pve-ssl.pem and pveproxy-ssl.pem, each if readable
    return ctx.services.certificates.info()


@registry.register(
    "GET", "/nodes/{node}/subscription", name="node_subscription", proxyto="node",
    permission=AnyUser("PVE: user => 'all'"),
    description="Read subscription info: binome has no subscription key, so PVE's answer for "
                "a node without one.",
    parameters={"node": NODE},
    returns={"type": "object", "properties": {
        "status": {"type": "string",
                   "enum": ["new", "notfound", "active", "invalid", "expired", "suspended"]},
        "message": {"type": "string", "optional": 1}}},
)
async def node_subscription(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    return {"status": "notfound", "message": "There is no subscription key"}


PCI_DEVICE = {
    "id": {"type": "string", "description": "The PCI ID."},
    "class": {"type": "string", "description": "The PCI Class of the device."},
    "vendor": {"type": "string", "description": "The Vendor ID."},
    "vendor_name": {"type": "string", "optional": 1},
    "device": {"type": "string", "description": "The Device ID."},
    "device_name": {"type": "string", "optional": 1},
    "subsystem_vendor": {"type": "string", "optional": 1},
    "subsystem_vendor_name": {"type": "string", "optional": 1},
    "subsystem_device": {"type": "string", "optional": 1},
    "subsystem_device_name": {"type": "string", "optional": 1},
    "iommugroup": {"type": "integer", "description": "-1 without an IOMMU group."},
    "mdev": {"type": "boolean", "optional": 1}}


@registry.register(
    "GET", "/nodes/{node}/hardware/pci", name="node_hardware_pci", proxyto="node",
    permission=privs("Sys.Audit", "Sys.Modify", any=True),
    description="List local PCI devices (read from sysfs; names from pci.ids when "
                "installed).",
    parameters={"node": NODE,
                "pci-class-blacklist": Param(optional=True, default="05;06;0b",
                                             max_length=1024,
                                             description="PCI classes not returned (hex "
                                             "prefixes); by default memory controllers "
                                             "(05), bridges (06) and processors (0b)."),
                "verbose": Param(type="boolean", optional=True, default=True,
                                 description="Subsystem IDs and names too.")},
    returns={"type": "array", "items": {"type": "object", "properties": PCI_DEVICE}},
    cli=CliSpec(("node", "pci"), positional=("node",),
                formatter="table:id,class,vendor_name,device_name,iommugroup"),
)
async def node_hardware_pci(ctx: RequestContext,
                            params: dict[str, Any]) -> list[dict[str, Any]]:
    blacklist = params.get("pci-class-blacklist")
    if blacklist is None:
        blacklist = "05;06;0b"
    classes = [c for c in re.split(r"[;,\s]+", blacklist) if c]
    bad = [c for c in classes if not re.fullmatch(r"[0-9a-fA-F]{1,6}", c)]
    if bad:
        raise param_error("pci-class-blacklist", f"invalid PCI class '{bad[0]}'")
    verbose = params.get("verbose")
    return await asyncio.to_thread(ctx.services.host.pci, [c.lower() for c in classes],
                                   True if verbose is None else bool(verbose))
