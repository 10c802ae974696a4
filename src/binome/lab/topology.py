"""Lab topology: real hosts in network namespaces joined by bridges in the root namespace.

This module owns, for one lab (a short ``lab_id``):

- one network namespace per host (``bn-<id>-<host>``), with ``lo`` up and IPv6 off;
- one Linux bridge per network in the root namespace (``bnb<id><n>``), carrying the
  root namespace's admin address (the last usable one, ``.254`` on a /24) so the
  machine running the lab reaches every node, e.g. ``curl https://198.18.1.1:8006``;
- one veth pair per (host, network) attachment: the root side (``bnv<id><h><n>``) is a
  bridge port, the namespace side is named after the network (``cluster``...);
- the processes spawned inside the hosts, each in its own process group;
- faults: link cuts (``ip link set down`` on a host's bridge port) and partitions
  (iptables DROP inside the receiving namespace, nftables when iptables is missing);
- a state file per lab (``/run/binome-lab/<id>.json``) recording everything above
  before it is created, so :func:`cleanup_stale` can remove what a crashed run left.

Naming: ``<n>``/``<h>`` are 1-based network/host indexes written as one base-36 digit;
lab ids are 1-8 chars of ``[a-z0-9]``. Names are prefix + id + fixed-width suffix, so
two ids never produce the same name, and every interface name fits Linux's 15 chars.
Nothing is ever deleted by name pattern alone: only what a state file recorded.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import json
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from binome import durable
from binome.lab import processes
from binome.lab.processes import LabError, LabProcess

log = logging.getLogger(__name__)

STATE_DIR = Path("/run/binome-lab")
NETNS_DIR = Path("/run/netns")

NETNS_PREFIX = "bn-"
BRIDGE_PREFIX = "bnb"
VETH_PREFIX = "bnv"
IFNAME_MAX = 15  # IFNAMSIZ - 1
LAB_ID_MAX = 8
MAX_INDEX = 35  # one base-36 digit, 1..z

_LAB_ID_RE = re.compile(rf"^[a-z0-9]{{1,{LAB_ID_MAX}}}$")
_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"

Firewall = Literal["auto", "iptables", "nft"]


@dataclass(frozen=True)
class NetworkSpec:
    """One L2 network of the lab: a bridge in the root namespace and an IPv4 subnet."""

    name: str
    subnet: str  # "198.18.1.0/24"


# RFC 2544 benchmarking range (198.18.0.0/15): our lab convention.
DEFAULT_NETWORKS: tuple[NetworkSpec, ...] = (
    NetworkSpec("cluster", "198.18.1.0/24"),
    NetworkSpec("replication", "198.18.2.0/24"),
    NetworkSpec("vmlan", "198.18.3.0/24"),
)


# --- naming ----------------------------------------------------------------------------

_lab_seq = itertools.count()


def default_lab_id() -> str:
    """The pid in hex (6 digits cover pid_max) plus a per-process sequence digit."""
    return f"{os.getpid() & 0xFFFFFF:06x}{_DIGITS[next(_lab_seq) % len(_DIGITS)]}"


def _digit(index: int) -> str:
    if not 1 <= index <= MAX_INDEX:
        raise ValueError(f"index {index} out of range 1..{MAX_INDEX}")
    return _DIGITS[index]


def _ifname(name: str) -> str:
    if not 1 <= len(name) <= IFNAME_MAX:
        raise ValueError(f"interface name {name!r} longer than {IFNAME_MAX} chars")
    return name


def namespace_name(lab_id: str, host: str) -> str:
    return f"{NETNS_PREFIX}{lab_id}-{host}"


def bridge_name(lab_id: str, net_index: int) -> str:
    return _ifname(f"{BRIDGE_PREFIX}{lab_id}{_digit(net_index)}")


def veth_name(lab_id: str, host_index: int, net_index: int) -> str:
    """The root-namespace side of a host's veth on a network (a bridge port)."""
    return _ifname(f"{VETH_PREFIX}{lab_id}{_digit(host_index)}{_digit(net_index)}")


def inner_ifname(network: str) -> str:
    """The interface name inside a host: the network's name, cut to 15 chars."""
    return network[:IFNAME_MAX]


# --- small helpers ---------------------------------------------------------------------


def _run(argv: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    log.debug("lab: %s", shlex.join(argv))
    proc = subprocess.run(list(argv), capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise LabError(f"`{shlex.join(argv)}` exited {proc.returncode}: {proc.stderr.strip()}")
    return proc


def _netns_exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def _link_exists(name: str) -> bool:
    return _run(["ip", "-o", "link", "show", "dev", name], check=False).returncode == 0


def _disable_ipv6_root(ifname: str) -> None:
    with contextlib.suppress(OSError):  # no IPv6 in this kernel: nothing to silence
        Path(f"/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6").write_text("1")


def _netns_pids(netns: str) -> list[int]:
    proc = _run(["ip", "netns", "pids", netns], check=False)
    return [int(p) for p in proc.stdout.split()] if proc.returncode == 0 else []


@dataclass
class Host:
    """One lab host: a network namespace attached to some of the lab's networks."""

    name: str
    netns: str
    addresses: dict[str, str]  # network -> IPv4 address (no prefix)
    index: int = 0  # 1-based position in the lab
    interfaces: dict[str, str] = field(default_factory=dict)  # network -> ifname inside
    veths: dict[str, str] = field(default_factory=dict)  # network -> root-side veth
    processes: list[LabProcess] = field(default_factory=list, repr=False)
    _on_spawn: Callable[[LabProcess], None] | None = field(
        default=None, repr=False, compare=False
    )

    def exec_argv(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *argv]

    def run(
        self, argv: Sequence[str], *, check: bool = True, **kwargs: Any
    ) -> subprocess.CompletedProcess[Any]:
        """Run a command inside the host and wait for it (``subprocess.run`` semantics)."""
        return subprocess.run(self.exec_argv(argv), check=check, **kwargs)

    def spawn(
        self,
        argv: Sequence[str],
        *,
        log_path: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> LabProcess:
        """Start a process tree inside the host, in a new session (one process group).

        stdout and stderr go to ``log_path`` (appended) when given, else are inherited;
        ``env`` is added to the inherited environment. The lab stops it on ``down()``.
        """
        full_env = {**os.environ, **env} if env is not None else None
        out = None
        if log_path is not None:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            out = open(log_path, "ab")  # handed to the child, closed below
        try:
            popen = subprocess.Popen(
                self.exec_argv(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT if out is not None else None,
                env=full_env,
                start_new_session=True,
            )
        finally:
            if out is not None:
                out.close()
        proc = LabProcess(popen, argv, self.netns, log_path)
        if self._on_spawn is not None:
            self._on_spawn(proc)  # records it in the lab's state file (refuses if down)
        self.processes.append(proc)
        return proc


# --- the lab ---------------------------------------------------------------------------


class Lab:
    """Hosts in network namespaces on bridged networks, with fault injection.

    ``attach`` maps a host to the networks it joins (default: every network);
    ``addresses`` maps a host to explicit ``{network: ip}`` (default: host i gets ``.i``).
    Use as a context manager, or call :meth:`up` then :meth:`down`.
    """

    def __init__(
        self,
        hosts: Sequence[str],
        networks: Sequence[NetworkSpec] = DEFAULT_NETWORKS,
        *,
        lab_id: str | None = None,
        attach: Mapping[str, Sequence[str]] | None = None,
        addresses: Mapping[str, Mapping[str, str]] | None = None,
        firewall: Firewall = "auto",
    ) -> None:
        self.lab_id = lab_id if lab_id is not None else default_lab_id()
        if not _LAB_ID_RE.match(self.lab_id):
            raise ValueError(f"lab id {self.lab_id!r}: want 1-{LAB_ID_MAX} chars of [a-z0-9]")
        self.networks: dict[str, NetworkSpec] = {}
        self._subnets: dict[str, ipaddress.IPv4Network] = {}
        self.bridges: dict[str, str] = {}
        self.root_addresses: dict[str, str] = {}
        for n, spec in enumerate(networks, start=1):
            self._add_network(n, spec)
        self.hosts: dict[str, Host] = {}
        attach = attach or {}
        addresses = addresses or {}
        unknown = (set(attach) | set(addresses)) - set(hosts)
        if unknown:
            raise ValueError(f"attach/addresses name unknown hosts: {sorted(unknown)}")
        for i, name in enumerate(hosts, start=1):
            self._add_host(i, name, attach.get(name), addresses.get(name, {}))
        if firewall not in ("auto", "iptables", "nft"):
            raise ValueError(f"firewall {firewall!r}: want auto, iptables or nft")
        self._firewall_choice: Firewall = firewall
        self._firewall: Literal["iptables", "nft"] | None = None
        self._nft_ready: set[str] = set()
        self._drops: set[tuple[str, str, str]] = set()  # (from host, to host, network)
        self._state: dict[str, Any] | None = None  # set while we own the state file

    # planning (pure) ----------------------------------------------------------------

    def _add_network(self, n: int, spec: NetworkSpec) -> None:
        if not _NAME_RE.match(spec.name) or spec.name == "lo":
            raise ValueError(f"network name {spec.name!r}: want [a-z][a-z0-9_-]*, not 'lo'")
        if spec.name in self.networks:
            raise ValueError(f"network {spec.name!r} given twice")
        ifname = inner_ifname(spec.name)
        if ifname in {inner_ifname(other) for other in self.networks}:
            raise ValueError(f"network {spec.name!r}: interface name {ifname!r} is taken")
        subnet = ipaddress.ip_network(spec.subnet)
        if not isinstance(subnet, ipaddress.IPv4Network) or subnet.prefixlen > 29:
            raise ValueError(f"network {spec.name!r}: want an IPv4 subnet of /29 or larger")
        for other, net in self._subnets.items():
            if subnet.overlaps(net):
                raise ValueError(f"network {spec.name!r} overlaps {other!r}")
        self.networks[spec.name] = spec
        self._subnets[spec.name] = subnet
        self.bridges[spec.name] = bridge_name(self.lab_id, n)
        self.root_addresses[spec.name] = str(subnet.broadcast_address - 1)

    def _add_host(
        self, i: int, name: str, networks: Sequence[str] | None, explicit: Mapping[str, str]
    ) -> None:
        if not _NAME_RE.match(name):
            raise ValueError(f"host name {name!r}: want [a-z][a-z0-9_-]*, up to 32 chars")
        if name in self.hosts:
            raise ValueError(f"host {name!r} given twice")
        joined = list(self.networks) if networks is None else list(networks)
        for net in [*joined, *explicit]:
            if net not in self.networks:
                raise ValueError(f"host {name!r}: unknown network {net!r}")
        extra = set(explicit) - set(joined)
        if extra:
            raise ValueError(f"host {name!r}: addresses for unattached networks {sorted(extra)}")
        host = Host(name, namespace_name(self.lab_id, name), {}, index=i,
                    _on_spawn=self._record_process)
        net_index = {net: n for n, net in enumerate(self.networks, start=1)}
        for net in joined:
            subnet = self._subnets[net]
            addr = ipaddress.IPv4Address(explicit.get(net) or subnet.network_address + i)
            taken = {h.addresses.get(net) for h in self.hosts.values()}
            if (
                addr not in subnet
                or addr in (subnet.network_address, subnet.broadcast_address)
                or str(addr) == self.root_addresses[net]
                or str(addr) in taken
            ):
                raise ValueError(f"host {name!r}: address {addr} unusable on {net} ({subnet})")
            host.addresses[net] = str(addr)
            host.interfaces[net] = inner_ifname(net)
            host.veths[net] = veth_name(self.lab_id, i, net_index[net])
        self.hosts[name] = host

    def host(self, name: str) -> Host:
        try:
            return self.hosts[name]
        except KeyError:
            raise KeyError(f"lab {self.lab_id} has no host {name!r}") from None

    def prefixlen(self, network: str) -> int:
        return self._subnets[network].prefixlen

    @property
    def state_path(self) -> Path:
        return STATE_DIR / f"{self.lab_id}.json"

    @property
    def is_up(self) -> bool:
        return self._state is not None

    # bring-up / teardown ------------------------------------------------------------

    def __enter__(self) -> Lab:
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.down()

    def up(self) -> Lab:
        """Create everything; on any failure, tear down what was created and re-raise."""
        if self._state is not None:
            raise LabError(f"lab {self.lab_id} is already up")
        self._check_root_subnets()
        self._claim_state()
        try:
            for net in self.networks:
                self._create_bridge(net)
            for host in self.hosts.values():
                self._create_host(host)
        except BaseException:
            with contextlib.suppress(Exception):  # keep the original error
                self.down()
            raise
        return self

    def down(self, timeout: float = 10.0) -> None:
        """Stop spawned processes, delete namespaces, veths and bridges, forget the lab.

        Idempotent; things already gone are fine. If something could not be removed,
        raises after trying everything else, and keeps the state file for cleanup_stale.
        """
        procs = [p for h in self.hosts.values() for p in h.processes if p.alive()]
        for proc in procs:
            processes.killpg(proc.pgid, signal.SIGTERM)
            processes.killpg(proc.pgid, signal.SIGCONT)
        processes.wait_until(lambda: not any(p.alive() for p in procs), timeout)
        errors: list[str] = []
        for proc in procs:
            try:
                proc.kill()
            except LabError as e:
                errors.append(str(e))
        for host in self.hosts.values():
            host.processes = [p for p in host.processes if p.alive()]
        if self._state is not None:
            errors += _teardown(self._state)
            if not errors:
                self.state_path.unlink(missing_ok=True)
                self._state = None
        self._drops.clear()
        self._nft_ready.clear()
        if errors:
            raise LabError(f"lab {self.lab_id} teardown incomplete: " + "; ".join(errors))

    def _check_root_subnets(self) -> None:
        """Refuse to shadow a subnet the root namespace already routes (e.g. another lab)."""
        out = json.loads(_run(["ip", "-j", "-4", "addr", "show"]).stdout or "[]")
        for link in out:
            for info in link.get("addr_info", []):
                have = ipaddress.ip_network(f"{info['local']}/{info['prefixlen']}", strict=False)
                for net, subnet in self._subnets.items():
                    if subnet.overlaps(have):
                        raise LabError(
                            f"network {net} ({subnet}) overlaps {have} on {link['ifname']} in "
                            "the root namespace (another lab running?); choose other subnets"
                        )

    def _claim_state(self) -> None:
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        state = {
            "lab_id": self.lab_id,
            "owner": {"pid": os.getpid(), "start_time": processes.start_time(os.getpid())},
            "namespaces": [], "bridges": [], "veths": [], "processes": [],
        }
        try:
            fd = os.open(self.state_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            raise LabError(
                f"lab id {self.lab_id} is in use ({self.state_path} exists); if its owner "
                f"crashed, run binome.lab.topology.cleanup_stale({self.lab_id!r})"
            ) from None
        os.close(fd)
        self._state = state
        self._save_state()

    def _save_state(self) -> None:
        assert self._state is not None
        durable.write_json(self.state_path, self._state, indent=1)

    @contextlib.contextmanager
    def _recording(self, kind: str, name: str) -> Iterator[None]:
        """Record ``name`` before creating it; forget it if the creation fails."""
        assert self._state is not None
        self._state[kind].append(name)
        self._save_state()
        try:
            yield
        except BaseException:
            self._state[kind].remove(name)
            self._save_state()
            raise

    def _record_process(self, proc: LabProcess) -> None:
        if self._state is None:
            proc.kill()
            raise LabError(f"lab {self.lab_id} is not up: cannot spawn {proc.argv!r}")
        self._state["processes"].append(
            {"pid": proc.pid, "pgid": proc.pgid, "start_time": proc.start_time,
             "netns": proc.netns, "argv": proc.argv}
        )
        self._save_state()

    def _create_bridge(self, net: str) -> None:
        br = self.bridges[net]
        with self._recording("bridges", br):
            _run(["ip", "link", "add", "name", br, "type", "bridge"])
        _disable_ipv6_root(br)
        _run(["ip", "addr", "add", f"{self.root_addresses[net]}/{self.prefixlen(net)}",
              "dev", br])
        _run(["ip", "link", "set", br, "up"])

    def _create_host(self, host: Host) -> None:
        ns = host.netns
        with self._recording("namespaces", ns):
            _run(["ip", "netns", "add", ns])
        _run(["ip", "-n", ns, "link", "set", "lo", "up"])
        # IPv6 off (no DAD, no router solicitations): absent IPv6 support is fine too.
        _run(host.exec_argv(["sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1",
                             "net.ipv6.conf.default.disable_ipv6=1"]), check=False)
        for net, veth in host.veths.items():
            inner = host.interfaces[net]
            with self._recording("veths", veth):
                _run(["ip", "link", "add", veth, "type", "veth",
                      "peer", "name", inner, "netns", ns])
            _disable_ipv6_root(veth)
            _run(["ip", "link", "set", veth, "master", self.bridges[net], "up"])
            _run(["ip", "-n", ns, "addr", "add",
                  f"{host.addresses[net]}/{self.prefixlen(net)}", "dev", inner])
            _run(["ip", "-n", ns, "link", "set", inner, "up"])

    # faults -------------------------------------------------------------------------

    def _attachment(self, host: str, network: str) -> Host:
        h = self.host(host)
        if network not in h.veths:
            raise LabError(f"host {host!r} is not attached to network {network!r}")
        return h

    def link_down(self, host: str, network: str) -> None:
        """Cut the host's link to the network (its bridge port goes down: no carrier)."""
        _run(["ip", "link", "set", self._attachment(host, network).veths[network], "down"])

    def link_up(self, host: str, network: str) -> None:
        _run(["ip", "link", "set", self._attachment(host, network).veths[network], "up"])

    def _common_networks(self, a: str, b: str, network: str | None) -> list[str]:
        if network is not None:
            self._attachment(a, network)
            self._attachment(b, network)
            return [network]
        common = [n for n in self.host(a).addresses if n in self.host(b).addresses]
        if not common:
            raise LabError(f"hosts {a!r} and {b!r} share no network")
        return common

    def partition(
        self, a: str, b: str, network: str | None = None, one_way: bool = False
    ) -> None:
        """Drop packets between ``a`` and ``b`` on ``network`` (default: all they share).

        ``one_way``: only ``a``'s packets to ``b`` are dropped (at ``b``'s input); ``b``
        still reaches ``a``. Idempotent.
        """
        if a == b:
            raise ValueError("cannot partition a host from itself")
        pairs = [(a, b)] if one_way else [(a, b), (b, a)]
        for net in self._common_networks(a, b, network):
            for src, dst in pairs:
                if (src, dst, net) not in self._drops:
                    self._set_drop(src, dst, net, add=True)
                    self._drops.add((src, dst, net))

    def heal(self, a: str, b: str, network: str | None = None) -> None:
        """Undo partitions between ``a`` and ``b`` (both directions) on ``network``/all."""
        for net in self._common_networks(a, b, network):
            for src, dst in ((a, b), (b, a)):
                if (src, dst, net) in self._drops:
                    self._set_drop(src, dst, net, add=False)
                    self._drops.discard((src, dst, net))

    def heal_all(self) -> None:
        for src, dst, net in sorted(self._drops):
            self._set_drop(src, dst, net, add=False)
            self._drops.discard((src, dst, net))

    @property
    def partitions(self) -> set[tuple[str, str, str]]:
        """Active directed drops as (from host, to host, network)."""
        return set(self._drops)

    @property
    def firewall(self) -> Literal["iptables", "nft"]:
        """The partition backend in use (probed on first use when "auto")."""
        if self._firewall is None:
            self._firewall = self._probe_firewall()
        return self._firewall

    def _probe_firewall(self) -> Literal["iptables", "nft"]:
        if self._firewall_choice != "auto":
            return self._firewall_choice
        probe = next(iter(self.hosts.values()))
        if shutil.which("iptables") and _run(
            probe.exec_argv(["iptables", "-w", "-n", "-L", "INPUT"]), check=False
        ).returncode == 0:
            return "iptables"
        if shutil.which("nft") and _run(
            probe.exec_argv(["nft", "list", "tables"]), check=False
        ).returncode == 0:
            return "nft"
        raise LabError("partitions need iptables or nft inside a namespace; neither works")

    def _set_drop(self, src: str, dst: str, net: str, *, add: bool) -> None:
        receiver = self.host(dst)
        ifname = receiver.interfaces[net]
        saddr = self.host(src).addresses[net]
        if self.firewall == "iptables":
            op = "-I" if add else "-D"
            _run(receiver.exec_argv(
                ["iptables", "-w", op, "INPUT", "-i", ifname, "-s", saddr, "-j", "DROP"]))
            return
        if receiver.netns not in self._nft_ready:
            self._nft_setup(receiver)
            self._nft_ready.add(receiver.netns)
        op = "add" if add else "delete"
        _run(receiver.exec_argv(
            ["nft", op, "element", "ip", "binome_lab", "drops", f'{{ "{ifname}" . {saddr} }}']))

    @staticmethod
    def _nft_setup(host: Host) -> None:
        ruleset = (
            "table ip binome_lab {\n"
            "  set drops { type ifname . ipv4_addr; }\n"
            "  chain input { type filter hook input priority filter; policy accept;\n"
            "    iifname . ip saddr @drops drop; }\n"
            "}\n"
        )
        proc = subprocess.run(host.exec_argv(["nft", "-f", "-"]), input=ruleset,
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise LabError(f"nft setup in {host.netns} failed: {proc.stderr.strip()}")


# --- teardown shared by down() and cleanup_stale() ------------------------------------


def _teardown(state: Mapping[str, Any]) -> list[str]:
    """Remove what a state record lists (processes, namespaces, veths, bridges).

    Only names carrying our prefixes are touched. Returns errors instead of raising.
    """
    errors: list[str] = []
    namespaces = [n for n in state.get("namespaces", []) if n.startswith(NETNS_PREFIX)]
    veths = [n for n in state.get("veths", []) if n.startswith(VETH_PREFIX)]
    bridges = [n for n in state.get("bridges", []) if n.startswith(BRIDGE_PREFIX)]

    # Spawned groups whose leader is provably ours (same start time: no pid reuse).
    for rec in state.get("processes", []):
        started = rec.get("start_time")
        if started is not None and processes.start_time(rec["pid"]) == started:
            processes.killpg(rec["pgid"], signal.SIGKILL)
    # Anything else still running inside our namespaces (escaped its group, or exec'd
    # there by hand) would keep the namespace and its veths alive: kill it by pid.
    live = [ns for ns in namespaces if _netns_exists(ns)]
    for ns in live:
        for pid in _netns_pids(ns):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    if not processes.wait_until(lambda: not any(_netns_pids(ns) for ns in live), 5.0):
        errors.append(f"processes survive in {[ns for ns in live if _netns_pids(ns)]}")

    for ns in live:
        proc = _run(["ip", "netns", "del", ns], check=False)
        if proc.returncode != 0 and _netns_exists(ns):
            errors.append(f"ip netns del {ns}: {proc.stderr.strip()}")
    # Deleting a namespace destroys its veth ends (and so the pairs) asynchronously;
    # delete the root-side ends ourselves so nothing lingers, tolerating the race.
    for name in [*veths, *bridges]:
        if _link_exists(name):
            proc = _run(["ip", "link", "del", name], check=False)
            if proc.returncode != 0 and _link_exists(name):
                errors.append(f"ip link del {name}: {proc.stderr.strip()}")
    return errors


def _owner_alive(owner: Mapping[str, Any]) -> bool:
    pid, started = owner.get("pid"), owner.get("start_time")
    return isinstance(pid, int) and started is not None and processes.start_time(pid) == started


def cleanup_stale(lab_id: str | None = None) -> list[str]:
    """Remove the leftovers of labs whose owner crashed, from their state files.

    With ``lab_id``: that lab, whatever its owner's state. Without: every recorded lab
    whose owner process is gone. Only what a state file recorded is touched.
    Returns the ids cleaned; raises LabError (keeping the state file) if one failed.
    """
    if not STATE_DIR.is_dir():
        return []
    cleaned: list[str] = []
    errors: list[str] = []
    for path in sorted(STATE_DIR.glob("*.json")):
        if lab_id is not None and path.stem != lab_id:
            continue
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            errors.append(f"{path}: unreadable ({e})")
            continue
        if lab_id is None and _owner_alive(state.get("owner", {})):
            continue
        failed = _teardown(state)
        if failed:
            errors += [f"lab {path.stem}: {e}" for e in failed]
            continue
        path.unlink(missing_ok=True)
        path.with_suffix(".tmp").unlink(missing_ok=True)   # left by older versions
        for tmp in path.parent.glob(f".{path.name}.*.tmp"):   # a write cut short (durable)
            tmp.unlink(missing_ok=True)
        cleaned.append(path.stem)
    if errors:
        raise LabError("cleanup_stale incomplete: " + "; ".join(errors))
    return cleaned
