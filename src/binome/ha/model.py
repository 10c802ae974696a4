"""The HA documents and their states: what the CRM, the LRMs and the store exchange.

Everything here is plain data (dataclasses and string enums) with a JSON
form (`to_dict` / `from_dict`), because every document lives in etcd as JSON:

- `ResourceConfig`, `GroupConfig`, `HaSettings`: the administrator's HA
  configuration (`/binome/ha/resources`, `/binome/ha/groups`).
- `ManagerStatus`: the one document the elected CRM writes: the wanted state
  of every service (`ServiceStatus`, with the command uid handed to the LRM),
  the state of every node (`NodeRecord`), maintenance requests and the disarm
  flag (`/binome/ha/manager_status`).
- `LrmStatus`: what each node's LRM reports: its state and mode, whether its
  watchdog is armed, and the result of every command uid it executed
  (`/binome/ha/lrm/<node>`).
- `NodeInfo`, `NodeFacts`, `LeaseInfo`, `FenceStatus`: read-only facts the
  environment provides (static node capabilities, lease liveness, fencing);
  `FenceConfirmation`: the administrator's power-off confirmation of a lost
  node (`/binome/ha/fence_confirm/<node>`).

State names follow pve-ha-manager where it has one (`docs/ha.md` has the
transition tables).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar


class RequestedState(enum.StrEnum):
    """What the administrator asks for (resource config `state`)."""

    STARTED = "started"
    STOPPED = "stopped"      # stopped, but still recovered (config moved) on node failure
    DISABLED = "disabled"    # stopped and left alone on node failure; the way out of `error`
    IGNORED = "ignored"      # not managed at all: removed from the manager status


class ServiceState(enum.StrEnum):
    """The CRM's state of one service (`ServiceStatus.state`)."""

    REQUEST_START = "request_start"  # wanted running; node not chosen yet
    STARTING = "starting"            # start ordered on `node` (uid); not confirmed yet
    STARTED = "started"              # confirmed running on `node`
    REQUEST_STOP = "request_stop"    # stop ordered on `node` (uid); not acknowledged yet
    STOPPING = "stopping"            # the LRM is executing that stop (same uid)
    STOPPED = "stopped"              # confirmed stopped on `node`
    MIGRATE = "migrate"              # live migration `node` -> `target` ordered
    RELOCATE = "relocate"            # stop, move config, start: `node` -> `target`
    FENCE = "fence"                  # `node` was lost; waiting for it to be fenced
    RECOVERY = "recovery"            # `node` is fenced; waiting for a node to recover onto
    FREEZE = "freeze"                # `node`'s LRM restarts or HA is disarmed: hands off
    ERROR = "error"                  # gave up; set `disabled` to clear


#: States in which the guest may be running on `node` (or be about to).
ACTIVE_STATES = frozenset({ServiceState.STARTING, ServiceState.STARTED, ServiceState.MIGRATE,
                           ServiceState.RELOCATE, ServiceState.REQUEST_STOP,
                           ServiceState.STOPPING})


class NodeState(enum.StrEnum):
    ONLINE = "online"
    MAINTENANCE = "maintenance"  # online, being (or already) evacuated
    UNKNOWN = "unknown"          # not seen (lease overdue or gone); nothing to fence (yet)
    FENCE = "fence"              # lost with HA services on it: fencing in progress
    GONE = "gone"                # no longer a cluster member


class CrmState(enum.StrEnum):
    WAIT_FOR_QUORUM = "wait_for_quorum"
    SLAVE = "slave"
    MASTER = "master"
    LOST_MANAGER_LOCK = "lost_manager_lock"


class LrmState(enum.StrEnum):
    WAIT_FOR_AGENT_LOCK = "wait_for_agent_lock"  # idle: watchdog disarmed, runs nothing
    ACTIVE = "active"                            # watchdog armed, executes commands
    LOST_AGENT_LOCK = "lost_agent_lock"          # cannot renew: stopped petting; may self-fence
    MAINTENANCE = "maintenance"                  # node evacuated for maintenance: disarmed


class LrmMode(enum.StrEnum):
    ACTIVE = "active"
    RESTART = "restart"          # services are frozen: node reboot with a freezing policy, or
                                 # a binomed restart (`LrmStatus.daemon_restart`; guests run on)
    SHUTDOWN = "shutdown"        # node power-off with a failover policy: stop, then recover
    MAINTENANCE = "maintenance"  # evacuate (policy `migrate`, or node-maintenance)
    DISARM = "disarm"            # HA disarmed cluster-wide: no actions, watchdog released


class ShutdownPolicy(enum.StrEnum):
    CONDITIONAL = "conditional"  # reboot -> freeze, power-off -> failover
    FREEZE = "freeze"
    FAILOVER = "failover"
    MIGRATE = "migrate"          # maintenance mode: migrate away, then shut down


class FenceState(enum.StrEnum):
    PENDING = "pending"
    CONFIRMED = "confirmed"      # the device confirmed the node is powered off
    FAILED = "failed"            # the device reported an error or timed out


class FenceProof(enum.StrEnum):
    """How the CRM knows a lost node can no longer run its guests."""

    DEVICE = "device"        # fence device confirmed power-off
    WATCHDOG = "watchdog"    # lease expired, and the node's watchdog was armed: it fired first
    SHUTDOWN = "shutdown"    # the node reported a clean shutdown with no guest left
    MANUAL = "manual"        # the administrator confirmed it is off (`binome fence --confirm-off`)
    POWER_OFF = "power-off"  # its fence device read its chassis off after its last renewal


class ExitCode(enum.IntEnum):
    """LRM command results (pve-ha-manager's codes where they exist)."""

    SUCCESS = 0
    ERROR = 1
    # not the guest's failure: what it needs here is not ready yet (a replica still
    # resyncing, the peer still Primary); the CRM retries or moves it, counting no restart
    ETRY_AGAIN = 2
    EWRONG_NODE = 3  # the service config is not on this node: the command is stale


class DisarmMode(enum.StrEnum):
    FREEZE = "freeze"   # services are frozen in place
    IGNORE = "ignore"   # services keep their state; nobody acts on them


T = TypeVar("T")


def _opt(cls: Callable[[Any], T], value: Any) -> T | None:
    return None if value is None else cls(value)


# ---------------------------------------------------------------- configuration


@dataclass
class ResourceConfig:
    """One HA resource (`ha-manager add vm:100 ...`)."""

    sid: str
    state: RequestedState = RequestedState.STARTED
    group: str | None = None
    max_restart: int = 1
    max_relocate: int = 1
    comment: str = ""
    # binome: this service's availability target in percent (None: the cluster's)
    availability_target: float | None = None
    # PVE 9: move back to the highest-priority node of its node affinity when it comes
    # online (a group's `nofailback` overrides it, as upstream's group migration does)
    failback: bool = True

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"state": str(self.state), "group": self.group,
                               "max_restart": self.max_restart,
                               "max_relocate": self.max_relocate, "comment": self.comment}
        if self.availability_target is not None:
            out["availability_target"] = self.availability_target
        if not self.failback:
            out["failback"] = False
        return out

    @classmethod
    def from_dict(cls, sid: str, data: dict[str, Any]) -> ResourceConfig:
        return cls(sid=sid, state=RequestedState(data.get("state", "started")),
                   group=data.get("group"), max_restart=int(data.get("max_restart", 1)),
                   max_relocate=int(data.get("max_relocate", 1)),
                   comment=data.get("comment", ""),
                   availability_target=None if data.get("availability_target") is None
                   else float(data["availability_target"]),
                   failback=bool(data.get("failback", True)))


@dataclass
class GroupConfig:
    """A node group: nodes with priorities (higher preferred), `restricted`, `nofailback`."""

    name: str
    nodes: dict[str, int] = field(default_factory=dict)
    restricted: bool = False
    nofailback: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"nodes": dict(self.nodes), "restricted": self.restricted,
                "nofailback": self.nofailback}

    @classmethod
    def from_dict(cls, name: str, data: dict[str, Any]) -> GroupConfig:
        nodes = data.get("nodes", {})
        if isinstance(nodes, str):  # Proxmox's "n1:2,n2:1" form
            nodes = parse_group_nodes(nodes)
        return cls(name=name, nodes={n: int(p) for n, p in nodes.items()},
                   restricted=bool(data.get("restricted", False)),
                   nofailback=bool(data.get("nofailback", False)))


def parse_group_nodes(text: str) -> dict[str, int]:
    """Parse `n1:2,n2:1,n3` (priority defaults to 0, as in Proxmox)."""
    out: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, prio = item.partition(":")
        out[name] = int(prio) if prio else 0
    return out


@dataclass
class HaSettings:
    """Cluster-wide HA settings (datacenter.cfg `ha:` in Proxmox)."""

    shutdown_policy: ShutdownPolicy = ShutdownPolicy.CONDITIONAL
    # binome: every HA service's availability target in percent (99.9), whose monthly
    # downtime budget the master watches (binome.ha.agent.availability); None: no budget
    availability_target: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"shutdown_policy": str(self.shutdown_policy)}
        if self.availability_target is not None:
            out["availability_target"] = self.availability_target
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> HaSettings:
        data = data or {}
        target = data.get("availability_target")
        return cls(shutdown_policy=ShutdownPolicy(data.get("shutdown_policy", "conditional")),
                   availability_target=None if target is None else float(target))


# ---------------------------------------------------------------- environment facts


@dataclass(frozen=True)
class NodeInfo:
    """Static capabilities of a cluster node (from the cluster configuration)."""

    name: str
    watchdog: bool = True        # runs a watchdog: lease expiry proves its guests are dead
    fence_device: bool = False   # has a fence device (IPMI, fence_* agent)


@dataclass(frozen=True)
class NodeFacts:
    """A node's lease as the store sees it, read linearizably by the CRM.

    `last_renewal` is when the store last saw the lease renewed (derived from
    the remaining TTL by the etcd adapter); `lease_gone_at` is set once the
    lease no longer exists, `lease_expired` tells expiry (the node stopped
    renewing) from revocation (the node released it).
    """

    name: str
    lease_alive: bool
    last_renewal: float | None = None
    lease_gone_at: float | None = None
    lease_expired: bool = False


@dataclass(frozen=True)
class LeaseInfo:
    """This node's own lease: `renewed_at` is when the last *successful* renewal was sent."""

    valid: bool
    renewed_at: float | None = None


@dataclass(frozen=True)
class FenceStatus:
    request_id: str
    state: FenceState
    detail: str = ""


@dataclass(frozen=True)
class FenceConfirmation:
    """The administrator's word that a lost node is powered off (`/binome/ha/fence_confirm/<node>`).

    `loss` is the `NodeRecord.loss` of the loss it was given for: the CRM
    accepts it only while that same loss lasts, so a confirmation can never
    apply to a later failure of the node. `user` and `at` (wall clock) are
    for the log and `ha status`.
    """

    node: str
    loss: str
    user: str = ""
    at: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"node": self.node, "loss": self.loss, "user": self.user, "at": self.at}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FenceConfirmation:
        return cls(node=str(data["node"]), loss=str(data["loss"]),
                   user=str(data.get("user", "")), at=float(data.get("at", 0.0)))


# ---------------------------------------------------------------- manager status


@dataclass
class ServiceStatus:
    """The CRM's record of one service. `uid` changes with every command to an LRM."""

    state: ServiceState
    node: str
    uid: str = ""
    target: str | None = None
    failed_nodes: list[str] = field(default_factory=list)
    restarts: int = 0
    reason: str | None = None
    maintenance_node: str | None = None
    since: float = 0.0
    move_retry_at: float | None = None   # no automatic migration before (after a failure)
    start_retry_at: float | None = None  # no new start before (the node said "try again")
    deferrals: int = 0                   # "try again" answers since the last good start
    # "restart": frozen for a binomed restart of `node` (its guests run on, its watchdog may
    # be released): if the node does not come back, only a fence device may unfreeze it
    frozen_by: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["state"] = str(self.state)
        out["failed_nodes"] = list(self.failed_nodes)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ServiceStatus:
        return cls(state=ServiceState(data["state"]), node=data["node"], uid=data.get("uid", ""),
                   target=data.get("target"), failed_nodes=list(data.get("failed_nodes", [])),
                   restarts=int(data.get("restarts", 0)), reason=data.get("reason"),
                   maintenance_node=data.get("maintenance_node"),
                   since=float(data.get("since", 0.0)),
                   move_retry_at=data.get("move_retry_at"),
                   start_retry_at=data.get("start_retry_at"),
                   deferrals=int(data.get("deferrals", 0)), frozen_by=data.get("frozen_by"))


@dataclass
class NodeRecord:
    """The CRM's record of one node, including an ongoing fence."""

    state: NodeState
    since: float = 0.0
    fence_request: str | None = None     # fence device request id in flight / last used
    fence_requested_at: float | None = None
    reason: str | None = None
    # the current loss of the node (unknown / fence, and after "fenced"): a manual fence
    # confirmation names it; a node back online drops it, its next loss gets a new one
    loss: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["state"] = str(self.state)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NodeRecord:
        return cls(state=NodeState(data["state"]), since=float(data.get("since", 0.0)),
                   fence_request=data.get("fence_request"),
                   fence_requested_at=data.get("fence_requested_at"),
                   reason=data.get("reason"), loss=data.get("loss"))


@dataclass
class ManagerStatus:
    master_node: str | None = None
    next_uid: int = 1
    node_status: dict[str, NodeRecord] = field(default_factory=dict)
    node_request: dict[str, dict[str, Any]] = field(default_factory=dict)
    service_status: dict[str, ServiceStatus] = field(default_factory=dict)
    disarm: DisarmMode | None = None
    next_loss: int = 1   # numbers the node losses (`NodeRecord.loss`)

    def to_dict(self) -> dict[str, Any]:
        return {
            "master_node": self.master_node,
            "next_uid": self.next_uid,
            "node_status": {n: r.to_dict() for n, r in sorted(self.node_status.items())},
            "node_request": {n: dict(r) for n, r in sorted(self.node_request.items())},
            "service_status": {s: st.to_dict() for s, st in sorted(self.service_status.items())},
            "disarm": None if self.disarm is None else str(self.disarm),
            "next_loss": self.next_loss,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> ManagerStatus:
        data = data or {}
        return cls(
            master_node=data.get("master_node"),
            next_uid=int(data.get("next_uid", 1)),
            node_status={n: NodeRecord.from_dict(r)
                         for n, r in (data.get("node_status") or {}).items()},
            node_request={n: dict(r) for n, r in (data.get("node_request") or {}).items()},
            service_status={s: ServiceStatus.from_dict(st)
                            for s, st in (data.get("service_status") or {}).items()},
            disarm=_opt(DisarmMode, data.get("disarm")),
            next_loss=int(data.get("next_loss", 1)),
        )


# ---------------------------------------------------------------- LRM status


@dataclass
class LrmResult:
    sid: str
    cmd: str
    exit_code: ExitCode
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"sid": self.sid, "cmd": self.cmd, "exit_code": int(self.exit_code),
                "message": self.message}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LrmResult:
        return cls(sid=data["sid"], cmd=data["cmd"], exit_code=ExitCode(data["exit_code"]),
                   message=data.get("message", ""))


@dataclass
class LrmStatus:
    """One node's LRM report. `running` lists the HA guests running on the node right now."""

    node: str
    state: LrmState = LrmState.WAIT_FOR_AGENT_LOCK
    mode: LrmMode = LrmMode.ACTIVE
    watchdog_armed: bool = False
    results: dict[str, LrmResult] = field(default_factory=dict)
    jobs: dict[str, str] = field(default_factory=dict)   # uid -> sid, commands in progress
    running: list[str] = field(default_factory=list)
    shutdown_done: bool = False   # the node stopped everything and is about to power off
    # binomed restarts (not the host): mode `restart`, services frozen, guests left running;
    # with `watchdog_armed` false and `running` set, the watchdog no longer covers them
    daemon_restart: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"node": self.node, "state": str(self.state), "mode": str(self.mode),
                "watchdog_armed": self.watchdog_armed,
                "results": {u: r.to_dict() for u, r in sorted(self.results.items())},
                "jobs": dict(sorted(self.jobs.items())), "running": sorted(self.running),
                "shutdown_done": self.shutdown_done, "daemon_restart": self.daemon_restart}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LrmStatus:
        return cls(node=data["node"], state=LrmState(data.get("state", "wait_for_agent_lock")),
                   mode=LrmMode(data.get("mode", "active")),
                   watchdog_armed=bool(data.get("watchdog_armed", False)),
                   results={u: LrmResult.from_dict(r)
                            for u, r in (data.get("results") or {}).items()},
                   jobs=dict(data.get("jobs") or {}), running=list(data.get("running") or []),
                   shutdown_done=bool(data.get("shutdown_done", False)),
                   daemon_restart=bool(data.get("daemon_restart", False)))
