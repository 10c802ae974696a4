"""Simulated guests and the LRM's executor: start, stop, migrate, relocate as timed jobs.

A guest instance lives on a node in one of the states `booting`, `running`,
`stopping` (all three count as "running": the guest executes and writes) or
`incoming` (a live migration target, paused: it does not count). Jobs take
simulated time and report an `LrmResult` under the command's uid.

The executor is faithful to what the real one must refuse (see docs/ha.md):

- start: the config must be on this node (else EWRONG_NODE), the watchdog
  must be armed and not fired, and every local replica must be UpToDate (the
  volume engine refuses to promote anything else);
- migrate: switch-over happens only if, at the end, the source still holds
  quorum and the config (the config move is one transaction), the target is
  reachable, its watchdog armed and its replicas connected and UpToDate;
  otherwise the migration is aborted and the guest keeps running at the source;
- migrate of a guest that is not running moves its config only (offline);
- relocate: stop, then move the config (needs quorum and ownership).

Jobs of a node vanish when it powers off or its watchdog fires, exactly like
forked workers of a machine that resets.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from binome.ha.model import ExitCode, LrmResult
from binome.ha.sim.clock import ms
from binome.ha.sim.hardware import Job, SimNode

if TYPE_CHECKING:
    from binome.ha.sim.world import World

RUNNING_STATES = ("booting", "running", "stopping")


class Guests:
    def __init__(self, world: World, sids: list[str]) -> None:
        self.world = world
        self.instances: dict[str, dict[str, str]] = {sid: {} for sid in sids}
        self.start_fails: dict[str, set[str]] = {sid: set() for sid in sids}
        # (ms, node or None): where the guest was serving (state `running`) from then on
        self.history: dict[str, list[tuple[int, str | None]]] = {sid: [] for sid in sids}

    # ------------------------------------------------------------ queries

    def running_on(self, sid: str) -> list[str]:
        return sorted(n for n, st in self.instances.get(sid, {}).items() if st in RUNNING_STATES)

    def primary(self, sid: str) -> str | None:
        nodes = self.running_on(sid)
        return nodes[0] if nodes else None

    def running_here(self, node: str) -> set[str]:
        return {sid for sid, inst in self.instances.items()
                if inst.get(node) in RUNNING_STATES}

    # ------------------------------------------------------------ instance changes

    def _set(self, sid: str, node: str, state: str | None, why: str) -> None:
        inst = self.instances[sid]
        old = inst.get(node)
        if state is None:
            inst.pop(node, None)
        else:
            inst[node] = state
        serving = next((n for n, st in sorted(inst.items()) if st == "running"), None)
        hist = self.history[sid]
        if (hist[-1][1] if hist else None) != serving:
            hist.append((self.world.q.now, serving))
        quiet = state == "incoming" or (old == "incoming" and state is None)
        if old != state and not quiet:
            self.world.log("info", "guest", f"{sid} on {node}: {old or 'off'} -> "
                                            f"{state or 'off'} ({why})")
        self.world.invariants.guest_changed(sid)
        self.world.replicas_dirty = True

    def kill_all(self, node: str, why: str, only: frozenset[str] | None = None) -> list[str]:
        """Kill the guests of `node` (only those in `only`, when given: a watchdog's list)."""
        killed = []
        for sid, inst in sorted(self.instances.items()):
            if node in inst and (only is None or sid in only):
                if inst[node] in RUNNING_STATES:
                    killed.append(sid)
                self._set(sid, node, None, why)
        return killed

    # ------------------------------------------------------------ executor entry points

    def _result(self, node: SimNode, uid: str, sid: str, cmd: str, code: ExitCode,
                message: str = "") -> None:
        node.results[uid] = LrmResult(sid, cmd, code, message)
        node.jobs.pop(uid, None)
        self.world.wake(node, "lrm")

    def _job(self, node: SimNode, uid: str, sid: str, kind: str, delay: float,
             target: str | None = None, fails: bool = False) -> None:
        job = Job(uid, sid, kind, node.name, node.generation, target, fails)
        node.jobs[uid] = job
        self.world.q.after(ms(delay), self._done, job)

    def start(self, node: SimNode, sid: str, uid: str) -> None:
        w = self.world
        w.invariants.ha_action(node.name, f"start {sid}")
        owner = w.config_owner(sid)
        if owner != node.name:
            self._result(node, uid, sid, "start", ExitCode.EWRONG_NODE, f"config is on {owner}")
            return
        state = self.instances[sid].get(node.name)
        if state == "running":
            self._result(node, uid, sid, "start", ExitCode.SUCCESS, "already running")
            return
        wd = node.watchdog
        if node.spec.watchdog and (not wd.armed or wd.fired or sid not in wd.sids):
            self._result(node, uid, sid, "start", ExitCode.ERROR,
                         "not protected by an armed watchdog")
            return
        stale = [f"{v} is {d.get(node.name)}" for v, d in sorted(w.replicas.states(sid).items())
                 if d.get(node.name) != "UpToDate"]
        if stale:
            self._result(node, uid, sid, "start", ExitCode.ETRY_AGAIN,
                         f"refusing to promote: {'; '.join(stale)}")
            return
        if state is not None:
            self._result(node, uid, sid, "start", ExitCode.ERROR, f"guest is {state}")
            return
        w.invariants.promoted(sid, node.name)
        fails = bool(self.start_fails[sid] & {node.name, "all"})
        self._set(sid, node.name, "booting", "start")
        delay = w.params.start_fail_time if fails else w.params.guest_boot
        self._job(node, uid, sid, "start", delay, fails=fails)

    def stop(self, node: SimNode, sid: str, uid: str) -> None:
        state = self.instances[sid].get(node.name)
        if state not in ("booting", "running"):
            self._result(node, uid, sid, "stop", ExitCode.SUCCESS, "not running")
            return
        self._set(sid, node.name, "stopping", "stop")
        self._job(node, uid, sid, "stop", self.world.params.guest_stop)

    def migrate(self, node: SimNode, sid: str, uid: str, target: str) -> None:
        w = self.world
        w.invariants.ha_action(node.name, f"migrate {sid} to {target}")
        if w.config_owner(sid) != node.name:
            self._result(node, uid, sid, "migrate", ExitCode.EWRONG_NODE, "config not here")
            return
        state = self.instances[sid].get(node.name)
        if state is None:
            # offline migration, as `qm migrate` does for a stopped guest: move the config
            code, msg = w.move_config_by_node(node.name, sid, target)
            self._result(node, uid, sid, "migrate", code, msg or "offline: it was not running")
            return
        if state != "running":
            self._result(node, uid, sid, "migrate", ExitCode.ERROR, f"guest is {state}")
            return
        if target in self.instances[sid]:
            self._result(node, uid, sid, "migrate", ExitCode.ERROR, f"already on {target}")
            return
        self._set(sid, target, "incoming", "migration")
        self._job(node, uid, sid, "migrate", w.params.migrate_time, target=target)

    def relocate(self, node: SimNode, sid: str, uid: str, target: str) -> None:
        w = self.world
        w.invariants.ha_action(node.name, f"relocate {sid} to {target}")
        if w.config_owner(sid) != node.name:
            self._result(node, uid, sid, "relocate", ExitCode.EWRONG_NODE, "config not here")
            return
        running = self.instances[sid].get(node.name) in ("booting", "running")
        if running:
            self._set(sid, node.name, "stopping", f"relocate to {target}")
        self._job(node, uid, sid, "relocate", w.params.guest_stop if running else 0,
                  target=target)

    # ------------------------------------------------------------ completion

    def _done(self, job: Job) -> None:
        w = self.world
        node = w.nodes[job.node]
        if node.generation != job.generation or node.jobs.get(job.uid) is not job:
            return  # the node went down (power, watchdog): the worker died with it
        inst = self.instances[job.sid]
        if job.kind == "start":
            if inst.get(node.name) != "booting":
                self._result(node, job.uid, job.sid, "start", ExitCode.ERROR, "guest vanished")
            elif job.fails:
                self._set(job.sid, node.name, None, "start failed")
                self._result(node, job.uid, job.sid, "start", ExitCode.ERROR,
                             "guest failed to start")
            else:
                self._set(job.sid, node.name, "running", "booted")
                self._result(node, job.uid, job.sid, "start", ExitCode.SUCCESS)
        elif job.kind == "stop":
            self._set(job.sid, node.name, None, "stopped")
            self._result(node, job.uid, job.sid, "stop", ExitCode.SUCCESS)
        elif job.kind == "migrate":
            self._finish_migrate(node, job)
        elif job.kind == "relocate":
            assert job.target is not None   # a relocate job is always given its target
            if inst.get(node.name) == "stopping":
                self._set(job.sid, node.name, None, "stopped for relocation")
            code, msg = w.move_config_by_node(node.name, job.sid, job.target)
            self._result(node, job.uid, job.sid, "relocate", code, msg)

    def _finish_migrate(self, node: SimNode, job: Job) -> None:
        w = self.world
        sid, target = job.sid, job.target
        assert target is not None
        tnode = w.nodes[target]
        why = None
        if self.instances[sid].get(target) != "incoming":
            why = "target instance vanished"
        elif not tnode.up or not w.reach(node.name, target):
            why = f"{target} unreachable"
        elif tnode.spec.watchdog and (not tnode.watchdog.armed or tnode.watchdog.fired
                                      or sid not in tnode.watchdog.sids):
            why = f"{target}'s watchdog does not protect it"
        elif not w.repl_connected(node.name, target) or not w.replicas.all_uptodate(sid, target):
            why = f"replicas on {target} not connected and UpToDate"
        elif self.instances[sid].get(node.name) != "running":
            why = "guest not running at the source"
        if why is None:
            code, msg = w.move_config_by_node(node.name, sid, target)
            if code != ExitCode.SUCCESS:
                why = msg
        if why is not None:
            if self.instances[sid].get(target) == "incoming":
                self._set(sid, target, None, "migration aborted")
            self._result(node, job.uid, sid, "migrate", ExitCode.ERROR, why)
            return
        self._set(sid, node.name, None, f"migrated to {target}")
        self._set(sid, target, "running", f"migrated from {node.name}")
        self._result(node, job.uid, sid, "migrate", ExitCode.SUCCESS)
