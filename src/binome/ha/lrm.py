"""The LRM: one per node; executes the CRM's commands for its node exactly once per uid.

Each `step()` (every `lrm_round`, and when the manager status changes):

1. notices a watchdog that fired (its HA guests were killed) and starts over;
2. checks its **agent lock**: quorum plus a lease renewed less than
   `self_fence_deadline` ago. Losing it stops the petting, so the watchdog
   kills the node's HA guests at `last renewal + self_fence_deadline`, before
   the lease can expire anywhere else (`ha.timers`). Getting it back in time
   resumes without any disruption;
3. derives its mode from a shutdown request and the shutdown policy
   (`conditional` reboot/`freeze` -> restart, power-off/`failover` ->
   shutdown, `migrate` -> maintenance) or from the cluster's disarm flag; a
   request `restart` (binomed alone restarts, the host stays up) is mode
   `restart` whatever the policy: it runs nothing new, lets its jobs finish,
   waits until the CRM has frozen its services (the acknowledgement), then
   reports and releases its watchdog, guests left running, and declares
   itself ready; the next life re-arms before it does anything;
4. arms the watchdog before it runs anything and releases it when the node
   has nothing left that needs it; a release while guests still run (disarm)
   is first reported in its status, so the CRM never trusts a watchdog that
   is not there;
5. runs each (sid, uid) command addressed to its node once: start, stop,
   migrate, relocate; `stopped` is re-applied whenever the guest is found
   running, like Proxmox's;
6. reports results by uid, running guests and jobs in its status document
   (CAS on its own revision).

States: `wait_for_agent_lock` (idle, disarmed), `active` (armed, executing),
`lost_agent_lock` (no quorum/lease: not petting, waiting to be rescued or
killed), `maintenance` (its node is evacuated; disarmed).
"""

from __future__ import annotations

from typing import Any

from binome.ha.env import Conflict, EnvUnavailable, LrmEnv
from binome.ha.model import (
    ACTIVE_STATES,
    ExitCode,
    LeaseInfo,
    LrmMode,
    LrmResult,
    LrmState,
    LrmStatus,
    ManagerStatus,
    NodeState,
    ServiceState,
    ShutdownPolicy,
)
from binome.ha.timers import HaTimers

S = ServiceState
MOVES = (LrmMode.ACTIVE, LrmMode.MAINTENANCE)


class Lrm:
    def __init__(self, env: LrmEnv, timers: HaTimers) -> None:
        self.env = env
        self.timers = timers
        self.state = LrmState.WAIT_FOR_AGENT_LOCK
        self.mode = LrmMode.ACTIVE
        self.armed = False
        self.results: dict[str, LrmResult] = {}
        self.revision: int | None = None   # of our status document; None until read
        self.written: dict[str, Any] | None = None
        self.shutdown_done = False
        self.shutdown_signalled = False
        self.daemon_restart = False   # this life ends with a binomed restart (host stays up)
        self.restart_ready = False

    # ------------------------------------------------------------ helpers

    def _set(self, state: LrmState, why: str) -> None:
        if state != self.state:
            self.env.log("info", f"status change {self.state} -> {state} ({why})")
            self.state = state

    def _lease_ok(self, lease: LeaseInfo, quorate: bool) -> bool:
        return (quorate and lease.valid and lease.renewed_at is not None
                and self.env.now() - lease.renewed_at < self.timers.self_fence_deadline)

    def _deadline(self, lease: LeaseInfo) -> float:
        assert lease.renewed_at is not None
        return lease.renewed_at + self.timers.self_fence_deadline

    def _protected(self, ms: ManagerStatus) -> set[str]:
        """HA guests the watchdog must cover: running here, being worked on, or about to be."""
        me = self.env.node
        sids = self.env.running_guests() | set(self.env.jobs().values())
        for sid, sd in ms.service_status.items():
            if (sd.node == me and sd.state in ACTIVE_STATES) or (
                    sd.target == me and sd.state == S.MIGRATE):
                sids.add(sid)
        return sids

    # ------------------------------------------------------------ the round

    def step(self) -> None:
        env = self.env
        if self.shutdown_signalled:
            return
        if self.armed and env.watchdog_fired():
            env.log("err", "the watchdog fired and killed this node's HA guests")
            self.armed = False
            self._set(LrmState.WAIT_FOR_AGENT_LOCK, "watchdog fired")
        quorate = env.quorate()
        lease = env.own_lease()
        lease_ok = self._lease_ok(lease, quorate)
        if self.state == LrmState.ACTIVE and not lease_ok:
            info = env.cluster_nodes().get(env.node)
            if info is not None and not info.watchdog:
                fate = "no watchdog on this node: its guests keep running"
            else:
                deadline = self._deadline(lease) if lease.renewed_at is not None else env.now()
                fate = f"self-fence at {deadline:.2f} unless renewed"
            self._set(LrmState.LOST_AGENT_LOCK,
                      f"{'lease not renewed' if quorate else 'no quorum'}; {fate}")
        elif self.state == LrmState.LOST_AGENT_LOCK and lease_ok:
            self._set(LrmState.ACTIVE, "lease renewed in time")
        self.results.update(env.collect_results())
        if not quorate:
            return
        try:
            ms, _ = env.read_manager_status()
            if self.revision is None:
                own, self.revision = env.read_lrm_status()
                if own is not None:
                    self.results = {**own.results, **self.results}
            policy = env.read_settings().shutdown_policy
        except EnvUnavailable:
            return
        if self.written is None and not self._write_status(ms):
            return  # a new life reports itself before acting: no stale report may stand
        self._update_mode(ms, policy)
        if not self._arm_or_release(ms, lease, lease_ok):
            return
        if self.daemon_restart:
            self._restart(ms)
            self._write_status(ms)
            if self.restart_ready and not self.shutdown_signalled:
                self.shutdown_signalled = True
                env.shutdown_ready()
            return
        node_rec = ms.node_status.get(env.node)
        if (self.state == LrmState.ACTIVE and ms.disarm is None
                and not (node_rec and node_rec.state == NodeState.FENCE)):
            self._execute(ms)
        if env.shutdown_request():
            self._shutdown(ms, quorate)
        self._write_status(ms)
        if self.shutdown_done and not self.shutdown_signalled:
            self.shutdown_signalled = True
            env.log("info", "shutdown ready")
            env.shutdown_ready()

    def _update_mode(self, ms: ManagerStatus, policy: ShutdownPolicy) -> None:
        req = self.env.shutdown_request()
        self.daemon_restart = req == "restart"
        if req == "restart":
            mode = LrmMode.RESTART
        elif req:
            if policy == ShutdownPolicy.MIGRATE:
                mode = LrmMode.MAINTENANCE
            elif policy == ShutdownPolicy.FREEZE or (
                    policy == ShutdownPolicy.CONDITIONAL and req == "reboot"):
                mode = LrmMode.RESTART
            else:
                mode = LrmMode.SHUTDOWN
        elif ms.disarm is not None:
            mode = LrmMode.DISARM
        else:
            mode = LrmMode.ACTIVE
        if mode != self.mode:
            why = ("binomed restarts, the host stays up: services to be frozen, guests left "
                   "running" if req == "restart"
                   else f"{req} requested, policy {policy}" if req else (
                "HA disarmed" if mode == LrmMode.DISARM else "HA armed"))
            self.env.log("info", f"mode change {self.mode} -> {mode} ({why})")
            self.mode = mode

    def _arm_or_release(self, ms: ManagerStatus, lease: LeaseInfo, lease_ok: bool) -> bool:
        """Arm before acting, pet while needed, release when idle. False: end the round."""
        env = self.env
        node_rec = ms.node_status.get(env.node)
        in_maintenance = bool(node_rec and node_rec.state == NodeState.MAINTENANCE)
        fenced_view = bool(node_rec and node_rec.state == NodeState.FENCE)
        disarm = ms.disarm is not None or self.mode == LrmMode.DISARM
        protect = self._protected(ms)
        want = bool(protect) and not disarm
        if self.state in (LrmState.WAIT_FOR_AGENT_LOCK, LrmState.MAINTENANCE):
            if want and lease_ok and not fenced_view:
                env.watchdog_arm(self._deadline(lease), protect)
                self.armed = True
                self._set(LrmState.ACTIVE, "watchdog armed")
            elif in_maintenance and not want:
                self._set(LrmState.MAINTENANCE, "node in maintenance, nothing left here")
            elif not in_maintenance and self.state == LrmState.MAINTENANCE:
                self._set(LrmState.WAIT_FOR_AGENT_LOCK, "maintenance ended")
        elif self.state == LrmState.ACTIVE:
            if want:
                env.watchdog_arm(self._deadline(lease), protect)
            elif disarm:
                # report first: once written, the CRM no longer counts on this watchdog
                if not self._write_status(ms, armed=False):
                    return False
                env.watchdog_disarm()
                self.armed = False
                self._set(LrmState.WAIT_FOR_AGENT_LOCK, "HA disarmed: watchdog released")
            elif not env.running_guests() and not env.jobs():
                env.watchdog_disarm()
                self.armed = False
                nxt = LrmState.MAINTENANCE if in_maintenance else LrmState.WAIT_FOR_AGENT_LOCK
                self._set(nxt, "no HA service here: watchdog released")
        return True

    def _execute(self, ms: ManagerStatus) -> None:
        env = self.env
        me = env.node
        jobs = env.jobs()
        busy = set(jobs.values())
        running = env.running_guests()
        for sid, sd in sorted(ms.service_status.items()):
            if sd.node != me or sid in busy:
                continue
            uid = sd.uid
            done = uid in self.results or uid in jobs
            if sd.state in (S.STARTING, S.STARTED):
                if done or self.mode != LrmMode.ACTIVE:
                    continue
                if sid in running:  # e.g. it just migrated here: confirm, nothing to do
                    self.results[uid] = LrmResult(sid, "start", ExitCode.SUCCESS,
                                                  "already running")
                else:
                    env.log("info", f"starting {sid}")
                    env.exec_start(sid, uid)
            elif sd.state in (S.REQUEST_STOP, S.STOPPING):
                if done:
                    continue
                if sid not in running:
                    self.results[uid] = LrmResult(sid, "stop", ExitCode.SUCCESS, "not running")
                else:
                    env.log("info", f"stopping {sid}")
                    env.exec_stop(sid, uid)
            elif sd.state == S.STOPPED:
                if sid in running:
                    env.log("info", f"{sid} should be stopped; stopping it")
                    env.exec_stop(sid, f"{uid}:ensure-stopped")
            elif sd.state == S.MIGRATE and sd.target:
                if not done and self.mode in MOVES:
                    env.log("info", f"migrating {sid} to {sd.target}")
                    env.exec_migrate(sid, uid, sd.target)
            elif sd.state == S.RELOCATE and sd.target:
                if not done and self.mode in MOVES:
                    env.log("info", f"relocating {sid} to {sd.target}")
                    env.exec_relocate(sid, uid, sd.target)

    def _restart(self, ms: ManagerStatus) -> None:
        """binomed restarts: once the CRM froze everything here, release the watchdog.

        Nothing new is run (`step` skips `_execute`); jobs in flight finish
        first. The acknowledgement is the manager status itself: no service of
        this node may still be active or about to be, and none may be moving
        here. The release is written to our status *before* the watchdog is
        released, so from then on the CRM never counts on it for this node.
        """
        env = self.env
        me = env.node
        if self.restart_ready or env.jobs():
            return
        if ms.disarm is None and any(
                (sd.node == me and (sd.state in ACTIVE_STATES or sd.state == S.REQUEST_START))
                or (sd.target == me and sd.state in (S.MIGRATE, S.RELOCATE))
                for sd in ms.service_status.values()):
            return   # not acknowledged yet
        if self.armed:
            if not self._write_status(ms, armed=False):
                return
            env.watchdog_disarm()
            self.armed = False
            running = sorted(env.running_guests())
            self._set(LrmState.WAIT_FOR_AGENT_LOCK,
                      "services frozen: watchdog released, "
                      + (f"{', '.join(running)} left running" if running else "nothing runs"))
        env.log("info", "ready for the binomed restart: "
                        f"{', '.join(sorted(env.running_guests())) or 'no HA guest'} "
                        "keeps running, frozen until this node's LRM is back")
        self.restart_ready = True

    def _shutdown(self, ms: ManagerStatus, quorate: bool) -> None:
        """Do what the shutdown policy needs, then declare the node ready to go down."""
        env = self.env
        me = env.node
        if self.mode in (LrmMode.RESTART, LrmMode.SHUTDOWN):
            if self.mode == LrmMode.RESTART and quorate and any(
                    sd.node == me and sd.state in (S.STARTING, S.STARTED)
                    for sd in ms.service_status.values()):
                return  # let the CRM freeze them first, or it would recover them elsewhere
            busy = set(env.jobs().values())
            for sid in sorted(env.running_guests() - busy):
                env.log("info", f"stopping {sid} for the node's {self.mode}")
                env.exec_stop(sid, f"shutdown:{sid}")
        elif any((sd.node == me and sd.state in ACTIVE_STATES)
                 or (sd.target == me and sd.state == S.MIGRATE)
                 for sd in ms.service_status.values()):
            return  # maintenance: wait until the CRM has moved everything away
        if not env.running_guests() and not env.jobs():
            self.shutdown_done = True

    def _write_status(self, ms: ManagerStatus, armed: bool | None = None) -> bool:
        env = self.env
        live = {sd.uid for sd in ms.service_status.values()}
        self.results = {u: r for u, r in self.results.items() if u in live}
        status = LrmStatus(node=env.node, state=self.state, mode=self.mode,
                           watchdog_armed=self.armed if armed is None else armed,
                           results=dict(self.results), jobs=env.jobs(),
                           running=sorted(env.running_guests()),
                           shutdown_done=self.shutdown_done,
                           daemon_restart=self.daemon_restart)
        data = status.to_dict()
        if data == self.written:
            return True
        try:
            self.revision = env.write_lrm_status(status, self.revision or 0)
        except (Conflict, EnvUnavailable):
            self.revision = None
            return False
        self.written = data
        return True
