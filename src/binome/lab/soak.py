"""The HA soak (issue 16): random faults on the HA lab, audited by probes of its own.

This module owns the soak's machinery, shared by `bench/soak.py` (N minutes of
seeded random faults) and `tests/lab/ha/test_soak.py` (a fixed 3-fault plan):

- `Fault`: one fault to inject (kind, target host, duration/parameters) and
  `random_fault()`, the seeded choice (usually on the guest's node, sometimes
  on the other, the witness for witness loss);
- `CpuHog`: a busy loop inside one node's namespace, started and stopped by pid
  (started again when a power-off of its node killed it);
- `MirrorWatch`: a thread reading the volume's published states from etcd
  (serializable reads, any reachable member) every second, summing the time
  the mirror was not Connected UpToDate/UpToDate on both sides;
- `Soak`: the probes (`HttpProbe`, `SeqWriter`, `QemuWatch` of `binome.lab.ha`),
  `run(fault)`: inject, wait until the guest serves again (bounded), heal
  (links, netem, resume, restart what was killed, power on), wait until the
  volume is in sync, and `report()`: per-fault lines and the totals of
  issue 16 (outages, unneeded fences derived from the cluster log, nodes left
  powered off, degraded-mirror time, acknowledged writes lost, double runs).

Nothing here asserts: the report states the invariants and the test or the
bench judges them. Every wait is on a condition with a bound; the fault's own
duration (a pause, a held cut) is the only timed wait.

About 780 lines: one fault loop and the report that audits it, kept in one
place so that each classification rule sits next to what it classifies.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
import random
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from binome.ha.timers import HaTimers
from binome.lab.cluster import LabClusterError
from binome.lab.ha import HaLab, HttpProbe, QemuWatch, SeqWriter, wait_until
from binome.lab.processes import LabProcess

KINDS = ("power_off", "cut_all", "cut_replication", "cut_one_way", "pause",
         "kill_binomed", "kill_engine", "kill_etcd", "witness_loss", "netem")

DESCRIPTION = {
    "power_off": "chassis power off through the node's BMC (IPMI), powered on at the heal",
    "cut_all": "the node's cluster and replication links down (bridge port)",
    "cut_replication": "only the node's replication link down",
    "cut_one_way": "the node's outgoing cluster/replication packets dropped (iptables "
                   "at the peers' input); it still hears everybody",
    "pause": "binomed SIGSTOPped for 1-10 s, then SIGCONT (etcd, engine, QEMU, watchdog run)",
    "kill_binomed": "kill -9 of binomed (its etcd member follows: pdeathsig), started again "
                    "after 1-5 s",
    "kill_engine": "kill -9 of the volume engine (binomed starts it again by itself)",
    "kill_etcd": "kill -9 of one etcd member (binomed's supervisor restarts it)",
    "witness_loss": "the witness's binomed and etcd killed for 10-30 s, then started again",
    "netem": "tc netem loss 5-30 % and delay 20-200 ms on the node's cluster and "
             "replication links (both directions) for 10-30 s; on a kernel without "
             "sch_netem: iptables random loss + a 1 mbit/s tbf cap (mode statistic+tbf)",
}

SELF_FENCE_DEADLINE = HaTimers().self_fence_deadline
MIGRATION_OVERLAP = 30.0   # longest plausible live-migration hand-over (two QEMUs)
# the watchdog's deadline runs from the last renewal, up to one keepalive before a stall:
# a stall shorter than this never legitimately fires it
SURE_SHORT_STALL = SELF_FENCE_DEADLINE - HaTimers().keepalive_interval


def _body(msg: str) -> str:
    """A CRM/LRM log message without its "n2/crm: " origin."""
    head, sep, rest = msg.partition(": ")
    return rest if sep and "/" in head and " " not in head else msg


@dataclass
class Fault:
    kind: str
    target: str
    duration: float = 0.0                    # pause / hold seconds (0: none)
    params: dict[str, Any] = field(default_factory=dict)

    def label(self) -> str:
        extra = "".join(f" {k}={v}" for k, v in self.params.items())
        dur = f" {self.duration:.1f}s" if self.duration else ""
        return f"{self.kind}({self.target}{dur}{extra})"


def random_fault(rng: random.Random, ha: HaLab, guest_node: str | None) -> Fault:
    """A seeded random fault: usually on the guest's node, sometimes on the other."""
    kind = rng.choice(KINDS)
    node = guest_node or ha.nodes[0]
    if rng.random() < 0.3:
        node = ha.other(node)
    if kind == "witness_loss":
        return Fault(kind, ha.cluster.witness or node, round(rng.uniform(10, 30), 1))
    if kind == "kill_etcd" and ha.cluster.witness and rng.random() < 0.25:
        node = ha.cluster.witness
    if kind == "pause":
        return Fault(kind, node, round(rng.uniform(1, 10), 1))
    if kind == "kill_binomed":
        return Fault(kind, node, round(rng.uniform(1, 5), 1))
    if kind == "netem":
        return Fault(kind, node, round(rng.uniform(10, 30), 1),
                     {"loss": rng.choice((5, 10, 20, 30)),
                      "delay_ms": rng.choice((20, 50, 100, 200))})
    if kind in ("cut_all", "cut_one_way", "cut_replication"):
        return Fault(kind, node, round(rng.uniform(8, 20), 1))
    if kind in ("kill_engine", "kill_etcd"):
        return Fault(kind, node, 10.0)   # held: what follows the kill stays in its window
    return Fault(kind, node)


class CpuHog:
    """A busy loop inside a node's namespace (a LabProcess: the lab's teardown kills it
    too); `ensure()` starts it again when a power-off of the node took it along."""

    def __init__(self, ha: HaLab, node: str) -> None:
        self.ha = ha
        self.node = node
        self.proc: LabProcess | None = None
        self.starts = 0

    def ensure(self) -> None:
        if self.proc is not None and self.proc.alive():
            return
        host = self.ha.cluster.lab.host(self.node)
        self.proc = host.spawn([sys.executable, "-c", "while True: pass"])
        self.starts += 1

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()   # by its process group (its own pid), never by name
            self.proc = None


class MirrorWatch:
    """Samples the volume's published states (etcd) every `interval` s in a thread."""

    def __init__(self, ha: HaLab, interval: float = 1.0) -> None:
        self.ha = ha
        self.interval = interval
        self.degraded_s = 0.0
        self.samples = 0
        self.unknown = 0
        self.degraded_now: bool | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mirrorwatch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(15)

    def _run(self) -> None:
        asyncio.run(self._loop())

    async def _loop(self) -> None:
        from binome.store.client import Store

        ha = self.ha
        hosts = [*(h for h in [ha.cluster.witness] if h), *ha.nodes]
        prefix = f"/binome/volumes/{ha.volume}/state/"
        last = time.monotonic()
        while not self._stop.is_set():
            states: list[Any] | None = None
            for host in hosts:
                pki = ha.cluster.state_dir(host) / "pki"
                store = Store.for_url(f"https://{ha.cluster.address(host)}:2379",
                                      ca=pki / "ca.pem", cert=pki / "node.pem",
                                      key=pki / "node.key", timeout=2.0)
                try:
                    states = [e.value for e in await store.get_prefix(prefix,
                                                                       serializable=True)]
                    break
                except Exception:   # that member is down or cut off: try the next one
                    continue
                finally:
                    with contextlib.suppress(Exception):
                        await store.close()
            now = time.monotonic()
            self.samples += 1
            if states is None:
                self.unknown += 1   # nobody reachable: keep the last verdict
            else:
                by_node = {s.get("node"): s for s in states if isinstance(s, dict)}
                self.degraded_now = not all(
                    (st := by_node.get(n)) and st.get("cstate") == "Connected"
                    and st.get("disk") == "UpToDate" and st.get("peer_disk") == "UpToDate"
                    for n in ha.nodes)
            if self.degraded_now:
                self.degraded_s += now - last
            last = now
            await asyncio.to_thread(self._stop.wait, self.interval)


@dataclass
class Window:
    """One fault, from its injection to the volume in sync again."""

    index: int
    fault: Fault
    guest_before: str | None
    injected: float = 0.0
    healed: float | None = None
    served: float | None = None       # the guest answering steadily after the fault
    synced: float | None = None
    end: float = 0.0
    stall: float | None = None        # a pause's measured length (SIGSTOP -> SIGCONT)
    off_at_heal: dict[str, str] = field(default_factory=dict)   # node -> why it was off
    errors: list[str] = field(default_factory=list)
    admin: str = ""                   # the admin action the guest needed to serve again


@dataclass
class FenceEvent:
    t: float
    node: str
    kind: str            # device, watchdog, manual, device-power-off
    line: str
    window: int | None = None
    unneeded: str = ""   # why it was unneeded ("" = needed)


class Soak:
    """Faults one after the other on a started HaLab with its HA guest serving."""

    def __init__(self, ha: HaLab, *, hog_node: str | None = None, serve_timeout: float = 90.0,
                 sync_timeout: float = 180.0, off_grace: float = 60.0,
                 say: Callable[[str], None] = print) -> None:
        self.ha = ha
        self.hog = CpuHog(ha, hog_node) if hog_node else None
        self.serve_timeout = serve_timeout
        self.sync_timeout = sync_timeout
        self.off_grace = off_grace
        self.say = say
        # a TCG guest on two shared cores with a busy loop answers slowly at times:
        # 2 s per request before it counts as failed
        self.probe = HttpProbe(ha.client_netns, ha.guest_ip, timeout=2.0)
        self.seq = SeqWriter(ha.client_netns, ha.guest_ip, timeout=3.0,
                             first=int(time.time() * 10) % 100000)
        self.watch = QemuWatch(ha.cluster, ha.vmid)
        self.mirror = MirrorWatch(ha)
        self.windows: list[Window] = []
        self.began = 0.0
        self.finished = 0.0
        self.lost: list[int] | None = None
        self.lost_node = ""
        self.lost_other: list[int] | None = None
        self._stopped = False
        self._started: list[Any] = []
        self.log_error = ""   # the cluster log could not be read at the end

    # ------------------------------------------------------------ lifecycle
    def start(self) -> None:
        if self.hog is not None:
            self.hog.ensure()
        self.began = time.time()
        for thing in (self.probe, self.seq, self.watch, self.mirror):
            thing.start()
            self._started.append(thing)
        wait_until(lambda: self.seq.acked and self.probe.ok_now(), 60,
                   "probe and writer running")

    def stop(self) -> None:
        """Probes and the hog stopped (idempotent; also on failure)."""
        if self._stopped:
            return
        self._stopped = True
        self.finished = time.time()
        for thing in reversed(self._started):
            with contextlib.suppress(Exception):
                thing.stop()
        if self.hog is not None:
            self.hog.stop()

    # ------------------------------------------------------------ one fault
    def serving(self, since: float, n: int = 3) -> bool:
        """The last `n` probe requests, all sent after `since`, were answered."""
        last = self.probe.samples[-n:]
        return len(last) == n and all(s.ok and s.t > since for s in last)

    def _bounded(self, pred: Callable[[], Any], timeout: float, what: str,
                 w: Window, interval: float = 0.2) -> bool:
        try:
            wait_until(pred, timeout, what, interval)
            return True
        except LabClusterError as exc:
            w.errors.append(str(exc))
            self.say(f"   ! {exc}")
            return False

    def _inject(self, f: Fault, w: Window) -> Callable[[], None]:
        """Inject `f`; returns its heal. Pauses are held here (their length is the fault)."""
        ha, lab = self.ha, self.ha.cluster.lab
        node = f.target
        if f.kind == "power_off":
            ha.power_off(node)
            return lambda: None   # powered on with every other node off, below
        if f.kind == "cut_all":
            ha.cut_links(node)
            return lambda: ha.restore_links(node)
        if f.kind == "cut_replication":
            ha.cut_replication(node)
            return lambda: lab.link_up(node, "replication")
        if f.kind == "cut_one_way":
            ha.cut_one_way(node)
            return lambda: ha.heal_one_way(node)
        if f.kind == "netem":
            f.params["mode"] = ha.netem(node, f.params["loss"], f.params["delay_ms"],
                                        f.params["delay_ms"] // 4)
            return lambda: ha.clear_netem(node)
        if f.kind == "pause":
            pid = ha.pause_daemon(node)
            began = time.monotonic()
            try:
                time.sleep(f.duration)   # the stall itself
            finally:
                ha.resume_daemon(pid)
                w.stall = time.monotonic() - began
            return lambda: None
        if f.kind in ("kill_binomed", "witness_loss"):
            ha.kill9(node, "binomed")
            return lambda: self._restart_daemon(node)
        if f.kind == "kill_engine":
            ha.kill9(node, "engine")
            return lambda: None
        if f.kind == "kill_etcd":
            ha.kill9(node, "etcd")
            return lambda: None
        raise ValueError(f"unknown fault kind {f.kind}")

    def _restart_daemon(self, host: str) -> None:
        if self.ha.daemon_pid(host) is None and (host not in self.ha.nodes
                                                 or self.ha.powered_on(host)):
            self.ha.start_daemon(host)

    def _hold(self, f: Fault) -> float:
        """Seconds the fault stays at least before its heal (pauses are held while
        injecting; a kill's duration is how long its consequences are watched first)."""
        return 0.0 if f.kind == "pause" else f.duration

    def run(self, fault: Fault) -> Window:
        ha = self.ha
        w = Window(len(self.windows) + 1, fault, ha.guest_node())
        self.windows.append(w)
        w.injected = t0 = time.time()
        self.say(f"[{t0 - self.began:7.1f}s] fault {w.index}: {fault.label()} "
                 f"(guest on {w.guest_before})")
        heal: Callable[[], None] = lambda: None   # noqa: E731
        try:
            heal = self._inject(fault, w)
            hold_until = t0 + self._hold(fault)
            # the fault stays until the guest serves again (a failover) and at least its
            # hold; bounded
            self._bounded(lambda: time.time() >= hold_until and self.serving(t0),
                          max(self.serve_timeout, self._hold(fault) + 5),
                          f"{ha.sid} serving during {fault.label()}", w)
            self._check_powered_off(w)
        except Exception as exc:
            w.errors.append(f"inject: {type(exc).__name__}: {exc}")
            self.say(f"   ! inject failed: {exc}")
        finally:
            try:
                heal()
            except Exception as exc:
                w.errors.append(f"heal: {type(exc).__name__}: {exc}")
            w.healed = time.time()
        if self._bounded(lambda: self.serving(w.healed or t0), self.serve_timeout,
                         f"{ha.sid} serving after the heal", w):
            w.served = time.time()
        self._bring_back(w)
        if w.served is None:
            self._admin_recover(w)
        if self.hog is not None:
            self.hog.ensure()
        try:
            ha.wait_in_sync(self.sync_timeout)
            w.synced = time.time()
        except LabClusterError as exc:
            w.errors.append(str(exc))
            self.say(f"   ! {exc}")
        w.end = time.time()
        self.say(f"   healed +{(w.healed or t0) - t0:.1f}s, serving "
                 f"+{(w.served or w.end) - t0:.1f}s, in sync "
                 f"{'+%.1fs' % (w.synced - t0) if w.synced else 'NO'}; guest on "
                 f"{ha.guest_node()}" + (f"; off at heal: {w.off_at_heal}"
                                         if w.off_at_heal else ""))
        return w

    def _admin_recover(self, w: Window) -> None:
        """The guest does not serve after the heal and HA gave up on it (`error`): do what
        the operator is told to (`disabled`, then `started`), so that the soak goes on;
        recorded in the window (`admin`) and counted in the report as an HA failure."""
        ha = self.ha
        svc = ha.ha_service()
        if svc.get("state") != "error":
            return
        host = ha.cluster.witness or ha.nodes[0]
        w.admin = f"service in error ({svc.get('status') or svc.get('reason')}): " \
                  "disabled, then started again"
        self.say(f"   ! {w.admin}")
        try:
            ha.cluster.cli(host, "ha", "set", ha.sid, "--state", "disabled")
            wait_until(lambda: ha.ha_service().get("state") not in ("error", None, ""), 60,
                       f"{ha.sid} out of error", 1.0)
            wait_until(lambda: ha.guest_node() is None, 60, f"{ha.sid} stopped", 0.5)
            ha.cluster.cli(host, "ha", "set", ha.sid, "--state", "started")
            since = time.time()
            if self._bounded(lambda: self.serving(since), self.serve_timeout,
                             f"{ha.sid} serving after the admin's restart", w):
                w.served = time.time()
        except (LabClusterError, OSError) as exc:
            w.errors.append(f"admin recovery: {exc}")
            self.say(f"   ! admin recovery: {exc}")

    def _check_powered_off(self, w: Window) -> None:
        """Before healing: a node off after a confirmed device fence must come back on by
        itself within `off_grace` (action reboot), else it is left off (the lab's action
        off, or a failed reboot); a node off with no fence is the fault's own power-off."""
        ha = self.ha
        for n in ha.nodes:
            if ha.powered_on(n):
                continue
            fence_t = self._device_fence_time(n, w.injected)
            if fence_t is None:
                w.off_at_heal[n] = ("off by the fault" if w.fault.kind == "power_off"
                                    and w.fault.target == n else "off, no fence logged")
                continue
            remaining = fence_t + self.off_grace - time.time()
            if remaining > 0:
                with contextlib.suppress(LabClusterError):
                    wait_until(functools.partial(ha.powered_on, n), remaining,
                               f"{n} powered on again", 0.5)
            if ha.powered_on(n):
                continue
            action = str(ha.cluster.fence_config(n).get("action", "reboot"))
            w.off_at_heal[n] = ("left off by the lab's action=off" if action == "off"
                                else "left off: failed reboot")

    def _device_fence_time(self, node: str, since: float) -> float | None:
        try:
            log = self._cluster_log(since)
        except Exception:
            return None
        return next((e["t"] for e in log
                     if f"fence {node}: confirmed" in str(e.get("msg", ""))), None)

    def _cluster_log(self, since: float = 0.0) -> list[dict[str, Any]]:
        """The cluster log through any member that answers (the witness may be down)."""
        ha = self.ha
        last: Exception | None = None
        for via in [*(h for h in [ha.cluster.witness] if h), *ha.nodes]:
            try:
                return [e for e in self._log_via(via) if e["t"] >= since]
            except Exception as exc:   # that member is down or cut off: the next one
                last = exc
        raise LabClusterError(f"cluster log unreadable: {last}")

    def _log_via(self, via: str) -> list[dict[str, Any]]:
        from binome.store import keys

        async def read(store: Any) -> list[Any]:
            return await store.get_prefix(keys.CLUSTER_LOG, serializable=True)
        out = []
        for e in self.ha.etcd(read, via=via):
            entry = e.value if isinstance(e.value, dict) else None
            if not entry or "uid" not in entry:
                continue
            with contextlib.suppress(ValueError):
                out.append({**entry, "t": int(entry["uid"].split("-", 1)[0]) / 1e6})
        return sorted(out, key=lambda e: e["t"])

    def _bring_back(self, w: Window) -> None:
        """Every host on and running its daemon again (power on, restart), bounded."""
        ha = self.ha
        for h in ha.cluster.hosts:
            try:
                if h in ha.nodes:
                    if ha.daemon_pid(h) is None or not ha.powered_on(h) or h not in \
                            ha.cluster.bmcs:
                        ha.restore(h, timeout=self.sync_timeout)
                elif ha.daemon_pid(h) is None:
                    ha.start_daemon(h)
            except Exception as exc:
                w.errors.append(f"bring back {h}: {type(exc).__name__}: {exc}")
                self.say(f"   ! bring back {h}: {exc}")

    # ------------------------------------------------------------ the end
    def finish(self) -> None:
        """Stop the writer and the probes, read every acknowledged number back from the
        copy of the node holding the UpToDate Primary (and the other copy)."""
        self.stop()
        ha = self.ha
        node = ha.guest_node()
        if node is None:
            for n in ha.nodes:
                st = ha.volume_states(n)
                if st and st.get("disk") == "UpToDate":
                    node = n
                    break
        if node is None:
            return
        self.lost_node = node
        # the guest may still have the last acknowledged write in flight to the peer:
        # read the Primary's copy (where an acknowledged write must be)
        self.lost = self.seq.missing(ha.backing(node))
        other = ha.other(node)
        with contextlib.suppress(LabClusterError):
            if ha.in_sync():
                ha.copies_equal(30)
                self.lost_other = self.seq.missing(ha.backing(other))

    def fences(self) -> list[FenceEvent]:
        """Fences from the cluster log: each proof ("node X: fenced (kind: ...)"), plus a
        device power-off ("fence X: confirmed") with no proof near it; each classified."""
        try:
            log = self._cluster_log(self.began - 1.0)
        except LabClusterError as exc:
            self.log_error = str(exc)
            return []
        events: list[FenceEvent] = []
        for e in log:
            msg = _body(str(e.get("msg", "")))
            if ": fenced (" in msg and msg.startswith("node "):
                node = msg[5:].split(":", 1)[0]
                kind = msg.split("fenced (", 1)[1].split(":", 1)[0]
                events.append(FenceEvent(e["t"], node, kind, f"{e.get('node')}: {msg}"))
        for e in log:
            msg = _body(str(e.get("msg", "")))
            if msg.startswith("fence ") and ": confirmed" in msg:
                node = msg[6:].split(":", 1)[0]
                if not any(ev.node == node and -30 <= ev.t - e["t"] <= 30 for ev in events):
                    events.append(FenceEvent(e["t"], node, "device-power-off",
                                             f"{e.get('node')}: {msg}"))
        return self._classify(events, SELF_FENCE_DEADLINE, "self-fence deadline")

    def self_fences(self) -> list[FenceEvent]:
        """The nodes' watchdog supervisors firing ("SELF-FENCE" in their logs, under each
        node's state dir), classified as fences: unneeded on a healthy node, or on one
        whose stall was shorter than the deadline less a keepalive interval."""
        events: list[FenceEvent] = []
        for n in self.ha.nodes:
            for path in sorted(self.ha.cluster.state_dir(n).glob("run/*watchdog*.log")):
                with contextlib.suppress(OSError):
                    for line in path.read_text(errors="replace").splitlines():
                        # (a supervisor started at power-on fires on the armed state
                        # its powered-off predecessor left: nothing to kill, no fence)
                        if "SELF-FENCE" not in line or "killed nothing" in line:
                            continue
                        try:
                            t = datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
                        except ValueError:
                            continue
                        at = time.mktime(t.timetuple()) + t.microsecond / 1e6
                        if at >= self.began:
                            events.append(FenceEvent(at, n, "self-fence", line[24:200]))
        return self._classify(events, SURE_SHORT_STALL, "deadline less a keepalive")

    def _classify(self, events: list[FenceEvent], shortest: float,
                  what: str) -> list[FenceEvent]:
        """Sort `events` and mark each unneeded: outside any fault window, on a node the
        fault was not about, or after a pause shorter than `shortest` seconds."""
        events.sort(key=lambda ev: ev.t)
        for ev in events:
            win = self._window_at(ev.t)
            if win is None:
                ev.unneeded = "before any fault"
                continue
            ev.window = win.index
            f = win.fault
            if f.target != ev.node:
                ev.unneeded = f"{ev.node} was healthy (fault {f.label()})"
            elif f.kind == "pause" and (win.stall or f.duration) < shortest:
                ev.unneeded = (f"{ev.node} stalled {win.stall or f.duration:.1f}s < "
                               f"{shortest:g}s ({what})")
        return events

    def _window_at(self, t: float) -> Window | None:
        win = None
        for w in self.windows:
            if w.injected <= t:
                win = w
        return win

    def fence_requests(self) -> list[str]:
        with contextlib.suppress(LabClusterError):
            return [f"{e['t'] - self.began:+8.1f}s {e.get('node')}: {e.get('msg')}"
                    for e in self._cluster_log(self.began - 1.0)
                    if "its fence device" in str(e.get("msg", ""))
                    or _body(str(e.get("msg", ""))).startswith("fence ")]
        return []

    def _outages_by_window(self) -> dict[int, list[tuple[float, float | None]]]:
        """Each outage of the run in the window of the latest fault injected before its
        first failed request *ended* (a request sent just before a fault fails with it)."""
        out: dict[int, list[tuple[float, float | None]]] = {w.index: [] for w in self.windows}
        for a, b in self.probe.outages(since=self.began):
            win = None
            for w in self.windows:
                if w.injected <= a + self.probe.timeout:
                    win = w
            if win is not None:
                out[win.index].append((a, b))
        return out

    def overlap_episodes(self) -> list[dict[str, Any]]:
        """Episodes of more than one QEMU of the guest (samples < 1 s apart grouped). One
        is a live-migration hand-over if a copy was an `-incoming` QEMU (paused until the
        hand-over) and it lasted at most MIGRATION_OVERLAP s; any other is a double run."""
        episodes: list[dict[str, Any]] = []
        incoming = dict(self.watch.overlap_incoming)
        for t, nodes in list(self.watch.overlaps):
            if not episodes or t - episodes[-1]["last"] > 1.0:
                episodes.append({"t": t, "last": t, "nodes": nodes, "incoming": set()})
            ep = episodes[-1]
            ep["last"] = t
            ep["incoming"].update(incoming.get(t, []))
        for ep in episodes:
            ep["migration"] = bool(ep["incoming"]) and ep["last"] - ep["t"] <= MIGRATION_OVERLAP
        return episodes

    def double_runs(self) -> list[dict[str, Any]]:
        return [ep for ep in self.overlap_episodes() if not ep["migration"]]

    def guest_stops_on_healthy_nodes(self, fences: list[FenceEvent]) -> list[str]:
        """QEMU of the guest gone from a node no fault touched, with no fence of it."""
        out = []
        handovers = [ep for ep in self.overlap_episodes() if ep["migration"]]
        for t, node, up in self.watch.events:
            if up or t < self.began:
                continue
            if any(node in ep["incoming"] and ep["t"] <= t <= ep["last"] + 1.5
                   for ep in handovers):
                continue   # the incoming QEMU of a live migration that failed
            win = self._window_at(t)
            if win is None or win.fault.target == node:
                continue
            if any(f.node == node and f.window == win.index for f in fences):
                continue
            out.append(f"{t - self.began:+.1f}s guest stopped on {node} during fault "
                       f"{win.index} {win.fault.label()}")
        return out

    def report(self) -> dict[str, Any]:
        fences = self.fences()
        selff = self.self_fences()
        lines: list[dict[str, Any]] = []
        maxima: list[float] = []
        by_window = self._outages_by_window()
        for w in self.windows:
            outs = by_window[w.index]
            durations = [(b if b is not None else w.end) - a for a, b in outs]
            longest = max(durations, default=0.0)
            if durations:
                maxima.append(longest)
            wf = [f for f in [*fences, *selff] if f.window == w.index]
            lines.append({
                "index": w.index, "fault": w.fault.label(), **asdict(w.fault),
                "at": round(w.injected - self.began, 1), "guest_before": w.guest_before,
                "stall": None if w.stall is None else round(w.stall, 2),
                "outages": len(outs), "outage_max": round(longest, 2),
                "outage_total": round(sum(durations), 2),
                "healed": None if w.healed is None else round(w.healed - w.injected, 1),
                "served": None if w.served is None else round(w.served - w.injected, 1),
                "synced": None if w.synced is None else round(w.synced - w.injected, 1),
                "fences": [f"{f.node} ({f.kind})" + (f" UNNEEDED: {f.unneeded}"
                                                     if f.unneeded else "") for f in wf],
                "off_at_heal": w.off_at_heal, "errors": w.errors, "admin": w.admin,
            })
        off_action = sum(1 for w in self.windows for why in w.off_at_heal.values()
                         if "action=off" in why)
        off_failed = sum(1 for w in self.windows for why in w.off_at_heal.values()
                         if "failed reboot" in why or "no fence" in why)
        kinds: dict[str, int] = {}
        for w in self.windows:
            kinds[w.fault.kind] = kinds.get(w.fault.kind, 0) + 1
        episodes = self.overlap_episodes()
        doubles = [ep for ep in episodes if not ep["migration"]]
        return {
            "duration_s": round((self.finished or time.time()) - self.began, 1),
            "faults": len(self.windows), "faults_by_kind": kinds,
            "outage_median_s": round(statistics.median(maxima), 2) if maxima else None,
            "outage_max_s": round(max(maxima), 2) if maxima else None,
            "faults_with_outage": len(maxima),
            "fences": [{"t": round(f.t - self.began, 1), "node": f.node, "kind": f.kind,
                        "window": f.window, "unneeded": f.unneeded, "line": f.line}
                       for f in fences],
            "self_fences": [{"t": round(f.t - self.began, 1), "node": f.node,
                             "window": f.window, "unneeded": f.unneeded, "line": f.line}
                            for f in selff],
            "unneeded_fences": sum(1 for f in [*fences, *selff] if f.unneeded),
            "fence_log": self.fence_requests(),
            "left_off_by_action_off": off_action,
            "left_off_failed": off_failed,
            "degraded_mirror_s": round(self.mirror.degraded_s, 1),
            "mirror_samples_unknown": self.mirror.unknown,
            "acked_writes": len(self.seq.acked),
            "acked_writes_lost": None if self.lost is None else len(self.lost),
            "lost_sample": (self.lost or [])[:20], "lost_checked_on": self.lost_node,
            "acked_writes_lost_other_copy": None if self.lost_other is None
            else len(self.lost_other),
            "double_runs": len(doubles), "max_qemu_copies": self.watch.max_copies,
            "double_run_samples": [(round(ep["t"] - self.began, 1),
                                    round(ep["last"] - ep["t"], 2), ep["nodes"])
                                   for ep in doubles],
            "migration_handovers": sum(1 for ep in episodes if ep["migration"]),
            "guest_stops_on_healthy_nodes": self.guest_stops_on_healthy_nodes(
                [*fences, *selff]),
            "windows_with_errors": sum(1 for w in self.windows if w.errors),
            "admin_recoveries": [f"fault {w.index} {w.fault.label()}: {w.admin}"
                                 for w in self.windows if w.admin],
            "cluster_log_error": self.log_error,
            "hog": None if self.hog is None else {"node": self.hog.node,
                                                  "starts": self.hog.starts},
            "windows": lines,
        }


def format_report(r: dict[str, Any]) -> str:
    out = [f"soak: {r['faults']} faults in {r['duration_s']:.0f} s "
           f"({', '.join(f'{k} {v}' for k, v in sorted(r['faults_by_kind'].items()))})"]
    if r.get("hog"):
        out.append(f"CPU hog on {r['hog']['node']} (started {r['hog']['starts']}x)")
    out.append("per fault:")
    for w in r["windows"]:
        out.append(
            f"  {w['index']:3d} +{w['at']:6.1f}s {w['fault']:<40} guest {w['guest_before']}: "
            f"outage {w['outage_max']:5.1f}s ({w['outages']}x), healed +{w['healed']}s, "
            f"serving +{w['served']}s, in sync +{w['synced']}s"
            + (f", fences {w['fences']}" if w["fences"] else "")
            + (f", off {w['off_at_heal']}" if w["off_at_heal"] else "")
            + (f", ERRORS {w['errors']}" if w["errors"] else ""))
    med, mx = r["outage_median_s"], r["outage_max_s"]
    selff = ", ".join(f"{f['node']} in fault {f['window']}" for f in r["self_fences"])
    out += [
        f"faults injected:            {r['faults']}",
        f"outages:                    {r['faults_with_outage']} faults with one; "
        f"median {med if med is not None else '-'} s, max {mx if mx is not None else '-'} s",
        f"fences:                     {len(r['fences'])} "
        f"({', '.join(f['node'] + ' ' + f['kind'] for f in r['fences']) or 'none'})",
        f"watchdog self-fences:       {len(r['self_fences'])} ({selff or 'none'})",
        f"unneeded fences:            {r['unneeded_fences']}"
        + "".join(f"\n    {f['unneeded']}: {f['line']}"
                  for f in [*r["fences"], *r["self_fences"]] if f["unneeded"]),
        f"nodes left powered off:     {r['left_off_by_action_off']} by the lab's action=off, "
        f"{r['left_off_failed']} otherwise (failed reboot / unexplained)",
        f"degraded mirror:            {r['degraded_mirror_s']} s "
        f"({r['mirror_samples_unknown']} samples with no member reachable)",
        f"acknowledged writes lost:   {r['acked_writes_lost']} of {r['acked_writes']} "
        f"(read on {r['lost_checked_on']}; other copy: {r['acked_writes_lost_other_copy']})",
        f"double runs:                {r['double_runs']} (max QEMU copies "
        f"{r['max_qemu_copies']}; {r['migration_handovers']} live-migration hand-overs "
        "with an -incoming QEMU not counted)",
        f"guest stops on healthy nodes: {len(r['guest_stops_on_healthy_nodes'])}"
        + "".join(f"\n    {s}" for s in r["guest_stops_on_healthy_nodes"]),
        f"faults with errors:         {r['windows_with_errors']} (a bounded wait timed out)",
        f"admin recoveries needed:    {len(r['admin_recoveries'])}"
        + "".join(f"\n    {a}" for a in r["admin_recoveries"]),
    ]
    if r.get("cluster_log_error"):
        out.append(f"CLUSTER LOG UNREADABLE (fences unknown): {r['cluster_log_error']}")
    return "\n".join(out)


def describe_kinds() -> str:
    return "\n".join(f"  {k:<16} {v}" for k, v in DESCRIPTION.items())


__all__ = ["KINDS", "CpuHog", "Fault", "MirrorWatch", "Soak", "describe_kinds",
           "format_report", "random_fault"]
