"""The node's object graph: every long-lived object of one node, built once, here.

Each object gets its dependencies and callbacks in its constructor; nothing is bound
after construction. The API sees the graph only as `binome.api.context.NodeServices`
(the `ApiServer` built below is where mypy checks that the graph satisfies it).
On a witness (`role == "witness"`) there are no guests, volumes or HA agent.
"""

from __future__ import annotations

import logging
import os
import secrets
import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Any

from binome.access.repository import Change
from binome.access.service import AccessService
from binome.api.errors import ApiError
from binome.api.server import ApiServer
from binome.api.spiceproxy import SpiceProxy
from binome.cluster import pki
from binome.cluster.certificates import NodeCertificates
from binome.cluster.cluster import ClusterService
from binome.config import ConfigError, NodeConfig
from binome.daemon.health import HealthWatch
from binome.daemon.hostinfo import HostInfo
from binome.daemon.logs import NodeLogs
from binome.daemon.rrd import RrdStore
from binome.guest.guests import GuestService
from binome.guest.process import is_alive
from binome.metrics.exporter import NodeMetrics
from binome.notify import history as notify_history
from binome.notify.repository import Change as NotifyChange
from binome.notify.service import NotificationService
from binome.storage.manager import StorageManager
from binome.storage.replica.node.volumes import VolumeService
from binome.tasks.clusterlog import ClusterLog
from binome.tasks.manager import TaskManager

if TYPE_CHECKING:
    from binome.ha.agent.agent import HaAgent
    from binome.ha.agent.lease_bridge import LeaseBridge

class NodeGraph:
    def __init__(self, config: NodeConfig, lease_bridge: LeaseBridge | None = None) -> None:
        """`lease_bridge`: the previous daemon's lease kept alive since this one started
        (after a crash of binomed); the cluster monitor adopts that lease and the HA
        agent ends the bridge when it takes over the watchdog."""
        self.config = config
        self._lease_bridge = lease_bridge
        config.state_dir.mkdir(parents=True, exist_ok=True)
        is_node = config.role == "node"
        self.clusterlog = ClusterLog(config.name, config.state_dir / "clusterlog.pending")
        self.tasks = TaskManager(config.name, config.tasks_dir)
        self.host = HostInfo()
        self.rrd = RrdStore(config.state_dir / "rrd.sqlite")
        self.logs = NodeLogs(config.name, config.log_dir / "binomed.log", config.etcd_log)
        # every node (witness too) sends the events it decides: see docs/architecture.md
        self.notifications = NotificationService(
            config.name, lambda: self.cluster.store, user_emails=self._user_emails,
            on_change=self._log_notify_change,
            history_path=config.state_dir / notify_history.FILE_NAME)
        self.cluster = ClusterService(config, self.clusterlog, node_stats=self.host.summary,
                                      on_tls_change=self._tls_changed,
                                      on_quorum_change=self._quorum_changed)
        if lease_bridge is not None:
            self.cluster.adopt_lease(lease_bridge.record.lease)
        self.access = AccessService(lambda: self.cluster.store, on_change=self._log_access)
        # replicated volumes: the engine runs apart from the daemon (it outlives it)
        self.volumes: VolumeService | None = (
            VolumeService(config.name, config.state_dir, self.cluster, self.clusterlog,
                          notify=self.notifications.emit)
            if is_node else None)
        # guest and HA code reach the volumes only through the storage manager
        self.storages = StorageManager(config.name, config.state_dir, self.cluster,
                                       self.volumes)
        self.guests: GuestService | None = self._guests() if is_node else None
        self.ha = self._ha_agent() if is_node else None
        self._local_authkey: bytes | None = None    # cache of a file read on first use
        self._cluster_ssl: ssl.SSLContext | None = None   # cache, reset on a TLS change
        pki.ensure_self_signed(self.cluster.paths, config.name,
                               [config.cluster_address, "127.0.0.1"])
        self.certificates = NodeCertificates(self.cluster.paths,
                                             lambda: self.cluster.is_member,
                                             changed=lambda: self.api.reload_tls())
        self.metrics = NodeMetrics(self)   # reads the graph at each scrape
        self.health = HealthWatch(
            config.name, self.notifications.emit, self._watched_certificates,
            lambda: self.cluster.store,
            lambda: self.ha is not None and self.ha.crm_env.lock_revision() is not None)
        self.api = ApiServer(self, self.metrics)    # last: it takes the whole graph
        # PVE's spiceproxy on 3128 of the API's address: remote-viewer's way to SPICE
        self.spice_proxy = SpiceProxy(config.name, config.api_bind, self.authkey,
                                      self._node_host)

    def _guests(self) -> GuestService:
        from binome.guest.runtime import QemuRuntime

        runtime = QemuRuntime(self.config.run_dir / "qemu")
        return GuestService(self.config.name, self.cluster, self.storages, runtime,
                            self.clusterlog)

    def _ha_agent(self) -> HaAgent | None:
        """The HA agent (CRM + LRM), or None if the cluster timers rule it out."""
        from binome.ha.agent.agent import HaAgent

        try:
            return HaAgent(self.config, self.cluster, self.guests, self.storages,
                           self.tasks, self.clusterlog, notify=self.notifications.emit,
                           bridge=self._lease_bridge)
        except ConfigError as exc:   # cluster timers the HA timers cannot live with
            logging.getLogger("binome.ha").error("HA manager disabled: %s", exc)
            return None

    async def _log_access(self, change: Change) -> None:
        await self.clusterlog.write(change.action, tag="access", user=change.actor)

    async def _log_notify_change(self, change: NotifyChange) -> None:
        await self.clusterlog.write(f"{change.actor}: {change.action}", tag="notify",
                                    user=change.actor)

    async def _user_emails(self) -> dict[str, str]:
        """The users' e-mail addresses, for targets that name users (`mailto-user`)."""
        users = (await self.access.config()).users
        return {uid: u.email for uid, u in users.items() if u.email}

    def _watched_certificates(self) -> list[Path]:
        """The certificates whose expiry the health watch warns of."""
        pair = self.certificates.custom()
        return [self.certificates.served()[0], *([pair[0]] if pair else [])]

    def _quorum_changed(self, quorate: bool, votes: int, expected: int,
                        at_start: bool) -> None:
        # this node's own view: each node says it for itself (hostname = this node)
        if quorate:
            self.notifications.emit("quorum-regained", votes=votes, expected=expected)
        else:
            self.notifications.emit("quorum-lost", votes=votes, expected=expected,
                                    since_start=at_start)

    def _tls_changed(self) -> None:
        """The node certificate changed (create/join): trust and serve the new one."""
        self._cluster_ssl = None
        self.api.reload_tls()

    def cluster_ssl_context(self) -> ssl.SSLContext:
        """Client context for node-to-node calls: trust the cluster CA only."""
        if self._cluster_ssl is None:
            ctx = ssl.create_default_context(cafile=str(self.cluster.paths.ca_cert))
            self._cluster_ssl = ctx
        return self._cluster_ssl

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

    def service_states(self) -> list[dict[str, Any]]:
        """binome's processes on this node, as PVE's `/nodes/{node}/services` lists the
        node's systemd units: binomed itself, its etcd member, the replicated volume
        engine and the HA watchdog supervisor (these run as binomed's children or
        beside it, not as units of their own)."""
        def entry(service: str, desc: str, pid: int | None, *, wanted: bool) -> dict[str, Any]:
            st: dict[str, Any] = {"service": service, "name": service, "desc": desc,
                                  "state": "running" if pid else "dead",
                                  "active-state": "active" if pid else "inactive",
                                  "unit-state": "static" if wanted else "disabled"}
            if pid:
                st["pid"] = pid
            return st

        member = self.cluster.local.etcd
        out = [entry("binomed", "binome node daemon (API, cluster, guests, HA)", os.getpid(),
                     wanted=True),
               entry("etcd", "etcd member of the cluster store",
                     member.pid if member is not None else None,
                     wanted=self.cluster.is_member)]
        if self.volumes is not None:
            handle = self.volumes.handle
            out.append(entry("binome-volumes", "replicated volume engine (outlives binomed)",
                             handle.pid if handle is not None and is_alive(handle.pid)
                             else None, wanted=True))
        if self.ha is not None:
            out.append(entry("watchdog", "HA watchdog supervisor (runs while HA guests are "
                             "protected here)", self.ha.watchdog.running_pid(), wanted=True))
        return out

    def _node_host(self, node: str) -> str | None:
        address = self.cluster.node_address(node)
        return None if address is None else address[0]

    async def node_api_url(self, node: str) -> str:
        address = self.cluster.node_address(node)
        if address is None:
            raise ApiError(500, f"no such cluster node '{node}'")
        host, port = address
        host = f"[{host}]" if ":" in host else host
        return f"https://{host}:{port}"
