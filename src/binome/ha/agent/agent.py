"""`HaAgent`: the CRM and the LRM of one node inside `binomed` (role `node`).

Loops:

- **heartbeat** (every `keepalive_interval`): renews the node lease itself
  (the send time of a successful renewal is `renewed_at`, what the watchdog
  deadline counts from), then rewrites `/binome/ha/heartbeat/<node>` bound to
  that lease (the CRM's proof of life), then pushes the watchdog deadline to
  `renewed_at + self_fence_deadline` if the LRM has it armed. It runs in a
  **thread of its own** (`ha-keepalive`, with its own event loop and etcd
  client, raised to real-time round-robin priority when allowed, like
  corosync's and sbd's): nothing the daemon's event loop does (a guest boot's
  QMP traffic, a resync's bookkeeping, a blocking call, a long JSON document)
  can delay a renewal or the watchdog's petting and get a healthy node
  fenced. It logs every renewal later than 1.5 intervals, and a summary of
  the renewal gaps and latencies every `BINOME_HA_RENEWAL_REPORT` seconds
  (default 300); a monitor on the main loop logs any stall over 0.5 s, so a
  late renewal can be told apart from a blocked daemon;
- **rounds** (every `manager_round`, when a job finishes, and woken by the
  watch): refresh -> `Crm.step()` -> commit, then refresh -> `Lrm.step()` ->
  commit (`ha.agent.etcd_env`);
- **watch**: one etcd watch over what a round reads (`ha.agent.wake`); a
  relevant change (a heartbeat key gone or back, a manager or LRM status, a
  command, the resources, a volume's disk state...) wakes the rounds after a
  short debounce instead of waiting for the next periodic round. Broken, it is
  re-created with backoff; the periodic round is the fallback meanwhile.
  `BINOME_HA_WATCH=0` in binomed's environment turns it off (measurements).

Each loop is a `binome.loops.run_periodic` (cancellation, failure logging, backoff);
`stop()` ends them with `binome.loops.stop_tasks`.

The watchdog is `binome.fence.watchdog.Watchdog` (its supervisor process,
state file in the node's run dir); fencing uses the fence device configured
in `/binome/ha/fence/<node>` when there is one, and the watchdog guarantee
otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Iterator
from typing import TYPE_CHECKING, Any

from binome.fence.watchdog import Watchdog
from binome.guest.errors import GuestFailure
from binome.ha.agent import lease_bridge
from binome.ha.agent.availability import AvailabilityRecorder
from binome.ha.agent.etcd_env import EtcdEnv, vmid_of
from binome.ha.agent.executor import Executor
from binome.ha.agent.fencer import Fencer
from binome.ha.agent.keeper_link import KeeperLink
from binome.ha.agent.lease_bridge import LeaseBridge, LeaseRecord
from binome.ha.agent.shutdown import ShutdownDetector
from binome.ha.agent.stats import HaStats
from binome.ha.agent.wake import WATCH_PREFIXES, Debouncer, wakes_rounds
from binome.ha.crm import Crm
from binome.ha.env import EnvUnavailable
from binome.ha.lrm import Lrm
from binome.ha.model import LrmState, NodeState, RequestedState
from binome.ha.timers import HaTimers
from binome.loops import Backoff, run_periodic, stop_tasks
from binome.store import keys
from binome.store.client import Store, StoreUnavailable

if TYPE_CHECKING:
    from binome.cluster.cluster import ClusterService
    from binome.config import NodeConfig
    from binome.guest.guests import GuestService
    from binome.storage.manager import StorageManager
    from binome.store.client import Store
    from binome.tasks.clusterlog import ClusterLog
    from binome.tasks.manager import TaskManager

log = logging.getLogger("binome.ha")

LOG_LEVELS = {"info": logging.INFO, "warn": logging.WARNING, "err": logging.ERROR,
              "alert": logging.CRITICAL}
SHUTDOWN_WAIT = 120.0   # below systemd's stop timeout if binomed.service sets 150 s
# a plain binomed restart waits this long for the CRM to freeze this node's services
RESTART_WAIT = 10.0
CLUSTERLOG_PRI = {"warn": "warning", "err": "err", "alert": "alert"}
HEARTBEAT_RETRY = 0.2   # seconds between attempts after a failed renewal
HEARTBEAT_MIN_PAUSE = 0.02   # between two renewals, however late the last one was
LATE_FACTOR = 1.5            # a renewal gap over this many intervals is logged
LOOP_PROBE = 0.25            # the main-loop stall monitor's period
LOOP_STALL = 0.5             # a main-loop stall longer than this is logged
ROUND_MIN_PAUSE = 0.05       # between two rounds, however long the last one took
INCOMING_ARM_WAIT = 5.0      # an incoming HA guest waits this long for the arm here
INCOMING_ARM_POLL = 0.02
INCOMING_ARM_REWAKE = 0.5    # ... its rounds woken this often meanwhile
PROBE_WAKE_MIN = 0.05        # a due power probe never makes the rounds a busy loop
WATCH_RETRY_MIN, WATCH_RETRY_MAX = 0.5, 5.0   # backoff before re-creating a broken watch


def raise_priority() -> str:
    """Real-time round-robin (lowest RT priority) for the calling thread, else nice -10,
    else nothing: a renewal must get the CPU even when guests and resyncs take it all
    (corosync and sbd run real-time for the same reason). Returns what was obtained."""
    try:
        os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(1))   # 0: this thread
        return "real-time round-robin priority"
    except (OSError, AttributeError):
        pass
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), -10)
        return "nice -10"
    except OSError:
        return "normal priority (not allowed to raise it)"


class RenewalStats:
    """Gaps between successful lease renewals and their latency (thread-safe enough:
    appended by the keeper thread, read whole)."""

    def __init__(self, interval: float, keep: int = 1200) -> None:
        self.interval = interval
        self.gaps: deque[float] = deque(maxlen=keep)
        self.latencies: deque[float] = deque(maxlen=keep)
        self._last: float | None = None
        self._report_every = float(os.environ.get("BINOME_HA_RENEWAL_REPORT", "300"))
        self._reported = time.monotonic()
        # bench/renewal.py: every renewal as "<wall time> <gap> <latency>" in this file
        self._trace = os.environ.get("BINOME_HA_RENEWAL_TRACE") or None

    def renewed(self, sent: float, latency: float, node: str) -> None:
        gap = None if self._last is None else sent - self._last
        self._last = sent
        self.latencies.append(latency)
        if self._trace is not None:
            with contextlib.suppress(OSError), open(f"{self._trace}.{node}", "a") as f:
                f.write(f"{time.time():.3f} {gap if gap is not None else 0:.4f} "
                        f"{latency:.4f}\n")
        if gap is not None:
            self.gaps.append(gap)
            if gap > LATE_FACTOR * self.interval:
                log.warning("%s: lease renewal late: %.2f s since the previous one (this "
                            "renewal took %.3f s)", node, gap, latency)
        now = time.monotonic()
        if now - self._reported >= self._report_every:
            self._reported = now
            log.info("%s: lease renewals: %s", node, self.summary())

    def summary(self) -> str:
        gaps, lat = sorted(self.gaps), sorted(self.latencies)
        if not gaps or not lat:
            return "none yet"

        def pct(values: list[float], q: float) -> float:
            return values[min(len(values) - 1, int(q * len(values)))]
        return (f"{len(lat)} renewals, gap median {statistics.median(gaps):.3f} s, "
                f"p99 {pct(gaps, 0.99):.3f} s, max {gaps[-1]:.3f} s; latency median "
                f"{statistics.median(lat) * 1000:.1f} ms, p99 {pct(lat, 0.99) * 1000:.1f} ms, "
                f"max {lat[-1] * 1000:.1f} ms")


class HaAgent:
    def __init__(self, config: NodeConfig, cluster: ClusterService,
                 guests: GuestService | None, storages: StorageManager,
                 tasks: TaskManager, clusterlog: ClusterLog,
                 timers: HaTimers | None = None,
                 notify: Callable[..., None] | None = None,
                 bridge: LeaseBridge | None = None) -> None:
        """`notify(kind, **fields)`: the node's notification emitter (never blocks);
        the HA agent hands it the events its CRM decided, once committed. `bridge`:
        what kept the lease alive since this daemon started after a crash of the last
        one (`lease_bridge`); stopped before this agent's first watchdog write."""
        self.config = config
        self._notify = notify
        self.node = config.name
        self.cluster = cluster
        self.guests = guests
        # replicated disks are activated on start, given up on stop, taken over from a
        # fenced node and released after this node was fenced
        self.storages = storages
        self.tasks = tasks
        self.clusterlog = clusterlog
        t = config.timers
        self.timers = timers or HaTimers(lease_ttl=float(t.lease_ttl),
                                         keepalive_interval=float(t.keepalive_interval))
        self.timers.validate()
        # no store call may block a round longer than this
        self.io_timeout = max(0.2, min(self.timers.keepalive_interval,
                                       self.timers.manager_round) * 0.8)
        run = config.run_dir
        self.qemu_run_dir = run / "qemu"
        # The supervisor kills the guests itself at the deadline; with a hardware
        # watchdog (used when the device exists) the machine also resets.
        device = None if config.watchdog_device == "none" else config.watchdog_device
        self.watchdog = Watchdog(run / "ha-watchdog.state", run / "ha-watchdog.pid",
                                 device=device)
        self._bridge = bridge
        self._lease_record_path = lease_bridge.record_path(run)
        self._lease_record: LeaseRecord | None = None
        self.armed_sids: set[str] = set()
        self.rebooting_vmids: set[int] = set()
        self.executor = Executor(self)
        self.stats = HaStats()     # fences and recoveries done here, for the metrics
        self.fencer = Fencer(self, self.stats)
        self.crm_env = EtcdEnv(self, "crm")
        self.availability = AvailabilityRecorder(lambda: self.store, self.notify,
                                                 timeout=self.io_timeout)
        self.lrm_env = EtcdEnv(self, "lrm")
        self.crm = Crm(self.crm_env, self.timers)
        self.lrm = Lrm(self.lrm_env, self.timers)
        self.renewed_at: float | None = None
        self._hb_lease: int | None = None
        self._hb_ok = False
        # the keeper thread's own etcd clients (local member; another while it is down)
        self._hb_link = KeeperLink(self.node)
        self._hb_thread: threading.Thread | None = None
        # watchdog writes come from the LRM (main loop) and the keeper thread: one at a
        # time, and never an arm after the LRM's disarm
        self._watchdog_lock = threading.Lock()
        self.renewals = RenewalStats(self.timers.keepalive_interval)
        self._wake = asyncio.Event()
        self._debounce = Debouncer()
        self._debounce_handle: asyncio.TimerHandle | None = None
        self._probe_handle: asyncio.TimerHandle | None = None   # wakes the CRM for a probe
        # host shutdown/reboot detection (logind, or systemd asked on SIGTERM)
        self.shutdown = ShutdownDetector(on_request=self.wake)
        self._shutdown_ready = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []
        self._stopping = False
        self._restarting = False   # a plain daemon stop: the LRM's `restart` mode
        self._pending_logs: list[asyncio.Task[dict[str, Any]]] = []
        self._armed_in_life = False   # this daemon's LRM armed the watchdog at least once
        if guests is not None:
            guests.set_incoming_guard(self.protect_incoming)

    # ------------------------------------------------------------ facts for the envs

    @property
    def store(self) -> Store | None:
        return self.cluster.store

    @property
    def lease_id(self) -> int | None:
        return self.cluster.lease_id

    @property
    def lease_valid(self) -> bool:
        """Valid once the heartbeat key bound to the current lease exists."""
        return self._hb_ok and self._hb_lease is not None and self._hb_lease == self.lease_id

    def guest_nodes(self) -> list[str]:
        # Evicted nodes (`cluster expected 1` on the other side) stay HA nodes: their
        # services must still be fenced away from them (device or lease expiry) before
        # they are recovered; a node the CRM no longer knows would leave them in `fence`.
        return sorted(name for name, rec in self.cluster.node_records.items()
                      if rec.get("role", "node") == "node")

    def log(self, level: str, source: str, message: str) -> None:
        log.log(LOG_LEVELS.get(level, logging.INFO), "%s: %s", source, message)
        if level == "info" and message.startswith(("status change", "mode change")):
            return   # the daemons' own state changes: node log only, not the cluster log
        kw: dict[str, Any] = {"tag": "ha"}
        if level in CLUSTERLOG_PRI:
            kw["pri"] = CLUSTERLOG_PRI[level]
        with contextlib.suppress(RuntimeError):
            t = asyncio.get_running_loop().create_task(
                self.clusterlog.write(f"{source}: {message}", **kw))
            self._pending_logs.append(t)
            self._pending_logs = [p for p in self._pending_logs if not p.done()]

    def notify(self, kind: str, **fields: Any) -> None:
        """Pass a committed decision's notification on; never raises into a round."""
        if self._notify is None:
            return
        try:
            self._notify(kind, **fields)
        except Exception:
            log.exception("notification %s not emitted", kind)

    def wake(self) -> None:
        self._wake.set()

    def stop_timeout(self, sid: str, default: float) -> float:
        """How long an HA stop lets the guest shut down (the hint of a qm stop/shutdown)."""
        cfg = (self.lrm_env.resources_doc().get(sid) or {})
        value = cfg.get("stop_timeout")
        return float(value) if isinstance(value, int | float) and value >= 0 else default

    @contextlib.contextmanager
    def rebooting(self, vmid: int) -> Iterator[None]:
        """An API reboot of an HA guest: its stopped half is not a crash to restart."""
        self.rebooting_vmids.add(vmid)
        try:
            yield
        finally:
            self.rebooting_vmids.discard(vmid)

    # ------------------------------------------------------------ watchdog

    def _bridge_done(self) -> None:
        """From the first watchdog write of this agent on, the watchdog is the LRM's."""
        if self._bridge is not None:
            self._bridge.stop()
            self._bridge = None

    def watchdog_arm(self, deadline: float, sids: Collection[str]) -> None:
        self._bridge_done()
        with self._watchdog_lock:
            self._arm_locked(deadline, sids)
            self.armed_sids = set(sids)
            self._armed_in_life = True
        if self.watchdog.running_pid() is None:
            asyncio.get_running_loop().create_task(self._ensure_watchdog())

    def _arm_locked(self, deadline: float, sids: Collection[str]) -> None:
        """Write the armed state for `sids` (the caller holds `_watchdog_lock`)."""
        vmids = [v for v in (vmid_of(s) for s in sids) if v is not None]
        self.watchdog.arm_sync(deadline, vmids, self.qemu_run_dir)

    def watchdog_disarm(self) -> None:
        self._bridge_done()
        with self._watchdog_lock:
            self.watchdog.disarm_sync()
            self.armed_sids = set()

    def watchdog_fired(self) -> bool:
        # once per fire: a fire the LRM handled stays latched in the supervisor's report
        # until its next tick after the LRM armed again (`Watchdog.new_fire`)
        return self.watchdog.new_fire()

    def _release_inherited_fire(self) -> None:
        """Until this life's LRM first arms: a fire latched under an earlier life's
        deadline is released (`Watchdog.release_inherited_fire`: its kills stand, but it
        would kill a guest this life runs lawfully later, such as one migrated in)."""
        if self._armed_in_life or not self.watchdog.read_status().fired:
            return
        self._bridge_done()     # the bridge ends on a fire anyway: its guests are dead
        with self._watchdog_lock:
            if self._armed_in_life:
                return
            fire = self.watchdog.release_inherited_fire()
        if fire is not None:
            killed = ", ".join(f"VM {k.get('vmid')}" for k in fire.killed) or "nothing"
            self.log("warn", f"{self.node}/lrm",
                     f"the watchdog fired before this daemon armed it (an earlier life's "
                     f"deadline; it killed {killed}): released, so that it cannot kill a "
                     f"guest this node runs later")

    async def watchdog_protects(self, vmid: int, timeout: float) -> bool:
        """Whether the supervisor holds a live deadline for guest `vmid`, waiting up to
        `timeout` for it to read the last arm (it does every tick, 0.1 s)."""
        deadline = time.monotonic() + timeout
        while not self.watchdog.read_status().protects(vmid):
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(INCOMING_ARM_POLL)
        return True

    async def protect_incoming(self, vmid: int) -> None:
        """Before an incoming live migration starts QEMU here (`GuestContext.
        incoming_guard`): an HA guest may only run on this node under this node's armed
        watchdog. The CRM's `migrate` makes both LRMs act in their next rounds, the
        source's migration and this node's arm; a guest resumed here first would run
        unguarded (the CRM could take this node's lease expiry for proof that it died)
        and, under a latched fire, be killed by the supervisor. Waits for the arm (its
        round woken) and the supervisor's acknowledgement, up to INCOMING_ARM_WAIT;
        refuses after that: the source keeps the guest."""
        sid = f"vm:{vmid}"
        began = time.monotonic()
        deadline = began + INCOMING_ARM_WAIT
        woken = began
        while True:
            try:
                resource = self.lrm_env.read_resources().get(sid)
            except EnvUnavailable:
                resource = None
                refreshed = False
            else:
                refreshed = True
            if refreshed and (resource is None or resource.state == RequestedState.IGNORED):
                return      # not an HA guest here: no watchdog involved
            if refreshed and sid in self.armed_sids and await self.watchdog_protects(vmid, 0):
                waited = time.monotonic() - began
                if waited > INCOMING_ARM_POLL:
                    log.info("%s: incoming %s waited %.0f ms for this node's watchdog arm",
                             self.node, sid, waited * 1000)
                return
            if time.monotonic() >= deadline:
                lrm = f"LRM {self.lrm.state}" + ("" if refreshed else ", HA state not read")
                raise GuestFailure(f"HA guest {sid}: the watchdog of {self.node} does not "
                                   f"protect it yet ({lrm}); not receiving it")
            if time.monotonic() >= woken:     # a round now, not at its period
                self.wake()
                woken = time.monotonic() + INCOMING_ARM_REWAKE
            await asyncio.sleep(INCOMING_ARM_POLL)

    async def _ensure_watchdog(self) -> None:
        try:
            await self.watchdog.ensure_running()
        except Exception as exc:
            self.log("alert", f"{self.node}/lrm", f"watchdog supervisor not running: {exc}")

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        # the watchdog supervisor is started by the first round that sees HA resources
        await self.shutdown.start()
        self._loops = [asyncio.create_task(self._round_loop(), name="ha-rounds"),
                       asyncio.create_task(self._loop_monitor(), name="ha-loop-monitor"),
                       asyncio.create_task(self.availability.run(), name="ha-availability")]
        if os.environ.get("BINOME_HA_KEEPER_THREAD", "1") == "0":
            # the former way, on the daemon's event loop: kept for bench/renewal.py's
            # side-by-side measurement only
            self._loops.append(asyncio.create_task(self._keeper_main(), name="ha-heartbeat"))
        else:
            self._hb_thread = threading.Thread(target=self._keeper_thread,
                                               name="ha-keepalive", daemon=True)
            self._hb_thread.start()
        if os.environ.get("BINOME_HA_WATCH", "1") != "0":
            self._loops.append(asyncio.create_task(self._watch_loop(), name="ha-watch"))

    async def stop(self) -> None:
        """Apply the shutdown policy if the host goes down (else the LRM's restart mode),
        stop the loops, hand the manager lock over and announce the lease release.

        A plain daemon stop (no host shutdown detected: `systemctl restart
        binomed`, an upgrade) leaves the guests running: the LRM asks the CRM
        to freeze this node's services and, once it has, releases the
        watchdog (`_daemon_restart`). Without that acknowledgement (no quorum)
        the watchdog stays armed, and the guests are killed at its deadline
        unless binomed is back in time.
        """
        if self._loops:
            kind = await self.shutdown.probe()
            if kind is not None:
                await self._host_shutdown(kind)
            else:
                await self._daemon_restart()
        self._stopping = True
        await stop_tasks(self._loops)
        self._loops = []
        if self._hb_thread is not None:   # ends after its current pause (<= an interval)
            await asyncio.to_thread(self._hb_thread.join, 2 * self.timers.keepalive_interval + 1)
            self._hb_thread = None
        # a clean stop revokes the lease next: nothing for a next daemon to bridge
        self._bridge_done()
        lease_bridge.forget_record(self._lease_record_path)
        if self._debounce_handle is not None:
            self._debounce_handle.cancel()
        if self._probe_handle is not None:
            self._probe_handle.cancel()
        await self.fencer.stop()
        await self.executor.cancel_all()
        if not self.armed_sids and self.watchdog.running_pid() is not None:
            with contextlib.suppress(Exception):
                await self.watchdog.stop()
        with contextlib.suppress(Exception):
            if await self.crm_env.refresh():
                self.crm.shutdown()
                await self.crm_env.commit()
        store, lease = self.store, self.lease_id
        if store is not None and lease is not None:
            # the cluster service revokes the lease next: say so, or the CRM would
            # take the revoke for an expiry (and trust a watchdog still counting down)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(store.put(keys.ha_released(self.node), {"lease": lease}),
                                       1.0)
        await self.shutdown.stop()

    def shutdown_request(self) -> str | None:
        return self.shutdown.request or ("restart" if self._restarting else None)

    def shutdown_ready(self) -> None:
        """The LRM applied the shutdown policy: nothing of HA runs here any more."""
        self._shutdown_ready.set()
        asyncio.get_running_loop().create_task(self.shutdown.release())

    async def prepare_host_shutdown(self, kind: str, timeout: float) -> bool:
        """A host reboot/power-off asked through the API (`POST /nodes/{node}/status`):
        the detector learns it now, before the host stops binomed, so the LRM applies
        the shutdown policy (freeze, stop, fail over or migrate) while binomed, etcd and
        the network are all still up. True once the LRM said it is ready; the SIGTERM
        that follows then finds the policy applied (see `stop`)."""
        self.shutdown.announce(kind, "requested through the API")
        self.log("info", f"{self.node}/lrm", f"host {kind} requested: applying the HA "
                                              "shutdown policy")
        self.wake()
        try:
            await asyncio.wait_for(asyncio.shield(self._shutdown_ready.wait()), timeout)
        except TimeoutError:
            return False
        return True

    async def _daemon_restart(self) -> None:
        """Keep the rounds going until the LRM has its services frozen and the watchdog
        released (at most RESTART_WAIT); the guests keep running meanwhile."""
        if not self.lrm.armed:
            return   # nothing protected here, nothing to release: no guest at stake
        self.log("info", f"{self.node}/lrm", "binomed stops, the host stays up: freezing "
                                              "this node's HA services, guests left running")
        self._restarting = True
        self.wake()
        began = time.monotonic()
        try:
            await asyncio.wait_for(self._shutdown_ready.wait(), RESTART_WAIT)
        except TimeoutError:
            wd = self.watchdog.read_status()
            left = f"in {wd.remaining:.1f} s" if wd.remaining is not None else "at its deadline"
            guests = ", ".join(sorted(self.armed_sids)) or "none"
            self.log("warn", f"{self.node}/lrm",
                     f"binomed restart: the CRM did not freeze this node's services within "
                     f"{RESTART_WAIT:.0f} s (no quorum?); the watchdog stays armed, so the HA "
                     f"guests here ({guests}) will be killed {left} unless binomed is back "
                     "and renews its lease before")
            return
        self.log("info", f"{self.node}/lrm",
                 f"binomed restart: services frozen and watchdog released after "
                 f"{time.monotonic() - began:.1f} s; guests left running")

    async def _host_shutdown(self, kind: str) -> None:
        """Keep the rounds going until the LRM is ready for the host to go down."""
        self.log("info", f"{self.node}/lrm", f"host {kind} detected: applying the HA "
                                              "shutdown policy before stopping")
        self.wake()
        try:
            await asyncio.wait_for(self._shutdown_ready.wait(), SHUTDOWN_WAIT)
        except TimeoutError:
            self.log("err", f"{self.node}/lrm", f"shutdown policy not done after "
                                                 f"{SHUTDOWN_WAIT:.0f}s; stopping anyway")
            return
        if not self.executor.running(None):
            # every HA guest here is stopped: a watchdog left armed would kill them
            # when this node starts them again (same boot: a daemon-only "reboot")
            self.watchdog_disarm()

    # ------------------------------------------------------------ loops

    def _keeper_thread(self) -> None:
        """The `ha-keepalive` thread: the heartbeat loop on an event loop of its own."""
        policy = raise_priority()
        log.info("%s: lease keeper thread started (%s)", self.node, policy)
        try:
            asyncio.run(self._keeper_main())
        except Exception:   # never silent: without renewals the watchdog fires
            log.exception("%s: lease keeper thread failed", self.node)

    async def _keeper_main(self) -> None:
        try:
            await self._heartbeat_loop()
        finally:
            await self._hb_link.close()

    async def _heartbeat_loop(self) -> None:
        seq = itertools.count()

        async def step() -> float | None:
            ok = await self._heartbeat(next(seq))   # a failed attempt uses its number too
            # Renewals keep a fixed cadence from their send time; a missed one (an etcd
            # leader election, a slow member) is retried almost at once, because the
            # self-fence deadline counts from the last *successful* renewal and one
            # full keepalive_interval of waiting would eat most of the margin.
            return None if ok else HEARTBEAT_RETRY

        await run_periodic("HA heartbeat", step, lambda: self.timers.keepalive_interval,
                           logger=log, quiet=(StoreUnavailable,), fixed_rate=True,
                           min_pause=HEARTBEAT_MIN_PAUSE,
                           backoff=Backoff(HEARTBEAT_RETRY, HEARTBEAT_RETRY),
                           stop_when=lambda: self._stopping)

    async def _heartbeat(self, seq: int) -> bool:
        lease = self.lease_id
        store = await self._hb_link.store(self.store)
        if store is None or lease is None:
            return False
        # after a failed attempt, the retry goes to every member at once (KeeperLink)
        retry = self._hb_link.failures > 0
        stores = self._hb_link.fanout(store) if retry else [store]
        # (its wall clock: the CRM compares the nodes' clocks, ha.agent.clock_skew)
        beat = {"seq": seq, "time": round(time.time(), 3)}
        sent = time.monotonic()
        try:
            via, ttl, rev = await self._renew_first(stores, lease, beat)
        except StoreUnavailable:
            await self._hb_link.failed()
            raise
        if ttl <= 0:
            self._hb_ok = False
            return False
        if rev is None:
            return False
        lrm = self.lrm
        with self._watchdog_lock:
            self.renewed_at, self._hb_lease, self._hb_ok = sent, lease, True
            if lrm.armed and lrm.state == LrmState.ACTIVE and self.armed_sids:
                self._arm_locked(sent + self.timers.self_fence_deadline, self.armed_sids)
        self.renewals.renewed(sent, time.monotonic() - sent, self.node)
        await self._hb_link.renewed_through(via)
        bridge = self._bridge
        if bridge is not None and bridge.guarding is False:
            bridge.stop("the HA agent renews the lease (no armed watchdog to carry)")
        self._save_lease_record(lease)
        return True

    async def _renew_through(self, store: Store, lease: int, beat: dict[str, Any],
                             ) -> tuple[Store, int, int | None]:
        """Refresh the lease and write the heartbeat bound to it, through `store`:
        (store, the lease's TTL, the revision; None if the write did not apply)."""
        ttl = await store.refresh_lease(lease, timeout=self.io_timeout)
        if ttl <= 0:
            return store, ttl, None
        rev = await store.txn([], {keys.ha_heartbeat(self.node): (beat, lease)}, (),
                              self.io_timeout)
        return store, ttl, rev

    async def _renew_first(self, stores: list[Store], lease: int, beat: dict[str, Any],
                           ) -> tuple[Store, int, int | None]:
        """Renew through all of `stores` at once; the first that renews (or says the lease
        is gone: the leader's word, final) wins, the others are cancelled.
        StoreUnavailable when none could."""
        if len(stores) == 1:
            return await self._renew_through(stores[0], lease, beat)
        pending = {asyncio.ensure_future(self._renew_through(s, lease, beat))
                   for s in stores}
        error: BaseException | None = None
        try:
            while pending:
                done, pending = await asyncio.wait(pending,
                                                   return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    exc = task.exception()
                    if exc is None:
                        result = task.result()
                        if result[1] <= 0 or result[2] is not None:
                            return result
                    elif isinstance(exc, StoreUnavailable):
                        error = exc
                    else:
                        raise exc
            raise StoreUnavailable(f"no etcd member renewed the lease ({error})")
        finally:
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)

    def _save_lease_record(self, lease: int) -> None:
        """What a restarted daemon needs to bridge its lease (`lease_bridge`): saved when
        it changed, and at least every lease_ttl / 2 so that its age bounds the lease's."""
        paths, t = self.cluster.paths, self.timers
        record = LeaseRecord(
            node=self.node, lease=lease, heartbeat_key=keys.ha_heartbeat(self.node),
            urls=self._hb_link.member_urls(self.config.etcd_client_url),
            ca=str(paths.ca_cert), cert=str(paths.node_cert), key=str(paths.node_key),
            watchdog_state=str(self.watchdog.state_file),
            watchdog_pid=str(self.watchdog.pidfile),
            keepalive_interval=t.keepalive_interval,
            self_fence_deadline=t.self_fence_deadline, lease_ttl=t.lease_ttl)
        last = self._lease_record
        if last is not None and record.same_as(last) \
                and record.saved_at - last.saved_at < t.lease_ttl / 2:
            return
        try:
            lease_bridge.save_record(self._lease_record_path, record)
        except OSError as exc:
            log.warning("%s: lease record not saved (a crash of binomed would not be "
                        "bridged): %s", self.node, exc)
            return
        self._lease_record = record

    async def _loop_monitor(self) -> None:
        """Log stalls of the daemon's event loop (what would have delayed renewals before
        they had a thread of their own, and still delays rounds and API answers)."""
        while not self._stopping:
            before = time.monotonic()
            await asyncio.sleep(LOOP_PROBE)
            late = time.monotonic() - before - LOOP_PROBE
            if late > LOOP_STALL:
                log.warning("%s: binomed's event loop was blocked for %.2f s", self.node, late)

    async def _round_loop(self) -> None:
        async def step() -> None:
            await self.round()

        await run_periodic("HA round", step, lambda: self.timers.manager_round, logger=log,
                           fixed_rate=True, min_pause=ROUND_MIN_PAUSE, wake=self._wake,
                           stop_when=lambda: self._stopping)

    async def _watch_loop(self) -> None:
        """Wake the rounds on relevant etcd changes (module docstring); never decides."""
        backoff = Backoff(WATCH_RETRY_MIN, WATCH_RETRY_MAX)
        broken: str | None = None   # logged once per outage, not at every retry
        established = False         # before the first watch, etcd may simply be starting

        async def step() -> None:
            nonlocal broken, established
            store = self.store
            while store is None:   # no cluster (yet): the backoff stays where it was
                await asyncio.sleep(WATCH_RETRY_MIN)
                store = self.store
            try:
                async with store.watch_prefixes(WATCH_PREFIXES, prev_kv=True,
                                                timeout=max(1.0, self.io_timeout)) as events:
                    if broken is not None and established:
                        log.info("%s: HA watch restored", self.node)
                    broken, established = None, True
                    backoff.reset()
                    if self._debounce_handle is not None:
                        self._debounce_handle.cancel()
                    self._debounce.reset()
                    self._watch_event()   # what changed while there was no watch
                    async for ev in events:
                        if wakes_rounds(ev):
                            self._watch_event()
            except Exception as exc:
                if broken is None and not self._stopping:
                    broken = f"{type(exc).__name__}: {exc}"
                    log.log(logging.WARNING if established else logging.DEBUG,
                            "%s: HA watch broken (%s); rounds every %.1f s until it is back",
                            self.node, broken, self.timers.manager_round)
                raise

        # the events never end but by an error (StoreUnavailable when the stream breaks):
        # every pass of the step ends in the backoff pause
        await run_periodic("HA watch", step, WATCH_RETRY_MIN, logger=log,
                           quiet=(StoreUnavailable,), backoff=backoff,
                           stop_when=lambda: self._stopping)

    def _watch_event(self) -> None:
        loop = asyncio.get_running_loop()
        at = self._debounce.event(loop.time())
        if at is not None:
            self._debounce_handle = loop.call_at(at, self._watch_fire)

    def _watch_fire(self) -> None:
        self._debounce.fired(asyncio.get_running_loop().time())
        self._debounce_handle = None
        self.wake()

    async def round(self) -> None:
        await self.crm_env.refresh()
        try:
            self.crm.step()
            self._wake_for_probe(self.crm.next_probe_at())
        except Exception:   # a CRM bug must not stop the LRM (and its watchdog petting)
            log.exception("CRM round failed")
        for err in await self.crm_env.commit():
            self.log("warn", f"{self.node}/crm", f"write refused: {err}")
        lock_revision = self.crm_env.lock_revision()
        if lock_revision is not None:   # only the master settles power-on debts
            self.fencer.settle_power_debts(self.crm_env.fence_records(), lock_revision)
            status = self.crm_env.committed_status()
            if status is not None:    # recorded by a task of its own: never slows rounds
                services = {sid: (str(sd.state), sd.node)
                            for sid, sd in status.service_status.items()}
                wall, mono = time.time(), time.monotonic()
                seen = self.crm_env.liveness.last_renewal
                lost = {node: wall - (mono - seen[node])
                        for node, rec in status.node_status.items()
                        if rec.state not in (NodeState.ONLINE, NodeState.MAINTENANCE)
                        and node in seen}
                self.availability.offer(services, lock_revision,
                                        self.crm_env.availability_target(), lost,
                                        self.crm_env.availability_targets())
            clocks = self.crm_env.liveness.clocks
            for node, skew in clocks.alerts():
                if node != self.node:
                    self.notify("clock-skew", node=node, skew=f"{-skew:+.2f}",
                                threshold=f"{clocks.threshold:g}", reference=self.node)
        else:
            self.availability.not_master()
        if await self.lrm_env.refresh() and self.lrm_env.ha_sids() \
                and self.watchdog.running_pid() is None:
            await self._ensure_watchdog()   # before the LRM may arm it and start guests
        self._release_inherited_fire()
        self.lrm.step()
        errors = await self.lrm_env.commit()
        if errors:
            # the Lrm believes its report was written: make it re-read and rewrite
            self.lrm.revision = None
            self.lrm.written = None
            for err in errors:
                log.info("%s/lrm: status write refused: %s", self.node, err)
        # A self-fenced node (watchdog fired, lease expired, guests recovered on the
        # other node) gives up the Primary role of their volumes and resyncs; checked
        # every round because a frozen daemon notices it only when it runs again.
        self.executor.release_fenced()

    def _wake_for_probe(self, due: float | None) -> None:
        """Run a round when a power probe falls due (`ha.probe`; `due` on the CRM env's
        monotonic clock) rather than at the next periodic round, up to one later."""
        if self._probe_handle is not None:
            self._probe_handle.cancel()
            self._probe_handle = None
        if due is None:
            return
        delay = max(due - self.crm_env.now(), PROBE_WAKE_MIN)
        self._probe_handle = asyncio.get_running_loop().call_later(delay, self.wake)

    # ------------------------------------------------------------ status (API)

    def local_status(self) -> dict[str, Any]:
        wd = self.watchdog.read_status()
        return {"node": self.node, "crm": str(self.crm.state), "lrm": str(self.lrm.state),
                "lrm_mode": str(self.lrm.mode), "watchdog": {
                    "running": wd.running, "armed": wd.armed, "fired": wd.fired,
                    "remaining": wd.remaining, "vmids": wd.vmids}}
