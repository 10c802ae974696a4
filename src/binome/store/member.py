"""The node's etcd member process: started as binomed's child, supervised, stopped by pid.

etcd is the consensus engine; binome never implements its own. The member runs
with mutual TLS on both peer and client URLs using the node certificate issued
by the cluster CA. It is started through `setpriv --pdeathsig SIGTERM` so a
crashed daemon never leaves an orphan member behind (not `preexec_fn`: forking
Python code in a process with gRPC threads can abort the child), and a pidfile
lets a restarted daemon clean up a member that survived anyway (checked by its
command line, never by name). A member that etcd itself reports as removed from
the cluster is not restarted: the node must rejoin. It runs at `nice -n -10`
(ETCD_NICE, through `nice`, before `setpriv`): an election or a lease renewal must
get the CPU when TCG guests and resyncs take it all, or a node misses its
self-fence deadline for want of a leader (docs/ha.md 5.1); corosync runs
real-time for the same reason. Where raising it is not allowed, `nice` says so in
the member's log and etcd runs at normal priority.

Its output goes to `<state>/etcd.log`, opened in append mode; etcd 3.4 cannot rotate
its own log, so `rotate_log` (every ETCD_LOG_CHECK seconds while it runs) copies a log
past ETCD_LOG_BYTES to `etcd.log.1` (older ones shifted, ETCD_LOG_KEPT kept) and
truncates it: etcd's next append then starts the file again (O_APPEND), with no hole.
Lines written between the copy and the truncation are lost, as with logrotate's
copytruncate; piping the output through binomed instead would let a stalled event loop
block etcd's writes, and with them the member.

It also owns the *leadership preference* (pure, no I/O): `witness_transfer_target`
decides whether the etcd leader should hand leadership to the witness's member,
`LeadershipPreference` when it may try (settling, backoff, no flapping). The
cluster service's leadership loop does the I/O.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from binome import durable

# the etcd member's niceness (see the module's docstring)
ETCD_NICE = -10
# the etcd log's bound: a file past ETCD_LOG_BYTES is rotated, ETCD_LOG_KEPT old ones kept
ETCD_LOG_BYTES = 8 << 20
ETCD_LOG_KEPT = 2
ETCD_LOG_CHECK = 60.0
log = logging.getLogger("binome.etcd")

REMOVED_MARKERS = ("has already been removed", "permanently removed", "member has been removed",
                   "data-dir used by this member must be removed")


# While the local member is down this node cannot renew its HA lease, and a restart
# that waits longer than the self-fence deadline costs a power cycle of a healthy
# node: restart at once, back off only while it keeps crashing, and forget old
# crashes once it has run for a while (a soak found the delay stuck at its cap after
# a few kills spread over half an hour, and the next kill self-fenced the node).
RESTART_DELAY_MIN, RESTART_DELAY_MAX = 0.1, 10.0
STABLE_RUN = 30.0   # seconds up after which the member counts as healthy again


def restart_delay(previous: float | None, ran_for: float) -> float:
    """The pause before restarting a member that exited after running `ran_for` s."""
    if previous is None or ran_for >= STABLE_RUN:
        return RESTART_DELAY_MIN
    return min(previous * 2, RESTART_DELAY_MAX)


@dataclass(frozen=True)
class MemberSpec:
    name: str
    data_dir: Path
    peer_url: str
    client_url: str
    ca: Path
    cert: Path
    key: Path
    heartbeat_ms: int = 100
    election_ms: int = 1000


def _pid_is_member(pid: int, data_dir: Path) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"etcd" in cmdline and str(data_dir).encode() in cmdline


class EtcdMember:
    """Runs and supervises one etcd member; restarts it if it dies unexpectedly."""

    def __init__(self, spec: MemberSpec, run_dir: Path, log_path: Path) -> None:
        self.spec = spec
        self.pidfile = run_dir / "etcd.pid"
        self.log_path = log_path
        self._proc: asyncio.subprocess.Process | None = None
        self._supervisor: asyncio.Task | None = None
        self._stopping = False
        self._argv: list[str] = []
        self.restarts = 0
        self.removed = False   # etcd said this member was removed from the cluster
        self._rotator: asyncio.Task | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc and self._proc.returncode is None else None

    def argv(self, *, initial_cluster: str, state: str, token: str,
             force_new_cluster: bool = False) -> list[str]:
        s = self.spec
        argv = [
            "nice", "-n", str(ETCD_NICE),
            "setpriv", "--pdeathsig", "SIGTERM", "--",
            "etcd", "--name", s.name, "--data-dir", str(s.data_dir),
            "--listen-peer-urls", s.peer_url, "--initial-advertise-peer-urls", s.peer_url,
            "--listen-client-urls", s.client_url, "--advertise-client-urls", s.client_url,
            "--initial-cluster", initial_cluster, "--initial-cluster-state", state,
            "--initial-cluster-token", token,
            "--client-cert-auth", "--trusted-ca-file", str(s.ca),
            "--cert-file", str(s.cert), "--key-file", str(s.key),
            "--peer-client-cert-auth", "--peer-trusted-ca-file", str(s.ca),
            "--peer-cert-file", str(s.cert), "--peer-key-file", str(s.key),
            "--heartbeat-interval", str(s.heartbeat_ms),
            "--election-timeout", str(s.election_ms),
            # pre-vote (etcd 3.4: off by default): a member cut off from the leader
            # (incident 1's link flaps) only *asks* whether it could win before it
            # raises its term, so when its link comes back its higher term does not
            # depose the leader (and cost an election plus a lease extension)
            "--pre-vote",
            "--auto-compaction-mode", "revision", "--auto-compaction-retention", "10000",
            "--logger", "zap", "--log-outputs", "stderr",
        ]
        if force_new_cluster:
            argv.append("--force-new-cluster")
        return argv

    def kill_stale(self) -> None:
        """Stop a member left by a previous daemon that died without taking it along."""
        try:
            pid = int(self.pidfile.read_text())
        except (OSError, ValueError):
            return
        if _pid_is_member(pid, self.spec.data_dir):
            log.warning("stopping stale etcd member pid=%d", pid)
            os.kill(pid, signal.SIGKILL)
        self.pidfile.unlink(missing_ok=True)

    async def start(self, *, initial_cluster: str, state: str, token: str,
                    force_new_cluster: bool = False) -> None:
        self.kill_stale()
        self.spec.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._argv = self.argv(initial_cluster=initial_cluster, state=state, token=token,
                               force_new_cluster=force_new_cluster)
        self._stopping = False
        await self._spawn()
        self._supervisor = asyncio.create_task(self._supervise(), name="etcd-supervisor")
        if self._rotator is None or self._rotator.done():
            self._rotator = asyncio.create_task(self._rotate_loop(), name="etcd-log-rotation")

    async def _rotate_loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(ETCD_LOG_CHECK)
            try:
                await asyncio.to_thread(rotate_log, self.log_path)
            except OSError as exc:
                log.warning("etcd log not rotated: %s", exc)

    def clear_force(self) -> None:
        """Once a forced new cluster is up, later restarts must not force it again."""
        self._argv = [a for a in self._argv if a != "--force-new-cluster"]

    def _log_tail(self, size: int = 8192) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - size))
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    async def _spawn(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as out:
            self._proc = await asyncio.create_subprocess_exec(
                *self._argv, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out)
        self.pidfile.parent.mkdir(parents=True, exist_ok=True)
        # atomic (a reader never sees it empty); no fsync: a pid means nothing after a reboot
        durable.write_text(self.pidfile, f"{self._proc.pid}\n", sync=False)
        log.info("etcd member started pid=%d name=%s", self._proc.pid, self.spec.name)

    async def _supervise(self) -> None:
        delay: float | None = None
        while not self._stopping:
            assert self._proc is not None
            started = time.monotonic()
            code = await self._proc.wait()
            if self._stopping:
                return
            delay = restart_delay(delay, time.monotonic() - started)
            self.restarts += 1
            if any(marker in self._log_tail() for marker in REMOVED_MARKERS):
                self.removed = True
                log.error("etcd member was removed from the cluster; not restarting it "
                          "(rejoin with 'binome cluster join --force')")
                return
            log.error("etcd member exited code=%s; restarting in %.1fs", code, delay)
            await asyncio.sleep(delay)
            if not self._stopping:
                await self._spawn()

    async def stop(self, timeout: float = 10.0) -> None:
        self._stopping = True
        if self._rotator:
            self._rotator.cancel()
            self._rotator = None
        if self._supervisor:
            self._supervisor.cancel()
            try:
                await self._supervisor
            except asyncio.CancelledError:
                pass
            self._supervisor = None
        proc = self._proc
        if proc and proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), timeout)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        self.pidfile.unlink(missing_ok=True)
        self._proc = None


def rotate_log(path: Path, max_bytes: int = ETCD_LOG_BYTES, kept: int = ETCD_LOG_KEPT) -> bool:
    """Copy-truncate `path` once it is past `max_bytes`: `path.1` .. `path.<kept>` hold
    the older contents (newest first). True if it rotated. The writer must have the file
    open with O_APPEND (see the module's docstring)."""
    try:
        if path.stat().st_size <= max_bytes:
            return False
    except FileNotFoundError:
        return False
    for n in range(kept - 1, 0, -1):
        older = path.with_name(f"{path.name}.{n}")
        if older.exists():
            older.replace(path.with_name(f"{path.name}.{n + 1}"))
    shutil.copyfile(path, path.with_name(f"{path.name}.1"))
    os.truncate(path, 0)
    return True


# ---------------------------------------------------------------------- leadership preference
# The witness runs no guests, so its death needs no failover. When a node holding etcd
# leadership dies, etcd first elects a new leader (election timeout) and the new leader
# then extends every lease (etcd without lease checkpoints), which delays the dead
# node's lease expiry - and so the recovery of its guests - by both. (The witness's own
# death now costs that election instead: docs/ha.md 5.1.)

WITNESS_MAX_LAG = 100   # raft entries the witness may be behind the leader to be "caught up"


@dataclass(frozen=True)
class PeerHealth:
    """One etcd member as the leader sees it: membership, its node record, its Status."""

    member_id: int
    name: str               # "" while the member has not started yet
    role: str               # from the node record: node | witness | unknown
    state: str              # from the node record: member | joining | evicted | ""
    is_learner: bool
    status: dict[str, Any] | None   # Store.member_status() of that member; None: unreachable


def witness_transfer_target(local: dict[str, Any], peers: list[PeerHealth],
                            max_lag: int = WITNESS_MAX_LAG) -> tuple[int | None, str]:
    """The witness member the local member (the leader) should hand leadership to.

    Returns (member id, "") or (None, why not). Only the leader can move leadership
    (etcd answers "not leader" otherwise), so exactly one daemon ever acts. The
    cluster must be healthy: every member started, voting, with a finished join,
    reachable, without alarms and agreeing on the leader; the witness caught up.
    """
    me = int(local["member_id"])
    if int(local.get("leader", 0)) != me:
        return None, "not-leader"
    witnesses = sorted((p for p in peers if p.role == "witness"), key=lambda p: p.member_id)
    if not witnesses:
        return None, "no-witness"
    if any(p.member_id == me for p in witnesses):
        return None, "witness-leads"
    if not any(p.member_id == me for p in peers):
        return None, "self-not-member"
    for p in peers:
        if not p.name:
            return None, f"member-not-started:{p.member_id:x}"
        if p.is_learner:
            return None, f"learner:{p.name}"
        if p.state != "member":
            return None, f"not-joined:{p.name}"
        st = p.status
        if st is None or int(st.get("member_id", 0)) != p.member_id:
            return None, f"unreachable:{p.name}"
        if st.get("is_learner"):
            return None, f"learner:{p.name}"
        if st.get("errors"):
            return None, f"errors:{p.name}"
        if int(st.get("leader", 0)) != me:
            return None, f"leader-disagreement:{p.name}"
    leader_index = int(local.get("raft_index", 0))
    for w in witnesses:
        assert w.status is not None
        applied = int(w.status.get("raft_applied_index", w.status.get("raft_index", 0)))
        if leader_index - applied <= max_lag:
            return w.member_id, ""
    return None, "witness-behind"


class LeadershipPreference:
    """When the leader may move leadership to the witness (pure: times are passed in).

    - `settle`: the cluster must have looked healthy for that long (a member that
      just came back is not trusted on its first answer);
    - after the witness *lost* leadership it held for less than `stable` seconds,
      the next move waits `retry`, doubled for each further quick loss up to
      `cap`: a witness that keeps losing it (overloaded, flapping link) is left
      alone more and more, and once it held leadership `stable` seconds all is
      forgiven;
    - a failed MoveLeader is retried after `retry`, doubled per failure up to `cap`.
    Every daemon keeps one (all observe the same leader), only the leader acts.
    """

    def __init__(self, settle: float = 2.0, retry: float = 3.0, cap: float = 300.0,
                 stable: float = 60.0) -> None:
        self.settle, self.base, self.cap, self.stable = settle, retry, cap, stable
        self.quick_losses = 0
        self.failures = 0
        self.not_before = 0.0
        self.healthy_since: float | None = None
        self.witness_since: float | None = None

    def observe(self, now: float, witness_leads: bool) -> None:
        """Every check: whether the witness is the leader right now."""
        if witness_leads:
            if self.witness_since is None:
                self.witness_since = now
            elif now - self.witness_since >= self.stable:
                self.quick_losses = 0
            return
        if self.witness_since is not None:   # the witness just lost leadership
            if now - self.witness_since < self.stable:
                self.quick_losses += 1
            self.witness_since = None
            delay = min(self.base * 2 ** max(self.quick_losses - 1, 0), self.cap)
            self.not_before = max(self.not_before, now + delay)

    def healthy(self, now: float, ok: bool) -> None:
        """Every check on the leader: whether `witness_transfer_target` found a target."""
        if not ok:
            self.healthy_since = None
        elif self.healthy_since is None:
            self.healthy_since = now

    def may_move(self, now: float) -> bool:
        return (self.healthy_since is not None and now - self.healthy_since >= self.settle
                and now >= self.not_before)

    def moved(self, now: float, ok: bool) -> None:
        """After a MoveLeader: success resets the failure backoff, failure doubles it."""
        if ok:
            self.failures = 0
            self.witness_since = now
            self.healthy_since = None
        else:
            self.failures += 1
            self.not_before = now + min(self.base * 2 ** (self.failures - 1), self.cap)

    @property
    def delay(self) -> float:
        """The delay before the next move after a quick loss (for logs)."""
        return min(self.base * 2 ** max(self.quick_losses - 1, 0), self.cap)
