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
from binome.ha.probe import PowerProber
from binome.ha.timers import HaTimers


class Crm:
    def __init__(self, env: CrmEnv, timers: HaTimers) -> None:
        self.env = env
        self.timers = timers
        self.state = CrmState.WAIT_FOR_QUORUM
        self.manager: Manager | None = None
        self.prober = PowerProber()

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
                self._probe_master()
                return
            self._set(CrmState.MASTER, "acquired the manager lock")
            self.manager = Manager(env, self.timers, self.prober)
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

    def _probe_master(self) -> None:
        """Not master: read the power of the master's node if its renewals stopped. Its
        lease, revoked when the chassis reads off, frees the lock for this CRM now
        rather than at the lease's expiry (`ha.probe`)."""
        env = self.env
        holder = env.manager_lock_holder()
        if holder is None or holder == env.node:
            return
        try:
            if env.read_manager_status()[0].disarm is not None:
                return
        except EnvUnavailable:
            return
        self.prober.step(env, self.timers, env.now(), env.node_facts(), env.cluster_nodes(),
                         [holder])

    def next_probe_at(self) -> float | None:
        """When a power probe falls due (env time; `ha.probe`), for the daemon to wake
        this CRM then. Reads this round's snapshot; None when nothing is due."""
        env = self.env
        if self.state not in (CrmState.MASTER, CrmState.SLAVE):
            return None
        try:
            if env.read_manager_status()[0].disarm is not None:
                return None
            nodes, facts = env.cluster_nodes(), env.node_facts()
        except EnvUnavailable:
            return None
        if self.state == CrmState.MASTER:
            targets = sorted(nodes)
        else:
            holder = env.manager_lock_holder()
            targets = [holder] if holder is not None else []
        return self.prober.next_due(env, self.timers, facts, nodes, targets)

    def shutdown(self) -> None:
        """Graceful stop: hand the lock over at once instead of letting it expire."""
        if self.state == CrmState.MASTER:
            try:
                self.env.release_manager_lock()
            except EnvUnavailable:
                pass
        self._set(CrmState.WAIT_FOR_QUORUM, "shutting down")
