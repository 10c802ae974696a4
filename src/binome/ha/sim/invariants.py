"""The safety invariants of TESTING.md, checked while the simulation runs, plus convergence.

Checked at the moment things happen (so a violation points at the event):

- **one instance**: a guest runs (booting, running or stopping) on at most
  one node at any time;
- **quorum**: no HA action (start, migrate, relocate, config move, fence
  request) is taken by a node that is not quorate at that instant;
- **fenced before recovered**: when the CRM moves a service's config away
  from a lost node, the guest is not running there (and, with "one
  instance", never runs twice afterwards);
- **no stale fence**: a fence device acts only for the node holding the manager
  lock at that instant, never on the requester's own node (self-fencing is
  the watchdog's job), and only on a node whose last lease renewal is older
  than its self-fence deadline: a node that stalled for less would have
  survived, so powering it off is an unneeded fence;
- **no stale promotion**: the CRM orders a start (`starting`, new uid) only
  on a node holding an UpToDate replica of every volume; and no guest is
  ever promoted on anything else;
- **affinity** (HA rules, groups as rules): the CRM orders a start or a move
  (`starting`, `migrate`, `relocate`, new uid) of a service with a strict node
  affinity only onto one of its nodes, and never onto a node where a service
  it must be kept apart from is active or arriving (a service `ignored` is
  not managed: no rule binds it, as upstream).

`converged()` is the liveness check run after a quiet period with every
fault healed: requested states are reached, replicas are in sync, services
with a negative affinity run on separate nodes and positive partners together.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from binome.ha.model import ManagerStatus, RequestedState, ServiceState

if TYPE_CHECKING:
    from binome.ha.sim.world import World


class InvariantViolation(AssertionError):
    pass


class Invariants:
    def __init__(self, world: World) -> None:
        self.world = world

    def _fail(self, message: str) -> None:
        w = self.world
        raise InvariantViolation(f"t={w.q.now / 1000:.2f}: {message}")

    def guest_changed(self, sid: str) -> None:
        nodes = self.world.guests.running_on(sid)
        if len(nodes) > 1:
            self._fail(f"{sid} runs on {len(nodes)} nodes at once: {', '.join(nodes)}")

    def ha_action(self, node: str, what: str) -> None:
        if not self.world.etcd.quorate(node):
            self._fail(f"{node} took an HA action without quorum: {what}")

    def fence_confirmed(self, node: str) -> None:
        """The admin is assumed honest: a power-off confirmation is given only when it is true."""
        if self.world.members[node].power:
            self._fail(f"power-off of {node} confirmed while it is powered on")

    def fence_action(self, by: str, target: str) -> None:
        w = self.world
        if by == target:
            self._fail(f"{by} fenced its own node through its fence device")
        if not w.holds_lock(by):
            self._fail(f"{by} fenced {target} without holding the manager lock "
                       "(a decision it no longer owns)")
        lease = w.etcd.lease_of(target)
        deadline = w.timers.self_fence_deadline
        if lease is not None and w.q.now - lease.renewed < deadline * 1000:
            self._fail(f"{by} fenced {target} {(w.q.now - lease.renewed) / 1000:.2f} s after "
                       f"its last renewal, before its self-fence deadline ({deadline:g} s)")

    def power_read_off(self, by: str, target: str) -> None:
        """A power probe's "off" (which revokes the target's lease) must be true."""
        if self.world.members[target].power:
            self._fail(f"{by} read {target}'s power off while it is on")
        if by == target:
            self._fail(f"{by} probed its own power")

    def promoted(self, sid: str, node: str) -> None:
        if not self.world.replicas.all_uptodate(sid, node):
            self._fail(f"{sid} promoted on {node} with a stale replica: "
                       f"{self.world.replicas.states(sid)}")

    def recovered(self, sid: str, src: str, dst: str) -> None:
        if src in self.world.guests.instances.get(sid, {}):
            self._fail(f"{sid} recovered from {src} to {dst} while it still runs on {src}")

    def manager_status_written(self, old: ManagerStatus, new: ManagerStatus) -> None:
        replicas = self.world.replicas
        for sid, sd in new.service_status.items():
            prev = old.service_status.get(sid)
            if sd.state != ServiceState.STARTING or (prev and prev.uid == sd.uid):
                continue
            if not replicas.all_uptodate(sid, sd.node):
                self._fail(f"CRM ordered {sid} to start on {sd.node} without an UpToDate "
                           f"replica: {replicas.states(sid)}")
        self._affinity(old, new)

    def _affinity(self, old: ManagerStatus, new: ManagerStatus) -> None:
        rules = self.world.compiled_rules()
        moves = (ServiceState.STARTING, ServiceState.MIGRATE, ServiceState.RELOCATE)
        for sid, sd in sorted(new.service_status.items()):
            prev = old.service_status.get(sid)
            if sd.state not in moves or (prev and prev.uid == sd.uid):
                continue
            dest = sd.target if sd.state != ServiceState.STARTING else sd.node
            if dest is None:
                continue
            aff = rules.node_affinity.get(sid)
            if aff is not None and aff.priority(dest) is None:
                self._fail(f"CRM ordered {sid} onto {dest}, outside its {aff.label}")
            for csid in sorted(rules.negative.get(sid, ())):
                other = new.service_status.get(csid)
                if other is None:
                    continue   # not managed (`ignored`): no rule applies to it, as upstream
                arriving = ((other.state == ServiceState.STARTING and other.node == dest)
                    or (other.state in moves and other.target == dest))
                if arriving or dest in self.world.guests.running_on(csid):
                    self._fail(f"CRM ordered {sid} onto {dest} where {csid} runs or is "
                               f"ordered to: they must be kept apart")

    # ------------------------------------------------------------ liveness

    def converged(self) -> list[str]:
        """Problems left after the quiet period (empty when everything converged)."""
        w = self.world
        problems = []
        for name, node in w.nodes.items():
            if not node.up or not w.etcd.quorate(name):
                problems.append(f"{name} is not up with quorum")
        status = w.manager_status()
        resources = w.resources()
        for sid, cfg in sorted(resources.items()):
            running = w.guests.running_on(sid)
            sd = status.service_status.get(sid)
            if cfg.state == RequestedState.IGNORED:
                if sd is not None:
                    problems.append(f"{sid} is ignored but still managed")
                continue
            if sd is None:
                problems.append(f"{sid} is not managed")
                continue
            if cfg.state == RequestedState.STARTED:
                if sd.state != ServiceState.STARTED or running != [sd.node]:
                    problems.append(f"{sid} should run: state {sd.state} on {sd.node}, "
                                    f"running on {running or 'no node'} ({sd.reason})")
                elif w.config_owner(sid) != sd.node:
                    problems.append(f"{sid} runs on {sd.node} but its config is on "
                                    f"{w.config_owner(sid)}")
            elif running or sd.state != ServiceState.STOPPED:
                problems.append(f"{sid} should be stopped: state {sd.state}, running on "
                                f"{running or 'no node'}")
        rules = w.compiled_rules()
        # services not managed (`ignored`) are bound by no rule, as upstream
        where = {sid: w.guests.running_on(sid) for sid, cfg in resources.items()
                 if cfg.state != RequestedState.IGNORED}
        for sid, cfg in sorted(resources.items()):
            if cfg.state != RequestedState.STARTED or len(where.get(sid, [])) != 1:
                continue
            for csid in sorted(rules.negative.get(sid, ())):
                if sid < csid and where.get(csid) == where[sid]:
                    problems.append(f"{sid} and {csid} must be kept apart but both run on "
                                    f"{where[sid][0]}")
            for csid in sorted(rules.positive.get(sid, ())):
                other = where.get(csid) or []
                if sid < csid and len(other) == 1 and other != where[sid]:
                    problems.append(f"{sid} and {csid} must be kept together but run on "
                                    f"{where[sid][0]} and {other[0]}")
        for vol, disks in sorted(w.replicas.disks.items()):
            stale = {n: s for n, s in disks.items() if s != "UpToDate"}
            if stale:
                problems.append(f"{vol} not in sync: {stale}")
        return problems
