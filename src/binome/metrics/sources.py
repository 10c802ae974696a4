"""What the exporter reads: the node's services, as protocols (`MetricSources`).

`binome.daemon.graph.NodeGraph` satisfies `MetricSources`; the metrics package imports
nothing from the daemon. On a witness `guests`, `volumes` and `ha` are None.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from binome.cluster.cluster import ClusterService
    from binome.config import NodeConfig
    from binome.guest.guests import GuestService
    from binome.ha.agent.stats import HaStats
    from binome.storage.replica.node.volumes import VolumeService
    from binome.tasks.manager import TaskManager


class HostReading(Protocol):
    """This host's resources (`daemon.hostinfo.HostInfo`)."""

    def summary(self) -> dict[str, Any]: ...

    def net_devices(self) -> dict[str, tuple[int, int]]: ...


class HaCounting(Protocol):
    """The HA agent as the exporter sees it: its fence and recovery counts."""

    @property
    def stats(self) -> HaStats: ...


class DeliveryCounting(Protocol):
    """The notification service's counts (`NotificationService.delivery_counts`)."""

    def delivery_counts(self) -> tuple[int, dict[str, dict[str, Any]]]: ...


class MetricSources(Protocol):
    @property
    def config(self) -> NodeConfig: ...

    @property
    def cluster(self) -> ClusterService: ...

    @property
    def host(self) -> HostReading: ...

    @property
    def tasks(self) -> TaskManager: ...

    @property
    def guests(self) -> GuestService | None: ...

    @property
    def volumes(self) -> VolumeService | None: ...

    @property
    def ha(self) -> HaCounting | None: ...

    @property
    def notifications(self) -> DeliveryCounting: ...
