"""The CRM daemon's state machine: wait for quorum, compete for the manager lock, run rounds.

States (pve-ha-manager's `CRM.pm`): `wait_for_quorum` -> `slave` (quorate,
trying the lock) -> `master` (holds the lock, runs `Manager.round`) ->
`lost_manager_lock` (quorum or lock lost, or a write lost its CAS) -> back
to `wait_for_quorum`/`slave`.

The manager lock is bound to the node's lease (etcd: a key attached to the
lease), so a dead or isolated master loses it when its lease expires, and
every manager status write compares that the lock is still ours: a deposed
master that wakes up (paused process, partition healed) cannot write. A new
master builds a fresh `Manager`; all state it needs is in the store.
"""

from __future__ import annotations

from binome.ha.env import Conflict, CrmEnv, EnvUnavailable
from binome.ha.manager import Manager
from binome.ha.model import CrmState
from binome.ha.timers import HaTimers


class Crm:
    def __init__(self, env: CrmEnv, timers: HaTimers) -> None:
        self.env = env
        self.timers = timers
        self.state = CrmState.WAIT_FOR_QUORUM
        self.manager: Manager | None = None

    def _set(self, state: CrmState, why: str) -> None:
        if state != self.state:
            self.env.log("info", f"status change {self.state} -> {state} ({why})")
            self.state = state
        if state != CrmState.MASTER:
            self.manager = None

    def step(self) -> None:
        """One CRM round; never raises for store trouble (that is a state change)."""
        env = self.env
        if not env.quorate():
            if self.state == CrmState.MASTER:
                self._set(CrmState.LOST_MANAGER_LOCK, "quorum lost")
            self._set(CrmState.WAIT_FOR_QUORUM,
                      "no quorum: no fencing, no recovery, no HA action until it returns")
            return
        if self.state in (CrmState.WAIT_FOR_QUORUM, CrmState.LOST_MANAGER_LOCK):
            self._set(CrmState.SLAVE, "quorate")
        try:
            held = env.try_manager_lock()
        except EnvUnavailable:
            return
        if self.state == CrmState.SLAVE:
            if not held:
                return
            self._set(CrmState.MASTER, "acquired the manager lock")
            self.manager = Manager(env, self.timers)
        elif not held:
            self._set(CrmState.LOST_MANAGER_LOCK, "manager lock lost")
            return
        assert self.manager is not None
        try:
            self.manager.round()
        except EnvUnavailable:
            return
        except Conflict as exc:
            self._set(CrmState.LOST_MANAGER_LOCK, f"write refused: {exc}")

    def shutdown(self) -> None:
        """Graceful stop: hand the lock over at once instead of letting it expire."""
        if self.state == CrmState.MASTER:
            try:
                self.env.release_manager_lock()
            except EnvUnavailable:
                pass
        self._set(CrmState.WAIT_FOR_QUORUM, "shutting down")
