"""The services of one node, as the API handlers see them.

This is the seam between the HTTP layer and the node: handlers reach the
cluster, the tasks, the cluster log and host information only through here.
It is also the one place where the node's object graph is built: each
service gets its dependencies in its constructor (nothing is bound later).
"""

from __future__ import annotations

import secrets
import ssl
from pathlib import Path
from typing import Any

from binome.cluster import pki
from binome.cluster.cluster import ClusterService
from binome.config import NodeConfig
from binome.daemon.hostinfo import HostInfo
from binome.daemon.rrd import RrdStore
from binome.guest.guests import GuestService
from binome.storage.manager import StorageManager
from binome.storage.replica.node.volumes import VolumeService
from binome.tasks.clusterlog import ClusterLog
from binome.tasks.manager import TaskManager

SUPERUSERS = ("root@pam",)


class Services:
    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        config.state_dir.mkdir(parents=True, exist_ok=True)
        self.clusterlog = ClusterLog(config.name, config.state_dir / "clusterlog.pending")
        self.tasks = TaskManager(config.name, config.tasks_dir)
        self.cluster = ClusterService(config, self.clusterlog)
        self.host = HostInfo()
        self.cluster.on_node_stats = self.host.summary
        self.rrd = RrdStore()
        self.volumes: VolumeService | None = None
        if config.role == "node":
            # replicated volumes: the engine runs apart from the daemon (it outlives it)
            self.volumes = VolumeService(config.name, config.state_dir, self.cluster,
                                         self.clusterlog)
        # guest and HA code reach the volumes only through the storage manager
        self.storages = StorageManager(config.name, config.state_dir, self.cluster,
                                       self.volumes)
        self.guests: GuestService | None = None
        if config.role == "node":
            from binome.guest.runtime import QemuRuntime

            runtime = QemuRuntime(config.run_dir / "qemu")
            self.guests = GuestService(config.name, self.cluster, self.storages, runtime,
                                       self.clusterlog)
        self.ha = None
        if config.role == "node":
            from binome.config import ConfigError
            from binome.ha.agent.agent import HaAgent as HaService

            try:
                self.ha = HaService(config, self.cluster, self.guests, self.storages,
                                    self.tasks, self.clusterlog)
            except ConfigError as exc:   # cluster timers the HA timers cannot live with
                import logging

                logging.getLogger("binome.ha").error("HA manager disabled: %s", exc)
        self._local_authkey: bytes | None = None
        self._cluster_ssl: ssl.SSLContext | None = None
        pki.ensure_self_signed(self.cluster.paths, config.name,
                               [config.cluster_address, "127.0.0.1"])

    def api_cert_paths(self) -> tuple[Path, Path]:
        paths = self.cluster.paths
        if self.cluster.is_member:
            return paths.node_cert, paths.node_key
        return paths.self_signed_cert, paths.self_signed_key

    def cluster_ssl_context(self) -> ssl.SSLContext:
        """Client context for node-to-node calls: trust the cluster CA only."""
        if self._cluster_ssl is None:
            ctx = ssl.create_default_context(cafile=str(self.cluster.paths.ca_cert))
            self._cluster_ssl = ctx
        return self._cluster_ssl

    def tls_changed(self) -> None:
        self._cluster_ssl = None

    async def authkey(self) -> bytes:
        key = await self.cluster.authkey()
        if key is not None:
            return key
        if self._local_authkey is None:
            path = self.config.pki_dir / "authkey.local"
            if not path.exists():
                pki.write_private(path, secrets.token_hex(32).encode())
            self._local_authkey = bytes.fromhex(path.read_text())
        return self._local_authkey

    async def get_user(self, userid: str) -> dict[str, Any] | None:
        return await self.cluster.get_user(userid)

    async def is_superuser(self, userid: str) -> bool:
        if userid in SUPERUSERS:
            return True
        user = await self.get_user(userid)
        return bool(user and user.get("enable", 1) and user.get("superuser"))

    async def node_api_url(self, node: str) -> str:
        from binome.api.errors import ApiError

        address = self.cluster.node_address(node)
        if address is None:
            raise ApiError(500, f"no such cluster node '{node}'")
        host, port = address
        host = f"[{host}]" if ":" in host else host
        return f"https://{host}:{port}"
