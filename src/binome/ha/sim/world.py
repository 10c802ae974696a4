"""The simulated cluster: members, power and links, leases, watchdogs, fence devices, daemons.

The `World` owns the virtual clock and everything physical; the real `Crm`
and `Lrm` of every node run inside it, unmodified, through a `SimEnv`. Per
node, three periodic loops run with a fixed phase (keepalive, CRM round, LRM
round), and the daemons are also woken `watch_latency` after a document they
watch changes, as etcd watches would. After every event the world re-elects
the etcd leader if needed, applies the replication rules and the invariants.

Physical model (what the commands of a scenario act on):

- power off kills the node's guests and jobs at once; power on boots it in
  `node_boot` seconds with fresh daemons (new lease, LRM and CRM from scratch);
- the cluster link carries etcd and migrations; the replication link carries
  volume traffic; a partition cuts the cluster link between two members only;
- the watchdog kills the node's HA guests at its deadline unless pushed
  forward (binome's supervisor process; with `/dev/watchdog` the node would
  also reset); it keeps running while the daemon is paused;
- a fence device powers its node off after `delay` seconds if healthy,
  reports an error if failing, or times out (`fence_timeout`) if dead;
- a binomed restart (`restart <node> <s>`) stops only the daemons, after
  their LRM said it is ready (or after `restart_wait`, like the daemon's
  bounded wait), releasing the lease; guests, jobs and the watchdog run on;
  fresh daemons start `<s>` seconds later with a new lease.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from binome.ha.availability import Transition, diff_states
from binome.ha.crm import Crm
from binome.ha.lrm import Lrm
from binome.ha.model import (
    ExitCode,
    FenceConfirmation,
    FenceState,
    FenceStatus,
    GroupConfig,
    HaSettings,
    ManagerStatus,
    NodeState,
    ResourceConfig,
)
from binome.ha.rules import CompiledRules, compile_config, decode_rules
from binome.ha.sim import keys
from binome.ha.sim.clock import EventQueue, ms
from binome.ha.sim.config import ClusterSpec, ServicesSpec
from binome.ha.sim.env import SimEnv
from binome.ha.sim.etcd import VirtualEtcd
from binome.ha.sim.guests import Guests
from binome.ha.sim.hardware import FenceDevice, Member, SimNode, Watchdog
from binome.ha.sim.invariants import Invariants
from binome.ha.sim.replicas import Replicas


class World:
    def __init__(self, cluster: ClusterSpec, services: ServicesSpec) -> None:
        self.cluster = cluster
        self.timers = cluster.timers
        self.params = cluster.sim
        self.q = EventQueue()
        self.lines: list[str] = []
        # (time, node, kind, fields): the notifications the CRMs raised
        self.notifications: list[tuple[float, str, str, dict[str, str | int]]] = []
        self.nodes: dict[str, SimNode] = {}
        for i, spec in enumerate(cluster.nodes):
            self.nodes[spec.name] = SimNode(
                name=spec.name, spec=spec, index=i,
                fence=FenceDevice(spec.fence_device) if spec.fence_device else None)
        self.members: dict[str, Member] = dict(self.nodes)
        if cluster.witness:
            self.members[cluster.witness] = Member(cluster.witness)
        self.cuts: set[frozenset[str]] = set()
        self.etcd = VirtualEtcd(cluster.members, cluster.leader_preference, ms(cluster.election),
                                reach=self._linked, up=lambda m: self.members[m].up,
                                log=lambda level, msg: self.log(level, "etcd", msg))
        self.invariants = Invariants(self)
        # the availability history, recorded as the daemon's master does it
        # (binome.ha.agent.availability): sid -> transitions, in virtual seconds
        self.availability: dict[str, list[Transition]] = {}
        self.last_renewal: dict[str, int] = {}   # node -> ms of its last lease renewal
        sids = [s.config.sid for s in services.services]
        self.guests = Guests(self, sids)
        self.replicas = Replicas({s.config.sid: s.volumes for s in services.services},
                                 log=lambda level, msg: self.log(level, "replica", msg))
        self._quorate: dict[str, bool] = {}
        self.replicas_dirty = True          # replication rules must be re-applied
        self._resync_due: int | None = None
        self._timers_pending: set[tuple[str, Any]] = set()
        self._command_seq = 0
        self.etcd.boot_leader()
        etcd = self.etcd
        etcd.put(keys.RESOURCES, {s.config.sid: s.config.to_dict() for s in services.services})
        etcd.put(keys.GROUPS, {name: g.to_dict() for name, g in services.groups.items()})
        etcd.put(keys.RULES, {name: r.to_dict() for name, r in services.rules.items()})
        etcd.put(keys.SETTINGS, HaSettings(cluster.shutdown_policy).to_dict())
        for s in services.services:
            etcd.put(keys.config(s.config.sid), s.node)
        for node in self.nodes.values():
            self._boot(node)
        self.after_event()

    # ------------------------------------------------------------ logging and reads

    def log(self, level: str, source: str, message: str) -> None:
        self.lines.append(f"{level:<5} {self.q.now / 1000:8.2f} {source:>10}: {message}")

    def config_owner(self, sid: str) -> str | None:
        owner: str | None = self.etcd.get(keys.config(sid))[0]
        return owner

    def record_availability(self, status: ManagerStatus) -> None:
        """After a committed manager status: append its changes to the history."""
        now = self.q.now / 1000
        recorded = {sid: (log[-1].state, log[-1].node)
                    for sid, log in self.availability.items() if log}
        lost = {n: self.last_renewal[n] / 1000 for n, rec in status.node_status.items()
                if rec.state not in (NodeState.ONLINE, NodeState.MAINTENANCE)
                and n in self.last_renewal}
        at = {sid: log[-1].time for sid, log in self.availability.items() if log}
        current = {sid: (str(sd.state), sd.node) for sid, sd in status.service_status.items()}
        for sid, tr in diff_states(recorded, current, now, lost, at):
            self.availability.setdefault(sid, []).append(tr)

    def manager_status(self) -> ManagerStatus:
        return ManagerStatus.from_dict(self.etcd.get(keys.MANAGER_STATUS)[0])

    def resources(self) -> dict[str, ResourceConfig]:
        data = self.etcd.get(keys.RESOURCES)[0] or {}
        return {sid: ResourceConfig.from_dict(sid, r) for sid, r in data.items()}

    def compiled_rules(self) -> CompiledRules:
        """The HA rules (groups as rules) as the CRM compiles them, for the invariants."""
        groups = {name: GroupConfig.from_dict(name, g)
                  for name, g in (self.etcd.get(keys.GROUPS)[0] or {}).items()}
        rules = decode_rules(self.etcd.get(keys.RULES)[0] or {})
        return compile_config(rules, groups, self.resources(), sorted(self.nodes))[0]

    # ------------------------------------------------------------ connectivity

    def _linked(self, a: str, b: str) -> bool:
        ma, mb = self.members[a], self.members[b]
        return ma.cluster_link and mb.cluster_link and frozenset((a, b)) not in self.cuts

    def reach(self, a: str, b: str) -> bool:
        return self.etcd.reach(a, b)

    def repl_connected(self, a: str, b: str) -> bool:
        na, nb = self.nodes[a], self.nodes[b]
        return a != b and na.up and nb.up and na.replication_link and nb.replication_link

    # ------------------------------------------------------------ event plumbing

    def _once(self, key: tuple[Any, ...], time: int, fn: Callable[..., None], *args: Any) -> None:
        """Schedule `fn` at `time` unless the same timer is already pending."""
        if key in self._timers_pending:
            return
        self._timers_pending.add(key)

        def fire() -> None:
            self._timers_pending.discard(key)
            fn(*args)
        self.q.at(time, fire)

    def topology_changed(self) -> None:
        self.etcd.invalidate()
        self.replicas_dirty = True

    def after_event(self) -> None:
        now = self.q.now
        leader = self.etcd.leader
        again = self.etcd.refresh(now)
        if again is not None:
            self._once(("election", again), again, lambda: None)
        if self.etcd.leader != leader and self.etcd.leader is not None:
            for lease in list(self.etcd.leases.values()):
                self._schedule_expiry(lease.id)
        for name in self.members:
            quorate = self.etcd.quorate(name)
            if self._quorate.get(name) != quorate:
                self._quorate[name] = quorate
                self.replicas_dirty = True
                self.log("info" if quorate else "warn", "etcd",
                         f"{name}: {'quorate' if quorate else 'no quorum'}")
                if name in self.nodes:
                    self.wake(self.nodes[name], "crm")
                    self.wake(self.nodes[name], "lrm")
        due = self._resync_due is not None and now >= self._resync_due
        if self.replicas_dirty or due:
            self.replicas_dirty = False
            self._resync_due = self.replicas.update(now, self.guests.primary, self.repl_connected,
                                                    self.etcd.quorate,
                                                    ms(self.params.resync_time))
            if self._resync_due is not None:
                self._once(("resync", self._resync_due), self._resync_due, lambda: None)

    def run_until(self, until: int) -> None:
        while (t := self.q.next_time()) is not None and t <= until:
            event = self.q.pop()
            event.fn(*event.args)
            self.after_event()
        self.q.now = max(self.q.now, until)

    # ------------------------------------------------------------ daemons

    def _boot(self, node: SimNode) -> None:
        node.up = True
        node.generation += 1
        self._start_daemons(node)

    def _start_daemons(self, node: SimNode) -> None:
        node.daemon_down = False
        node.life += 1
        node.crm = Crm(SimEnv(self, node.name, "crm"), self.timers)
        node.lrm = Lrm(SimEnv(self, node.name, "lrm"), self.timers)
        gen, life, phase = node.generation, node.life, 100 * node.index
        self.q.after(phase, self._keepalive_loop, node, gen, life)
        self.q.after(phase + 200, self._daemon_loop, node, gen, life, "crm")
        self.q.after(phase + 500, self._daemon_loop, node, gen, life, "lrm")

    def _keepalive_loop(self, node: SimNode, gen: int, life: int) -> None:
        if gen != node.generation or life != node.life or not node.up:
            return
        self.q.after(ms(self.timers.keepalive_interval), self._keepalive_loop, node, gen, life)
        if node.running(self.q.now):
            self._renew(node)

    def _renew(self, node: SimNode) -> None:
        etcd, now = self.etcd, self.q.now
        if not etcd.quorate(node.name):
            return
        if node.lease_id is not None and etcd.keepalive(node.lease_id, now):
            node.renewed_at = now
        else:
            node.lease_id = etcd.grant(node.name, ms(self.timers.lease_ttl), now)
            etcd.put(keys.alive(node.name), {"node": node.name}, lease=node.lease_id)
            node.renewed_at = now
            self.log("info", "etcd", f"lease granted to {node.name}")
            self.wake_all("crm")
        self.last_renewal[node.name] = now
        self._schedule_expiry(node.lease_id)

    def _schedule_expiry(self, lease_id: int) -> None:
        lease = self.etcd.leases.get(lease_id)
        if lease is not None:
            self._once(("lease", lease_id), lease.expiry, self._expiry_check, lease_id)

    def _expiry_check(self, lease_id: int) -> None:
        lease = self.etcd.leases.get(lease_id)
        if lease is None:
            return
        if lease.expiry > self.q.now:
            self._schedule_expiry(lease_id)
            return
        for gone in self.etcd.expire(self.q.now):
            if self.etcd.lease_of(gone.owner) is not None:
                self.log("info", "etcd", f"old lease of {gone.owner} (from before its restart) "
                                         "expired")
            else:
                self.log("warn", "etcd", f"lease of {gone.owner} expired")
            self.wake_all("crm")

    def _daemon_loop(self, node: SimNode, gen: int, life: int, role: str) -> None:
        if gen != node.generation or life != node.life or not node.up:
            return
        every = self.timers.manager_round if role == "crm" else self.timers.lrm_round
        self.q.after(ms(every), self._daemon_loop, node, gen, life, role)
        self._run_daemon(node, role)

    def _run_daemon(self, node: SimNode, role: str) -> None:
        if not node.running(self.q.now):
            return
        daemon = node.crm if role == "crm" else node.lrm
        if daemon is not None:
            daemon.step()
        if role == "crm" and node.crm is not None:
            due = node.crm.next_probe_at()   # binomed wakes its CRM when a probe is due
            if due is not None:
                at = max(ms(due), self.q.now + 50)   # never a busy loop
                self._once(("probe", node.name, node.generation, at), at, self._wakeup,
                           node, node.generation, "crm")

    def wake(self, node: SimNode, role: str) -> None:
        """A watched document changed: run the daemon soon (deduplicated)."""
        if not node.up:
            return
        at = self.q.now + ms(self.params.watch_latency)
        self._once(("wake", node.name, role, node.generation), at, self._wakeup, node,
                   node.generation, role)

    def _wakeup(self, node: SimNode, gen: int, role: str) -> None:
        if gen == node.generation:
            self._run_daemon(node, role)

    def wake_all(self, role: str) -> None:
        for node in self.nodes.values():
            self.wake(node, role)

    # ------------------------------------------------------------ power and links

    def power_off(self, name: str, why: str) -> None:
        member = self.members[name]
        if not member.power:
            return
        member.power = member.up = False
        self.topology_changed()
        self.log("info", "hw", f"{name} powered off ({why})")
        node = self.nodes.get(name)
        if node is not None:
            self._node_down(node, why)

    def _node_down(self, node: SimNode, why: str) -> None:
        node.generation += 1
        for job in node.jobs.values():
            if job.kind == "migrate" and job.target:
                if self.guests.instances[job.sid].get(job.target) == "incoming":
                    self.guests._set(job.sid, job.target, None, "migration source died")
        self.guests.kill_all(node.name, why)
        node.jobs, node.results, node.wakeups = {}, {}, {}
        node.crm = node.lrm = None
        node.watchdog = Watchdog()
        node.lease_id = node.renewed_at = None
        node.shutdown_request = None
        node.paused_until = -1
        node.daemon_down = False

    def power_on(self, name: str) -> None:
        member = self.members[name]
        if member.power:
            return
        member.power = True
        self.log("info", "hw", f"{name} powered on")
        node = self.nodes.get(name)
        gen = node.generation if node else 0
        self.q.after(ms(self.params.node_boot), self._booted, name, gen)

    def _booted(self, name: str, gen: int) -> None:
        member = self.members[name]
        node = self.nodes.get(name)
        if not member.power or (node is not None and node.generation != gen):
            return
        self.log("info", "hw", f"{name} booted")
        if node is None:
            member.up = True
        else:
            self._boot(node)
        self.topology_changed()

    def set_link(self, name: str, link: str, on: bool) -> None:
        member = self.members[name]
        attr = "cluster_link" if link == "cluster" else "replication_link"
        if getattr(member, attr) != on:
            setattr(member, attr, on)
            self.topology_changed()
            self.log("info", "hw", f"{name}: {link} link {'up' if on else 'down'}")

    def partition(self, a: str, b: str, cut: bool) -> None:
        pair = frozenset((a, b))
        self.topology_changed()
        if cut and pair not in self.cuts:
            self.cuts.add(pair)
            self.log("info", "hw", f"cluster network cut between {a} and {b}")
        elif not cut and pair in self.cuts:
            self.cuts.discard(pair)
            self.log("info", "hw", f"cluster network between {a} and {b} restored")

    def pause(self, name: str, seconds: float, crm_first: bool = False) -> None:
        node = self.nodes[name]
        if not node.up:
            return
        node.paused_until = self.q.now + ms(seconds)
        self.log("info", "hw", f"{name}: binomed paused for {seconds:g} s")
        self.q.at(node.paused_until, self._resumed, node, node.generation, crm_first)

    def _resumed(self, node: SimNode, gen: int, crm_first: bool = False) -> None:
        if gen == node.generation and node.running(self.q.now):
            self.log("info", "hw", f"{node.name}: binomed resumed"
                                   + (" (its CRM round runs before its renewal)" if crm_first
                                      else ""))
            if crm_first:
                # binomed's loops are due together when it resumes; nothing orders the
                # round before the renewal, so a resumed CRM sees its own lease overdue
                self._run_daemon(node, "crm")
            self._renew(node)  # its overdue keepalive timer fires first thing
            self.wake(node, "crm")
            self.wake(node, "lrm")

    def request_shutdown(self, name: str, kind: str) -> None:
        node = self.nodes[name]
        if not node.up or node.shutdown_request:
            return
        node.shutdown_request = kind
        self.log("info", "hw", f"{name}: {kind} requested")
        self.wake(node, "lrm")
        self.q.after(ms(self.params.shutdown_timeout), self._shutdown_timeout, node,
                     node.generation)

    def _shutdown_timeout(self, node: SimNode, gen: int) -> None:
        """Like systemd's stop timeout: the machine goes down anyway, guests killed hard."""
        if gen != node.generation or not node.up or not node.shutdown_request:
            return
        kind = node.shutdown_request
        self.log("warn", "hw", f"{node.name}: {kind} timed out; forcing it")
        self.power_off(node.name, f"{kind} timed out")
        if kind == "reboot":
            self.power_on(node.name)

    def shutdown_ready(self, node: SimNode) -> None:
        if node.shutdown_request == "restart":
            self.q.after(0, self._daemon_stop, node, node.generation, node.life, "ready")
            return
        self.q.after(0, self._graceful_off, node, node.generation)

    # ------------------------------------------------------------ binomed restart

    def daemon_restart(self, name: str, down: float) -> None:
        """`systemctl restart binomed`: the daemon stops (after the LRM's restart mode, at
        most `restart_wait` s) and starts again `down` s later; guests and watchdog run on."""
        node = self.nodes[name]
        if not node.up or node.daemon_down or node.shutdown_request:
            return
        node.shutdown_request = "restart"
        node.restart_down = down
        self.log("info", "hw", f"{name}: binomed restart requested (down for {down:g} s)")
        self.wake(node, "lrm")
        self.q.after(ms(self.params.restart_wait), self._daemon_stop, node, node.generation,
                     node.life, "timeout")

    def _daemon_stop(self, node: SimNode, gen: int, life: int, why: str) -> None:
        if gen != node.generation or life != node.life or not node.up or node.daemon_down:
            return
        if why == "timeout":
            self.log("warn", "hw", f"{node.name}: binomed stops without the freeze "
                                   f"acknowledged ({self.params.restart_wait:g} s); its "
                                   "watchdog stays armed")
        if node.crm is not None:
            node.crm.shutdown()
        # like HaAgent.stop(): the lease is announced released, then revoked
        if node.lease_id is not None and self.etcd.quorate(node.name):
            self.etcd.revoke(node.lease_id, self.q.now)
            self.log("info", "etcd", f"{node.name} released its lease")
            self.wake_all("crm")
        node.crm = node.lrm = None
        node.daemon_down = True
        node.lease_id = node.renewed_at = None
        node.shutdown_request = None
        node.life += 1
        self.log("info", "hw", f"{node.name}: binomed stopped")
        self.q.after(ms(node.restart_down), self._daemon_start, node, gen, node.life)

    def _daemon_start(self, node: SimNode, gen: int, life: int) -> None:
        if gen != node.generation or life != node.life or not node.up:
            return
        self.log("info", "hw", f"{node.name}: binomed started")
        self._start_daemons(node)

    def _graceful_off(self, node: SimNode, gen: int) -> None:
        if gen != node.generation or not node.up:
            return
        kind = node.shutdown_request
        if node.crm is not None:
            node.crm.shutdown()
        if node.lease_id is not None and self.etcd.quorate(node.name):
            self.etcd.revoke(node.lease_id, self.q.now)
            self.log("info", "etcd", f"{node.name} released its lease")
            self.wake_all("crm")
        self.power_off(node.name, "rebooting" if kind == "reboot" else "shut down")
        if kind == "reboot":
            self.power_on(node.name)

    # ------------------------------------------------------------ watchdog

    def watchdog_arm(self, node: SimNode, deadline: int, sids: frozenset[str]) -> None:
        if not node.spec.watchdog:
            return  # this node has no watchdog: arming does nothing, and it never fires
        wd = node.watchdog
        wd.armed, wd.fired, wd.deadline, wd.sids = True, False, deadline, sids
        self._once(("watchdog", node.name, node.generation), deadline, self._watchdog_check,
                   node, node.generation)

    def _watchdog_check(self, node: SimNode, gen: int) -> None:
        wd = node.watchdog
        if gen != node.generation or not wd.armed:
            return
        if self.q.now < wd.deadline:
            self._once(("watchdog", node.name, gen), wd.deadline, self._watchdog_check, node, gen)
            return
        wd.armed, wd.fired = False, True
        for job in node.jobs.values():
            if job.kind == "migrate" and job.target and job.sid in wd.sids:
                if self.guests.instances[job.sid].get(job.target) == "incoming":
                    self.guests._set(job.sid, job.target, None, "migration source self-fenced")
        killed = self.guests.kill_all(node.name, "watchdog", only=wd.sids)
        node.jobs = {u: j for u, j in node.jobs.items() if j.sid not in wd.sids}
        node.results = {}
        last = "never" if node.renewed_at is None else f"{node.renewed_at / 1000:.2f}"
        self.log("warn", "watchdog", f"{node.name}: self-fence (last lease renewal {last}): "
                                     f"killed {', '.join(killed) or 'nothing'}")
        self.wake(node, "lrm")

    # ------------------------------------------------------------ fence devices

    def fence_request(self, name: str, by: str, seen_renewal: int | None) -> str:
        """The CRM on `by` decided to fence `name`, whose latest renewal it saw at
        `seen_renewal` (None: no lease). binomed's fencer acts `fencer_latency` later,
        and only after its guard transaction (`_fence_guard`), like `ha.agent.fencer`."""
        dev = self.nodes[name].fence
        assert dev is not None
        dev.requests += 1
        rid = f"{name}#{dev.requests}"
        dev.latest = FenceStatus(rid, FenceState.PENDING)
        self.log("info", "fence", f"{name}: power-off requested ({rid}, device {dev.health})")
        requester = self.nodes[by]
        self.q.after(ms(self.params.fencer_latency), self._fence_guard, name, rid, by,
                     requester.generation, requester.life, seen_renewal)
        return rid

    def _fence_guard(self, name: str, rid: str, by: str, gen: int, life: int,
                     seen_renewal: int | None) -> None:
        dev = self.nodes[name].fence
        assert dev is not None
        if dev.latest is None or dev.latest.request_id != rid:
            return
        requester = self.nodes[by]
        if requester.generation != gen or requester.life != life or not requester.up:
            dev.latest = FenceStatus(rid, FenceState.FAILED, "the fencer died")
            return
        if requester.paused(self.q.now):   # the task runs when its process resumes
            self.q.at(requester.paused_until, self._fence_guard, name, rid, by, gen, life,
                      seen_renewal)
            return
        why = self.fencer_guard_refusal(by, name, seen_renewal)
        if why is not None:
            dev.latest = FenceStatus(rid, FenceState.FAILED, f"not fenced: {why}")
            self.log("warn", "fence", f"{name}: request {rid} dropped by {by}'s fencer ({why})")
            self.wake_all("crm")
            return
        self.invariants.fence_action(by, name)
        delay = self.timers.fence_timeout if dev.health == "dead" else dev.spec.delay
        self.q.after(ms(delay), self._fence_done, name, rid)

    def fencer_guard_refusal(self, by: str, name: str, seen_renewal: int | None) -> str | None:
        """binomed's guard, one etcd transaction: the manager lock is still `by`'s (on its
        current lease) and `name` has not renewed since the decision (its lease may have
        expired meanwhile: that only confirms it). None when the fencer may act."""
        if not self.etcd.quorate(by):
            return "no quorum"
        if not self.holds_lock(by):
            return "the manager lock is no longer ours"
        lease = self.etcd.lease_of(name)
        if lease is not None and lease.renewed != seen_renewal:
            return f"{name} renewed its lease since the decision"
        return None

    def probe_request(self, name: str, by: str, seen_renewal: int | None, *,
                      as_master: bool) -> str:
        """The CRM on `by` asked for `name`'s power state (`ha.probe`): like binomed's
        fencer, a guard transaction, the BMC's status read, a second guard, and when the
        chassis reads off the revocation of `name`'s lease."""
        dev = self.nodes[name].fence
        assert dev is not None
        dev.probes += 1
        rid = f"{name}?{dev.probes}"
        dev.probe[by] = FenceStatus(rid, FenceState.PENDING)
        requester = self.nodes[by]
        self.q.after(ms(self.params.fencer_latency), self._probe_step, name, rid, by,
                     requester.generation, requester.life, seen_renewal, as_master, False)
        return rid

    def _probe_step(self, name: str, rid: str, by: str, gen: int, life: int,
                    seen_renewal: int | None, as_master: bool, read_off: bool) -> None:
        dev = self.nodes[name].fence
        assert dev is not None
        if by not in dev.probe or dev.probe[by].request_id != rid:
            return
        requester = self.nodes[by]
        if requester.generation != gen or requester.life != life or not requester.up:
            dev.probe[by] = FenceStatus(rid, FenceState.FAILED, "the prober died")
            return
        if requester.paused(self.q.now):
            self.q.at(requester.paused_until, self._probe_step, name, rid, by, gen, life,
                      seen_renewal, as_master, read_off)
            return
        why = self._probe_guard_refusal(by, name, seen_renewal, as_master)
        if why is not None:
            dev.probe[by] = FenceStatus(rid, FenceState.FAILED, f"not probed: {why}")
            return   # nothing to act on: no wake (a FAILED probe is retried by the rounds)
        if not read_off:    # first guard passed: the BMC's answer comes later
            if dev.health != "ok":
                delay = self.timers.fence_timeout if dev.health == "dead" else 0.0
                self.q.after(ms(delay), self._probe_failed, name, rid, by)
                return
            self.q.after(ms(self.params.probe_latency), self._probe_read, name, rid, by, gen,
                         life, seen_renewal, as_master)
            return
        # second guard passed: off was read after the last renewal; revoke its lease
        self.invariants.power_read_off(by, name)
        lease = self.etcd.lease_of(name)
        if lease is not None:
            self.etcd.revoke(lease.id, self.q.now)
        dev.probe[by] = FenceStatus(rid, FenceState.CONFIRMED, "chassis power off")
        self.log("info", "fence", f"{name}: power status read off ({rid}); lease revoked")
        self.wake_all("crm")

    def _probe_read(self, name: str, rid: str, by: str, gen: int, life: int,
                    seen_renewal: int | None, as_master: bool) -> None:
        dev = self.nodes[name].fence
        assert dev is not None
        if by not in dev.probe or dev.probe[by].request_id != rid:
            return
        if self.members[name].power:
            dev.probe[by] = FenceStatus(rid, FenceState.FAILED, "chassis power on")
            return
        self._probe_step(name, rid, by, gen, life, seen_renewal, as_master, True)

    def _probe_failed(self, name: str, rid: str, by: str) -> None:
        dev = self.nodes[name].fence
        assert dev is not None
        if by in dev.probe and dev.probe[by].request_id == rid:
            dev.probe[by] = FenceStatus(rid, FenceState.FAILED, f"fence device {dev.health}")

    def _probe_guard_refusal(self, by: str, name: str, seen_renewal: int | None,
                             as_master: bool) -> str | None:
        if not self.etcd.quorate(by):
            return "no quorum"
        if as_master and not self.holds_lock(by):
            return "the manager lock is no longer ours"
        lease = self.etcd.lease_of(name)
        if lease is None or seen_renewal is None:
            return f"{name} holds no lease"
        if lease.renewed != seen_renewal:
            return f"{name} renewed its lease since the decision"
        return None

    def holds_lock(self, node: str) -> bool:
        """The manager lock is `node`'s, on its current lease (what a CRM's CAS compares)."""
        entry = self.etcd.kv.get(keys.MANAGER_LOCK)
        hw = self.nodes[node]
        return (entry is not None and hw.lease_id is not None and entry.lease == hw.lease_id
                and self.etcd.get(keys.MANAGER_LOCK)[0] == node)

    def _fence_done(self, name: str, rid: str) -> None:
        dev = self.nodes[name].fence
        assert dev is not None
        if dev.latest is None or dev.latest.request_id != rid:
            return
        if dev.health == "ok":
            self.power_off(name, "fence device")
            dev.latest = FenceStatus(rid, FenceState.CONFIRMED, "power-off confirmed")
            self.log("info", "fence", f"{name}: power-off confirmed ({rid})")
            if dev.spec.action == "reboot":
                self.power_on(name)
        elif dev.health == "fail":
            dev.latest = FenceStatus(rid, FenceState.FAILED, "fence agent returned an error")
            self.log("err", "fence", f"{name}: fence agent returned an error ({rid})")
        else:
            dev.latest = FenceStatus(rid, FenceState.FAILED, "BMC did not answer within "
                                                              f"{self.timers.fence_timeout:g} s")
            self.log("err", "fence", f"{name}: BMC unreachable, request timed out ({rid})")
        self.wake_all("crm")

    def set_fence_health(self, name: str, health: str) -> None:
        dev = self.nodes[name].fence
        if dev is None:
            raise ValueError(f"{name} has no fence device")
        dev.health = health
        self.log("info", "hw", f"{name}: fence device {health}")

    # ------------------------------------------------------------ executor support

    def move_config_by_node(self, node: str, sid: str, target: str) -> tuple[ExitCode, str]:
        """The executor's config move at the end of a migration/relocation (one transaction)."""
        if not self.etcd.quorate(node):
            return ExitCode.ERROR, "no quorum for the config move"
        self.invariants.ha_action(node, f"move config of {sid} to {target}")
        owner, rev = self.etcd.get(keys.config(sid))
        if owner != node:
            return ExitCode.EWRONG_NODE, f"config is on {owner}"
        self.etcd.txn({keys.config(sid): rev}, {keys.config(sid): target})
        return ExitCode.SUCCESS, ""

    # ------------------------------------------------------------ admin

    def admin_ok(self) -> bool:
        """Admin changes go through the API of some quorate node."""
        return any(self.etcd.quorate(n) for n in self.nodes)

    def set_requested(self, sid: str, state: str) -> None:
        data = self.etcd.get(keys.RESOURCES)[0] or {}
        data[sid]["state"] = state
        self.etcd.put(keys.RESOURCES, data)
        self.wake_all("crm")

    def confirm_fence(self, name: str, user: str = "root@pam", *,
                      honest: bool = True) -> str | None:
        """`binome fence NODE --confirm-off`: the API's checks, then the confirmation.

        Returns why it was refused, or None. The admin is honest: a node that
        is powered on is not confirmed (`honest=False` lets a test check that
        the invariants catch a lie).
        """
        if not self.admin_ok():
            return "no node has quorum (the API is read-only)"
        if self.etcd.lease_of(name) is not None:
            return f"{name} is online (its lease is alive)"
        rec = self.manager_status().node_status.get(name)
        if rec is None or rec.loss is None:
            return f"{name} is not known lost by the HA manager"
        if self.members[name].power and honest:
            return f"the admin finds {name} powered on and does not confirm"
        self.invariants.fence_confirmed(name)
        self.etcd.put(keys.fence_confirm(name),
                      FenceConfirmation(name, rec.loss, user, self.q.now / 1000).to_dict())
        self.log("warn", "admin", f"{user} confirmed {name} is powered off (loss {rec.loss})")
        self.wake_all("crm")
        return None

    def queue_command(self, line: str) -> None:
        self._command_seq += 1
        self.etcd.put(keys.command(self._command_seq), line)
        self.wake_all("crm")
