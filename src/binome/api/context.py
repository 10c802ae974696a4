"""What a method handler gets: who is calling, through which door, and the node's services.

`NodeServices` is the API's view of the node: exactly what the server and the method
handlers use. The daemon's object graph (`binome.daemon.graph.NodeGraph`) satisfies it
and is handed to the API as one; the API imports nothing from the daemon.
"""

from __future__ import annotations

import ssl
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from aiohttp import web

    from binome.access.service import AccessService
    from binome.api.registry import ApiMethod
    from binome.cluster.certificates import NodeCertificates
    from binome.cluster.cluster import ClusterService
    from binome.config import NodeConfig
    from binome.guest.guests import GuestService
    from binome.notify.service import NotificationService
    from binome.storage.manager import StorageManager
    from binome.storage.replica.node.volumes import VolumeService
    from binome.tasks.clusterlog import ClusterLog
    from binome.tasks.manager import TaskManager


# the request key under which an upload method finds its file part (an aiohttp
# BodyPartReader, unread): see `ApiMethod.upload`
UPLOAD_PART = "binome.upload_part"


class HostView(Protocol):
    """This host's resources, as `nodes/{node}/status` and the node list show them."""

    def summary(self) -> dict[str, Any]: ...

    def status(self) -> dict[str, Any]: ...

    async def network(self) -> dict[str, dict[str, Any]]:
        """The host's interfaces by name, in PVE's `/nodes/{node}/network` shape."""
        ...

    def dns(self) -> dict[str, str]: ...

    def time(self) -> dict[str, Any]: ...

    def hosts(self) -> dict[str, str]:
        """/etc/hosts: `{digest, data}` (PVE's read_etc_hosts)."""
        ...

    def pci(self, class_blacklist: list[str], verbose: bool) -> list[dict[str, Any]]:
        """The host's PCI devices (PVE's SysFSTools::lspci)."""
        ...

    def disks(self, include_partitions: bool, kind: str | None) -> list[dict[str, Any]]:
        """The host's local disks (PVE's Diskmanage::get_disks; blocking: OSError when
        lsblk cannot run)."""
        ...


class RrdView(Protocol):
    """The node's, guests' and storages' usage history (`.../rrddata`), PVE's rows."""

    async def fetch_node(self, timeframe: str, cf: str) -> list[dict[str, Any]]: ...

    async def fetch_guest(self, vmid: int, timeframe: str, cf: str) -> list[dict[str, Any]]: ...

    async def fetch_storage(self, storage: str, timeframe: str,
                            cf: str) -> list[dict[str, Any]]: ...


class LogView(Protocol):
    """This node's service logs (binomed, etcd), as PVE's syslog and journal serve them."""

    async def read_syslog(self, *, start: int, limit: int, since: float | None,
                          until: float | None, service: str | None
                          ) -> tuple[int, list[dict[str, Any]]]: ...

    async def read_journal(self, *, since: int | None, until: int | None,
                           lastentries: int | None, startcursor: str | None,
                           endcursor: str | None) -> list[str]: ...


class RebootGuard(Protocol):
    """The HA agent as the API sees it: an API reboot of an HA guest is not a crash."""

    def rebooting(self, vmid: int) -> AbstractContextManager[None]: ...

    async def prepare_host_shutdown(self, kind: str, timeout: float) -> bool:
        """The host is about to `kind` ("reboot" | "poweroff"): apply the HA shutdown
        policy to this node's HA guests now; True once done within `timeout`."""
        ...


class NodeServices(Protocol):
    """The node as the API sees it. On a witness, `guests`, `volumes` and `ha` are None."""

    @property
    def config(self) -> NodeConfig: ...

    @property
    def cluster(self) -> ClusterService: ...

    @property
    def clusterlog(self) -> ClusterLog: ...

    @property
    def tasks(self) -> TaskManager: ...

    @property
    def host(self) -> HostView: ...

    @property
    def rrd(self) -> RrdView: ...

    @property
    def logs(self) -> LogView: ...

    @property
    def storages(self) -> StorageManager: ...

    @property
    def volumes(self) -> VolumeService | None: ...

    @property
    def guests(self) -> GuestService | None: ...

    @property
    def ha(self) -> RebootGuard | None: ...

    @property
    def access(self) -> AccessService:
        """Users, tokens, ACLs: authentication and the permission check ask it."""
        ...

    @property
    def notifications(self) -> NotificationService:
        """Notification targets and matchers, the node's dispatcher."""
        ...

    @property
    def certificates(self) -> NodeCertificates:
        """The certificates the API serves: the node's and the custom (or ACME) one."""
        ...

    def cluster_ssl_context(self) -> ssl.SSLContext:
        """Client context for node-to-node calls."""
        ...

    async def authkey(self) -> bytes:
        """The key tickets and CSRF tokens are signed with."""
        ...

    async def node_api_url(self, node: str) -> str:
        """`https://host:port` of a cluster node's API."""
        ...

    def service_states(self) -> list[dict[str, Any]]:
        """binome's processes on this node, in PVE's `/nodes/{node}/services` shape."""
        ...


@dataclass
class RequestContext:
    services: NodeServices
    user: str | None
    request: web.Request | None
    method: ApiMethod
    via_socket: bool = False

    @property
    def node(self) -> str:
        return self.services.config.name

    @property
    def userid(self) -> str:
        assert self.user is not None
        return self.user
