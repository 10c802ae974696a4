"""The per-service state machine of the CRM (pure, over a RoundContext).

`next_state(ctx, sid)` applies at most one transition to one service and
returns whether it changed; the manager calls it until nothing moves. Each
handler is named after the state it leaves; `docs/ha.md` has the table.

Principles the handlers keep:

- a command to an LRM is a state plus a fresh `uid`; the LRM runs each uid
  once and the CRM reads the result under the same uid. Refinements that do
  not ask the LRM anything new (`starting` -> `started`, `request_stop` ->
  `stopping` -> `stopped`) keep the uid;
- a service leaves a lost node only through `fence` -> `recovery`, and
  recovery moves the config only to a node holding an UpToDate replica of
  every volume (the scheduler's hard constraint); otherwise it waits with the
  reason;
- the config owner (`service_config_node`) is the truth about where a
  service may run: a completed migration whose result was never read is
  adopted, not recovered a second time.
"""

from __future__ import annotations

from binome.ha.context import RoundContext
from binome.ha.env import Conflict
from binome.ha.model import (
    ExitCode,
    LrmMode,
    LrmState,
    NodeState,
    RequestedState,
    ServiceState,
    ServiceStatus,
)
from binome.ha.nodes import CONFIRM_HINT, FENCEABLE, lost, manual_confirmation, watchdog_trusted

S = ServiceState
#: `ServiceStatus.frozen_by` of a service frozen for a binomed restart of its node.
RESTART = "restart"
#: States whose command a restarting LRM will not run (unless it is already running it):
#: frozen too, so that the LRM may release its watchdog.
_PENDING = frozenset({S.REQUEST_START, S.STARTING, S.REQUEST_STOP, S.STOPPING, S.MIGRATE,
                      S.RELOCATE})
#: After an automatic migration (failback, evacuation) failed, wait this many manager
#: rounds before trying again, instead of retrying in a tight loop.
MOVE_RETRY_ROUNDS = 10
#: A node that answered "try again" to a start (its storage not ready yet) is asked again
#: after this many manager rounds, doubling per answer up to the cap: quick when a resync
#: is about to end, quiet in the log when the wait is long.
START_RETRY_ROUNDS, START_RETRY_MAX_ROUNDS = 2, 30


def _wants_stop(ctx: RoundContext, sid: str) -> bool:
    cfg = ctx.resources[sid]
    return cfg.state in (RequestedState.STOPPED, RequestedState.DISABLED)


def next_state(ctx: RoundContext, sid: str) -> bool:
    sd = ctx.status.service_status[sid]
    cfg = ctx.resources[sid]
    before = (sd.state, sd.node, sd.uid, sd.target)
    if ctx.status.disarm is not None:
        return False
    if sd.state == S.FREEZE and sd.frozen_by == RESTART and lost(ctx, sd.node):
        return _restart_lost(ctx, sid, sd)
    if sd.state in FENCEABLE and lost(ctx, sd.node) and not (
            sd.state == S.STOPPED and cfg.state == RequestedState.DISABLED):
        ctx.change(sid, sd, S.FENCE, why=f"node {sd.node} lost")
        return True
    if _restart_freeze(ctx, sid, sd):
        return True
    handler = _HANDLERS.get(sd.state)
    if handler is not None:
        handler(ctx, sid, sd)
    return (sd.state, sd.node, sd.uid, sd.target) != before


# ---------------------------------------------------------------- binomed restart


def _restart_freeze(ctx: RoundContext, sid: str, sd: ServiceStatus) -> bool:
    """The node's binomed restarts (its LRM reports mode `restart`): hands off its services.

    Frozen services keep running and nothing is started, stopped, moved or
    recovered for them; the frozen manager status is the LRM's acknowledgement,
    after which it releases its watchdog. A command the LRM is running (or has
    answered) is let finish first.
    """
    if not ctx.daemon_restart(sd.node):
        return False
    if sd.state not in (S.STARTED, S.STOPPED) and not (
            sd.state in _PENDING and ctx.result(sd.node, sd.uid) is None
            and not ctx.job_running(sd.node, sd.uid)):
        return False
    ctx.change(sid, sd, S.FREEZE, why=f"binomed restarts on {sd.node}: left as it is, "
                                      "not managed until it is back")
    sd.frozen_by = RESTART
    return True


def _restart_lost(ctx: RoundContext, sid: str, sd: ServiceStatus) -> bool:
    """Frozen for a binomed restart, and the node did not come back: did it die meanwhile?

    Its guests were left running and its watchdog was (normally) released, so
    lease expiry proves nothing: after `restart_grace` the node is fenced
    through its fence device (the only proof left), or through the watchdog
    guarantee if its last report still says armed (it died before releasing
    it). Without either, the service stays frozen and the reason says why.
    """
    node = sd.node
    info = ctx.nodes.get(node)
    if info is None:
        return False   # no longer a member: stays frozen, the operator decides
    rec = ctx.status.node_status.get(node)
    start = max(min(rec.since, ctx.now) if rec else ctx.now, ctx.master_since)
    grace = ctx.timers.restart_grace
    if ctx.now - start < grace:
        ctx.set_reason(sid, sd, f"{node} is restarting binomed; waiting up to {grace:g} s "
                                "for it to come back", level="info")
        return False
    trusted = watchdog_trusted(ctx, node)
    conf = manual_confirmation(ctx, node)
    if conf is not None and not (info.fence_device or trusted):
        who = conf.user or "the administrator"
        ctx.change(sid, sd, S.FENCE, why=f"{node} did not come back from a binomed restart "
                                         f"within {grace:g} s; {who} confirmed it is "
                                         "powered off")
        return True
    if info.fence_device or trusted:
        how = "its fence device" if info.fence_device else "its watchdog guarantee"
        ctx.change(sid, sd, S.FENCE, why=f"{node} did not come back from a binomed restart "
                                         f"within {grace:g} s; fencing it through {how}")
        return True
    why = ("no watchdog on it" if not info.watchdog
           else f"its watchdog was released while {sid} ran")
    ctx.set_reason(sid, sd, f"{node} did not come back from a binomed restart within "
                            f"{grace:g} s and {why}: only a fence device could prove it dead, "
                            f"and it has none; stays frozen until {node} returns "
                            f"({CONFIRM_HINT.format(node=node)})",
                   level="alert")
    return False


# ---------------------------------------------------------------- starting a service


def _request_start(ctx: RoundContext, sid: str, sd: ServiceStatus) -> None:
    if _wants_stop(ctx, sid):
        ctx.change(sid, sd, S.REQUEST_STOP, why="stop requested")
        return
    if ctx.node_state(sd.node) not in (NodeState.ONLINE, NodeState.MAINTENANCE):
        # only its node's LRM can hand it over (relocate); a lost node goes through fencing
        ctx.set_reason(sid, sd, f"waiting for {sd.node} to come online", level="info")
        return
    if sd.start_retry_at is not None:
        if ctx.now < sd.start_retry_at:
            return   # the reason says what the node is waiting for
        sd.start_retry_at = None
    choice = ctx.place(sid, current=sd.node, stay=True)
    if choice.node is None:
        ctx.set_reason(sid, sd, choice.reason)
    elif choice.node == sd.node:
        ctx.change(sid, sd, S.STARTING)
    else:
        ctx.change(sid, sd, S.RELOCATE, target=choice.node, why=choice.reason)


def _starting(ctx: RoundContext, sid: str, sd: ServiceStatus) -> None:
    if _wants_stop(ctx, sid):
        ctx.change(sid, sd, S.REQUEST_STOP, why="stop requested")
        return
    res = ctx.result(sd.node, sd.uid)
    if res is None:
        return
    if res.exit_code == ExitCode.SUCCESS:
        sd.restarts = 0
        sd.deferrals = 0
        sd.failed_nodes = []
        ctx.change(sid, sd, S.STARTED, new_uid=False)
        return
    if res.exit_code == ExitCode.ETRY_AGAIN:
        _start_deferred(ctx, sid, sd, res.message)
        return
    if res.exit_code == ExitCode.EWRONG_NODE:
        owner = ctx.env.service_config_node(sid)
        if owner is not None and owner != sd.node and not lost(ctx, owner):
            ctx.change(sid, sd, S.STARTING, node=owner, why=f"its config is on {owner}")
        else:
            ctx.change(sid, sd, S.ERROR, reason=res.message,
                       why=f"start on {sd.node}: {res.message}")
        return
    _start_failed(ctx, sid, sd, res.message)


def _start_deferred(ctx: RoundContext, sid: str, sd: ServiceStatus, message: str) -> None:
    """The node cannot start it *yet* (ETRY_AGAIN: a replica still resyncing, the peer
    still Primary): not the guest's failure, so no restart is counted and it never ends
    in `error` for it. Back to `request_start` after a growing pause, where placement
    decides again: the same node once its storage is ready, or a node that is.
    """
    rounds = min(START_RETRY_ROUNDS * 2 ** min(sd.deferrals, 8), START_RETRY_MAX_ROUNDS)
    delay = rounds * ctx.timers.manager_round
    sd.deferrals += 1
    sd.start_retry_at = ctx.now + delay
    wait = f"{sd.node} cannot start it yet ({message}); trying again in {delay:g} s"
    ctx.change(sid, sd, S.REQUEST_START, reason=wait, why=f"{wait}, no restart counted")


def _start_failed(ctx: RoundContext, sid: str, sd: ServiceStatus, message: str) -> None:
    """Restart on the same node up to max_restart, then try other nodes up to max_relocate."""
    cfg = ctx.resources[sid]
    if sd.restarts < cfg.max_restart:
        sd.restarts += 1
        ctx.change(sid, sd, S.STARTING,
                   why=f"start failed ({message}); restart {sd.restarts} of {cfg.max_restart}")
        return
    tried = [*sd.failed_nodes, sd.node]
    if len(tried) <= cfg.max_relocate:
        choice = ctx.place(sid, current=None, stay=False, avoid=frozenset(tried))
        if choice.node is not None:
            sd.failed_nodes = tried
            sd.restarts = 0
            ctx.change(sid, sd, S.RELOCATE, target=choice.node,
                       why=f"start failed ({message}); relocate {len(tried)} of "
                           f"{cfg.max_relocate}")
            return
        why = f"start failed ({message}) and {choice.reason}"
    else:
        why = (f"start failed ({message}) on {', '.join(tried)}: max_restart="
               f"{cfg.max_restart}, max_relocate={cfg.max_relocate} reached")
    sd.failed_nodes = tried
    ctx.change(sid, sd, S.ERROR, reason=why, why="giving up")
    ctx.log("err", f"service {sid}: error: {why}; set it to 'disabled' to recover")


def _started(ctx: RoundContext, sid: str, sd: ServiceStatus) -> None:
    if _wants_stop(ctx, sid):
        ctx.change(sid, sd, S.REQUEST_STOP, why="stop requested")
        return
    mode = ctx.lrm_mode(sd.node)
    if mode == LrmMode.RESTART:
        ctx.change(sid, sd, S.FREEZE, why=f"{sd.node} goes down with a freezing shutdown policy")
        return
    if mode == LrmMode.SHUTDOWN:
        return  # the node stops it and powers off; fencing then recovers it elsewhere
    if ctx.node_state(sd.node) == NodeState.MAINTENANCE or mode == LrmMode.MAINTENANCE:
        _evacuate(ctx, sid, sd)
        return
    lrm = ctx.lrm(sd.node)
    res = ctx.result(sd.node, sd.uid)
    if res is not None and res.exit_code == ExitCode.ETRY_AGAIN:
        _start_deferred(ctx, sid, sd, res.message)
        return
    if res is not None and res.exit_code != ExitCode.SUCCESS:
        # the LRM (re)started it under this uid, e.g. after a migration here, and failed
        _start_failed(ctx, sid, sd, res.message)
        return
    if (lrm is not None and lrm.state == LrmState.ACTIVE and res is not None
            and res.exit_code == ExitCode.SUCCESS and sid not in lrm.running
            and sid not in lrm.jobs.values()):
        ctx.change(sid, sd, S.STARTING, why=f"not running on {sd.node} any more; starting again")
        return
    if res is None:
        return  # the LRM has not confirmed this uid yet (e.g. just migrated here)
    _maybe_move_back(ctx, sid, sd)


def _move_backoff(ctx: RoundContext, sid: str, sd: ServiceStatus) -> bool:
    """True while automatic migrations of this service are paused after a failure."""
    if sd.move_retry_at is None:
        return False
    if ctx.now < sd.move_retry_at:
        return True
    sd.move_retry_at = None
    return False


def _evacuate(ctx: RoundContext, sid: str, sd: ServiceStatus) -> None:
    if _move_backoff(ctx, sid, sd):
        return
    choice = ctx.place(sid, current=None, stay=False, exclude=sd.node)
    if choice.node is None:
        ctx.set_reason(sid, sd, f"cannot leave {sd.node} (maintenance): {choice.reason}")
        return
    sd.maintenance_node = sd.maintenance_node or sd.node
    ctx.change(sid, sd, S.MIGRATE, target=choice.node, why=f"{sd.node} in maintenance")


def _maybe_move_back(ctx: RoundContext, sid: str, sd: ServiceStatus) -> None:
    """Return to the node it was evacuated from, or fail back to a preferred node."""
    if _move_backoff(ctx, sid, sd):
        return
    home = sd.maintenance_node
    if home is not None:
        if home == sd.node or home not in ctx.nodes:
            sd.maintenance_node = None
        elif home in ctx.placeable():
            choice = ctx.place(sid, current=home, stay=True)
            if choice.node == home:
                ctx.change(sid, sd, S.MIGRATE, target=home,
                           why=f"back to {home}, its maintenance ended")
                return
        return  # while it may come back, do not fail back elsewhere
    choice = ctx.place(sid, current=sd.node, stay=True)
    if choice.node is not None and choice.node != sd.node:
        ctx.change(sid, sd, S.MIGRATE, target=choice.node, why=f"failback: {choice.reason}")


# ---------------------------------------------------------------- stopping


def _request_stop(ctx: RoundContext, sid: str, sd: ServiceStatus) -> None:
    res = ctx.result(sd.node, sd.uid)
    if res is None:
        if sd.state == S.REQUEST_STOP and ctx.job_running(sd.node, sd.uid):
            ctx.change(sid, sd, S.STOPPING, new_uid=False)
        return
    if res.exit_code == ExitCode.SUCCESS:
        ctx.change(sid, sd, S.STOPPED, new_uid=False)
    else:
        ctx.change(sid, sd, S.ERROR, reason=f"stop failed: {res.message}",
                   why=f"stop failed: {res.message}")


def _stopped(ctx: RoundContext, sid: str, sd: ServiceStatus) -> None:
    if ctx.resources[sid].state == RequestedState.STARTED:
        ctx.change(sid, sd, S.REQUEST_START, why="start requested")


# ---------------------------------------------------------------- moving


def _moved(ctx: RoundContext, sid: str, sd: ServiceStatus, code: ExitCode) -> bool:
    """Success, or a re-run of a move that had already switched over (its result was lost,
    e.g. the node reset before reporting): the config on the target says it happened."""
    if code == ExitCode.SUCCESS:
        return True
    return code == ExitCode.EWRONG_NODE and ctx.env.service_config_node(sid) == sd.target


def _migrate(ctx: RoundContext, sid: str, sd: ServiceStatus) -> None:
    res = ctx.result(sd.node, sd.uid)
    if res is None:
        return
    target = sd.target
    if _moved(ctx, sid, sd, res.exit_code) and target is not None:
        if sd.maintenance_node == target:
            sd.maintenance_node = None
        nxt = S.REQUEST_STOP if _wants_stop(ctx, sid) else S.STARTED
        ctx.change(sid, sd, nxt, node=target, why="migrated")
    elif res.exit_code == ExitCode.EWRONG_NODE:
        ctx.change(sid, sd, S.ERROR, reason=res.message, why=f"migrate: {res.message}")
    else:
        sd.move_retry_at = ctx.now + MOVE_RETRY_ROUNDS * ctx.timers.manager_round
        ctx.change(sid, sd, S.STARTED, why=f"migration to {target} failed ({res.message}); "
                                           f"no automatic move before {sd.move_retry_at:.2f}")


def _relocate(ctx: RoundContext, sid: str, sd: ServiceStatus) -> None:
    res = ctx.result(sd.node, sd.uid)
    if res is None:
        return
    target = sd.target
    if _moved(ctx, sid, sd, res.exit_code) and target is not None:
        if _wants_stop(ctx, sid):
            ctx.change(sid, sd, S.REQUEST_STOP, node=target, why="relocated")
        else:
            ctx.change(sid, sd, S.STARTING, node=target, why="relocated")
    elif res.exit_code == ExitCode.EWRONG_NODE:
        ctx.change(sid, sd, S.ERROR, reason=res.message, why=f"relocate: {res.message}")
    elif _wants_stop(ctx, sid):
        ctx.change(sid, sd, S.REQUEST_STOP, why=f"relocation failed ({res.message})")
    else:
        ctx.change(sid, sd, S.REQUEST_START, why=f"relocation failed ({res.message})")


# ---------------------------------------------------------------- node failure


def _recovery(ctx: RoundContext, sid: str, sd: ServiceStatus) -> None:
    cfg = ctx.resources[sid]
    if cfg.state == RequestedState.DISABLED:
        ctx.change(sid, sd, S.STOPPED, why="disabled; stays with its fenced node")
        return
    owner = ctx.env.service_config_node(sid)
    if owner is None:
        ctx.change(sid, sd, S.ERROR, reason="guest config not found", why="config not found")
        return
    nxt = S.REQUEST_STOP if _wants_stop(ctx, sid) else S.STARTING
    failed = sd.node
    if owner != sd.node:
        # a migration switched over before the node was lost: the guest lives there now
        if lost(ctx, owner):
            ctx.change(sid, sd, S.FENCE, node=owner, why=f"its config is on {owner}, lost too")
        else:
            ctx.change(sid, sd, nxt, node=owner, why=f"config already on {owner}")
            ctx.env.notify("ha-recovered", sid=sid, from_node=failed, node=owner)
        return
    choice = ctx.place(sid, current=None, stay=False)
    if choice.node is None:
        if choice.reason != sd.reason:   # once per distinct reason, as its log line
            code = "no-uptodate-replica" if "UpToDate" in choice.reason else "no-node"
            ctx.env.notify("ha-recovery-blocked", sid=sid, from_node=failed, reason=code,
                           detail=choice.reason)
        ctx.set_reason(sid, sd, choice.reason)
        return
    if choice.node == owner:
        ctx.log("info", f"service {sid}: recovering on {owner}, where its config is "
                        f"({choice.reason})")
    else:
        try:
            ctx.env.move_service_config(sid, owner, choice.node)
        except Conflict as exc:
            ctx.set_reason(sid, sd, f"config move failed: {exc}")
            return
        ctx.log("info", f"service {sid}: recovering from fenced node {sd.node} to "
                        f"{choice.node} (config moved; {choice.reason})")
    ctx.change(sid, sd, nxt, node=choice.node, why="recovered")
    ctx.env.notify("ha-recovered", sid=sid, from_node=failed, node=choice.node)


def _freeze(ctx: RoundContext, sid: str, sd: ServiceStatus) -> None:
    lrm = ctx.lrm(sd.node)
    if ctx.node_state(sd.node) not in (NodeState.ONLINE, NodeState.MAINTENANCE):
        return
    if lrm is None or lrm.mode != LrmMode.ACTIVE or lrm.shutdown_done:
        return
    nxt = S.REQUEST_STOP if _wants_stop(ctx, sid) else S.STARTING
    if nxt == S.STARTING and sid not in lrm.running:
        # not running there (frozen while stopped): a start the rules forbid on this node
        # (a partner to keep apart from is there, a strict node affinity excludes it) is
        # placed like any start instead
        separate, _ = ctx.partners(sid)
        aff = ctx.node_affinity(sid)
        if separate.get(sd.node) or (aff is not None and aff.priority(sd.node) is None):
            ctx.change(sid, sd, S.REQUEST_START,
                       why=f"unfrozen: {sd.node}'s LRM is active again; not running there "
                           "and its rules want it elsewhere")
            return
    ctx.change(sid, sd, nxt, why=f"unfrozen: {sd.node}'s LRM is active again")


def _error(ctx: RoundContext, sid: str, sd: ServiceStatus) -> None:
    if ctx.resources[sid].state == RequestedState.DISABLED:
        sd.restarts = 0
        sd.failed_nodes = []
        ctx.change(sid, sd, S.REQUEST_STOP, why="disabled: leaving error state")


_HANDLERS = {
    S.REQUEST_START: _request_start,
    S.STARTING: _starting,
    S.STARTED: _started,
    S.REQUEST_STOP: _request_stop,
    S.STOPPING: _request_stop,
    S.STOPPED: _stopped,
    S.MIGRATE: _migrate,
    S.RELOCATE: _relocate,
    S.RECOVERY: _recovery,
    S.FREEZE: _freeze,
    S.ERROR: _error,
}
