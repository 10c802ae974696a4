"""The node's etcd member process: started as binomed's child, supervised, stopped by pid.

etcd is the consensus engine; binome never implements its own. The member runs
with mutual TLS on both peer and client URLs using the node certificate issued
by the cluster CA. It is started through `setpriv --pdeathsig SIGTERM` so a
crashed daemon never leaves an orphan member behind (not `preexec_fn`: forking
Python code in a process with gRPC threads can abort the child), and a pidfile
lets a restarted daemon clean up a member that survived anyway (checked by its
command line, never by name). A member that etcd itself reports as removed from
the cluster is not restarted: the node must rejoin.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("binome.etcd")

REMOVED_MARKERS = ("has already been removed", "permanently removed", "member has been removed",
                   "data-dir used by this member must be removed")


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

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc and self._proc.returncode is None else None

    def argv(self, *, initial_cluster: str, state: str, token: str,
             force_new_cluster: bool = False) -> list[str]:
        s = self.spec
        argv = [
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
        self.pidfile.write_text(f"{self._proc.pid}\n")
        log.info("etcd member started pid=%d name=%s", self._proc.pid, self.spec.name)

    async def _supervise(self) -> None:
        backoff = 0.5
        while not self._stopping:
            assert self._proc is not None
            code = await self._proc.wait()
            if self._stopping:
                return
            self.restarts += 1
            if any(marker in self._log_tail() for marker in REMOVED_MARKERS):
                self.removed = True
                log.error("etcd member was removed from the cluster; not restarting it "
                          "(rejoin with 'binome cluster join --force')")
                return
            log.error("etcd member exited code=%s; restarting in %.1fs", code, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 10.0)
            if not self._stopping:
                await self._spawn()

    async def stop(self, timeout: float = 10.0) -> None:
        self._stopping = True
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
