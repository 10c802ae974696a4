"""Simulated cluster and service definitions: the `cluster.json` / `services.json` of a scenario.

`cluster.json`:

    {"nodes": {"n1": {"fence_device": {"delay": 1.0, "action": "off"}, "watchdog": true},
               "n2": {}},
     "witness": "w",                      # or null: two nodes without a third vote
     "timers": {"lease_ttl": 5.0, ...},   # ha.timers.HaTimers overrides
     "shutdown_policy": "conditional",
     "etcd": {"election": 1.0, "leader_preference": ["w", "n1", "n2"]},
     "sim": {"guest_boot": 3.5, "guest_stop": 1.0, "migrate_time": 1.0, "resync_time": 2.0,
             "node_boot": 20.0, "shutdown_timeout": 60.0, "start_fail_time": 1.0,
             "watch_latency": 0.05,
             "end_after": 60.0}}

`services.json`:

    {"resources": {"vm:100": {"node": "n1", "state": "started", "group": "g1",
                              "max_restart": 1, "max_relocate": 1,
                              "volumes": {"vm-100-disk-0": {"n1": "UpToDate",
                                                            "n2": "UpToDate"}}}},
     "groups": {"g1": {"nodes": "n1:2,n2:1", "restricted": false, "nofailback": false}},
     "rules": {"apart": {"type": "resource-affinity", "resources": "vm:100,vm:101",
                         "affinity": "negative"},
               "pin": {"type": "node-affinity", "resources": "vm:102", "nodes": "n2:1,n3",
                       "strict": true}}}

A resource without `volumes` gets one volume `vm-<id>-disk-0` replicated and
UpToDate on every node; `"volumes": {}` means no replicated storage.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from binome.config import ConfigError
from binome.ha.model import GroupConfig, ResourceConfig, ShutdownPolicy
from binome.ha.rules import Rule, check_rule_id
from binome.ha.timers import HaTimers

DISK_STATES = ("UpToDate", "Outdated", "Inconsistent", "DUnknown")


@dataclass(frozen=True)
class FenceDeviceSpec:
    delay: float = 1.0          # seconds for a power-off to be confirmed
    action: str = "off"         # off | reboot


@dataclass(frozen=True)
class NodeSpec:
    name: str
    watchdog: bool = True
    fence_device: FenceDeviceSpec | None = None


@dataclass(frozen=True)
class SimParams:
    guest_boot: float = 3.5
    guest_stop: float = 1.0
    migrate_time: float = 1.0
    resync_time: float = 2.0
    node_boot: float = 20.0
    shutdown_timeout: float = 60.0
    restart_wait: float = 10.0    # binomed's bounded wait for the freeze on a restart
    start_fail_time: float = 1.0
    watch_latency: float = 0.05
    # from a fence decision to the fencer's guard transaction (binomed's fence task): a
    # daemon paused in between resumes with a decision it may no longer own
    fencer_latency: float = 0.05
    probe_latency: float = 0.1      # a BMC's answer to a power status query
    end_after: float = 60.0


@dataclass(frozen=True)
class ClusterSpec:
    nodes: list[NodeSpec]
    witness: str | None = None
    timers: HaTimers = field(default_factory=HaTimers)
    shutdown_policy: ShutdownPolicy = ShutdownPolicy.CONDITIONAL
    election: float = 1.0
    leader_preference: list[str] = field(default_factory=list)
    sim: SimParams = field(default_factory=SimParams)

    @property
    def node_names(self) -> list[str]:
        return [n.name for n in self.nodes]

    @property
    def members(self) -> list[str]:
        return self.node_names + ([self.witness] if self.witness else [])


@dataclass(frozen=True)
class ServiceSpec:
    config: ResourceConfig
    node: str
    volumes: dict[str, dict[str, str]]


@dataclass(frozen=True)
class ServicesSpec:
    services: list[ServiceSpec]
    groups: dict[str, GroupConfig]
    rules: dict[str, Rule] = field(default_factory=dict)


def _known(data: dict[str, Any], keys: set[str], where: str) -> None:
    unknown = sorted(set(data) - keys)
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: unknown key")


def parse_cluster(data: dict[str, Any]) -> ClusterSpec:
    _known(data, {"nodes", "witness", "timers", "shutdown_policy", "etcd", "sim", "comment"},
           "cluster")
    nodes = []
    for name, spec in (data.get("nodes") or {}).items():
        spec = spec or {}
        _known(spec, {"watchdog", "fence_device"}, f"cluster.nodes.{name}")
        dev = spec.get("fence_device")
        if dev is not None:
            _known(dev, {"delay", "action"}, f"cluster.nodes.{name}.fence_device")
            dev = FenceDeviceSpec(**dev)
            if dev.action not in ("off", "reboot"):
                raise ConfigError(f"cluster.nodes.{name}.fence_device.action: off or reboot")
        nodes.append(NodeSpec(name, watchdog=bool(spec.get("watchdog", True)), fence_device=dev))
    if not nodes:
        raise ConfigError("cluster.nodes: at least one node")
    etcd = data.get("etcd") or {}
    _known(etcd, {"election", "leader_preference"}, "cluster.etcd")
    sim = data.get("sim") or {}
    _known(sim, set(SimParams.__dataclass_fields__), "cluster.sim")
    witness = data.get("witness")
    members = [n.name for n in nodes] + ([witness] if witness else [])
    preference = list(etcd.get("leader_preference") or
                      (([witness] if witness else []) + [n.name for n in nodes]))
    if sorted(preference) != sorted(members):
        raise ConfigError("cluster.etcd.leader_preference: must list every member once")
    return ClusterSpec(nodes=nodes, witness=witness,
                       timers=HaTimers.from_dict(data.get("timers")),
                       shutdown_policy=ShutdownPolicy(data.get("shutdown_policy", "conditional")),
                       election=float(etcd.get("election", 1.0)), leader_preference=preference,
                       sim=SimParams(**sim))


def parse_services(data: dict[str, Any], cluster: ClusterSpec) -> ServicesSpec:
    _known(data, {"resources", "groups", "rules", "comment"}, "services")
    groups = {name: GroupConfig.from_dict(name, g)
              for name, g in (data.get("groups") or {}).items()}
    services = []
    for sid, spec in (data.get("resources") or {}).items():
        _known(spec, {"node", "state", "group", "max_restart", "max_relocate", "comment",
                      "failback", "volumes"}, f"services.resources.{sid}")
        node = spec.get("node")
        if node not in cluster.node_names:
            raise ConfigError(f"services.resources.{sid}.node: unknown node {node!r}")
        cfg = ResourceConfig.from_dict(sid, spec)
        if cfg.group and cfg.group not in groups:
            raise ConfigError(f"services.resources.{sid}.group: unknown group {cfg.group!r}")
        volumes = spec.get("volumes")
        if volumes is None:
            vmid = sid.split(":")[-1]
            volumes = {f"vm-{vmid}-disk-0": {n: "UpToDate" for n in cluster.node_names}}
        for vol, states in volumes.items():
            for n, state in states.items():
                if n not in cluster.node_names or state not in DISK_STATES:
                    raise ConfigError(f"services.resources.{sid}.volumes.{vol}.{n}: "
                                      f"unknown node or disk state {state!r}")
        services.append(ServiceSpec(cfg, node, {v: dict(s) for v, s in volumes.items()}))
    rules = {}
    for order, (rule_id, spec) in enumerate((data.get("rules") or {}).items(), start=1):
        _known(spec, {"type", "resources", "nodes", "strict", "affinity", "disable",
                      "comment"}, f"services.rules.{rule_id}")
        try:
            check_rule_id(rule_id)
            rules[rule_id] = Rule.from_dict(rule_id, {**spec, "order": order})
        except ValueError as exc:
            raise ConfigError(f"services.rules.{rule_id}: {exc}") from None
    return ServicesSpec(services=services, groups=groups, rules=rules)
