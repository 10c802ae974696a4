"""The CRM's manager round: read one snapshot, decide, write the manager status with CAS.

`Manager(env, timers).round()` is what the elected master runs every
`manager_round` seconds (and on watch events). One round:

1. reads the manager status (and its revision), the HA config, node leases,
   LRM reports and queued admin commands (`RoundContext`);
2. applies admin commands (migrate, relocate, node maintenance, disarm/arm);
3. adds services new in the config and drops removed or `ignored` ones;
4. updates node states (`ha.nodes`), then runs every service's state
   machine (`ha.transitions`) and the fencing logic until nothing changes;
5. writes the manager status back, compared against the revision it read and
   the manager lock (`CrmEnv.write_manager_status`), together with the
   deletion of the commands it consumed.

It raises `EnvUnavailable` (no quorum: nothing was decided) and `Conflict`
(someone else is master now); `ha.crm` turns those into CRM state changes.
The manager keeps nothing between rounds that matters for safety: a new
master continues from the persisted status.
"""

from __future__ import annotations

from binome.ha.commands import CrmCommand, parse_command
from binome.ha.context import RoundContext
from binome.ha.env import CrmEnv
from binome.ha.model import (
    NodeState,
    RequestedState,
    ServiceState,
    ServiceStatus,
)
from binome.ha.nodes import fence_nodes, update_node_states
from binome.ha.probe import PowerProber
from binome.ha.rules import compile_config
from binome.ha.scheduler import replica_reason, uptodate_nodes
from binome.ha.timers import HaTimers
from binome.ha.transitions import next_state

S = ServiceState
MAX_PASSES = 5  # a service moves at most a few states per round; this bounds a bug's loop


class Manager:
    def __init__(self, env: CrmEnv, timers: HaTimers, prober: PowerProber | None = None) -> None:
        self.env = env
        self.timers = timers
        self.since = env.now()  # when this node became master: see nodes.alive()
        # the CRM's, so what it probed before it was master still counts (`ha.probe`)
        self.prober = prober if prober is not None else PowerProber()
        self._dropped: list[str] = []   # the rule drop messages last logged

    def round(self) -> None:
        env = self.env
        status, revision = env.read_manager_status()
        before = status.to_dict()
        now, nodes, facts = env.now(), env.cluster_nodes(), env.node_facts()
        if status.disarm is None:   # disarmed: no fencing, so no probing either
            self.prober.step(env, self.timers, now, facts, nodes, sorted(nodes))
        resources, groups = env.read_resources(), env.read_groups()
        rules, dropped = compile_config(env.read_rules(), groups, resources, sorted(nodes))
        if dropped != self._dropped:   # upstream logs them at every recompile: once here
            for message in dropped:
                env.log("warn", message)
            self._dropped = dropped
        ctx = RoundContext(
            env=env, timers=self.timers, now=now, status=status,
            resources=resources, groups=groups,
            settings=env.read_settings(), nodes=nodes, facts=facts,
            lrms=env.read_lrm_statuses(), master_since=self.since,
            confirmations=env.fence_confirmations(), powered_off=self.prober.powered_off(env),
            rules=rules)
        status.master_node = env.node
        commands = env.read_commands()  # deleted with the status write: none is lost
        for _cmd_id, line in commands:
            self._command(ctx, line)
        update_node_states(ctx)
        self._sync_services(ctx)
        self._run_state_machines(ctx)
        if status.to_dict() != before or commands:
            env.write_manager_status(status, revision, [cmd_id for cmd_id, _ in commands])

    # ------------------------------------------------------------ services

    def _sync_services(self, ctx: RoundContext) -> None:
        status = ctx.status
        for sid in sorted(status.service_status):
            cfg = ctx.resources.get(sid)
            if cfg is None or cfg.state == RequestedState.IGNORED:
                del status.service_status[sid]
                why = "removed from the HA config" if cfg is None else "ignored"
                ctx.log("info", f"service {sid}: {why}; no longer managed")
        for sid, cfg in sorted(ctx.resources.items()):
            if sid in status.service_status or cfg.state == RequestedState.IGNORED:
                continue
            owner = ctx.env.service_config_node(sid)
            if owner is None:
                ctx.log("err", f"service {sid}: no guest config found; not managed")
                continue
            state = S.REQUEST_START if cfg.state == RequestedState.STARTED else S.REQUEST_STOP
            status.service_status[sid] = ServiceStatus(state=state, node=owner,
                                                       uid=ctx.new_uid(), since=ctx.now)
            ctx.log("info", f"service {sid}: added ({state} on {owner})")

    def _run_state_machines(self, ctx: RoundContext) -> None:
        if ctx.status.disarm is not None:
            return
        for _ in range(MAX_PASSES):
            changed = False
            for sid in sorted(ctx.status.service_status):
                changed |= next_state(ctx, sid)
            changed |= fence_nodes(ctx)
            if not changed:
                return

    # ------------------------------------------------------------ admin commands

    def _command(self, ctx: RoundContext, line: str) -> None:
        try:
            cmd = parse_command(line)
        except ValueError as exc:
            ctx.log("err", f"command ignored: {exc}")
            return
        ctx.log("info", f"command: {cmd}")
        if cmd.verb in ("migrate", "relocate"):
            self._move_command(ctx, cmd)
        # (parse_command gives the maintenance verbs their node: `is not None` is for mypy)
        elif cmd.verb == "enable-node-maintenance" and cmd.node is not None:
            ctx.status.node_request.setdefault(cmd.node, {})["maintenance"] = True
        elif cmd.verb == "disable-node-maintenance" and cmd.node is not None:
            ctx.status.node_request.pop(cmd.node, None)
        elif cmd.verb == "disarm-ha":
            self._disarm(ctx, cmd)
        elif cmd.verb == "arm-ha":
            self._arm(ctx)

    def _move_command(self, ctx: RoundContext, cmd: CrmCommand) -> None:
        sid, target = cmd.sid, cmd.node
        assert sid is not None and target is not None   # parse_command: `<verb> <sid> <node>`
        sd = ctx.status.service_status.get(sid)
        if sd is None:
            ctx.log("err", f"{cmd}: refused: not an HA service")
            return
        if target == sd.node:
            ctx.log("info", f"{cmd}: already on {target}")
            return
        if sd.state not in (S.STARTED, S.STOPPED):
            ctx.log("warn", f"{cmd}: refused: service is {sd.state}")
            return
        if target not in ctx.placeable():
            ctx.log("warn", f"{cmd}: refused: {target} cannot take services now")
            return
        aff = ctx.node_affinity(sid)
        if aff is not None and aff.priority(target) is None:
            ctx.log("warn", f"{cmd}: refused: {target} is not in {aff.label}")
            return
        separate, _ = ctx.partners(sid)
        if separate.get(target):
            csid = sorted(separate[target])[0]
            ctx.log("err", f"{cmd}: refused: service '{csid}' on node '{target}' in negative "
                           f"affinity with service '{sid}'")
            return
        replicas = ctx.replicas(sid)
        good = uptodate_nodes(replicas)
        if good is not None and target not in good:
            ctx.log("warn", f"{cmd}: refused: {replica_reason(replicas, [target])}")
            return
        sd.maintenance_node = None
        live = cmd.verb == "migrate" and sd.state == S.STARTED
        ctx.change(sid, sd, S.MIGRATE if live else S.RELOCATE, target=target, why="admin command")
        # upstream's queue_resource_motion: its positive-affinity partners follow it
        for csid in sorted(ctx.rules.positive.get(sid, ())):
            csd = ctx.status.service_status.get(csid)
            if csd is None or target in (csd.node, csd.target) \
                    or csd.state not in (S.STARTED, S.STOPPED):
                continue
            good = uptodate_nodes(ctx.replicas(csid))
            if good is not None and target not in good:
                ctx.log("warn", f"{cmd}: {csid} (positive affinity) stays: "
                                f"{replica_reason(ctx.replicas(csid), [target])}")
                continue
            csd.maintenance_node = None
            live = cmd.verb == "migrate" and csd.state == S.STARTED
            ctx.change(csid, csd, S.MIGRATE if live else S.RELOCATE, target=target,
                       why=f"in positive affinity with {sid} ({cmd})")

    def _disarm(self, ctx: RoundContext, cmd: CrmCommand) -> None:
        ctx.status.disarm = cmd.disarm
        ctx.log("warn", f"HA disarmed ({cmd.disarm}): no fencing, recovery or service actions "
                        "until 'arm-ha'; watchdogs are released")
        if cmd.disarm == "freeze":
            for sid, sd in sorted(ctx.status.service_status.items()):
                if sd.state not in (S.FREEZE, S.ERROR, S.FENCE, S.RECOVERY):
                    ctx.change(sid, sd, S.FREEZE, why="HA disarmed")

    def _arm(self, ctx: RoundContext) -> None:
        if ctx.status.disarm is None:
            return
        ctx.status.disarm = None
        ctx.log("info", "HA armed again")
        for sid, sd in sorted(ctx.status.service_status.items()):
            lost = ctx.node_state(sd.node) in (NodeState.UNKNOWN, NodeState.FENCE, None)
            if sd.state == S.FREEZE and lost:
                ctx.change(sid, sd, S.FENCE, why=f"armed again while {sd.node} is lost")
