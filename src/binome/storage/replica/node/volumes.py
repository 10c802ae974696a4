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
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import secrets
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from binome.storage.replica.core import handler_rules
from binome.storage.replica.core.config import (
    ADJUSTABLE,
    MAX_SOCKET_PATH,
    NAME_RE,
    ConfigError,
    parse_size,
)
from binome.storage.replica.core.splitbrain import parse_policy
from binome.storage.replica.core.states import Fencing
from binome.storage.replica.core.views import CONNECTED_STATES, record_settings
from binome.storage.replica.engine import control
from binome.storage.replica.node import supervisor
from binome.storage.replica.node.errors import FenceFailed, SettingRefused, VolumeFailure
from binome.storage.replica.node.records import VolumeRecords
from binome.store.client import StoreUnavailable

if TYPE_CHECKING:
    from binome.cluster.cluster import ClusterService
    from binome.store.client import Store
    from binome.tasks.clusterlog import ClusterLog
    from binome.tasks.manager import Task

log = logging.getLogger("binome.volumes")

ENGINE_SUBDIR = "replica"
HANDLERS_FILE = "handlers.json"   # this node's handler commands (node_handlers)
FIRST_PORT = 7789                 # DRBD's customary first port
LAST_PORT = 7999
RECONCILE_INTERVAL = 1.0
FENCE_RETRY = 1.0
PUBLISH_COALESCE = 0.2
CALL_TIMEOUT = 120.0
# Timers of daemon-created volumes: a silent peer is declared lost within
# ping_int + ping_timeout (protocol C writes wait that long on a dead link).
CONNECT_INT = 2.0
PING_INT = 2.0
PING_TIMEOUT = 2.0
PUBLISHED = ("role", "peer_role", "cstate", "disk", "peer_disk", "suspended", "gi",
             "fenced_by", "fencing", "out_of_sync_kib", "crashed_primary", "open_count",
             "verify")


def _addr(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def _now() -> int:
    return int(time.time())


class VolumeService:
    def __init__(self, node: str, state_dir: Path, cluster: ClusterService,
                 clusterlog: ClusterLog, *, reconcile_interval: float = RECONCILE_INTERVAL
                 ) -> None:
        self.node = node
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
        self._tasks.append(asyncio.create_task(self._reconcile_loop(), name="volumes-reconcile"))
        self._tasks.append(asyncio.create_task(self._publish_loop(), name="volumes-publish"))

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
                self._watcher = asyncio.create_task(self._watch_events(h), name="volumes-events")
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

    # ------------------------------------------------------------------ engine events
    async def _watch_events(self, h: supervisor.EngineHandle) -> None:
        """Follow the engine's state changes; notice when the engine goes away."""
        client: control.ControlClient | None = None
        try:
            client = await control.ControlClient.connect(h.control)
            async for event in client.stream("events"):
                self._on_event(event)
        except (OSError, ConnectionError, ValueError, control.ControlError) as exc:
            log.debug("engine event stream: %s", exc)
        finally:
            if client is not None:
                await client.close()
        if await supervisor.ping(h.control) is None:
            log.warning("volume engine (pid %d) is gone", h.pid)
            if h.process is not None:
                h.process.poll()           # reap it if it was our child
            if self.handle is h:
                self.handle = None
                self.statuses.clear()
        if self._watcher is asyncio.current_task():
            self._watcher = None
        self._wake.set()                  # the reconcile loop restarts it when needed

    async def engine_events(self) -> AsyncIterator[dict[str, Any]]:
        """The engine's event stream for one subscriber (the API's volume events).

        No engine is started for it: on a node without volumes (no engine) this
        raises VolumeFailure. The stream ends when the engine goes away.
        """
        h = self.handle
        if h is None or await supervisor.ping(h.control) is None:
            raise VolumeFailure("no volume engine runs on this node (it has no volumes)")
        client = await control.ControlClient.connect(h.control)
        try:
            async for event in client.stream("events"):
                yield event
        except (OSError, ConnectionError, ValueError, control.ControlError) as exc:
            log.debug("engine event stream (API subscriber): %s", exc)
        finally:
            await client.close()

    def _on_event(self, event: dict[str, Any]) -> None:
        name = event.get("name")
        if not isinstance(name, str):
            return
        if event.get("event") == "down":
            self.statuses.pop(name, None)
            self._queue_publish(name, {"up": False, "cstate": "Unconfigured"})
            return
        st = event.get("status")
        if not isinstance(st, dict):
            return
        self.statuses[name] = st
        self._queue_publish(name, {"up": True, **{k: st.get(k) for k in PUBLISHED}})
        ver = st.get("verify")
        if (event.get("event") == "change" and isinstance(ver, dict)
                and ver.get("role") == "VerifyS" and st.get("cstate") != "VerifyS"
                and self._verify_logged.get(name) != ver.get("time")):
            # An online verify started here ended: its outcome goes to the cluster log.
            self._verify_logged[name] = ver.get("time")
            task = asyncio.ensure_future(self._log_verify(name, ver))
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
        if st.get("fence") == "needed":
            self._start_fencing(name)

    async def _log_verify(self, name: str, ver: dict[str, Any]) -> None:
        found = int(ver.get("found_blocks") or 0)
        what = "stopped" if ver.get("stopped") else "lost its peer" if ver.get("lost") \
            else "finished"
        msg = (f"volume {name}: online verify on {self.node} {what} after "
               f"{ver.get('verified_kib')} KiB: {found} blocks out of sync"
               + (f" ({found * int(ver.get('block_size') or 4096) // 1024} KiB, first ranges "
                  f"{ver.get('ranges', [])[:5]}); disconnect/connect resyncs them"
                  if found else ""))
        log.log(logging.WARNING if found else logging.INFO, "%s", msg)
        with contextlib.suppress(Exception):
            await self.clusterlog.write(msg, tag="volume", pri="warning" if found else "info")

    # ------------------------------------------------------------------ publishing
    def _queue_publish(self, name: str, view: dict[str, Any]) -> None:
        if self._published.get(name) == view:
            return
        self._dirty[name] = view
        self._publish_wake.set()

    async def _publish_loop(self) -> None:
        while True:
            await self._publish_wake.wait()
            self._publish_wake.clear()
            await asyncio.sleep(PUBLISH_COALESCE)      # coalesce bursts of state changes
            if self.cluster.store is None or not self.cluster.is_member:
                self._dirty.clear()
                continue
            pending, self._dirty = self._dirty, {}
            for name, view in pending.items():
                try:
                    await self.record_store.publish_state(
                        name, self.node, {**view, "node": self.node, "time": _now()})
                    self._published[name] = view
                except (StoreUnavailable, VolumeFailure):   # (VolumeFailure: left the cluster)
                    self._dirty.setdefault(name, view)
            if self._dirty:
                await asyncio.sleep(FENCE_RETRY)
                self._publish_wake.set()

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

    # ------------------------------------------------------------------ create / delete
    async def create_volume(self, name: str, size: int | str, *, peer: str | None = None,
                            protocol: str = "C", fencing: str = Fencing.QUORUM.value,
                            resync_rate: int = 0, after_sb: dict[int, str] | None = None,
                            storage: str | None = None, vmid: int | None = None,
                            backing_dir: str | None = None, primary: bool = True,
                            task: Task | None = None, wait_peer: float = 30.0,
                            allow_two_primaries: bool = False,
                            options: dict[str, Any] | None = None) -> dict[str, Any]:
        """Create a volume on this node and its peer; this node becomes its Primary.

        The record goes to etcd first (the name, the port and the secret are
        claimed there atomically); the peer's daemon creates its copy from it.
        This node waits (up to `wait_peer` s) for the peer to connect, then
        forces itself Primary, which starts the initial full sync. `options`: more
        adjustable engine settings (config.ADJUSTABLE: the c_* of the dynamic resync
        controller, verify_alg, csums_alg), recorded like the others.
        """
        say = task.log if task is not None else (lambda m: log.info("%s", m))
        if not NAME_RE.match(name):
            raise VolumeFailure(f"invalid volume name '{name}'")
        try:
            size = parse_size(size)
            for n, policy in (after_sb or {}).items():
                parse_policy(policy, n, my_name=self.node, peer_name=peer or "")
        except (ConfigError, ValueError) as exc:
            raise VolumeFailure(str(exc)) from None
        if size <= 0 or size % 4096:
            raise VolumeFailure("size must be a positive multiple of 4 KiB")
        if protocol not in ("A", "B", "C"):
            raise VolumeFailure("protocol must be A, B or C")
        if allow_two_primaries and protocol != "C":
            raise VolumeFailure(f"allow-two-primaries requires protocol C (not {protocol})")
        Fencing(fencing)
        self._store()                    # (not in a cluster: refused before anything else)
        peer = peer or self.default_peer()
        if peer == self.node:
            raise VolumeFailure("a volume's peer must be another node")
        mine_ip, peer_ip = self._replication_ip(self.node), self._replication_ip(peer)
        secret = secrets.token_hex(32)
        rec: dict[str, Any] = {
            "name": name, "size": size, "protocol": protocol, "fencing": fencing,
            "resync_rate": int(resync_rate), "storage": storage, "vmid": vmid,
            "allow_two_primaries": bool(allow_two_primaries),
            "nodes": {self.node: {"address": mine_ip}, peer: {"address": peer_ip}},
            "primary": self.node if primary else None, "down": [], "creator": self.node,
            "created": _now(),
        }
        if backing_dir:
            for n in rec["nodes"].values():
                n["backing_dir"] = backing_dir
        for n, policy in (after_sb or {}).items():
            rec[f"after_sb_{n}pri"] = policy
        for key, value in (options or {}).items():
            if key not in ADJUSTABLE:
                raise VolumeFailure(f"{key}: not a volume setting")
            rec[key] = value
        port = await self.record_store.claim(rec, secret, FIRST_PORT, LAST_PORT)
        say(f"volume {name}: {size} bytes, replicated between {self.node} and {peer} "
            f"(protocol {protocol}, fencing {fencing}, port {port})")
        try:
            async with self.lock(name):
                await self.call("create", **self._engine_config(rec, secret))
                await self.call("up", name=name)
            self.records[name] = rec
            say(f"volume {name}: created and up on {self.node}; waiting for {peer}")
            connected = await self._wait_status(
                name, lambda st: st.get("cstate") in CONNECTED_STATES, wait_peer)
            if connected:
                say(f"volume {name}: connected to {peer}")
            else:
                say(f"volume {name}: {peer} did not connect within {wait_peer:.0f} s; it will "
                    f"catch up (full sync) when it does")
            if primary:
                st = await self.call("primary", name=name, force=True)
                say(f"volume {name}: Primary on {self.node} (disk {st['disk']}, peer disk "
                    f"{st['peer_disk']}): the initial sync to {peer} runs in the background")
        except BaseException as exc:
            say(f"volume {name}: creation failed ({exc}); removing it")
            with contextlib.suppress(Exception):
                await self.delete_volume(name, wait_peer=0.0)
            raise
        await self.clusterlog.write(f"replicated volume {name} created on {self.node} and "
                                    f"{peer}", tag="volume")
        return rec

    async def _wait_status(self, name: str, pred: Callable[[dict[str, Any]], bool],
                           timeout: float) -> bool:
        """Wait (engine events, with a status poll as a fallback) until `pred` holds."""
        deadline = time.monotonic() + timeout
        while True:
            st = await self.call("status", name=name)
            if pred(st):
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            await asyncio.sleep(min(0.1, left))

    async def delete_volume(self, name: str, *, task: Task | None = None,
                            wait_peer: float = 30.0) -> None:
        """Remove the volume and its data on both nodes (the peer's daemon deletes its copy)."""
        say = task.log if task is not None else (lambda m: log.info("%s", m))
        self._store()                    # (not in a cluster: refused before anything else)
        if self.exists_locally(name):
            # A guest that was just stopped may still be closing its NBD connection.
            if not await self._wait_status(name, lambda st: not st.get("open_count"), 5.0):
                st = await self.call("status", name=name)
                raise VolumeFailure(f"volume {name} is in use on {self.node} "
                                    f"({st['open_count']} NBD clients)")

        try:
            rec = await self.record_store.update(name, lambda old: {**old, "deleting": True})
        except VolumeFailure:
            if self.exists_locally(name):
                async with self.lock(name):
                    await self._remove_local(name)
                return
            raise
        async with self.lock(name):
            await self._remove_local(name)
            done = await self._ack_deletion(name)
        say(f"volume {name}: removed on {self.node}")
        peer = self.peer_of(rec)
        deadline = time.monotonic() + wait_peer
        while not done and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            done = not await self.record_store.exists(name)
        if not done:
            say(f"volume {name}: {peer} will remove its copy when it is back")
        else:
            say(f"volume {name}: removed on {peer}")
        self.records.pop(name, None)
        await self.clusterlog.write(f"replicated volume {name} removed", tag="volume")

    async def _remove_local(self, name: str) -> None:
        if not self.exists_locally(name):
            return
        listing = {v["name"]: v for v in await self.call("list")}
        if listing.get(name, {}).get("up"):
            await self.call("down", name=name)
        await self.call("delete", name=name, remove_data=True)
        self.statuses.pop(name, None)

    async def _ack_deletion(self, name: str) -> bool:
        """Note that this node's copy is gone; the last node removes every key. True if gone."""
        return await self.record_store.ack_deletion(name, self.node)

    async def _set_record(self, name: str, mutate: Callable[[dict[str, Any]], dict[str, Any]]
                          ) -> None:
        await self.record_store.update(name, mutate)

    # ------------------------------------------------------------------ reconciliation
    async def _reconcile_loop(self) -> None:
        while True:
            try:
                await self.reconcile()
            except asyncio.CancelledError:
                raise
            except StoreUnavailable as exc:
                self._warn("*", f"cluster store unavailable: {exc}")
            except Exception as exc:
                self._warn("*", f"reconcile failed: {exc}", exc_info=True)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.reconcile_interval):
                    await self._wake.wait()
            self._wake.clear()

    def _warn(self, name: str, message: str, **kw: Any) -> None:
        """Log a reconcile problem once, not every round."""
        if self._warned.get(name) != message:
            self._warned[name] = message
            log.warning("volume %s: %s", name, message, **kw)

    async def reconcile(self) -> None:
        """One round: make this node's engine match the cluster records naming it."""
        if self.cluster.store is None or not self.cluster.is_member:
            return
        records, marks = await self.record_store.of_node(self.node)
        self.records = records
        if not records and self.handle is None:
            return                       # nothing to serve here: no engine needed
        await self.ensure_engine()
        listing = {v["name"]: v for v in await self.call("list")}
        for name, rec in records.items():
            async with self.lock(name):
                try:
                    await self._reconcile_volume(name, rec, marks.get(name, {}),
                                                 listing.get(name))
                    self._warned.pop(name, None)
                except (VolumeFailure, StoreUnavailable) as exc:
                    self._warn(name, str(exc))

    async def _reconcile_volume(self, name: str, rec: dict[str, Any],
                                marks: dict[str, Any], local: dict[str, Any] | None) -> None:
        if rec.get("deleting"):
            if self.node not in rec.get("deleted", []):
                await self._remove_local(name)
                await self._ack_deletion(name)
                log.info("volume %s: removed on %s (deleted in the cluster)", name, self.node)
            return
        if local is None and self.exists_locally(name):
            # created since the listing (by create_volume, which held the lock)
            local = {"name": name, "up": (await self.call("status", name=name))
                     .get("cstate") != "Unconfigured"}
        if local is None:
            secret = await self.record_store.secret(name)
            if secret is None:
                raise VolumeFailure("the volume's secret is missing from the cluster")
            await self.call("create", **self._engine_config(rec, secret))
            log.info("volume %s: created on %s (peer %s)", name, self.node, self.peer_of(rec))
            local = {"name": name, "up": False}
        wanted = self.node_handlers()
        if self._handlers_applied.get(name) != wanted:
            # handlers.json changed (or first round since the daemon started).
            await self.call("set-handlers", name=name, **wanted)
            self._handlers_applied[name] = wanted
        wanted_settings = record_settings(rec)
        if not local["up"]:
            # The record's settings first (changed while this node was away): a handshake
            # with the old ones would end in "incompatible ... settings".
            if wanted_settings:
                await self._adjust_engine(name, wanted_settings)
            if self.node in rec.get("down", []):
                return
            await self.call("up", name=name)
        st = await self.call("status", name=name)
        have = st.get("settings") or {}
        diff = {k: v for k, v in wanted_settings.items() if have.get(k, v) != v}
        if diff:
            # `binome volume set` on the other node (or here before a restart): the
            # shared settings usually arrived over the link already; the rest come here.
            st = await self._adjust_engine(name, diff)
            log.info("volume %s: settings from the cluster record applied on %s: %s", name,
                     self.node, ", ".join(f"{k}={v!r}" for k, v in sorted(diff.items())))
        if (st["cstate"] == "StandAlone" and "incompatible" in
                str((st.get("peer") or {}).get("last_error") or "")):
            # The link gave up on settings that differed; the record is applied now, so
            # try again (the peer's loop does the same on its side).
            await self.call("connect", name=name)
            st = await self.call("status", name=name)
        connected = st["cstate"] in CONNECTED_STATES
        peer = self.peer_of(rec)
        mine = marks.get(self.node)
        if mine is not None and not connected and st["disk"] in ("UpToDate", "Consistent"):
            # The cluster recorded this copy Outdated: make the engine agree, so that
            # even a direct promotion attempt is refused.
            await self.call("outdated-by-peer", name=name, by=mine.get("by", peer))
            log.warning("volume %s: this copy was recorded Outdated by %s", name,
                        mine.get("by", peer))
        if (peer in marks and mine is None and st["cstate"] == "Connected"
                and st["disk"] == "UpToDate" and st["peer_disk"] == "UpToDate"):
            await self._clear_mark(name, peer)
        if (rec.get("primary") == self.node and st["role"] == "Secondary"
                and mine is None and st["disk"] in ("UpToDate", "Consistent")):
            try:
                await self._promote_locked(name, force=False)
                log.info("volume %s: promoted again on %s (its desired Primary)", name,
                         self.node)
            except VolumeFailure as exc:
                self._warn(name, f"not promoted: {exc}")

    async def _clear_mark(self, name: str, peer: str) -> None:
        """The peer's copy is back in sync with ours: it is no longer Outdated.

        Read the mark first, then the engine's state, then compare-and-swap: a
        mark written after our read (a new link loss) makes the swap fail.
        """
        marks, revision = await self.record_store.fencing_marks(name)
        if revision is None:
            return
        if peer not in marks or self.node in marks:
            return
        st = await self.call("status", name=name)
        if not (st["cstate"] == "Connected" and st["disk"] == st["peer_disk"] == "UpToDate"):
            return
        marks.pop(peer)
        if await self.record_store.swap_fencing_marks(name, marks, revision):
            log.info("volume %s: %s's copy is in sync again: Outdated mark cleared", name, peer)

    # ------------------------------------------------------------------ quorum fencing
    def _start_fencing(self, name: str) -> None:
        running = self._fencers.get(name)
        if running is not None and not running.done():
            return
        self._fencers[name] = asyncio.create_task(self._fence_loop(name),
                                                  name=f"fence-{name}")

    async def _fence_loop(self, name: str) -> None:
        """Retry the fence-peer handler while the engine waits for it."""
        while (self.statuses.get(name) or {}).get("fence") == "needed":
            try:
                async with self.lock(name):
                    if (self.statuses.get(name) or {}).get("fence") != "needed":
                        return
                    outcome = await self.fence_peer(name, reason="peer lost")
                log.info("volume %s: fence-peer: %s", name, outcome)
                return
            except FenceFailed as exc:
                self._warn(f"{name}/fence", f"writes stay suspended: {exc}")
            except VolumeFailure as exc:
                self._warn(f"{name}/fence", f"fence-peer failed: {exc}")
            await asyncio.sleep(FENCE_RETRY)

    async def fence_peer(self, name: str, *, reason: str) -> str:
        """Record the peer's copy Outdated in etcd (needs quorum), then tell the engine.

        Returns "outdated-peer", or "outdated-self" when the peer fenced this node
        first (the engine then fails the suspended writes). Raises FenceFailed
        without quorum. The caller holds the volume's lock.
        """
        self._store()                    # (not in a cluster: refused before anything else)
        if not (await self.cluster.fresh_view()).quorate:
            raise FenceFailed("no quorum: cannot record the peer's copy as Outdated")
        try:
            rec = await self.record(name, serializable=False)
            peer = self.peer_of(rec)
            for _ in range(10):
                marks, revision = await self.record_store.fencing_marks(name)   # linearizable
                if self.node in marks:
                    by = marks[self.node].get("by", peer)
                    await self.call("outdated-by-peer", name=name, by=by)
                    await self.clusterlog.write(
                        f"volume {name}: the copy on {self.node} was outdated by {by}; its "
                        f"suspended writes failed", tag="volume", pri="warning")
                    return "outdated-self"
                if peer not in marks:
                    marks[peer] = {"by": self.node, "time": _now(), "reason": reason}
                    if not await self.record_store.swap_fencing_marks(name, marks, revision):
                        continue
                    await self.clusterlog.write(
                        f"volume {name}: {peer}'s copy recorded Outdated by {self.node} "
                        f"({reason})", tag="volume", pri="warning")
                await self.call("peer-outdated", name=name, by=self.node)
                return "outdated-peer"
        except StoreUnavailable as exc:
            raise FenceFailed(f"cluster store unavailable ({exc}): cannot record the peer's "
                              f"copy as Outdated") from None
        raise FenceFailed("too many concurrent updates of the fencing record")

    # ------------------------------------------------------------------ role changes
    async def promote(self, name: str, *, force: bool = False,
                      task: Task | None = None) -> dict[str, Any]:
        async with self.lock(name):
            return await self._promote_locked(name, force=force, task=task)

    async def _promote_locked(self, name: str, *, force: bool,
                              task: Task | None = None) -> dict[str, Any]:
        say = task.log if task is not None else (lambda m: log.info("%s", m))
        st = await self.call("status", name=name)
        if st.get("cstate") == "Unconfigured":
            raise VolumeFailure(f"volume {name} is not up on {self.node}")
        if st["role"] == "Primary":
            return st
        quorum_fenced = st.get("fencing") == Fencing.QUORUM.value
        in_sync = (st["cstate"] in CONNECTED_STATES and st["disk"] == "UpToDate")
        if quorum_fenced and not in_sync:
            view = await self._marks_for_promotion(name, force)
            if not force:
                self._refuse_if_marked(name, view["outdated"])
            if st["peer_disk"] == "DUnknown" and not force:
                peer = self.peer_of(view["config"])
                peer_state = view["states"].get(peer) or {}
                if peer_state.get("role") == "Primary" and self.cluster.node_online(peer):
                    raise VolumeFailure(f"volume {name}: {peer} is Primary (and online); "
                                        f"demote it first")
                outcome = await self.fence_peer(name, reason=f"promotion of {self.node}")
                if outcome == "outdated-self":
                    raise VolumeFailure(f"volume {name}: the copy on {self.node} was "
                                        f"recorded Outdated by {peer}")
                say(f"volume {name}: {peer}'s copy recorded Outdated before the promotion")
        elif quorum_fenced and not force:
            # Our engine may still believe it is Connected while the peer, which noticed
            # the link loss first (it was writing), has already recorded this copy
            # Outdated with quorum and gone on writing alone: the mark wins.
            with contextlib.suppress(StoreUnavailable):
                marks, _ = await self.record_store.fencing_marks(name)
                self._refuse_if_marked(name, marks)
        if force:
            msg = (f"volume {name}: FORCED promotion on {self.node} "
                   f"(disk {st['disk']}, peer disk {st['peer_disk']}, {st['cstate']})")
            log.warning("%s", msg)
            say(msg)
            await self.clusterlog.write(msg, tag="volume", pri="warning")
        st = await self.call("primary", name=name, force=force)
        with contextlib.suppress(StoreUnavailable, VolumeFailure):
            await self._set_record(name, lambda r: {**r, "primary": self.node})
        return st

    def _refuse_if_marked(self, name: str, outdated: dict[str, Any]) -> None:
        mine = outdated.get(self.node)
        if mine is not None:
            raise VolumeFailure(
                f"volume {name}: the copy on {self.node} was recorded Outdated by "
                f"{mine.get('by')} ({mine.get('reason', '')}); refusing to promote stale "
                f"data (--force overrides)")

    async def _marks_for_promotion(self, name: str, force: bool) -> dict[str, Any]:
        """The fencing marks, read with quorum (a stale read could hide our own mark)."""
        try:
            view = await self.cluster_view(name)
            view["outdated"], _ = await self.record_store.fencing_marks(name)  # linearizable
            return view
        except StoreUnavailable:
            if force:
                return {"config": self.records.get(name, {"nodes": {}}), "outdated": {},
                        "states": {}}
            raise VolumeFailure(f"volume {name}: no quorum: cannot check that the copy on "
                                f"{self.node} is not Outdated; refusing to promote (a forced "
                                f"promotion without quorum needs standalone mode)") from None

    async def demote(self, name: str) -> dict[str, Any]:
        async with self.lock(name):
            st = await self.call("secondary", name=name)
            with contextlib.suppress(StoreUnavailable, VolumeFailure):
                await self._set_record(name, lambda r: {
                    **r, "primary": None if r.get("primary") == self.node else r.get("primary")})
            return st

    async def up(self, name: str) -> dict[str, Any]:
        async with self.lock(name):
            with contextlib.suppress(StoreUnavailable, VolumeFailure):
                await self._set_record(name, lambda r: {
                    **r, "down": [n for n in r.get("down", []) if n != self.node]})
            return await self.call("up", name=name)

    async def down(self, name: str) -> None:
        async with self.lock(name):
            with contextlib.suppress(StoreUnavailable, VolumeFailure):
                await self._set_record(name, lambda r: {
                    **r, "down": sorted(set(r.get("down", [])) | {self.node}),
                    "primary": None if r.get("primary") == self.node else r.get("primary")})
            await self.call("down", name=name)

    async def resize_volume(self, name: str, size: int | str) -> dict[str, Any]:
        """Grow a volume on both nodes (the engine grows the peer's copy first over the
        replication link; it must be Connected), then record the new size."""
        try:
            size = parse_size(size)
        except ConfigError as exc:
            raise VolumeFailure(str(exc)) from None
        size = (size + 4095) // 4096 * 4096
        async with self.lock(name):
            st = await self.call("resize", name=name, size=size)
            await self._set_record(name, lambda r: {**r, "size": max(int(r["size"]), size)})
        return st

    async def _adjust_engine(self, name: str, changes: dict[str, Any], *,
                             dry_run: bool = False) -> dict[str, Any]:
        try:
            return await self.call("adjust", name=name, dry_run=dry_run, **changes)
        except VolumeFailure as exc:
            text = str(exc)
            key = text.split(":", 1)[0]
            raise SettingRefused(text, key if key in ADJUSTABLE else None) from None

    async def adjust_volume(self, name: str, changes: dict[str, Any]) -> dict[str, Any]:
        """Change settings of a volume (drbdadm adjust) on this node and its peer.

        This node's engine checks first (dry run: the values and DRBD's rules for
        its current state), then the record changes (a compare-and-swap), then the
        engine applies it live: the settings both sides must agree on reach the
        peer's engine over the replication link while connected. The peer's daemon
        makes its engine match the record in its reconcile loop (the only way while
        disconnected, and for the resync controller's settings, which each side
        keeps for itself). The record first: the peer's loop must never see an
        engine newer than the record and turn it back. If the engine then refuses
        (the peer refused), the record gets its old values back.
        Returns {"changed": {setting: [old, new]}, "settings", "status"}.
        """
        unknown = set(changes) - set(ADJUSTABLE)
        if unknown:
            raise SettingRefused(f"{sorted(unknown)[0]}: not a volume setting",
                                 sorted(unknown)[0])
        async with self.lock(name):
            rec = await self.record(name, serializable=False)
            if rec.get("deleting"):
                raise VolumeFailure(f"volume {name} is being deleted")
            if self.node not in rec.get("nodes", {}):
                raise VolumeFailure(f"volume {name} has no copy on {self.node}")
            dry = await self._adjust_engine(name, changes, dry_run=True)
            old = {k: rec.get(k) for k in changes}
            await self._set_record(name, lambda r: {**r, **changes})
            try:
                res = await self._adjust_engine(name, changes)
            except VolumeFailure:
                def undo(r: dict[str, Any]) -> dict[str, Any]:
                    if all(r.get(k) == v for k, v in changes.items()):
                        r.update({k: v for k, v in old.items()})
                        for k in [k for k, v in old.items() if v is None]:
                            r.pop(k, None)
                    return r
                with contextlib.suppress(VolumeFailure, StoreUnavailable):
                    await self._set_record(name, undo)
                raise
            self.records[name] = {**rec, **changes}
        # What changed against this engine before (the peer's loop may have brought the
        # shared settings over the link first: then the engine's own answer is empty).
        changed = dry.get("changed", {}) or res.get("changed", {})
        res = {**res, "changed": changed}
        if changed:
            await self.clusterlog.write(
                f"volume {name}: settings changed on {self.node}: " + ", ".join(
                    f"{k} {a} -> {b}" for k, (a, b) in sorted(changed.items())), tag="volume")
        self._wake.set()            # (the peer's loop wakes on its own: every second)
        return res

    async def standalone(self, name: str, enable: bool, task: Task | None = None
                         ) -> dict[str, Any]:
        """Explicit standalone mode: no quorum fencing on this node (split-brain policies)."""
        async with self.lock(name):
            fencing = Fencing.DONT_CARE.value
            if not enable:
                fencing = self.records.get(name, {}).get("fencing", Fencing.QUORUM.value)
            st = await self.call("set-fencing", name=name, fencing=fencing)
        msg = (f"volume {name}: standalone mode {'ON' if enable else 'off'} on {self.node} "
               f"(fencing {fencing})" + (": writes continue without quorum; split-brain "
                                         "policies decide at the next connection"
                                         if enable else ""))
        log.warning("%s", msg)
        if task is not None:
            task.log(msg)
        await self.clusterlog.write(msg, tag="volume", pri="warning" if enable else "info")
        return st

    # ------------------------------------------------------------------ queries
    async def local_statuses(self) -> list[dict[str, Any]]:
        """Every volume of this node's engine, with its status (without starting an engine)."""
        if self.handle is None and not self._has_local_volumes():
            return []
        out = []
        for v in await self.call("list"):
            out.append(await self.call("status", name=v["name"]))
        return out
