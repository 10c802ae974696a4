"""Node states and fencing, as the master CRM decides them each round (pure, over a RoundContext).

Node states: `online` (lease renewed within `fence_delay`), `maintenance`
(online, evacuated), `unknown` (not seen: lease overdue or gone), `fence`
(lost while HA services were on it: they wait for proof it is dead), `gone`
(removed from the cluster).

A node in `fence` is **fenced** (its services may be recovered) only with a
proof (`FenceProof`):

- `device`: its fence device confirmed power-off for a request made during
  this fence;
- `power-off`: its fence device, asked for its power *status* when a renewal
  was late (`ha.probe`), read the chassis off between two checks that its
  heartbeat had not changed; its lease was revoked then, so it is lost now;
- `watchdog`: its lease expired (or, when released, its natural expiry has
  passed) and it runs a watchdog whose last report was armed, or that had
  nothing running. `self_fence_deadline < lease_ttl - safety_margin` makes
  the watchdog fire before the lease can expire, so expiry is the proof;
- `shutdown`: it released its lease after reporting a clean shutdown with no
  guest left;
- `manual`: the administrator confirmed it is powered off
  (`binome fence NODE --confirm-off`), for this very loss of the node
  (`NodeRecord.loss`), and its lease is still gone. The way out when nothing
  else can prove it; taken only when no other proof holds.

A fence device that fails is retried every `fence_retry`; without a watchdog
guarantee recovery stays blocked, an alert says so and the reason is shown on
the node and on each waiting service. If the node comes back before any proof
and no device request is in flight, the fence is cancelled and its services
resume in place: nothing was recovered, so nothing can run twice.
"""

from __future__ import annotations

from binome.ha.context import RoundContext
from binome.ha.model import (
    FenceConfirmation,
    FenceProof,
    FenceState,
    LrmMode,
    NodeFacts,
    NodeRecord,
    NodeState,
    RequestedState,
    ServiceState,
)

#: Service states that need their node fenced when the node is lost (Proxmox's list,
#: plus our refinements). `freeze` and `error` stay put; `stopped` + `disabled` too.
FENCEABLE = frozenset({ServiceState.REQUEST_START, ServiceState.STARTING, ServiceState.STARTED,
                       ServiceState.REQUEST_STOP, ServiceState.STOPPING, ServiceState.STOPPED,
                       ServiceState.MIGRATE, ServiceState.RELOCATE})


def watchdog_trusted(ctx: RoundContext, node: str) -> bool:
    """Public form of `_watchdog_trusted` (looked up at call time: tests replace it)."""
    return _watchdog_trusted(ctx, node)


def own_node(ctx: RoundContext, node: str) -> bool:
    """`node` is the one this master's CRM runs on."""
    return node == ctx.env.node


def alive(ctx: RoundContext, node: str) -> bool:
    """Lease held and renewed within `fence_delay`.

    The delay counts from when this master started at the earliest (as in
    Proxmox): after a quorum loss nobody could renew, and every node deserves
    a chance to do so before it is called lost.

    The master's own node is alive while its lease is: this CRM is running
    there. Its renewal may look overdue only because the whole daemon was
    stalled (SIGSTOP, a long GC, CPU starvation) and its CRM round ran before
    its keepalive when it resumed; calling it lost then made a master fence
    its own node. If the stall outlived the self-fence deadline, its own
    watchdog already killed its guests and its LRM starts over; if its lease
    expires, the lock goes with it and another master decides.
    """
    facts = ctx.facts.get(node)
    if not (facts and facts.lease_alive and facts.last_renewal is not None):
        return False
    if own_node(ctx, node):
        return True
    return ctx.now - max(facts.last_renewal, ctx.master_since) <= ctx.timers.fence_delay


def renewed_since(ctx: RoundContext, node: str, since: float) -> bool:
    """Alive with a renewal newer than `since`: proof of life after it was lost or fenced."""
    facts = ctx.facts.get(node)
    return alive(ctx, node) and facts is not None and (facts.last_renewal or 0.0) > since


def lost(ctx: RoundContext, node: str) -> bool:
    """Whether the services of `node` must go through fencing.

    A node seen losing its lease (overdue or gone) is lost at once; a node this
    master never saw at all (cold start, slow boot) gets `fence_delay` first.
    """
    rec = ctx.status.node_status.get(node)
    if rec is None or rec.state in (NodeState.FENCE, NodeState.GONE):
        return True
    if rec.state != NodeState.UNKNOWN:
        return False
    facts = ctx.facts.get(node)
    if facts is not None and (facts.lease_alive or facts.lease_gone_at is not None):
        return True
    return ctx.now - rec.since >= ctx.timers.fence_delay


def _lost_reason(ctx: RoundContext, node: str) -> str:
    if node in ctx.powered_off:
        return "its fence device reads its chassis powered off; lease revoked"
    facts = ctx.facts.get(node)
    if facts is None or (not facts.lease_alive and facts.lease_gone_at is None):
        return "no lease"
    if not facts.lease_alive:
        how = "expired" if facts.lease_expired else "released"
        return f"lease {how} {ctx.now - (facts.lease_gone_at or ctx.now):.1f} s ago"
    return f"lease not renewed for {ctx.now - (facts.last_renewal or ctx.now):.1f} s"


def _number_loss(ctx: RoundContext, node: str, rec: NodeRecord) -> None:
    """Give a lost node's record the identity of this loss, once (a confirmation names it)."""
    if rec.loss is None and rec.state in (NodeState.UNKNOWN, NodeState.FENCE):
        rec.loss = f"{node}-{ctx.status.next_loss}"
        ctx.status.next_loss += 1
    elif rec.state in (NodeState.ONLINE, NodeState.MAINTENANCE):
        rec.loss = None


_PRESENT = (NodeState.ONLINE, NodeState.MAINTENANCE)


def _set(ctx: RoundContext, node: str, rec: NodeRecord, state: NodeState, why: str) -> None:
    ctx.log("info", f"node {node}: {rec.state} -> {state} ({why})")
    if state == NodeState.UNKNOWN and rec.state in _PRESENT:
        ctx.env.notify("node-offline", node=node, why=why)
    elif state in _PRESENT and rec.state in (NodeState.UNKNOWN, NodeState.FENCE):
        ctx.env.notify("node-online", node=node)
    elif state == NodeState.FENCE:
        ctx.env.notify("fence-requested", node=node, reason=why)
    rec.state = state
    rec.since = ctx.now
    rec.reason = None
    _number_loss(ctx, node, rec)


def manual_confirmation(ctx: RoundContext, node: str) -> FenceConfirmation | None:
    """The administrator's power-off confirmation, if it is for the node's current loss.

    A confirmation for an earlier loss (the node came back since, and was lost
    again) never applies; neither does any while the node's lease is alive:
    the node then contradicts it, and is online or about to be.
    """
    rec = ctx.status.node_status.get(node)
    conf = ctx.confirmations.get(node)
    if (conf is None or rec is None or rec.loss is None or conf.loss != rec.loss
            or rec.state not in (NodeState.UNKNOWN, NodeState.FENCE)):
        return None
    facts = ctx.facts.get(node)
    if facts is not None and facts.lease_alive:
        return None
    return conf


#: Appended to every "recovery blocked" alert: the admin's way out.
CONFIRM_HINT = "if you have verified it is powered off: binome fence {node} --confirm-off"


def update_node_states(ctx: RoundContext) -> None:
    """online / maintenance / unknown / gone from leases and requests (`fence` is left alone)."""
    status = ctx.status
    for name in sorted(set(ctx.nodes) | set(status.node_status)):
        rec = status.node_status.get(name)
        if name not in ctx.nodes:
            used = any(sd.node == name or sd.target == name
                       for sd in status.service_status.values())
            if rec is not None and rec.state != NodeState.GONE:
                _set(ctx, name, rec, NodeState.GONE, "no longer a cluster member")
            if not used:
                status.node_status.pop(name, None)
            continue
        is_alive = alive(ctx, name)
        if rec is None:
            rec = NodeRecord(NodeState.ONLINE if is_alive else NodeState.UNKNOWN, since=ctx.now)
            status.node_status[name] = rec
            ctx.log("info", f"node {name}: added ({rec.state})")
        _number_loss(ctx, name, rec)   # also a loss recorded before losses were numbered
        if rec.state == NodeState.FENCE:
            continue
        wants_maintenance = (bool(status.node_request.get(name, {}).get("maintenance"))
                             or ctx.lrm_mode(name) == LrmMode.MAINTENANCE)
        if rec.state == NodeState.UNKNOWN and not renewed_since(ctx, name, rec.since):
            continue  # back only with a renewal newer than the loss (or the fence)
        if is_alive:
            new = NodeState.MAINTENANCE if wants_maintenance else NodeState.ONLINE
            why = "maintenance requested" if wants_maintenance else "lease renewed"
            if rec.state == NodeState.MAINTENANCE and not wants_maintenance:
                why = "maintenance ended"
        else:
            new, why = NodeState.UNKNOWN, _lost_reason(ctx, name)
        if new != rec.state:
            _set(ctx, name, rec, new, why)


def _watchdog_trusted(ctx: RoundContext, node: str) -> bool:
    """Lease expiry proves death only if the node's watchdog was armed while it ran guests.

    An LRM reports a release (HA disarmed, binomed restart) *before* it
    releases, so a report saying armed is never stale in that direction.
    """
    if not ctx.nodes[node].watchdog:
        return False
    lrm = ctx.lrm(node)
    return lrm is None or lrm.watchdog_armed or not (lrm.running or lrm.jobs)


def _proof(ctx: RoundContext, node: str, rec: NodeRecord) -> tuple[FenceProof, str] | None:
    proof = _natural_proof(ctx, node, rec)
    if proof is not None:
        return proof
    conf = manual_confirmation(ctx, node)
    if conf is not None:
        who = conf.user or "the administrator"
        return FenceProof.MANUAL, f"{who} confirmed it is powered off"
    return None


def _natural_proof(ctx: RoundContext, node: str,
                   rec: NodeRecord) -> tuple[FenceProof, str] | None:
    if rec.fence_request:
        fs = ctx.env.fence_status(node)
        if fs and fs.request_id == rec.fence_request and fs.state == FenceState.CONFIRMED:
            return FenceProof.DEVICE, "fence device confirmed power-off"
    facts = ctx.facts.get(node) or NodeFacts(node, lease_alive=False)  # unknown to the store
    if facts.lease_alive:
        return None
    if node in ctx.powered_off:
        return FenceProof.POWER_OFF, (f"its fence device read {ctx.powered_off[node]} after "
                                      "its last renewal")
    lrm = ctx.lrm(node)
    if (lrm and lrm.shutdown_done and not lrm.running and not lrm.jobs
            and facts.lease_gone_at is not None and not facts.lease_expired):
        # released, not expired: the release follows the report (a new life of the node
        # rewrites its report before it does anything, so this one is not stale)
        return FenceProof.SHUTDOWN, "clean shutdown, lease released"
    if not _watchdog_trusted(ctx, node):
        return None
    if facts.lease_expired:
        return FenceProof.WATCHDOG, "lease expired, so its watchdog fired before"
    if facts.lease_gone_at is None:
        return FenceProof.WATCHDOG, "it holds no lease, so its watchdog cannot be armed"
    renewed = facts.last_renewal if facts.last_renewal is not None else facts.lease_gone_at
    if renewed is not None and ctx.now >= renewed + ctx.timers.lease_ttl:
        return FenceProof.WATCHDOG, "released lease would have expired, so its watchdog fired"
    return None


def _block(ctx: RoundContext, node: str, rec: NodeRecord, reason: str, level: str) -> bool:
    """Record and log why the fence waits; True if the reason is new."""
    if rec.reason != reason:
        rec.reason = reason
        ctx.log(level, f"node {node}: {reason}")
        return True
    return False


def _drive_device(ctx: RoundContext, node: str, rec: NodeRecord, sids: list[str]) -> None:
    """Request, watch and retry the fence device; say loudly when recovery is blocked."""
    info = ctx.nodes[node]
    watchdog = _watchdog_trusted(ctx, node)
    blocked = f"recovery of {', '.join(sids)} blocked"
    if own_node(ctx, node):
        # a master fencing its own node would power off the machine it decides on,
        # possibly for good (`off`, or a reboot cut in half); self-fencing is the
        # watchdog's job, and a lost lease hands the decision to another master
        _block(ctx, node, rec, "not fencing its own node through its fence device "
                               "(self-fencing is the watchdog's job)", "warn")
        return
    if not info.fence_device:
        if not watchdog:
            lrm = ctx.lrm(node)
            why = ("no watchdog configured" if not info.watchdog
                   else "its watchdog was released while guests ran (binomed restart)"
                   if lrm is not None and lrm.daemon_restart
                   else "its watchdog was released while guests ran (HA disarmed)")
            if _block(ctx, node, rec, f"cannot fence: no fence device and {why}; "
                                      f"{blocked} until it returns "
                                      f"({CONFIRM_HINT.format(node=node)})", "alert"):
                for sid in sids:
                    ctx.env.notify("ha-recovery-blocked", sid=sid, from_node=node,
                                   reason="fence-failed", detail=f"no fence device and {why}")
        else:
            _block(ctx, node, rec, "waiting for its lease to expire (watchdog guarantee)", "info")
        return
    fs = ctx.env.fence_status(node) if rec.fence_request else None
    # our request, and it failed (None: no request, another one's status, or not failed)
    failed = fs if (fs is not None and fs.request_id == rec.fence_request
                    and fs.state == FenceState.FAILED) else None
    retry_due = (rec.fence_requested_at is not None
                 and ctx.now >= rec.fence_requested_at + ctx.timers.fence_retry)
    if rec.fence_request is None or (failed is not None and retry_due):
        retry = rec.fence_request is not None
        rec.fence_request = ctx.env.fence(node)
        rec.fence_requested_at = ctx.now
        ctx.log("info", f"node {node}: {'retrying' if retry else 'fencing through'} "
                        "its fence device")
        return
    if failed is not None:
        if watchdog:
            if _block(ctx, node, rec, f"fence device failed ({failed.detail}); waiting for "
                                      "the watchdog guarantee (lease expiry)", "warn"):
                ctx.env.notify("fence-failed", node=node, error=failed.detail)
        elif _block(ctx, node, rec, f"fencing failed ({failed.detail}) and there is no "
                                    f"watchdog guarantee; {blocked}, retrying the device "
                                    f"every {ctx.timers.fence_retry:g} s "
                                    f"({CONFIRM_HINT.format(node=node)})", "alert"):
            ctx.env.notify("fence-failed", node=node, error=failed.detail)
            for sid in sids:
                ctx.env.notify("ha-recovery-blocked", sid=sid, from_node=node,
                               reason="fence-failed", detail=failed.detail)


def _resume_in_place(ctx: RoundContext, node: str) -> None:
    """The node came back before it was fenced: its services continue where they are."""
    for sid, sd in sorted(ctx.status.service_status.items()):
        if sd.state != ServiceState.FENCE or sd.node != node:
            continue
        cfg = ctx.resources.get(sid)
        owner = ctx.env.service_config_node(sid) or node
        if cfg is None or cfg.state == RequestedState.STARTED:
            ctx.change(sid, sd, ServiceState.STARTING, node=owner, why="node is back")
        else:
            ctx.change(sid, sd, ServiceState.REQUEST_STOP, node=owner, why="node is back")


def fence_nodes(ctx: RoundContext) -> bool:
    """Advance every fence; returns True if a service changed state."""
    status = ctx.status
    waiting: dict[str, list[str]] = {}
    for sid, sd in sorted(status.service_status.items()):
        if sd.state == ServiceState.FENCE:
            waiting.setdefault(sd.node, []).append(sid)
    changed = False
    for node in sorted(waiting):
        rec = status.node_status.get(node)
        if rec is None or node not in ctx.nodes:
            continue
        if rec.state in (NodeState.ONLINE, NodeState.MAINTENANCE) and alive(ctx, node):
            # sent to `fence` on an older view of the node (HA armed again while it was
            # lost, and it renewed in this very round): it is alive, nothing to fence
            _resume_in_place(ctx, node)
            changed = True
            continue
        if rec.state != NodeState.FENCE:
            _set(ctx, node, rec, NodeState.FENCE,
                 f"services to recover: {', '.join(waiting[node])}")
            rec.fence_request = rec.fence_requested_at = None
    for node, rec in sorted(status.node_status.items()):
        if rec.state != NodeState.FENCE or node not in ctx.nodes:
            continue
        proof = _proof(ctx, node, rec)
        if proof is not None:
            kind, detail = proof
            ctx.log("info", f"node {node}: fenced ({kind}: {detail})")
            ctx.env.notify("fence-succeeded", node=node, agent=f"{kind} ({detail})")
            rec.state, rec.since, rec.reason = NodeState.UNKNOWN, ctx.now, f"fenced by {kind}"
            rec.fence_request = rec.fence_requested_at = None
            for sid in waiting.get(node, []):
                ctx.change(sid, status.service_status[sid], ServiceState.RECOVERY,
                           why=f"{node} fenced by {kind}")
                changed = True
            continue
        fs = ctx.env.fence_status(node) if rec.fence_request else None
        in_flight = (fs is not None and fs.request_id == rec.fence_request
                     and fs.state == FenceState.PENDING)
        if renewed_since(ctx, node, rec.since) and not in_flight:
            _set(ctx, node, rec, NodeState.ONLINE, "back before it was fenced; fence cancelled")
            rec.fence_request = rec.fence_requested_at = None
            _resume_in_place(ctx, node)
            changed = True
            continue
        if not waiting.get(node):
            if not in_flight:
                _set(ctx, node, rec, NodeState.UNKNOWN, "no service needs it fenced any more")
            continue
        _drive_device(ctx, node, rec, waiting[node])
        for sid in waiting[node]:
            sd = status.service_status[sid]
            sd.reason = f"waiting for {node} to be fenced" + (f": {rec.reason}"
                                                              if rec.reason else "")
    return changed
