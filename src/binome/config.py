"""Node configuration: identity, addresses, ports, state directory and timers.

A node's configuration is written once (by `binomed --name ... --address ...`)
to ``<state-dir>/node.json`` and read back on every start, so a restart needs
only ``--state-dir``. Nothing here assumes loopback: every address is explicit.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from binome import durable

NODE_NAME_RE = re.compile(r"^[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?$")
ROLES = ("node", "witness")


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the key."""


@dataclass
class Timers:
    """Cluster timers, in seconds (etcd's own in milliseconds).

    Relations (validated): keepalive_interval <= lease_ttl / 3 so two renewals
    can be lost before the lease expires; quorum_check_interval <= lease_ttl / 2
    so a node learns it lost quorum well before its lease can expire elsewhere;
    etcd's election timeout is at least 5 heartbeats (etcd's own rule) and
    shorter than the lease TTL so a leader change does not cost a lease.
    """

    lease_ttl: int = 5
    keepalive_interval: float = 1.0
    quorum_check_interval: float = 1.0
    quorum_check_timeout: float = 1.0
    etcd_heartbeat_ms: int = 100
    etcd_election_ms: int = 1000
    rrd_interval: float = 10.0

    def validate(self) -> None:
        if self.lease_ttl < 2:
            raise ConfigError("timers.lease_ttl: must be at least 2 seconds (etcd's minimum)")
        if not 0 < self.keepalive_interval <= self.lease_ttl / 3:
            raise ConfigError("timers.keepalive_interval: must be > 0 and <= lease_ttl / 3")
        if not 0 < self.quorum_check_interval <= self.lease_ttl / 2:
            raise ConfigError("timers.quorum_check_interval: must be > 0 and <= lease_ttl / 2")
        if not 0 < self.quorum_check_timeout <= self.lease_ttl / 2:
            raise ConfigError("timers.quorum_check_timeout: must be > 0 and <= lease_ttl / 2")
        if self.etcd_election_ms < 5 * self.etcd_heartbeat_ms:
            raise ConfigError("timers.etcd_election_ms: must be >= 5 x etcd_heartbeat_ms")
        if self.etcd_election_ms >= self.lease_ttl * 1000:
            raise ConfigError("timers.etcd_election_ms: must be shorter than lease_ttl")
        if self.rrd_interval <= 0:
            raise ConfigError("timers.rrd_interval: must be > 0")


@dataclass
class NodeConfig:
    """Identity and addresses of one node (or witness)."""

    name: str
    state_dir: Path
    cluster_address: str
    replication_address: str = ""
    role: str = "node"
    api_port: int = 8006
    api_bind: str = ""
    etcd_client_port: int = 2379
    etcd_peer_port: int = 2380
    # The HA self-fence uses this hardware watchdog when it exists (the machine resets
    # if binomed and its supervisor both stall); "none" for hosts running several
    # nodes (the lab), where one node's self-fence must not reset the host.
    watchdog_device: str = "/dev/watchdog"
    # "ADDRESS:PORT": also serve Prometheus' /metrics there over plain HTTP without
    # authentication (a trusted monitoring network); "" (default): only on the API port
    metrics_listen: str = ""
    timers: Timers = field(default_factory=Timers)

    def __post_init__(self) -> None:
        self.state_dir = Path(self.state_dir)
        if not self.replication_address:
            self.replication_address = self.cluster_address
        if not self.api_bind:
            self.api_bind = "0.0.0.0"
        self.validate()

    def validate(self) -> None:
        if not NODE_NAME_RE.fullmatch(self.name) or self.name == "localhost":
            raise ConfigError(f"name: invalid node name '{self.name}'"
                              + (" ('localhost' means 'this node' in the API)"
                                 if self.name == "localhost" else ""))
        if self.role not in ROLES:
            raise ConfigError(f"role: must be one of {', '.join(ROLES)}")
        if self.watchdog_device != "none" and not self.watchdog_device.startswith("/dev/"):
            raise ConfigError("watchdog_device: a device path under /dev, or 'none'")
        for key in ("cluster_address", "replication_address", "api_bind"):
            try:
                ipaddress.ip_address(getattr(self, key))
            except ValueError:
                raise ConfigError(f"{key}: not an IP address: {getattr(self, key)!r}") from None
        for key in ("api_port", "etcd_client_port", "etcd_peer_port"):
            if not 1 <= getattr(self, key) <= 65535:
                raise ConfigError(f"{key}: port out of range")
        if self.metrics_listen:
            _check_listen("metrics_listen", self.metrics_listen)
        self.timers.validate()

    # paths inside the state directory
    @property
    def config_path(self) -> Path:
        return self.state_dir / "node.json"

    @property
    def pki_dir(self) -> Path:
        return self.state_dir / "pki"

    @property
    def etcd_dir(self) -> Path:
        return self.state_dir / "etcd"

    @property
    def tasks_dir(self) -> Path:
        return self.state_dir / "tasks"

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "log"

    @property
    def etcd_log(self) -> Path:
        return self.state_dir / "etcd.log"

    @property
    def run_dir(self) -> Path:
        return self.state_dir / "run"

    @property
    def api_socket(self) -> Path:
        return self.run_dir / "api.sock"

    @property
    def membership_path(self) -> Path:
        return self.state_dir / "cluster.json"

    @property
    def etcd_client_url(self) -> str:
        return f"https://{_url_host(self.cluster_address)}:{self.etcd_client_port}"

    @property
    def etcd_peer_url(self) -> str:
        return f"https://{_url_host(self.cluster_address)}:{self.etcd_peer_port}"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["state_dir"] = str(self.state_dir)
        return data

    def save(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        durable.write_json(self.config_path, self.to_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NodeConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown configuration keys: {', '.join(sorted(unknown))}")
        data = dict(data)
        timers = data.pop("timers", {}) or {}
        timer_keys = {f.name for f in fields(Timers)}
        bad = set(timers) - timer_keys
        if bad:
            raise ConfigError(f"unknown timer keys: {', '.join(sorted(bad))}")
        return cls(timers=Timers(**timers), **data)

    @classmethod
    def load(cls, state_dir: Path) -> NodeConfig:
        path = Path(state_dir) / "node.json"
        data = json.loads(path.read_text())
        data["state_dir"] = str(state_dir)
        return cls.from_dict(data)


def _check_listen(key: str, value: str) -> None:
    """`ADDRESS:PORT` (an IPv6 address in brackets)."""
    host, sep, port = value.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    try:
        address = ipaddress.ip_address(host[1:-1] if bracketed else host)
        if address.version == 6 and not bracketed:
            raise ValueError(value)       # "::1:9": which colon starts the port?
        if not sep or not 1 <= int(port) <= 65535:
            raise ValueError(value)
    except ValueError:
        raise ConfigError(f"{key}: not ADDRESS:PORT: {value!r}") from None


def _url_host(address: str) -> str:
    return f"[{address}]" if ":" in address else address
