"""The guest runtime of one node: QEMU processes, their supervision, adoption and stats.

Owns the lifecycle of guest processes below the API: start (taps, the
detached QEMU, readiness), graceful shutdown (ACPI over QMP), hard stop,
reset, pause/resume, status and resource counters, watching for exits and
classifying them, and re-adopting guests after a daemon restart. It knows
nothing about VM configs, storage or tasks; the API layer hands it a
:class:`~binome.guest.spec.LaunchSpec` and turns :class:`GuestError` messages
into task errors.

Design (details in the modules named):

* Detached QEMU (``process``): each QEMU runs under a ``/bin/sh`` exit
  wrapper in its own session; killing the daemon leaves it running. The
  wrapper records QEMU's exit status, so how a guest ended is known even if
  no daemon ran at that moment.
* Everything a restarted daemon needs is on disk in ``run_dir``
  (``paths``): ``<vmid>.json`` (spec, pids, start time, taps, what was
  requested) is written before QEMU starts; ``adopt()`` reads it, checks the
  pid is alive, not reused (start time) and really our QEMU (cmdline has this
  guest's ``-pidfile``), then reconnects QMP. Dead guests are cleaned up
  (taps, sockets, state) and their exit reason recorded in ``<vmid>.exit.json``.
* Exit watching: a pidfd per QEMU in the event loop, so an exit is seen at
  once whether or not QMP is connected; the exit is then "finalized" exactly
  once (reason, taps, files, ``on_exit`` callback).
* One persistent QMP connection per guest (``qmp.QmpChannel``), reconnected
  on demand; QEMU's SHUTDOWN events on it refine the exit reason. The guest
  record itself (``running.RunningGuest``) is what ``<vmid>.json`` holds.
* Stats come from /proc (cpu, RSS, uptime), QMP ``query-blockstats`` (disk
  bytes) and the taps' counters (network bytes).
* Live migration, QEMU's side only: the target is started paused and
  incoming (``start(incoming=True)``, ``listen_incoming``), the source sends
  its state (``migrate_out``: capabilities, parameters, ``migrate``, polling
  ``query-migrate``), the target waits for it (``wait_incoming``); the QMP
  conversation and its polling are in ``qemu_migration``. Who owns
  the config, the volumes and the switch-over order is the guest service's
  business (``migration.MigrationSource.migrate_vm``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from binome.backup.incremental import BITMAP_PREFIX
from binome.guest import memory, qemu_hotplug, qemu_migration, qemu_mirror
from binome.guest.accel import cached_accel, resolve_accel
from binome.guest.agent import AgentError
from binome.guest.argv import QEMU_BINARY, build_argv
from binome.guest.errors import GuestError
from binome.guest.network import create_taps, delete_taps, tap_counters, tap_name
from binome.guest.paths import SUN_PATH_MAX, GuestPaths
from binome.guest.process import (
    CLK_TCK,
    classify_exit,
    is_alive,
    is_our_qemu,
    proc_cmdline,
    proc_rss,
    proc_stat,
    process_uptime,
    read_exitcode,
    wrapper_argv,
)
from binome.guest.qemu_migration import (
    MIGRATE_DOWNTIME_MS,
    MIGRATE_MAX_BANDWIDTH,
    MIGRATE_TIMEOUT,
)
from binome.guest.qmp import QMP_TIMEOUT
from binome.guest.running import (
    POLL,
    RunningGuest,
    log_tail,
    poll_until,
    read_json,
    spawn_detached,
    write_json,
)
from binome.guest.spec import DiskSpec, LaunchSpec, NicSpec
from binome.guest.tpm import start_swtpm, stop_swtpm

__all__ = ["GuestError", "QemuRuntime", "RuntimeStatus"]

log = logging.getLogger(__name__)

START_TIMEOUT = 30.0  # QEMU up to a QMP greeting (TCG init is ~0.1 s; disks over NBD more)
WRAPPER_GRACE = 5.0  # QEMU gone -> wrapper has written the status file and left
KILL_WAIT = 10.0

ExitCallback = Callable[[int, str], Any]

@dataclass
class RuntimeStatus:
    """What ``qm status``/``status/current`` needs from the runtime.

    ``cpu`` is Proxmox's fraction: CPU time used per wall-clock second,
    divided by the VM's vcpus (1.0 = all vcpus busy), measured since the
    previous ``status()`` call for that VM (since QEMU started on the first
    call). ``mem`` is QEMU's RSS (Proxmox reports the balloon's view; we have
    no balloon). ``netin`` is bytes into the guest, ``netout`` bytes out of it.
    For a stopped VM everything but ``exit_reason`` is zero/None; ``maxmem``
    is 0 then too (the config knows it).
    """

    vmid: int
    status: str  # running|stopped
    qmpstatus: str | None
    pid: int | None
    uptime: int
    cpu: float
    mem: int
    maxmem: int
    diskread: int
    diskwrite: int
    netin: int
    netout: int
    exit_reason: str | None


def remove_ivshmem(spec: LaunchSpec) -> None:
    """PVE's vm_stop_cleanup: the ivshmem file goes when the VM stops (VMs that still
    have it open keep their mapping; a new start gets a new file)."""
    if spec.ivshmem_path:
        with contextlib.suppress(OSError):
            os.unlink(spec.ivshmem_path)


class QemuRuntime:
    """Runs and tracks this node's QEMU guests; state lives in ``run_dir``.

    ``accel``: ``None`` probes once (cached in ``run_dir``), ``"kvm"``/``"tcg"``
    force. ``on_exit(vmid, reason)`` (optional, sync or async) is called once
    per guest exit this runtime observes, including guests ``adopt()`` finds
    dead, so the caller can write the task/cluster log.
    """

    def __init__(
        self, run_dir: Path, *, accel: str | None = None, on_exit: ExitCallback | None = None,
        qemu: str = QEMU_BINARY,
    ) -> None:
        if accel not in (None, "kvm", "tcg"):
            raise ValueError(f"accel {accel!r}: want None, 'kvm' or 'tcg'")
        self.run_dir = Path(run_dir).absolute()
        longest = GuestPaths(self.run_dir, 999_999_999).serial
        if len(str(longest)) > SUN_PATH_MAX:
            raise ValueError(f"run_dir {self.run_dir} too long for unix socket paths")
        if not self.run_dir.exists():
            self.run_dir.mkdir(parents=True, mode=0o700)
        self.qemu = qemu
        self.on_exit = on_exit
        self._accel: str | None = accel
        self._guests: dict[int, RunningGuest] = {}
        self._locks: dict[int, asyncio.Lock] = {}
        self._last_exit: dict[int, str] = {}
        self._closed = False

    # -- acceleration and command line ---------------------------------------------

    async def accel(self) -> str:
        """The accelerator guests get ("kvm"/"tcg"), probing once if not forced."""
        if self._accel is None:
            self._accel = (await resolve_accel(self.run_dir, qemu=self.qemu)).accel
        return self._accel

    def argv(self, spec: LaunchSpec) -> list[str]:
        """The QEMU argv :meth:`start` runs for ``spec`` (without the exit wrapper).

        Uses the forced or already-probed accelerator, else the cached probe
        result, else "tcg" (await :meth:`accel` first to probe).
        """
        accel = self._accel
        if accel is None:
            cached = cached_accel(self.run_dir, self.qemu)
            accel = cached.accel if cached is not None else "tcg"
        return build_argv(spec, self.run_dir, accel, qemu=self.qemu)

    def paths(self, vmid: int) -> GuestPaths:
        return GuestPaths(self.run_dir, vmid)

    def serial_socket(self, vmid: int) -> Path:
        return self.paths(vmid).serial

    def vnc_socket(self, vmid: int) -> Path:
        return self.paths(vmid).vnc

    def qmp_socket(self, vmid: int) -> Path:
        return self.paths(vmid).qmp

    def log_path(self, vmid: int) -> Path:
        return self.paths(vmid).log

    # -- queries ------------------------------------------------------------------

    def is_running(self, vmid: int) -> bool:
        g = self._guests.get(vmid)
        return g is not None and g.alive()

    def running(self) -> list[int]:
        return sorted(v for v, g in self._guests.items() if g.alive())

    def last_exit(self, vmid: int) -> str | None:
        """Why the VM's QEMU last ended (None if unknown or running)."""
        if self.is_running(vmid):
            return None
        if vmid in self._last_exit:
            return self._last_exit[vmid]
        data = read_json(self.paths(vmid).last_exit)
        return data.get("reason") if data else None

    async def status(self, vmid: int) -> RuntimeStatus:
        g = self._guests.get(vmid)
        if g is not None and not g.alive():
            await self._finalize(g)
            g = None
        if g is None:
            return RuntimeStatus(vmid, "stopped", None, None, 0, 0.0, 0, 0, 0, 0, 0, 0,
                                 self.last_exit(vmid))
        assert g.pid is not None
        st = proc_stat(g.pid)
        if g.start_ticks is None and st is not None:
            g.start_ticks = st.start_ticks
        now = time.monotonic()
        uptime = process_uptime(g.start_ticks) if g.start_ticks is not None else 0.0
        cpu = 0.0
        if st is not None:
            if g.cpu_sample is not None and now > g.cpu_sample[0]:
                used = (st.cpu_ticks - g.cpu_sample[1]) / CLK_TCK
                cpu = used / (now - g.cpu_sample[0]) / (g.spec.vcpus_online or g.spec.vcpus)
            elif uptime > 0:
                cpu = st.cpu_ticks / CLK_TCK / uptime / (g.spec.vcpus_online or g.spec.vcpus)
            g.cpu_sample = (now, st.cpu_ticks)
        qmpstatus: str | None = None
        diskread = diskwrite = 0
        try:
            qmpstatus = (await g.qmp.command("query-status", timeout=3.0))["status"]
            for entry in await g.qmp.command("query-blockstats", timeout=3.0):
                stats = entry.get("stats", {})
                diskread += int(stats.get("rd_bytes", 0))
                diskwrite += int(stats.get("wr_bytes", 0))
        except GuestError as exc:
            # A busy or wedged QMP must not make the whole status call fail.
            log.warning("VM %s: status over QMP failed: %s", vmid, exc)
        netin, netout = tap_counters(g.taps)
        return RuntimeStatus(
            vmid=vmid, status="running", qmpstatus=qmpstatus, pid=g.pid, uptime=int(uptime),
            cpu=round(max(cpu, 0.0), 6), mem=proc_rss(g.pid), maxmem=g.spec.maxmem,
            diskread=diskread, diskwrite=diskwrite, netin=netin, netout=netout,
            exit_reason=None,
        )

    # -- start --------------------------------------------------------------------

    def _lock(self, vmid: int) -> asyncio.Lock:
        return self._locks.setdefault(vmid, asyncio.Lock())

    async def start(self, spec: LaunchSpec, *, incoming: bool = False) -> int:
        """Start the guest; returns QEMU's pid once QMP answers.

        Raises GuestError for a running VM, a missing/unsuitable bridge
        (before anything is created) or a QEMU that fails to come up (with
        QEMU's own error); nothing is left behind on failure. ``incoming``:
        the target of a live migration, paused and waiting for
        :meth:`listen_incoming`.
        """
        self._check_open()
        vmid = spec.vmid
        async with self._lock(vmid):
            g = self._guests.get(vmid)
            if g is None and self.paths(vmid).state.exists():
                g = await self._adopt_one(vmid)  # adopt() was not called: do not start twice
            if g is not None:
                if g.alive():
                    raise GuestError(f"VM {vmid} already running")
                await self._finalize(g)
            accel = await self.accel()
            qemu_argv = build_argv(spec, self.run_dir, accel, qemu=self.qemu, incoming=incoming)
            paths = self.paths(vmid)
            for path in [*paths.transient(), paths.last_exit]:
                path.unlink(missing_ok=True)
            if spec.ovmf_vars_template:
                # a fresh copy per start, as PVE's temporary efivars without an efidisk0
                try:
                    shutil.copyfile(spec.ovmf_vars_template, paths.efivars)
                except OSError as exc:
                    raise GuestError(f"start failed: cannot copy the OVMF vars template "
                                     f"{spec.ovmf_vars_template}: {exc.strerror}") from None
            self._last_exit.pop(vmid, None)
            taps = [tap_name(vmid, nic.index) for nic in spec.nics]
            g = RunningGuest(spec=spec, paths=paths, taps=taps, argv=qemu_argv,
                             started_at=time.time())
            # Recorded before anything exists, so a crash from here on is cleaned by adopt().
            write_json(paths.state, g.record())
            try:
                await create_taps(vmid, spec.nics)
                if spec.tpm_state and spec.tpm_version:
                    await start_swtpm(paths, spec.tpm_state, spec.tpm_version)
                await self._spawn(g)
            except BaseException:
                await asyncio.shield(self._abort_start(g))
                raise
            self._guests[vmid] = g
            self._watch(g)
            log.info("VM %s started (pid %s, %s)", vmid, g.pid, accel)
            assert g.pid is not None
            return g.pid

    async def _spawn(self, g: RunningGuest) -> None:
        paths = g.paths
        g.popen = await asyncio.to_thread(spawn_detached,
                                          wrapper_argv(g.vmid, paths.exitcode, g.taps, g.argv),
                                          paths.log)
        g.wrapper_pid = g.popen.pid
        write_json(paths.state, g.record())
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if g.pid is None:
                g.pid = self._pid_from_pidfile(g)
                if g.pid is not None:
                    st = proc_stat(g.pid)
                    g.start_ticks = st.start_ticks if st else None
                    write_json(paths.state, g.record())
            if g.popen.poll() is not None:
                reason = classify_exit(read_exitcode(paths.exitcode), requested=None,
                                       qmp_reason=None, log_text=log_tail(paths.log))
                raise GuestError(f"start failed: {reason}")
            if g.pid is not None and paths.qmp.exists():
                with contextlib.suppress(GuestError):
                    await g.qmp.connect(quiet=True)
                    return
            if time.monotonic() > deadline:
                raise GuestError(f"start failed: QEMU not ready within {START_TIMEOUT:.0f}s")
            await asyncio.sleep(POLL)

    def _pid_from_pidfile(self, g: RunningGuest) -> int | None:
        try:
            pid = int(g.paths.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None  # not written yet (or half-written)
        st = proc_stat(pid)
        if st is None or not is_our_qemu(pid, g.paths.pidfile):
            return None
        if g.wrapper_pid is not None and st.ppid != g.wrapper_pid:
            return None
        return pid

    async def _abort_start(self, g: RunningGuest) -> None:
        """Undo a failed start: kill what runs, remove taps and files."""
        await g.qmp.disconnect()
        for pid in (g.pid, g.wrapper_pid):
            if pid is not None and is_alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if g.popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(g.popen.wait, KILL_WAIT)
        await self._wait_gone(g.pid, KILL_WAIT)
        await delete_taps(g.taps)
        await stop_swtpm(g.paths)
        remove_ivshmem(g.spec)
        for path in g.paths.transient():
            path.unlink(missing_ok=True)

    # -- exit watching and finalization ---------------------------------------------

    def _watch(self, g: RunningGuest) -> None:
        """Call :meth:`_finalize` as soon as QEMU exits (pidfd readable)."""
        assert g.pid is not None
        loop = asyncio.get_running_loop()
        try:
            g.pidfd = os.pidfd_open(g.pid)
        except ProcessLookupError:
            g.finalizer = loop.create_task(self._do_finalize(g))
            return
        loop.add_reader(g.pidfd, self._on_pidfd, g)

    def _on_pidfd(self, g: RunningGuest) -> None:
        self._unwatch(g)
        if g.finalizer is None:
            g.finalizer = asyncio.get_running_loop().create_task(self._do_finalize(g))

    def _unwatch(self, g: RunningGuest) -> None:
        if g.pidfd is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(g.pidfd)
            os.close(g.pidfd)
            g.pidfd = None

    async def _finalize(self, g: RunningGuest) -> str:
        """Once per exit (one task, however many callers): the exit's reason."""
        if g.finalizer is None:
            g.finalizer = asyncio.get_running_loop().create_task(self._do_finalize(g))
        return await asyncio.shield(g.finalizer)

    async def _do_finalize(self, g: RunningGuest) -> str:
        """Classify the exit, remove taps and files, record and report it."""
        self._unwatch(g)
        reason = "QEMU exited"
        try:
            await self._wait_wrapper(g)
            status = read_exitcode(g.paths.exitcode)
            reason = classify_exit(status, requested=g.requested, qmp_reason=g.qmp.shutdown_reason,
                                   log_text=log_tail(g.paths.log))
            await g.qmp.disconnect()
            await delete_taps(g.taps)
            await stop_swtpm(g.paths)
            remove_ivshmem(g.spec)
            for path in g.paths.transient():
                path.unlink(missing_ok=True)
            write_json(g.paths.last_exit, {"vmid": g.vmid, "reason": reason, "status": status,
                                            "pid": g.pid, "time": int(time.time())})
        finally:
            # Whatever failed above, the guest is gone: never leave waiters hanging.
            self._last_exit[g.vmid] = reason
            if self._guests.get(g.vmid) is g:
                del self._guests[g.vmid]
            g.exited.set()
        log.info("VM %s: %s", g.vmid, reason)
        if self.on_exit is not None:
            try:
                result = self.on_exit(g.vmid, reason)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("VM %s: on_exit callback failed", g.vmid)
        return reason

    def _wrapper_alive(self, g: RunningGuest) -> bool:
        if g.popen is not None:
            return g.popen.poll() is None  # our child: this also reaps it
        if g.wrapper_pid is None or not is_alive(g.wrapper_pid):
            return False
        argv = proc_cmdline(g.wrapper_pid) or []
        return f"binome-vm-{g.vmid}" in argv  # not a reused pid

    async def _wait_wrapper(self, g: RunningGuest) -> None:
        await poll_until(lambda: not self._wrapper_alive(g), WRAPPER_GRACE)

    @staticmethod
    async def _wait_gone(pid: int | None, timeout: float) -> bool:
        return await poll_until(lambda: pid is None or not is_alive(pid), timeout)

    async def _wait_exit(self, g: RunningGuest, timeout: float) -> bool:
        """Wait until the exit was finalized; False on timeout."""
        try:
            await asyncio.wait_for(asyncio.shield(g.exited.wait()), timeout)
        except TimeoutError:
            return False
        return True

    # -- adoption -------------------------------------------------------------------

    async def adopt(self) -> list[int]:
        """Re-attach to guests a previous daemon started; returns the running vmids.

        Guests found dead are finalized: exit reason recorded (and passed to
        ``on_exit``), taps and runtime files removed.
        """
        self._check_open()
        for state in sorted(self.run_dir.glob("*.json")):
            if not state.stem.isdigit():
                continue
            vmid = int(state.stem)
            if vmid in self._guests:
                continue
            async with self._lock(vmid):
                if vmid not in self._guests:
                    await self._adopt_one(vmid)
        return self.running()

    async def _adopt_one(self, vmid: int) -> RunningGuest | None:
        paths = self.paths(vmid)
        data = read_json(paths.state)
        try:
            spec = LaunchSpec.from_dict(data["spec"])  # type: ignore[index]
        except (TypeError, KeyError, ValueError):
            log.warning("VM %s: unreadable runtime state %s; removing it", vmid, paths.state)
            spec = None
        if spec is None or data is None:
            await self._forget_orphan(vmid, data)
            return None
        g = RunningGuest(
            spec=spec, paths=paths, taps=list(data.get("taps") or []),
            pid=data.get("pid"), start_ticks=data.get("start_ticks"),
            wrapper_pid=data.get("wrapper_pid"), requested=data.get("requested"),
            argv=list(data.get("argv") or []), started_at=data.get("started_at") or 0.0,
        )
        if g.pid is None:  # the previous daemon died between spawn and readiness
            g.pid = self._pid_from_pidfile(g)
            st = proc_stat(g.pid) if g.pid is not None else None
            g.start_ticks = st.start_ticks if st else None
        if g.pid is not None and g.alive() and is_our_qemu(g.pid, paths.pidfile):
            self._guests[vmid] = g
            write_json(paths.state, g.record())
            self._watch(g)
            try:
                await g.qmp.connect()
            except GuestError as exc:
                log.warning("VM %s adopted (pid %s) without QMP: %s", vmid, g.pid, exc)
            log.info("VM %s adopted (pid %s)", vmid, g.pid)
            return g
        g.pid = g.pid if g.pid is not None and g.alive() else None
        await self._finalize(g)
        return None

    async def _forget_orphan(self, vmid: int, data: dict[str, Any] | None) -> None:
        """A state file we cannot parse: kill nothing we cannot identify, clean the rest."""
        paths = self.paths(vmid)
        taps = list((data or {}).get("taps") or [])
        await delete_taps(taps)
        try:
            pid = int(paths.pidfile.read_text().strip())
        except (OSError, ValueError):
            pid = None
        if pid is not None and is_alive(pid) and is_our_qemu(pid, paths.pidfile):
            log.error("VM %s: QEMU pid %s runs but its state is unreadable; leaving it", vmid, pid)
            return
        for path in paths.transient():
            path.unlink(missing_ok=True)

    # -- lifecycle commands ---------------------------------------------------------

    def _running(self, vmid: int) -> RunningGuest:
        self._check_open()
        g = self._guests.get(vmid)
        if g is None or not g.alive():
            raise GuestError(f"VM {vmid} not running")
        return g

    def _set_requested(self, g: RunningGuest, what: str | None) -> None:
        g.requested = what
        with contextlib.suppress(OSError):
            write_json(g.paths.state, g.record())

    async def shutdown(self, vmid: int, timeout: float = 60.0, force_stop: bool = False,
                       *, via_agent: bool = False) -> str:
        """ACPI power button; wait up to ``timeout`` for the guest to power off.

        `via_agent` (the VM has an enabled guest agent): as PVE's vm_stop, the agent's
        ``guest-shutdown`` when the agent answers a ping, the ACPI button when it does
        not or refuses. On timeout: GuestError, or with ``force_stop`` a hard
        :meth:`stop`. A paused guest cannot react: GuestError unless ``force_stop``.
        Returns how it went: ``agent``, ``acpi`` or ``stop`` (the hard stop).
        """
        g = self._running(vmid)
        if await g.qmp.runstate() == "paused":
            if not force_stop:
                raise GuestError(f"VM {vmid} is paused - cannot shutdown")
            await self.stop(vmid)
            return "stop"
        self._set_requested(g, "shutdown")
        how = "agent"
        if not (via_agent and await self._agent_shutdown(g, timeout)):
            how = "acpi"
            await self._acpi_powerdown(g)
        if await self._wait_exit(g, timeout):
            return how
        if not force_stop:
            self._set_requested(g, None)
            raise GuestError("VM quit/powerdown failed - got timeout")
        log.warning("VM %s: shutdown timed out after %ss, stopping it", vmid, timeout)
        await self.stop(vmid)
        return "stop"

    async def _agent_shutdown(self, g: RunningGuest, timeout: float) -> bool:
        """Ask the guest agent to power the guest off; False if it is not there or
        refuses. The agent does not answer a shutdown it carries out, so no answer
        after a short while means under way; the caller waits for the exit."""
        try:
            await g.qga.command("guest-ping", timeout=3.0)
            await g.qga.command("guest-shutdown", timeout=min(timeout, 10.0))
        except AgentError as exc:
            log.info("VM %s: guest agent shutdown not possible (%s) - using ACPI",
                     g.vmid, exc)
            return False
        return True

    async def _acpi_powerdown(self, g: RunningGuest) -> None:
        try:
            await g.qmp.command("system_powerdown")
        except GuestError:
            if g.alive():
                self._set_requested(g, None)
                raise

    async def stop(self, vmid: int, timeout: float = 10.0, *, requested: str = "stop") -> None:
        """Hard stop: QMP ``quit``; after ``timeout`` SIGTERM, then SIGKILL, by pid.

        ``requested="migrated"`` for the source of a finished live migration
        (the exit reason then says so).
        """
        g = self._running(vmid)
        self._set_requested(g, requested)
        with contextlib.suppress(GuestError):
            await g.qmp.command("quit", timeout=min(timeout, 5.0))
        if await self._wait_exit(g, timeout):
            return
        log.warning("VM %s still running after quit - terminating now with SIGTERM", vmid)
        self._kill(g, signal.SIGTERM)
        if await self._wait_exit(g, min(timeout, 5.0)):
            return
        log.warning("VM %s still running - killing it with SIGKILL", vmid)
        self._kill(g, signal.SIGKILL)
        if not await self._wait_exit(g, KILL_WAIT + WRAPPER_GRACE):
            raise GuestError(f"VM {vmid} still running after SIGKILL (pid {g.pid})")

    def _kill(self, g: RunningGuest, sig: int) -> None:
        if g.pid is not None and g.alive():  # alive() checks the start time: no reused pid
            with contextlib.suppress(ProcessLookupError):
                os.kill(g.pid, sig)

    async def reset(self, vmid: int) -> None:
        """Hard reset of the virtual machine (QMP ``system_reset``); QEMU keeps running."""
        await self._running(vmid).qmp.command("system_reset")

    async def suspend(self, vmid: int) -> None:
        """Pause the vcpus (QMP ``stop``); the guest is frozen in memory."""
        await self._running(vmid).qmp.command("stop")

    async def resume(self, vmid: int) -> None:
        """Continue a paused guest (QMP ``cont``)."""
        await self._running(vmid).qmp.command("cont")

    async def announce_self(self, vmid: int) -> None:
        """Have QEMU announce the guest's MACs now (RARP on every NIC, QMP
        ``announce-self``): a source resumed after a failed switch-over takes its traffic
        back from the target, which announced them first."""
        await self._running(vmid).qmp.command(
            "announce-self", {"initial": 0, "max": 550, "rounds": 5, "step": 100})

    async def send_key(self, vmid: int, key: str) -> None:
        """Press `key` (QEMU monitor encoding, e.g. ``ctrl-alt-delete``) on the guest's
        keyboard. PVE's vm_sendkey uses the human monitor's ``sendkey`` (its names are
        what PVE's API takes); any text it answers is an error. The caller validated the
        name (no spaces: nothing else reaches the monitor)."""
        answer = await self._running(vmid).qmp.command(
            "human-monitor-command", {"command-line": f"sendkey {key}"})
        if isinstance(answer, str) and answer.strip():
            raise GuestError(answer.strip())

    async def block_resize(self, vmid: int, key: str, size: int) -> None:
        """Grow a running guest's disk `key` to `size` bytes (QMP ``block_resize`` on
        PVE's drive id ``drive-<key>``): QEMU grows the image it holds open and the
        guest sees the new capacity, as PVE's `qemu_block_resize`. A backup's persistent
        dirty bitmap that QEMU loaded inconsistent (an earlier QEMU died with the image
        open) makes QEMU refuse: it goes first (it is worthless, and the next backup
        reads a resized disk in full anyway)."""
        qmp = self._running(vmid).qmp
        for block in await qmp.command("query-block"):
            inserted = block.get("inserted")
            if block.get("device") != f"drive-{key}" or not inserted:
                continue
            for bitmap in inserted.get("dirty-bitmaps") or []:
                name = str(bitmap.get("name", ""))
                if name.startswith(BITMAP_PREFIX) and bitmap.get("inconsistent"):
                    await qmp.command("block-dirty-bitmap-remove",
                                      {"node": inserted["node-name"], "name": name})
        await qmp.command("block_resize", {"device": f"drive-{key}", "size": int(size)})

    # -- disk moves (QEMU's side: `qemu_mirror`); the record follows the switch, so a
    # restarted daemon knows which volume the guest has open ---------------------------

    async def mirror_start(self, vmid: int, key: str, source: str, fmt: str | None,
                           cache: str, *, speed: int | None = None) -> qemu_mirror.MirrorJob:
        """Start mirroring running guest `vmid`'s drive `key` to `source` (a file or an
        NBD URI, with its format): see `qemu_mirror.start`."""
        return await qemu_mirror.start(self._running(vmid).qmp, key, source, fmt, cache,
                                       speed=speed)

    async def mirror_wait_ready(self, vmid: int, job: qemu_mirror.MirrorJob,
                                on_progress: Callable[[str], Any] | None = None) -> None:
        g = self._running(vmid)
        await qemu_mirror.wait_ready(g.qmp, g.alive, job, on_progress)

    async def mirror_complete(self, vmid: int, job: qemu_mirror.MirrorJob, source: str,
                              fmt: str | None, cache: str | None = None) -> None:
        """Switch the drive to the mirror's target, and the record with it (`cache`: the
        target's, when it differs from the drive's until now)."""
        g = self._running(vmid)
        await qemu_mirror.complete(g.qmp, job)
        disks = tuple(dataclasses.replace(d, source=source, format=fmt,
                                          cache=cache if cache is not None else d.cache)
                      if d.name == job.key else d for d in g.spec.disks)
        self._replug_record(g, dataclasses.replace(g.spec, disks=disks))

    async def mirror_release(self, vmid: int, job: qemu_mirror.MirrorJob) -> None:
        """End a ready mirror after its last synchronization, the drive not switching
        (a live migration's local disks: `qemu_mirror.release`)."""
        await qemu_mirror.release(self._running(vmid).qmp, job)

    async def export_drives(self, vmid: int, host: str, port: int, keys: list[str]
                            ) -> dict[str, str]:
        """On a live migration's target: the drives `keys` exported over NBD
        (`qemu_migration.export_drives`)."""
        return await qemu_migration.export_drives(self._running(vmid).qmp, host, port,
                                                  keys)

    async def stop_exports(self, vmid: int) -> None:
        await qemu_migration.stop_exports(self._running(vmid).qmp)

    async def mirror_cancel(self, vmid: int, job: qemu_mirror.MirrorJob) -> None:
        """Give the mirror up before its switch: the drive stays where it was."""
        await qemu_mirror.cancel(self._running(vmid).qmp, job)

    # -- hot-plug (QEMU's side: `qemu_hotplug`); the record follows the devices, so a
    # restarted daemon knows them and the exit removes a plugged NIC's tap too --------

    def _replug_record(self, g: RunningGuest, spec: LaunchSpec) -> None:
        g.spec = spec
        write_json(g.paths.state, g.record())

    async def plug_disk(self, vmid: int, disk: DiskSpec) -> None:
        g = self._running(vmid)
        await qemu_hotplug.plug_disk(g.qmp, disk, g.spec.hotplug_pci)
        disks = (*(d for d in g.spec.disks if d.name != disk.name), disk)
        self._replug_record(g, dataclasses.replace(g.spec, disks=disks))

    async def unplug_disk(self, vmid: int, name: str) -> None:
        g = self._running(vmid)
        await qemu_hotplug.unplug_disk(g.qmp, name)
        disks = tuple(d for d in g.spec.disks if d.name != name)
        self._replug_record(g, dataclasses.replace(g.spec, disks=disks))

    async def plug_nic(self, vmid: int, nic: NicSpec) -> None:
        """The tap is made and joins its bridge as at start (`create_taps`), then QEMU
        takes it; the tap goes again if QEMU refuses."""
        g = self._running(vmid)
        taps = await create_taps(vmid, [nic])
        try:
            await qemu_hotplug.plug_nic(g.qmp, vmid, nic, g.spec.hotplug_pci)
        except BaseException:
            await asyncio.shield(delete_taps(taps))
            raise
        g.taps = [t for t in g.taps if t not in taps] + taps
        nics = (*(n for n in g.spec.nics if n.index != nic.index), nic)
        self._replug_record(g, dataclasses.replace(g.spec, nics=nics))

    async def unplug_nic(self, vmid: int, index: int) -> None:
        g = self._running(vmid)
        await qemu_hotplug.unplug_nic(g.qmp, f"net{index}")
        tap = tap_name(vmid, index)
        await delete_taps([tap])
        g.taps = [t for t in g.taps if t != tap]
        nics = tuple(n for n in g.spec.nics if n.index != index)
        self._replug_record(g, dataclasses.replace(g.spec, nics=nics))

    async def plug_usb(self, vmid: int, index: int, selector: str) -> None:
        """`usbN` as the `usb-host` device a start would give it (`qemu_hotplug.plug_usb`)."""
        g = self._running(vmid)
        await qemu_hotplug.plug_usb(g.qmp, index, selector)
        hosts = tuple(sorted((*(u for u in g.spec.usb_hosts if u[0] != index),
                              (index, selector))))
        self._replug_record(g, dataclasses.replace(g.spec, usb_hosts=hosts))

    async def unplug_usb(self, vmid: int, index: int) -> None:
        g = self._running(vmid)
        await qemu_hotplug.unplug_usb(g.qmp, f"usb{index}")
        hosts = tuple(u for u in g.spec.usb_hosts if u[0] != index)
        self._replug_record(g, dataclasses.replace(g.spec, usb_hosts=hosts))

    async def set_vcpus(self, vmid: int, count: int) -> None:
        g = self._running(vmid)
        await qemu_hotplug.set_vcpus(g.qmp, count)
        self._replug_record(g, dataclasses.replace(g.spec, vcpus_online=count))

    async def set_memory(self, vmid: int, memory_mb: int) -> None:
        """PVE's memory hot-plug: the guest's DIMMs made those of `memory_mb` (PVE's
        layout, `binome.guest.memory`); GuestError with PVE's texts when the guest was
        not started with memory hot-plug or the size is not allowed."""
        g = self._running(vmid)
        limit = g.spec.memory_hotplug_max_mb
        if limit is None:
            raise GuestError("the VM was started without memory hot-plug: 'memory' "
                             "changes at the next start")
        problem = memory.live_change_problem(g.spec.memory_mb, memory_mb, limit,
                                             g.spec.sockets)
        if problem:
            raise GuestError(problem)
        await qemu_hotplug.set_memory(g.qmp, memory.dimm_layout(memory_mb, g.spec.sockets))
        self._replug_record(g, dataclasses.replace(g.spec, memory_mb=memory_mb))

    async def command(
        self, vmid: int, cmd: str, args: dict[str, Any] | None = None,
        timeout: float = QMP_TIMEOUT,
    ) -> Any:
        """One QMP command on a running guest, over the runtime's own connection.

        For what the lifecycle verbs do not cover (``query-block``, VNC
        password, migration ...). QMP errors become GuestError.
        """
        return await self._running(vmid).qmp.command(cmd, args, timeout)

    async def monitor_command(self, vmid: int, command: str, timeout: float = 25.0) -> str:
        """One human monitor (HMP) command line, through QMP's human-monitor-command
        (PVE's hmp_cmd, 25 s); its text output."""
        g = self._running(vmid)
        try:
            out = await asyncio.wait_for(
                g.qmp.command("human-monitor-command", {"command-line": command}), timeout)
        except TimeoutError:
            raise GuestError(f"VM {vmid} qmp command 'human-monitor-command' failed - "
                             f"got timeout") from None
        return str(out or "")

    async def agent_command(self, vmid: int, cmd: str, args: dict[str, Any] | None = None,
                            timeout: float | None = None) -> Any:
        """One command to the guest agent of a running guest (`binome.guest.agent`);
        AgentError when it does not answer or answers with an error."""
        return await self._running(vmid).qga.command(cmd, args, timeout)

    # -- live migration (QEMU's side: `qemu_migration`) -------------------------------

    async def listen_incoming(self, vmid: int, host: str) -> str:
        """On the target: listen for the migration stream; returns ``tcp:HOST:PORT``
        (see `qemu_migration.listen_incoming`)."""
        return await qemu_migration.listen_incoming(self._running(vmid).qmp, host)

    async def migrate_out(
        self, vmid: int, uri: str, *, downtime_ms: int = MIGRATE_DOWNTIME_MS,
        max_bandwidth: int = MIGRATE_MAX_BANDWIDTH, timeout: float = MIGRATE_TIMEOUT,
        on_progress: Callable[[dict[str, Any]], Any] | None = None,
    ) -> dict[str, Any]:
        """On the source: send the guest's state to ``uri``; the final ``query-migrate``
        (see `qemu_migration.migrate_out`: on failure the source runs on)."""
        g = self._running(vmid)
        return await qemu_migration.migrate_out(
            g.qmp, g.alive, uri, downtime_ms=downtime_ms, max_bandwidth=max_bandwidth,
            timeout=timeout, on_progress=on_progress)

    async def wait_incoming(self, vmid: int, timeout: float = 30.0) -> str:
        """On the target: wait until the incoming state is complete; the runstate (the
        guest sits ``paused`` until :meth:`resume`)."""
        g = self._running(vmid)
        return await qemu_migration.wait_incoming(g.qmp, g.alive, timeout)

    async def migration_state(self, vmid: int) -> tuple[str | None, str | None, bool]:
        """(runstate, ``query-migrate`` status, started as a migration target) of a
        running guest: what a restarted daemon needs to settle a migration its previous
        life left half-done. None where QMP does not answer."""
        g = self._running(vmid)
        runstate, status = await qemu_migration.migration_state(g.qmp)
        return runstate, status, "-incoming" in g.argv

    async def cancel_migration(self, vmid: int) -> None:
        """Cancel an outgoing migration and let the source run on (see migrate_out),
        with the mirror jobs of its local disks (`qemu_mirror.end_migration_mirrors`)."""
        g = self._running(vmid)
        await qemu_migration.cancel_outgoing(g.qmp, g.alive)
        ended = await qemu_mirror.end_migration_mirrors(g.qmp)
        if ended:
            log.info("VM %s: mirror jobs of the cancelled migration ended: %s", vmid,
                     ", ".join(ended))

    async def announce(self, vmid: int) -> None:
        """Gratuitous RARPs for every NIC (QMP ``announce-self``), right after a migrated
        guest resumed: the bridges on the way learn its MACs' new port at once instead of
        when the guest next sends something (QEMU's own announce at the end of the
        incoming migration may happen while the guest still sits paused)."""
        # the first round at once (QEMU's default waits 50 ms): until it, frames for the
        # guest still go to the source's port
        await self._running(vmid).qmp.command("announce-self", {
            "initial": 1, "max": 550, "rounds": 5, "step": 100})

    # -- shutdown of the runtime itself ---------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise GuestError("guest runtime is closed")

    async def close(self) -> None:
        """Drop QMP connections and exit watches; the guests keep running."""
        self._closed = True
        for g in list(self._guests.values()):
            self._unwatch(g)
            await g.qmp.disconnect()
            if g.finalizer is not None and not g.finalizer.done():
                with contextlib.suppress(Exception):
                    await g.finalizer
