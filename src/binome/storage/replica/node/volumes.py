"""The daemon's side of replicated volumes: engine supervision, cluster records, quorum fencing.

`binomed` owns one `VolumeService`. It

- **supervises the node's volume engine** (`supervisor.ensure_engine`, state
  in `<state>/replica`): at daemon start it adopts a running engine, or starts
  one if this node has volumes; otherwise the engine starts on first need (a
  node without volumes runs none). An engine found dead is started again and
  its volumes brought back up. The daemon never stops it: the engine outlives
  the daemon, and guest I/O with it;
- **keeps each volume's desired state in etcd** (`replica.node.records`) and
  reconciles this node's engine to it: a record naming this node makes the
  volume exist and be up here. The node that creates a volume writes the
  record (with a per-volume secret and replication port) and its peer's
  daemon creates its copy from it within a reconcile round; nobody calls the
  peer's daemon directly, so a peer that is down catches up when it returns
  (the same loop re-ups volumes after an engine restart);
- **publishes** what the engine reports (roles, connection and disk states,
  generation ids, suspension) under `/binome/volumes/<vol>/state/<node>`;
- is the **fence-peer handler** of quorum fencing. When the engine suspends a
  Primary's writes (its peer's disk is unknown), this service records the
  peer's copy as Outdated in `/binome/volumes/<vol>/fencing` with a
  compare-and-swap transaction (it succeeds only with etcd quorum, and only if
  this node's copy is not itself recorded Outdated), then tells the engine
  (`peer-outdated`), which resumes. Without quorum nothing is written and the
  writes stay suspended, retried until quorum or the peer returns. A copy
  recorded Outdated refuses promotion (engine and daemon) unless forced; the
  mark is cleared by the other node once it sees the copy back in sync.
  `standalone` turns fencing off on this node (explicit, logged): then
  DRBD's split-brain policies are what protects the data.

This module owns the service's state, the engine's lifecycle and calls, the
record helpers and the engine config a record becomes. Each job is a module
of functions taking the `VolumeService`: `engine_events` (events, publishing),
`provisioning` (create, delete), `reconcile`, `fencing` (quorum fencing),
`operations` (promote, demote, up, down, resize, adjust, standalone); the
API's calls are aliases of them on the service.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from binome.storage.replica.core import handler_rules
from binome.storage.replica.core.config import (
    MAX_SOCKET_PATH,
)
from binome.storage.replica.core.states import Fencing
from binome.storage.replica.core.views import record_settings
from binome.storage.replica.engine import control
from binome.storage.replica.node import (
    engine_events,
    fencing,
    operations,
    provisioning,
    reconcile,
    supervisor,
)
from binome.storage.replica.node.errors import VolumeFailure
from binome.storage.replica.node.records import VolumeRecords

if TYPE_CHECKING:
    from binome.cluster.cluster import ClusterService
    from binome.store.client import Store
    from binome.tasks.clusterlog import ClusterLog

log = logging.getLogger("binome.volumes")

ENGINE_SUBDIR = "replica"
HANDLERS_FILE = "handlers.json"   # this node's handler commands (node_handlers)
RECONCILE_INTERVAL = 1.0
CALL_TIMEOUT = 120.0
# Timers of daemon-created volumes: a silent peer is declared lost within
# ping_int + ping_timeout (protocol C writes wait that long on a dead link).
CONNECT_INT = 2.0
PING_INT = 2.0
PING_TIMEOUT = 2.0


def _addr(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


class VolumeService:
    def __init__(self, node: str, state_dir: Path, cluster: ClusterService,
                 clusterlog: ClusterLog, *, reconcile_interval: float = RECONCILE_INTERVAL,
                 notify: Callable[..., None] | None = None) -> None:
        """`notify(kind, **fields)`: the node's notification emitter (never blocks); told
        of replication disconnects, resyncs and verify findings (engine_events)."""
        self.node = node
        self.notify: Callable[..., None] = notify or (lambda *_a, **_k: None)
        # volume -> (last connection state, when a resync this node sends started)
        self.replication: dict[str, tuple[str, float | None]] = {}
        # volume -> the time of the engine's last local I/O error record seen (or None)
        self.disks: dict[str, float | None] = {}
        # volume -> the engine's split-brain record last seen (its state and times)
        self.split_brains: dict[str, tuple[Any, ...] | None] = {}
        self.engine_dir = state_dir / ENGINE_SUBDIR
        self._handlers_applied: dict[str, dict[str, Any]] = {}
        self.socket_dir = self._socket_dir(self.engine_dir)
        self.cluster = cluster
        self.clusterlog = clusterlog
        self.reconcile_interval = reconcile_interval
        self.handle: supervisor.EngineHandle | None = None
        self.statuses: dict[str, dict[str, Any]] = {}     # engine's view, from its events
        self.records: dict[str, dict[str, Any]] = {}      # cluster records naming this node
        self._locks: dict[str, asyncio.Lock] = {}
        self._engine_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task] = []
        self._watcher: asyncio.Task | None = None
        self._fencers: dict[str, asyncio.Task] = {}
        self._wake = asyncio.Event()
        self._dirty: dict[str, dict[str, Any]] = {}
        self._publish_wake = asyncio.Event()
        self._published: dict[str, dict[str, Any]] = {}
        self._verify_logged: dict[str, Any] = {}     # the verify results already logged
        self._warned: dict[str, str] = {}
        self.record_store = VolumeRecords(self._store)   # the volume records in etcd

    # ------------------------------------------------------------------ paths
    @staticmethod
    def _socket_dir(engine_dir: Path) -> Path:
        """NBD sockets under the state dir, unless that makes unix socket paths too long."""
        preferred = engine_dir / "nbd"
        if len(os.fsencode(str(preferred))) + 1 + 64 + 5 <= MAX_SOCKET_PATH:
            return preferred
        digest = hashlib.sha256(str(engine_dir).encode()).hexdigest()[:12]
        base = Path("/run") if os.access("/run", os.W_OK) else Path(tempfile.gettempdir())
        return base / f"binome-nbd-{digest}"

    def socket_path(self, name: str) -> str:
        return str(self.socket_dir / f"{name}.sock")

    def nbd_uri(self, name: str) -> str:
        return f"nbd+unix:///{name}?socket={self.socket_path(name)}"

    def exists_locally(self, name: str) -> bool:
        return (self.engine_dir / "volumes" / name / "volume.json").is_file()

    def _has_local_volumes(self) -> bool:
        vdir = self.engine_dir / "volumes"
        return vdir.is_dir() and any((p / "volume.json").is_file() for p in vdir.iterdir())

    def lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """At daemon start: adopt the running engine (or start it if there are volumes)."""
        running = await supervisor.ping(supervisor.control_path(self.engine_dir))
        if running is not None or self._has_local_volumes():
            try:
                await self.ensure_engine()
            except (RuntimeError, TimeoutError, OSError) as exc:
                log.error("volume engine: %s", exc)
        self._tasks.append(asyncio.create_task(reconcile.reconcile_loop(self),
                                               name="volumes-reconcile"))
        self._tasks.append(asyncio.create_task(engine_events.publish_loop(self),
                                               name="volumes-publish"))

    async def stop(self) -> None:
        """At daemon stop: stop watching. The engine keeps running (and serving guests)."""
        tasks = [*self._tasks, *self._fencers.values()]
        if self._watcher is not None:
            tasks.append(self._watcher)
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks, self._fencers, self._watcher = [], {}, None

    async def ensure_engine(self) -> supervisor.EngineHandle:
        """The running engine, adopted or started (and its event stream watched)."""
        async with self._engine_lock:
            h = self.handle
            if h is None or await supervisor.ping(h.control) is None:
                h = await supervisor.ensure_engine(self.engine_dir, socket_dir=self.socket_dir)
                log.info("volume engine %s (pid %d, %s)",
                         "adopted" if h.adopted else "started", h.pid, self.engine_dir)
                self.handle = h
                self._wake.set()
            if self._watcher is None or self._watcher.done():
                # (again if the engine dropped a lagging event stream)
                self._watcher = asyncio.create_task(engine_events.watch_events(self, h),
                                                    name="volumes-events")
            return h

    async def call(self, cmd: str, **args: Any) -> Any:
        """One engine command; the engine is started if needed."""
        h = await self.ensure_engine()
        try:
            async with asyncio.timeout(CALL_TIMEOUT):
                return await control.call(h.control, cmd, **args)
        except control.ControlError as exc:
            raise VolumeFailure(str(exc)) from None
        except (OSError, ConnectionError, TimeoutError) as exc:
            raise VolumeFailure(f"volume engine not reachable: {exc or 'timeout'}") from None

    # ------------------------------------------------------------------ cluster records
    def _store(self) -> Store:
        store = self.cluster.store
        if store is None or not self.cluster.is_member:
            raise VolumeFailure("this node is not part of a cluster: replicated volumes need "
                                "a peer node")
        return store

    def in_cluster(self) -> bool:
        """Whether the volume records can be read here (this node is a cluster member)."""
        return self.cluster.is_member and self.cluster.store is not None

    async def record(self, name: str, *, serializable: bool = True) -> dict[str, Any]:
        return await self.record_store.get(name, serializable=serializable)

    async def all_records(self) -> dict[str, dict[str, Any]]:
        return await self.record_store.all()

    async def cluster_view(self, name: str) -> dict[str, Any]:
        """The record, the fencing marks and every node's published state (no secret)."""
        return await self.record_store.view(name)

    def peer_of(self, rec: dict[str, Any]) -> str:
        others = [n for n in rec["nodes"] if n != self.node]
        if len(others) != 1 or self.node not in rec["nodes"]:
            raise VolumeFailure(f"volume {rec['name']} is not replicated between this node "
                                f"({self.node}) and one peer: {', '.join(rec['nodes'])}")
        return others[0]

    def default_peer(self, candidates: tuple[str, ...] = ()) -> str:
        """The pairing rule: the one other node (of `candidates`, or of the cluster)."""
        if candidates:
            others = [n for n in candidates if n != self.node]
            if self.node in candidates and len(others) == 1:
                return others[0]
            raise VolumeFailure(f"cannot choose a peer among {', '.join(candidates)}: name "
                                f"exactly two nodes including {self.node}")
        others = sorted(n for n, r in self.cluster.node_records.items()
                        if r.get("role", "node") == "node" and n != self.node)
        if len(others) != 1:
            raise VolumeFailure(f"cannot choose a peer node: the cluster has "
                                f"{len(others)} other nodes ({', '.join(others) or 'none'}); "
                                f"name one with --peer")
        return others[0]

    def _replication_ip(self, node: str) -> str:
        rec = self.cluster.node_records.get(node)
        if rec is None:
            raise VolumeFailure(f"no such cluster node '{node}'")
        if rec.get("role", "node") != "node":
            raise VolumeFailure(f"node '{node}' is a {rec.get('role')}: it holds no data")
        ip = rec.get("replication_address") or rec.get("cluster_address")
        if not ip:
            raise VolumeFailure(f"node '{node}' has no replication address")
        return ip

    def node_handlers(self) -> dict[str, Any]:
        """This node's handler commands for its volumes: `<state>/replica/handlers.json`.

        `{"handlers": {"split-brain": "command", ...}, "handler_timeout": 60}`,
        written by root on the node (the file must not be writable by others).
        Deliberately not settable through the API or etcd: a handler is a
        command run as the engine's user. Unreadable or invalid: no handlers
        (logged).
        """
        path = self.engine_dir / HANDLERS_FILE
        try:
            st = path.stat()
            if st.st_mode & 0o022 or st.st_uid not in (0, os.getuid()):
                raise ValueError("writable by others or owned by another user: ignored")
            data = json.loads(path.read_text())
            cfg = {"handlers": dict(data.get("handlers") or {}),
                   "handler_timeout": float(data.get("handler_timeout",
                                                     handler_rules.DEFAULT_TIMEOUT))}
            handler_rules.validate(cfg["handlers"], cfg["handler_timeout"])
            return cfg
        except FileNotFoundError:
            return {"handlers": {}, "handler_timeout": handler_rules.DEFAULT_TIMEOUT}
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            self._warn("*handlers", f"{path}: {exc}")
            return {"handlers": {}, "handler_timeout": handler_rules.DEFAULT_TIMEOUT}

    def _engine_config(self, rec: dict[str, Any], secret: str) -> dict[str, Any]:
        peer = self.peer_of(rec)
        port = int(rec["port"])
        mine = rec["nodes"][self.node]
        cfg: dict[str, Any] = {
            "name": rec["name"], "size": int(rec["size"]),
            "node": self.node, "peer_node": peer,
            "address": _addr(mine["address"], port),
            "peer_address": _addr(rec["nodes"][peer]["address"], port),
            "secret": secret, "protocol": rec.get("protocol", "C"),
            "fencing": rec.get("fencing", Fencing.QUORUM.value),
            "resync_rate": int(rec.get("resync_rate", 0)),
            "allow_two_primaries": bool(rec.get("allow_two_primaries", False)),
            "connect_int": CONNECT_INT, "ping_int": PING_INT, "ping_timeout": PING_TIMEOUT,
            **self.node_handlers(),
            **record_settings(rec),
        }
        for n in (0, 1, 2):
            key = f"after_sb_{n}pri"
            if rec.get(key):
                cfg[key] = rec[key]
        if mine.get("backing_dir"):
            cfg["backing"] = str(Path(mine["backing_dir"]) / f"{rec['name']}.img")
        return cfg

    # ------------------------------------------------------------------ reconciliation

    def _warn(self, name: str, message: str, **kw: Any) -> None:
        """Log a reconcile problem once, not every round."""
        if self._warned.get(name) != message:
            self._warned[name] = message
            log.warning("volume %s: %s", name, message, **kw)

    # ------------------------------------------------------------------ the API's calls
    # (each implemented in the module of its concern)

    # the engine's events
    engine_events = engine_events.engine_events

    # creating and deleting volumes
    create_volume = provisioning.create_volume
    delete_volume = provisioning.delete_volume
    set_image = provisioning.set_image

    # quorum fencing
    fence_peer = fencing.fence_peer

    # role changes and administration
    promote = operations.promote
    demote = operations.demote
    up = operations.up
    down = operations.down
    resize_volume = operations.resize_volume
    adjust_volume = operations.adjust_volume
    standalone = operations.standalone

    # ------------------------------------------------------------------ queries
    async def local_statuses(self) -> list[dict[str, Any]]:
        """Every volume of this node's engine, with its status (without starting an engine)."""
        if self.handle is None and not self._has_local_volumes():
            return []
        out = []
        for v in await self.call("list"):
            out.append(await self.call("status", name=v["name"]))
        return out
