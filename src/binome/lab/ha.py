"""The HA lab: a 2-node + witness cluster with BMCs, an HA guest on a replicated disk, probes.

This module owns what the failover scenarios (tests/lab/ha, bench/failover.py,
later `make demo` and `binome lab`) need on top of `LabCluster`:

- `HaLab`: a `LabCluster` with a simulated BMC per node and a `client` host on
  the VM LAN; `start()` forms the cluster and writes each node's IPMI fence
  device to etcd; `create_ha_guest()` creates the tiny guest with its disk on
  the `replicated` storage, puts it under HA (`started`) and waits until it
  answers HTTP and its volume is in sync;
- fault helpers: `cut_links` (cluster + replication), `power_off` through the
  BMC, `kill_bmc` (BMC unreachable), `pause_daemon` (SIGSTOP binomed by pid),
  and `restore(node)` bringing a faulted node back (links up, BMC restarted,
  powered on if it is off) and waiting until its volume resynced *by itself*;
  `wait_resynced`, `copies_equal` (checksums of both backing files);
- soak faults (`bench/soak.py`, `binome.lab.soak`): `cut_replication`,
  `cut_one_way` (iptables drops of the node's outgoing packets),
  `netem`/`clear_netem` (`tc netem` loss and delay on the node's cluster and
  replication links, both directions; iptables random loss and a tbf rate cap
  on a kernel without sch_netem), `kill9` of a host's binomed, volume
  engine or etcd member (found by pid in its namespace, by its state dir),
  `powered_on(node)`;
- `HttpProbe`: a thread inside the client namespace polling the guest's
  `/cgi-bin/status` every ~100 ms; it records every answer with the guest's
  boot time, so "answering again" means *a new instance* answers;
- `SeqWriter`: a thread writing sequence numbers through the guest's disk CGI
  (one 512-byte sector each, `fsync`ed by the guest) and remembering which
  were acknowledged; `missing(path)` checks them in a backing file;
- `QemuWatch`: a thread sampling both nodes' QEMU for the guest every 50 ms
  (pidfile + /proc), recording the largest number of simultaneous copies;
- `cluster_log()` / `ha_timeline()`: the cluster log read straight from etcd,
  with microsecond timestamps (from the entry ids), and the detect/fence/
  recovery times of a fault derived from it.

Threads enter the client namespace with setns(2) on themselves only (network
namespaces are per thread), so the probes cost no process per request.
All times are wall-clock `time.time()` (the cluster log's clock).

Over 700 lines since the soak's fault helpers (one-way and replication-only cuts,
netem, kill -9 of binomed, engine and etcd) joined the original ones: they share
the lab's hosts, BMCs and probes; moving all fault helpers to a `lab.faults`
module is the next split.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import hashlib
import http.client
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from binome.fence.devices import FenceDeviceError, FenceDevices
from binome.lab.bmc import binomed_pid, netns_pid_matching, netns_pids
from binome.lab.cluster import CLIENT, LabCluster, LabClusterError
from binome.store import keys

CLONE_NEWNET = 0x40000000
SEQ_BASE = 64 << 20          # sequence numbers live from 64 MiB on the guest's disk


def wait_until(pred: Callable[[], Any], timeout: float, what: str,
               interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise LabClusterError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def _enter_netns(netns: str) -> None:
    """Move the calling thread (only) into the named network namespace."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({netns}): {os.strerror(err)}")
    finally:
        os.close(fd)


def _get(host: str, path: str, timeout: float) -> tuple[int, str]:
    conn = http.client.HTTPConnection(host, 80, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode(errors="replace")
    finally:
        conn.close()


class _NetnsThread:
    """A daemon thread running `self._loop()` inside a network namespace until stopped."""

    def __init__(self, netns: str, name: str) -> None:
        self.netns = netns
        self._stop = threading.Event()
        self._ready = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(5)
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _main(self) -> None:
        try:
            _enter_netns(self.netns)
        except BaseException as exc:
            self.error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            self._loop()
        except BaseException as exc:   # reported to the test through .error
            self.error = exc

    def _loop(self) -> None:
        raise NotImplementedError


@dataclass
class Sample:
    t: float                 # when the request was sent
    ok: bool
    boot: float | None = None   # the answering guest's boot time (t - uptime)
    why: str = ""               # a failed request: the error, and how long it took


class HttpProbe(_NetnsThread):
    """Polls http://<ip>/cgi-bin/status from `netns` every `interval` s."""

    def __init__(self, netns: str, ip: str, interval: float = 0.1,
                 timeout: float = 0.5) -> None:
        super().__init__(netns, f"probe-{ip}")
        self.ip = ip
        self.interval = interval
        self.timeout = timeout
        self.samples: list[Sample] = []

    def _loop(self) -> None:
        while not self._stop.is_set():
            t = time.time()
            try:
                status, body = _get(self.ip, "/cgi-bin/status", self.timeout)
                boot = None
                if status == 200:
                    with contextlib.suppress(ValueError, KeyError, TypeError):
                        boot = t - float(str(json.loads(body)["uptime"]).split()[0])
                self.samples.append(Sample(t, status == 200, boot,
                                           "" if status == 200 else f"HTTP {status}"))
            except (OSError, http.client.HTTPException) as exc:
                self.samples.append(Sample(t, False, why=f"{type(exc).__name__}: {exc} "
                                                         f"after {time.time() - t:.1f} s"))
            self._stop.wait(max(0.0, t + self.interval - time.time()))

    def ok_now(self) -> bool:
        return bool(self.samples) and self.samples[-1].ok

    def answered_again(self, since: float) -> float | None:
        """When a guest instance booted after `since` first answered (None: not yet)."""
        for s in list(self.samples):
            if s.t > since and s.ok and s.boot is not None and s.boot > since - 1.0:
                return s.t
        return None

    def failures(self, since: float = 0.0) -> list[tuple[float, str]]:
        """Each failed request since `since`: when it was sent and why it failed (for the
        diagnosis of an outage: a timeout is a stalled guest or host, a refusal a guest
        whose server is down, no route a network fault)."""
        return [(s.t, s.why) for s in list(self.samples) if s.t >= since and not s.ok]

    def outages(self, since: float = 0.0) -> list[tuple[float, float | None]]:
        """(first failed request, first answered request after it) intervals."""
        out: list[tuple[float, float | None]] = []
        start: float | None = None
        for s in list(self.samples):
            if s.t < since:
                continue
            if not s.ok and start is None:
                start = s.t
            elif s.ok and start is not None:
                out.append((start, s.t))
                start = None
        if start is not None:
            out.append((start, None))
        return out


class SeqWriter(_NetnsThread):
    """Writes `seq-<n>` to sector n after SEQ_BASE through the guest; keeps the acked ones."""

    def __init__(self, netns: str, ip: str, interval: float = 0.2,
                 timeout: float = 2.0, first: int = 0) -> None:
        super().__init__(netns, f"seqwriter-{ip}")
        self.ip = ip
        self.interval = interval
        self.timeout = timeout
        self.next = first
        self.acked: list[tuple[int, float]] = []   # (n, acknowledged at)

    def _loop(self) -> None:
        while not self._stop.is_set():
            t = time.time()
            n, self.next = self.next, self.next + 1
            try:
                status, body = _get(self.ip, f"/cgi-bin/disk?write={SEQ_BASE + n * 512}"
                                             f"&data=seq-{n}", self.timeout)
                if status == 200 and body.startswith("ok "):
                    self.acked.append((n, time.time()))
            except (OSError, http.client.HTTPException):
                pass
            self._stop.wait(max(0.0, t + self.interval - time.time()))

    def missing(self, backing: Path, upto: float | None = None) -> list[int]:
        """Acknowledged sequence numbers (acked before `upto`) absent from `backing`."""
        lost = []
        with open(backing, "rb") as f:
            for n, at in list(self.acked):
                if upto is not None and at > upto:
                    continue
                f.seek(SEQ_BASE + n * 512)
                if f.read(512).rstrip(b"\0") != f"seq-{n}".encode():
                    lost.append(n)
        return lost


def _qemu_alive(pidfile: Path) -> int | None:
    try:
        pid = int(pidfile.read_text().split()[0])
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] in ("Z", "X"):
            return None
        if str(pidfile).encode() not in Path(f"/proc/{pid}/cmdline").read_bytes():
            return None   # pid reused by something else
        return pid
    except (OSError, ValueError, IndexError):
        return None


class QemuWatch:
    """Samples which nodes run QEMU for `vmid`; `max_copies` must stay <= 1."""

    def __init__(self, lab: LabCluster, vmid: int, interval: float = 0.05) -> None:
        self.pidfiles = {n: lab.state_dir(n) / "run" / "qemu" / f"{vmid}.pid"
                         for n in lab.nodes}
        self.interval = interval
        self.max_copies = 0
        self.overlaps: list[tuple[float, list[str]]] = []
        # per overlap: the nodes whose QEMU was started for an incoming live migration
        # (`-incoming`: paused until the hand-over), which the soak tells from a double run
        self.overlap_incoming: list[tuple[float, list[str]]] = []
        self.events: list[tuple[float, str, bool]] = []   # (t, node, running)
        self._running: dict[str, bool] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"qemuwatch-{vmid}",
                                        daemon=True)

    def _incoming(self, node: str) -> bool:
        pid = _qemu_alive(self.pidfiles[node])
        try:
            return pid is not None and b"-incoming" in Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False

    def running_on(self) -> list[str]:
        return sorted(n for n, p in self.pidfiles.items() if _qemu_alive(p))

    def _loop(self) -> None:
        while not self._stop.is_set():
            t = time.time()
            nodes = self.running_on()
            self.max_copies = max(self.max_copies, len(nodes))
            if len(nodes) > 1:
                self.overlaps.append((t, nodes))
                self.overlap_incoming.append((t, [n for n in nodes if self._incoming(n)]))
            for n in self.pidfiles:
                now = n in nodes
                if self._running.get(n) != now:
                    self._running[n] = now
                    self.events.append((t, n, now))
            self._stop.wait(self.interval)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def stopped_at(self, node: str, since: float) -> float | None:
        return next((t for t, n, up in self.events if n == node and not up and t >= since),
                    None)

    def started_at(self, node: str, since: float) -> float | None:
        return next((t for t, n, up in self.events if n == node and up and t >= since), None)


@dataclass
class Timeline:
    """One fault, measured: every time is seconds after the fault."""

    fault: float
    detect: float | None = None        # the CRM saw the node lost (online -> unknown)
    fence: float | None = None         # the node proven fenced ("fenced (...)")
    fenced_by: str = ""
    config_moved: float | None = None  # the recovery moved the guest's config
    qemu_stopped: float | None = None  # QEMU gone on the faulted node
    qemu_started: float | None = None  # QEMU running on the survivor
    answered: float | None = None      # the new instance answered HTTP
    lines: list[str] = field(default_factory=list)

    def summary(self) -> str:
        def f(v: float | None) -> str:
            return "-" if v is None else f"{v:.1f}s"
        return (f"outage {f(self.answered)} (detect {f(self.detect)}, fence {f(self.fence)} "
                f"[{self.fenced_by}], config moved {f(self.config_moved)}, old qemu gone "
                f"{f(self.qemu_stopped)}, new qemu {f(self.qemu_started)})")


@dataclass
class FaultRun:
    """One fault of the guest's node, measured and audited (`HaLab.run_fault`)."""

    name: str
    victim: str
    survivor: str
    timeline: Timeline
    max_copies: int                   # simultaneous QEMU copies seen (must be <= 1)
    acked: int                        # acknowledged sequence-number writes
    lost: list[int]                   # acknowledged ones missing on the survivor

    @property
    def boot(self) -> float | None:
        tl = self.timeline
        if tl.answered is None or tl.qemu_started is None:
            return None
        return tl.answered - tl.qemu_started


class HaLab:
    """A LabCluster with BMCs and a client, plus one HA guest on a replicated disk."""

    def __init__(self, base: str = "198.20", lab_id: str | None = None,
                 workdir: Path | None = None, name: str = "halab", vmid: int = 100,
                 memory: int = 128, witness: str | None = "w") -> None:
        # witness=None: two nodes alone (expected votes 2; a link cut leaves nobody quorate)
        self.cluster = LabCluster(base=base, lab_id=lab_id, workdir=workdir, name=name,
                                  witness=witness, bmc=True, client=True)
        self.vmid = vmid
        self.sid = f"vm:{vmid}"
        self.memory = memory
        self.volume = f"vm-{vmid}-disk-0"
        self.image: dict[str, str] = {}
        self._netem_loss: dict[str, float] = {}   # node -> loss of its iptables rules

    # ------------------------------------------------------------ lifecycle
    @property
    def nodes(self) -> tuple[str, ...]:
        return self.cluster.nodes

    @property
    def guest_ip(self) -> str:
        return self.cluster.guest_ip(0)

    @property
    def client_netns(self) -> str:
        return self.cluster.lab.host(CLIENT).netns

    def start(self) -> None:
        self.cluster.start()
        try:
            self.image = self.cluster.install_guest_image()
            self.configure_fencing()
        except BaseException:
            self.cluster.stop()
            raise

    def stop(self) -> None:
        self.cluster.stop()

    def __enter__(self) -> HaLab:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------ etcd, straight
    def etcd(self, fn: Callable[[Any], Any], via: str | None = None) -> Any:
        """Run `await fn(store)` against the etcd member of `via` (default: the witness)."""
        from binome.store.client import Store

        host = via or self.cluster.witness or self.nodes[0]
        pki = self.cluster.state_dir(host) / "pki"

        async def run() -> Any:
            store = Store.for_url(f"https://{self.cluster.address(host)}:2379",
                                  ca=pki / "ca.pem", cert=pki / "node.pem",
                                  key=pki / "node.key", timeout=5.0)
            try:
                return await fn(store)
            finally:
                await store.close()

        return asyncio.run(run())

    def configure_fencing(self, nodes: tuple[str, ...] | None = None) -> None:
        """Each node's IPMI fence device (its BMC) in `/binome/ha/fence/<node>`."""
        async def put(store: Any) -> None:
            devices = FenceDevices(store)
            for n in nodes or self.nodes:
                await devices.overwrite(n, self.cluster.fence_config(n))
        self.etcd(put)

    def remove_fencing(self, node: str) -> None:
        async def delete(store: Any) -> None:
            with contextlib.suppress(FenceDeviceError):   # none: nothing to remove
                await FenceDevices(store).remove(node)
        self.etcd(delete)

    def cluster_log(self, since: float = 0.0) -> list[dict[str, Any]]:
        """Cluster log entries (oldest first) with `t`: the microsecond time of the entry id."""
        async def read(store: Any) -> list[Any]:
            return await store.get_prefix(keys.CLUSTER_LOG)
        out = []
        for e in self.etcd(read):
            entry = e.value if isinstance(e.value, dict) else None
            if not entry or "uid" not in entry:
                continue
            with contextlib.suppress(ValueError):
                entry = {**entry, "t": int(entry["uid"].split("-", 1)[0]) / 1e6}
                if entry["t"] >= since:
                    out.append(entry)
        return sorted(out, key=lambda e: e["t"])

    def daemon_log(self, since: float, components: tuple[str, ...] = (
            "guest", "ha", "volumes", "qemu", "settle")) -> str:
        """Every node's binomed log lines since `since` (epoch seconds) from the components
        named (prefixes), merged in time order: what a failed lab assertion prints so that
        a rare failure in CI can be read without the lab's files."""
        lines: list[tuple[str, str]] = []
        for node in self.nodes:
            path = self.cluster.state_dir(node) / "log" / "binomed.log"
            try:
                text = path.read_text(errors="replace")
            except OSError:
                continue
            for line in text.splitlines():
                ts = line[3:26] if line.startswith("ts=") else ""
                try:
                    t = time.mktime(time.strptime(ts[:19], "%Y-%m-%dT%H:%M:%S")) + float(
                        "0" + ts[19:])
                except ValueError:
                    continue
                comp = line.partition(" component=")[2].partition(" ")[0]
                if t >= since and comp.startswith(components):
                    lines.append((ts, line))
        return "\n".join(line for _ts, line in sorted(lines))

    def timeline(self, fault: float, victim: str, probe: HttpProbe | None = None,
                 watch: QemuWatch | None = None, survivor: str | None = None) -> Timeline:
        """Detect / fence / recovery times of a fault of `victim`, from the cluster log."""
        tl = Timeline(fault)
        for e in self.cluster_log(since=fault - 1.0):
            msg, t = str(e.get("msg", "")), e["t"] - fault
            if e.get("tag") == "ha" or "volume" in msg:
                tl.lines.append(f"{t:+7.2f}s {e.get('node')}: {msg}")
            if tl.detect is None and f"node {victim}: online -> unknown" in msg:
                tl.detect = t
            if tl.fence is None and f"node {victim}: fenced (" in msg:
                tl.fence = t
                tl.fenced_by = msg.split("fenced (", 1)[1].split(":", 1)[0]
            if (tl.config_moved is None and f"service {self.sid}:" in msg
                    and f"({victim} -> " in msg):
                tl.config_moved = t
        if watch is not None:
            stopped = watch.stopped_at(victim, fault)
            tl.qemu_stopped = None if stopped is None else stopped - fault
        if watch is not None and survivor is not None:
            started = watch.started_at(survivor, fault)
            tl.qemu_started = None if started is None else started - fault
        if probe is not None:
            answered = probe.answered_again(fault)
            tl.answered = None if answered is None else answered - fault
        return tl

    # ------------------------------------------------------------ the HA guest
    def create_ha_guest(self, node: str | None = None, timeout: float = 180.0,
                        guest_name: str = "hag") -> None:
        """Replicated storage, the guest (disk `repl:1`, NIC on vmbr0), HA `started`."""
        c = self.cluster
        node = node or self.nodes[0]
        r = c.cli(node, "storage", "add", "repl", "--type", "replicated", "--content",
                  "images", check=False)
        if r.returncode != 0 and "already" not in r.stdout + r.stderr:
            raise LabClusterError(f"storage add repl failed: {r.stdout}{r.stderr}")
        c.cli(node, "vm", "create", str(self.vmid), "--name", guest_name, "--memory",
              str(self.memory), "--net0", "virtio,bridge=vmbr0", "--virtio0", "repl:1",
              "--kernel", self.image["kernel"], "--initrd", self.image["initrd"],
              "--append", c.guest_cmdline(0, guest_name), "--vga", "serial0")
        c.cli(node, "ha", "add", self.sid, "--state", "started")
        self.wait_serving(timeout)
        self.wait_in_sync(timeout)

    def wait_serving(self, timeout: float = 120.0) -> None:
        def answers() -> bool:
            r = self.cluster.lab.host(CLIENT).run(
                ["curl", "-s", "-f", "--max-time", "2", f"http://{self.guest_ip}/cgi-bin/status"],
                check=False, capture_output=True, text=True)
            return r.returncode == 0
        wait_until(answers, timeout, f"{self.sid} answering HTTP", interval=0.5)

    def volume_states(self, node: str) -> dict[str, Any] | None:
        try:
            vols = self.cluster.json(node, "volume", "list")
        except (LabClusterError, ValueError):
            return None
        return next((v for v in vols if v.get("name") == self.volume), None)

    def in_sync(self) -> bool:
        for n in self.nodes:
            st = self.volume_states(n)
            if not st or st.get("cstate") != "Connected" or st.get("disk") != "UpToDate" \
                    or st.get("peer_disk") != "UpToDate":
                return False
        return True

    def wait_in_sync(self, timeout: float = 120.0) -> None:
        wait_until(self.in_sync, timeout, f"{self.volume} in sync on both nodes", 1.0)

        def unmarked(store: Any) -> Any:
            return store.get_value(f"/binome/volumes/{self.volume}/fencing")
        wait_until(lambda: not ((self.etcd(unmarked) or {}).get("outdated")), 30,
                   f"{self.volume}: Outdated marks cleared", 0.5)

    def backing(self, node: str) -> Path:
        return self.cluster.state_dir(node) / "replica" / "volumes" / self.volume / "data.img"

    def ha_service(self, via: str | None = None) -> dict[str, Any]:
        """The guest's entry of `binome ha status` (on `via`, default the witness)."""
        host = via or self.cluster.witness or self.nodes[0]
        try:
            entries = self.cluster.json(host, "ha", "status")
        except (LabClusterError, ValueError):
            return {}
        return next((e for e in entries if e.get("sid") == self.sid), {})

    def guest_node(self) -> str | None:
        """Where QEMU of the guest runs now (None: nowhere)."""
        running = QemuWatch(self.cluster, self.vmid).running_on()
        return running[0] if len(running) == 1 else None

    def other(self, node: str) -> str:
        return next(n for n in self.nodes if n != node)

    # ------------------------------------------------------------ probes
    @contextlib.contextmanager
    def probes(self, writer: bool = True) -> Iterator[tuple[HttpProbe, SeqWriter | None,
                                                              QemuWatch]]:
        """An HttpProbe, a SeqWriter (optional) and a QemuWatch, running for the block."""
        probe = HttpProbe(self.client_netns, self.guest_ip)
        seq = SeqWriter(self.client_netns, self.guest_ip,
                        first=int(time.time() * 10) % 100000) if writer else None
        watch = QemuWatch(self.cluster, self.vmid)
        probe.start()
        try:
            if seq is not None:
                seq.start()
            watch.start()
            yield probe, seq, watch
        finally:
            watch.stop()
            if seq is not None:
                seq.stop()
            probe.stop()

    def run_fault(self, fault: Callable[[str], Any], name: str,
                  timeout: float = 60.0) -> FaultRun:
        """Fault the guest's node with `fault(node)` while the probes run; wait until a
        new instance answers on the other node and a few writes are acknowledged there."""
        victim = self.guest_node()
        if victim is None:
            raise LabClusterError(f"{self.sid} is not running (exactly once) anywhere")
        survivor = self.other(victim)
        with self.probes() as (probe, seq, watch):
            assert seq is not None
            wait_until(lambda: seq.acked and probe.ok_now(), 30, "probe and writer running")
            before = len(seq.acked)
            wait_until(lambda: len(seq.acked) >= before + 3, 30, "writes before the fault")
            t0 = time.time()
            fault(victim)
            wait_until(lambda: probe.answered_again(t0), timeout,
                       f"{self.sid} answering again after {name}", 0.1)
            wait_until(lambda: len([a for a in seq.acked if a[1] > t0]) >= 3, 30,
                       "writes acknowledged by the recovered guest")
        tl = self.timeline(t0, victim, probe, watch, survivor)
        return FaultRun(name, victim, survivor, tl, watch.max_copies, len(seq.acked),
                        seq.missing(self.backing(survivor)))

    # ------------------------------------------------------------ faults
    def cut_links(self, node: str) -> None:
        """Cut the node's cluster and replication links (the VM LAN and mgmt stay)."""
        self.cluster.lab.link_down(node, "cluster")
        self.cluster.lab.link_down(node, "replication")

    def restore_links(self, node: str) -> None:
        for net in ("cluster", "replication"):
            self.cluster.lab.link_up(node, net)

    def power_off(self, node: str) -> None:
        """Chassis power off through the node's BMC (IPMI from the root namespace)."""
        result = asyncio.run(self.cluster.ipmi(node).power_off())
        if not result.ok:
            raise LabClusterError(f"power off of {node} through its BMC failed: {result.detail}")

    def power_on(self, node: str) -> None:
        result = asyncio.run(self.cluster.ipmi(node).power_on())
        if not result.ok:
            raise LabClusterError(f"power on of {node} through its BMC failed: {result.detail}")

    def kill_bmc(self, node: str) -> None:
        self.cluster.kill_bmc(node)

    def daemon_pid(self, node: str) -> int | None:
        """binomed of `node` (found in its namespace by its --state-dir argument)."""
        return binomed_pid(self.cluster.lab.host(node).netns, self.cluster.state_dir(node))

    def pause_daemon(self, node: str) -> int:
        pid = self.daemon_pid(node)
        if pid is None:
            raise LabClusterError(f"binomed of {node} is not running")
        os.kill(pid, signal.SIGSTOP)
        return pid

    def resume_daemon(self, pid: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)

    def node_online(self, node: str) -> bool:
        try:
            nodes = self.cluster.json(self.cluster.witness or self.other(node),
                                      "cluster", "nodes")
        except (LabClusterError, ValueError):
            return False
        return any(n.get("name") == node and n.get("online") for n in nodes)

    def restore(self, node: str, timeout: float = 120.0, reset: bool = False) -> None:
        """Bring a faulted node back (BMC restarted, links up, powered on if it is off) and
        wait until its volume is in sync again, by itself.

        Nothing is reconnected or demoted here: a self-fenced node that still runs
        (links cut, daemon paused) gives up the Primary role of its stale copy and
        resyncs by itself (`ha.agent.executor.release_fenced_volumes`), the
        survivor reconnects after a recovery that disconnected it, and a node
        powered on comes up Secondary and resyncs. `reset=True` power-cycles the
        node through its BMC first (a hardware reset) for a scenario that needs one.
        """
        lab = self.cluster
        if node not in lab.bmcs:
            lab.start_bmc(node)
        if reset and (self.daemon_pid(node) is not None or netns_pids(lab.lab.host(node).netns)):
            self.power_off(node)
        self.restore_links(node)
        if self.daemon_pid(node) is None:
            if netns_pids(lab.lab.host(node).netns):
                self.power_off(node)   # what is left of a node without its daemon
            self.power_on(node)
        lab._wait_api(node, timeout=60)
        wait_until(lambda: self.node_online(node), timeout, f"{node} online again", 0.5)
        self.wait_in_sync(timeout)

    def digest(self, node: str) -> str:
        """sha256 of the volume's data area (the backing file) on `node`."""
        h = hashlib.sha256()
        with open(self.backing(node), "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        return h.hexdigest()

    def copies_equal(self, timeout: float = 30.0) -> str:
        """Wait until both backing files have the same checksum (the survivor's guest may
        have a write in flight at the first read); returns it."""
        a, b = self.nodes[0], self.nodes[1]
        return wait_until(lambda: (d := self.digest(a)) == self.digest(b) and d, timeout,
                          f"{self.volume}: identical copies on {a} and {b}", 1.0)

    def wait_resynced(self, node: str, timeout: float = 120.0) -> float:
        """Wait until `node`'s copy is UpToDate Secondary, connected to an UpToDate Primary
        (no admin command); returns the seconds it took."""
        began = time.monotonic()

        def done() -> bool:
            st = self.volume_states(node)
            if not st:
                return False
            return st.get("role") == "Secondary" and st.get("disk") == "UpToDate" \
                and st.get("cstate") == "Connected" and st.get("peer_disk") == "UpToDate" \
                and st.get("peer_role") == "Primary"
        wait_until(done, timeout, f"{self.volume} on {node} UpToDate Secondary by itself", 0.5)
        return time.monotonic() - began

    # ------------------------------------------------------------ soak faults
    def cut_replication(self, node: str) -> None:
        """Only the replication link down (etcd, leases and the CRM see nothing)."""
        self.cluster.lab.link_down(node, "replication")

    def _peers(self, node: str) -> list[tuple[str, str]]:
        """(peer, network) pairs the node talks to the cluster over."""
        lab = self.cluster
        pairs = [(p, "cluster") for p in lab.hosts if p != node]
        if node in self.nodes:
            pairs.append((self.other(node), "replication"))
        return pairs

    def cut_one_way(self, node: str) -> None:
        """The node's outgoing cluster and replication packets are dropped (at the peers'
        input); it still hears everybody. Undone by `heal_one_way` (or the lab's teardown,
        which deletes the namespaces with their rules)."""
        for peer, net in self._peers(node):
            self.cluster.lab.partition(node, peer, net, one_way=True)

    def heal_one_way(self, node: str) -> None:
        for peer, net in self._peers(node):
            self.cluster.lab.heal(node, peer, net)

    def _link_ends(self, node: str) -> list[tuple[list[str], str]]:
        """Both ends of the node's cluster and replication links, as (argv prefix to run a
        command there, device): the bridge port in the root namespace (traffic to the
        node) and the interface inside the node (traffic from it)."""
        host = self.cluster.lab.host(node)
        out: list[tuple[list[str], str]] = []
        for net in ("cluster", "replication"):
            if net in host.veths:
                out.append(([], host.veths[net]))
                out.append((host.exec_argv([]), host.interfaces[net]))
        return out

    def netem(self, node: str, loss_pct: float, delay_ms: int, jitter_ms: int = 0) -> str:
        """Loss and delay on the node's links, each direction; returns the mode used.

        `tc netem` where the kernel has it (`netem`). A kernel without sch_netem (this
        machine's) gets the closest it has (`statistic+tbf`): random loss by iptables'
        `statistic` match inside the node (INPUT and OUTPUT of each link), and a `tbf`
        rate cap of 1 mbit/s whose queue may hold a packet up to `delay_ms` (queueing
        delay under load, not a fixed one). Undone by `clear_netem`; the qdiscs and
        rules also go with the veths and the namespace when the lab is torn down."""
        ends = self._link_ends(node)
        try:
            for prefix, dev in ends:
                cmd = [*prefix, "tc", "qdisc", "replace", "dev", dev, "root", "netem",
                       "delay", f"{delay_ms}ms", *([f"{jitter_ms}ms"] if jitter_ms else []),
                       "loss", f"{loss_pct:g}%"]
                subprocess.run(cmd, check=True, capture_output=True, text=True)
            return "netem"
        except subprocess.CalledProcessError as exc:
            if "unknown" not in (exc.stderr or "").lower():
                self.clear_netem(node)
                raise
        for prefix, dev in ends:
            subprocess.run([*prefix, "tc", "qdisc", "replace", "dev", dev, "root", "tbf",
                            "rate", "1mbit", "burst", "32kbit", "latency", f"{delay_ms}ms"],
                           check=True, capture_output=True)
        for rule in self._loss_rules(node, loss_pct):
            subprocess.run([*rule[0], "iptables", "-w", "-I", *rule[1]], check=True,
                           capture_output=True)
        self._netem_loss[node] = loss_pct
        return "statistic+tbf"

    def _loss_rules(self, node: str, loss_pct: float) -> list[tuple[list[str], list[str]]]:
        host = self.cluster.lab.host(node)
        match = ["-m", "statistic", "--mode", "random", "--probability",
                 f"{loss_pct / 100:.3f}", "-j", "DROP"]
        rules = []
        for net in ("cluster", "replication"):
            if net in host.interfaces:
                ifname = host.interfaces[net]
                rules.append((host.exec_argv([]), ["INPUT", "-i", ifname, *match]))
                rules.append((host.exec_argv([]), ["OUTPUT", "-o", ifname, *match]))
        return rules

    def clear_netem(self, node: str) -> None:
        for prefix, dev in self._link_ends(node):
            subprocess.run([*prefix, "tc", "qdisc", "del", "dev", dev, "root"], check=False,
                           capture_output=True)
        loss = self._netem_loss.pop(node, None)
        if loss is not None:
            for prefix, rule in self._loss_rules(node, loss):
                subprocess.run([*prefix, "iptables", "-w", "-D", *rule], check=False,
                               capture_output=True)

    def powered_on(self, node: str) -> bool:
        """What the node's BMC reports: any process left in its namespace."""
        try:
            return bool(netns_pids(self.cluster.lab.host(node).netns))
        except FileNotFoundError:
            return False

    def process_pid(self, host: str, what: str) -> int | None:
        """`binomed`, `engine` (the volume engine) or `etcd` (the member) of a lab host:
        found in its namespace by its argv, which names the host's state dir."""
        if what == "binomed":
            return self.daemon_pid(host)
        state = str(self.cluster.state_dir(host)).encode()

        def match(argv: list[bytes]) -> bool:
            if not any(a.startswith(state) for a in argv):
                return False
            if what == "engine":
                return b"binome.storage.replica" in argv
            return what == "etcd" and argv[0].endswith(b"etcd") and b"--data-dir" in argv
        return netns_pid_matching(self.cluster.lab.host(host).netns, match)

    def kill9(self, host: str, what: str, timeout: float = 10.0) -> int:
        """SIGKILL one process of a host (`process_pid`) and wait until it is gone."""
        pid = self.process_pid(host, what)
        if pid is None:
            raise LabClusterError(f"{what} of {host} is not running")
        os.kill(pid, signal.SIGKILL)

        def gone() -> bool:
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                return True
            return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")
        wait_until(gone, timeout, f"{what} of {host} (pid {pid}) gone", 0.02)
        return pid

    def start_daemon(self, host: str) -> None:
        """binomed of a host started again (same argv) after it was killed; its API up."""
        self.cluster.start_daemon(host)
