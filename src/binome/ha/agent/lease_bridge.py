"""The node lease across a crash of binomed: kept alive from the restarted daemon's first
instant until its HA agent has taken over.

Owns the lease record file (`<run_dir>/ha-lease.json`) and, for the few seconds of a
daemon restart, the node's lease renewals, heartbeat writes and watchdog deadline.

Why. binomed's etcd member dies with it (parent-death signal), and the self-fence
supervisor, which outlives it on purpose, kills the node's HA guests
`self_fence_deadline` (3.8 s) after the last renewal. A restarted daemon needs longer
than that to import its code, start its member, catch up and run its first LRM round on
a loaded two-core node, so a `kill -9` or a crash of binomed alone used to kill healthy
guests, and a restart on a node without HA guests let its lease expire, which gets the
node fenced. PVE's LRM lives with a 60 s watchdog for this; binome keeps its short
deadline (fast failover) and bridges the restart instead.

How. While the agent runs, its keeper thread saves the record after a renewal changed
it: the lease id, the heartbeat key, every member's client URL, the TLS files, the
watchdog files and the timers. `binomed` reads the record before anything else (this
module imports only the standard library and the watchdog's file protocol, so it runs
a fraction of a second after exec) and, if the lease is still alive, renews it through
the etcd members' JSON gateway (`/v3/lease/keepalive`, `/v3/kv/put`) every keepalive
interval, rewrites the heartbeat key bound to it, and moves an armed watchdog's
deadline to the send time of that renewal plus the self-fence deadline: exactly the
keeper's rule, so the guarantee the CRM relies on ("the guests of a node whose lease can
have expired are already dead") is unchanged. The new cluster monitor adopts the same
lease instead of granting a new one, so keys bound to it (alive, stats, the manager
lock of a master) survive too.

It stops for good, and never touches the watchdog again, as soon as: the HA agent
writes the watchdog itself (its first arm or disarm: `stop()`), or renews the lease
itself while the watchdog is not armed (a node without HA guests), the lease is gone
(expired or revoked: a clean stop revokes it), the supervisor has fired (the guests
are dead; the restarted LRM deals with it as with any fire), the record is older than
the lease could be, or `MAX_BRIDGE` seconds have passed (a daemon that cannot start its
agent by then must not keep guests alive on a lease nobody else can act on).
A node cut off from the quorum reaches no member: nothing is renewed and the watchdog
fires as before.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import logging
import ssl
import threading
import time
import urllib.parse
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from binome import durable
from binome.fence.watchdog import Watchdog

log = logging.getLogger("binome.ha")

RECORD_NAME = "ha-lease.json"
MAX_BRIDGE = 30.0          # seconds: the agent takes over well before (a few seconds)
REQUEST_TIMEOUT = 0.5      # per gateway request: a dead member must not eat the interval


@dataclass
class LeaseRecord:
    """What a restarted daemon needs to keep its lease alive, saved by the keeper."""

    node: str
    lease: int
    heartbeat_key: str
    urls: list[str]                 # every member's client URL, this node's first
    ca: str
    cert: str
    key: str
    watchdog_state: str
    watchdog_pid: str
    keepalive_interval: float
    self_fence_deadline: float
    lease_ttl: float
    saved_at: float = field(default_factory=time.time)   # wall clock: survives the restart

    def same_as(self, other: LeaseRecord | None) -> bool:
        """Equal but for the save time (the keeper rewrites only on a real change)."""
        if other is None:
            return False
        mine, theirs = asdict(self), asdict(other)
        mine.pop("saved_at")
        theirs.pop("saved_at")
        return mine == theirs


def record_path(run_dir: Path) -> Path:
    return run_dir / RECORD_NAME


def save_record(path: Path, record: LeaseRecord) -> None:
    # run_dir is a tmpfs in production: a reboot forgets it, and so it must (the lease
    # of a rebooted node's previous life is never adopted); no fsync needed for that
    durable.write_json(path, asdict(record), mode=0o600, sync=False)


def load_record(path: Path, now: float | None = None) -> LeaseRecord | None:
    """The saved record, or None if absent, unreadable or older than its lease can be."""
    try:
        data = json.loads(path.read_text())
        record = LeaseRecord(**data)
    except (OSError, ValueError, TypeError):
        return None
    now = time.time() if now is None else now
    if not 0 <= now - record.saved_at <= 1.5 * record.lease_ttl:
        # the keeper saves it again at least every lease_ttl / 2 while it renews: an
        # older record belongs to a daemon that stopped renewing longer ago than its
        # lease lives (a younger one may still be dead: etcd has the last word)
        return None
    return record


def forget_record(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


class GatewayError(Exception):
    """A member did not answer the request (down, cut off, or refused it)."""


class LeaseGone(Exception):
    """etcd says the lease does not exist any more (expired or revoked)."""


class LeaseBridge:
    """Renews a saved lease from a thread of its own until `stop()` or a stop condition."""

    def __init__(self, record: LeaseRecord) -> None:
        self.record = record
        self.renewals = 0
        self.extended = 0            # watchdog deadlines moved
        self.started_at = 0.0
        self.ended = ""              # why it stopped ("" while running)
        # whether the watchdog was armed at the last renewal (None: not known yet): when
        # it was not, the bridge only carries the lease, and the agent's keeper ends it
        # at its own first renewal instead of at a watchdog write that may never come
        self.guarding: bool | None = None
        self._lock = threading.Lock()    # held around each watchdog write and by stop()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._ssl = self._context()
        self._watchdog = Watchdog(record.watchdog_state, record.watchdog_pid, device=None)
        self._preferred = 0          # index into urls of the member that answered last

    def _context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.record.ca)
        ctx.load_cert_chain(self.record.cert, self.record.key)
        # members are addressed by IP and their certificates name their IPs; the CA is
        # the cluster's own, so verification (not the name) is what authenticates them
        ctx.check_hostname = False
        return ctx

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self.started_at = time.monotonic()
        log.warning("%s: binomed restarted while its lease %x may still be alive: renewing "
                    "it through the etcd members until the HA agent takes over",
                    self.record.node, self.record.lease)
        self._thread = threading.Thread(target=self._run, name="ha-lease-bridge",
                                        daemon=True)
        self._thread.start()

    def stop(self, why: str = "the HA agent took over") -> None:
        """No renewal or watchdog write from the bridge after this returns."""
        with self._lock:
            if not self._stopped.is_set():
                self._end(why)

    @property
    def running(self) -> bool:
        return self._thread is not None and not self._stopped.is_set()

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def _end(self, why: str) -> None:
        # the caller holds _lock
        self.ended = why
        self._stopped.set()
        elapsed = time.monotonic() - self.started_at
        log.warning("%s: lease bridge stopped after %.1f s, %d renewals, %d watchdog "
                    "deadlines moved: %s", self.record.node, elapsed, self.renewals,
                    self.extended, why)

    # ------------------------------------------------------------ the loop

    def _run(self) -> None:
        interval = self.record.keepalive_interval
        while not self._stopped.is_set():
            began = time.monotonic()
            if began - self.started_at > MAX_BRIDGE:
                self.stop(f"the HA agent did not take over within {MAX_BRIDGE:.0f} s; the "
                          "watchdog keeps its last deadline")
                break
            try:
                self.renew_once(began)
            except LeaseGone:
                self.stop("the lease is gone (expired or revoked): nothing to bridge")
                break
            except GatewayError as exc:
                log.info("%s: lease bridge: no member renewed the lease: %s",
                         self.record.node, exc)
                self._stopped.wait(0.2)
                continue
            except Exception:   # never silent, never a half-done watchdog write
                log.exception("%s: lease bridge failed", self.record.node)
                self.stop("internal error")
                break
            self._stopped.wait(max(0.0, began + interval - time.monotonic()))

    def renew_once(self, sent: float) -> None:
        """One renewal: lease keep-alive, heartbeat, then the watchdog deadline."""
        rec = self.record
        ttl = self._keepalive()
        if ttl <= 0:
            raise LeaseGone
        beat = {"seq": self.renewals, "time": round(time.time(), 3)}
        self._call("/v3/kv/put", {
            "key": _b64(rec.heartbeat_key),
            "value": _b64(json.dumps(beat, sort_keys=True, separators=(",", ":"))),
            "lease": str(rec.lease)})
        self.renewals += 1
        with self._lock:
            if self._stopped.is_set():
                return
            status = self._watchdog.read_status()
            if status.fired:
                self._end("the watchdog had already fired: the guests it guarded are dead")
                return
            state = _read_state(Path(rec.watchdog_state))
            self.guarding = bool(state.get("armed"))
            if state.get("armed") and isinstance(state.get("vmids"), list):
                self._watchdog.arm_sync(sent + rec.self_fence_deadline, state["vmids"],
                                        state.get("qemu_run_dir", ""))
                self.extended += 1

    def _keepalive(self) -> int:
        answer = self._call("/v3/lease/keepalive", {"ID": str(self.record.lease)})
        result = answer.get("result", answer)
        if "error" in answer and not result:
            raise GatewayError(str(answer["error"]))
        try:
            return int(result.get("TTL", 0))
        except (TypeError, ValueError):
            return 0

    def _call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST to the first member that answers, starting with the last that did."""
        urls = self.record.urls
        errors = []
        for i in range(len(urls)):
            idx = (self._preferred + i) % len(urls)
            try:
                answer = self._post(urls[idx], path, body)
            except (OSError, http.client.HTTPException, ValueError) as exc:
                errors.append(f"{urls[idx]}: {exc}")
                continue
            self._preferred = idx
            return answer
        raise GatewayError("; ".join(errors) or "no member known")

    def _post(self, url: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        parts = urllib.parse.urlsplit(url)
        conn = http.client.HTTPSConnection(parts.hostname or "", parts.port or 2379,
                                           timeout=REQUEST_TIMEOUT, context=self._ssl)
        try:
            conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
            resp = conn.getresponse()
            raw = resp.read()
        finally:
            conn.close()
        # the keep-alive stream answers one JSON object per line
        text = raw.decode(errors="replace").strip().splitlines()
        answer = json.loads(text[0]) if text else {}
        if not isinstance(answer, dict):
            raise ValueError("not a JSON object")
        if resp.status != 200:
            msg = str(answer.get("error") or answer.get("message") or resp.reason)
            if "lease not found" in msg:
                raise LeaseGone
            raise http.client.HTTPException(f"HTTP {resp.status}: {msg}")
        err = answer.get("error")
        if isinstance(err, dict) and "lease not found" in str(err.get("message", "")):
            raise LeaseGone
        return answer


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _read_state(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
