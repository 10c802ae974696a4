"""Simulated hardware per member: power, links, the watchdog, the fence device.

Pure records; the `World` changes them and schedules what follows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from binome.ha.model import FenceState, FenceStatus, LrmResult
from binome.ha.sim.config import FenceDeviceSpec, NodeSpec

if TYPE_CHECKING:
    from binome.ha.crm import Crm
    from binome.ha.lrm import Lrm


@dataclass
class Watchdog:
    armed: bool = False
    deadline: int = 0     # ms
    fired: bool = False
    sids: frozenset[str] = frozenset()   # the guests it kills when it fires


@dataclass
class FenceDevice:
    spec: FenceDeviceSpec
    health: str = "ok"    # ok | fail | dead
    requests: int = 0
    latest: FenceStatus | None = None
    probes: int = 0
    # the latest power probe (`ha.probe`) by the node that asked: each binomed's fencer
    # keeps its own probes' answers
    probe: dict[str, FenceStatus] = field(default_factory=dict)


@dataclass
class Job:
    uid: str
    sid: str
    kind: str             # start | stop | migrate | relocate
    node: str
    generation: int
    target: str | None = None
    fails: bool = False


@dataclass
class Member:
    """An etcd member: a node or the witness."""

    name: str
    power: bool = True
    cluster_link: bool = True
    up: bool = True               # powered and booted


@dataclass
class SimNode(Member):
    spec: NodeSpec = field(default_factory=lambda: NodeSpec("?"))
    index: int = 0
    replication_link: bool = True
    generation: int = 0           # bumped at every power-off: stale events are dropped
    paused_until: int = -1
    life: int = 0                 # bumped at every daemon start: the old daemons' loops stop
    daemon_down: bool = False     # binomed restarting: the host, its guests and watchdog run on
    restart_down: float = 0.0     # seconds binomed stays down on a restart
    lease_id: int | None = None
    renewed_at: int | None = None
    watchdog: Watchdog = field(default_factory=Watchdog)
    fence: FenceDevice | None = None
    shutdown_request: str | None = None
    crm: Crm | None = None
    lrm: Lrm | None = None
    jobs: dict[str, Job] = field(default_factory=dict)
    results: dict[str, LrmResult] = field(default_factory=dict)
    wakeups: dict[str, int] = field(default_factory=dict)

    def paused(self, now: int) -> bool:
        return now < self.paused_until

    def running(self, now: int) -> bool:
        """The daemon runs: machine up and process not stopped."""
        return self.up and not self.paused(now) and not self.daemon_down


def fence_status(device: FenceDevice | None) -> FenceStatus | None:
    return device.latest if device else None


def pending(request_id: str) -> FenceStatus:
    return FenceStatus(request_id, FenceState.PENDING)
