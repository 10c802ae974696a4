"""The `cmdlist` language of scenarios: parse, validate, and apply a command to the World.

One command per line; `#` starts a comment. `delay <s>` advances the time at
which the following lines run; lines between two delays run at the same
instant, in order.

    delay <seconds>
    power <member> on|off                 # pull / restore power (node or witness)
    network <member> on|off               # all links of the member
    link <node> cluster|replication on|off
    partition <a> <b> | heal <a> <b>      # cut / restore the cluster network between two
    fence-device <node> ok|fail|dead      # dead: the BMC does not answer (lost power too)
    shutdown <node> | reboot <node>       # graceful, through the LRM and shutdown policy
    pause <node> <seconds> [crm-first]    # SIGSTOP of binomed (the watchdog keeps running);
                                          # crm-first: on resume its CRM round runs before
                                          # its lease renewal (the race of a resumed daemon)
    restart <node> [<seconds>]            # systemctl restart binomed: down that long (2 s)
    service <sid> started|stopped|disabled|ignored
    service <sid> migrate|relocate <node>
    service <sid> start-fails <node|all> on|off
    service <sid> crash                   # the guest dies on its own
    node-maintenance enable|disable <node>
    fence-confirm <node>                  # binome fence <node> --confirm-off (an honest admin)
    crm disarm freeze|ignore | crm arm
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from binome.ha.sim.clock import ms

if TYPE_CHECKING:
    from binome.ha.sim.config import ClusterSpec
    from binome.ha.sim.world import World

ON_OFF = ("on", "off")
REQUESTED = ("started", "stopped", "disabled", "ignored")


class CommandError(ValueError):
    pass


def parse_cmdlist(text: str, cluster: ClusterSpec, sids: set[str]) -> list[tuple[int, str]]:
    """Return (time in ms, command) pairs; raises CommandError naming the line."""
    out: list[tuple[int, str]] = []
    now = 0
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        words = line.split()
        try:
            if words[0] == "delay":
                if len(words) != 2 or float(words[1]) < 0:
                    raise CommandError("delay <seconds>")
                now += ms(float(words[1]))
                continue
            validate(words, cluster, sids)
        except (CommandError, ValueError) as exc:
            raise CommandError(f"cmdlist line {lineno}: {line!r}: {exc}") from None
        out.append((now, " ".join(words)))
    return out


def validate(words: list[str], cluster: ClusterSpec, sids: set[str]) -> None:
    nodes, members = set(cluster.node_names), set(cluster.members)

    def need(cond: bool, usage: str) -> None:
        if not cond:
            raise CommandError(f"usage: {usage}")

    verb, args = words[0], words[1:]
    if verb in ("power", "network"):
        need(len(args) == 2 and args[0] in members and args[1] in ON_OFF,
             f"{verb} <member> on|off")
    elif verb == "link":
        need(len(args) == 3 and args[0] in nodes and args[1] in ("cluster", "replication")
             and args[2] in ON_OFF, "link <node> cluster|replication on|off")
    elif verb in ("partition", "heal"):
        need(len(args) == 2 and set(args) <= members and args[0] != args[1], f"{verb} <a> <b>")
    elif verb == "fence-device":
        with_device = {n.name for n in cluster.nodes if n.fence_device is not None}
        need(len(args) == 2 and args[0] in with_device and args[1] in ("ok", "fail", "dead"),
             "fence-device <node with a fence device> ok|fail|dead")
    elif verb in ("shutdown", "reboot"):
        need(len(args) == 1 and args[0] in nodes, f"{verb} <node>")
    elif verb == "pause":
        need(len(args) in (2, 3) and args[0] in nodes and float(args[1]) > 0
             and (len(args) == 2 or args[2] == "crm-first"), "pause <node> <s> [crm-first]")
    elif verb == "restart":
        need(len(args) in (1, 2) and args[0] in nodes and (len(args) == 1 or float(args[1]) >= 0),
             "restart <node> [<seconds down>]")
    elif verb == "service":
        need(len(args) >= 2 and args[0] in sids, "service <sid> ...")
        action, rest = args[1], args[2:]
        if action in REQUESTED or action == "crash":
            need(not rest, f"service <sid> {action}")
        elif action in ("migrate", "relocate"):
            need(len(rest) == 1 and rest[0] in nodes, f"service <sid> {action} <node>")
        elif action == "start-fails":
            need(len(rest) == 2 and (rest[0] in nodes or rest[0] == "all") and rest[1] in ON_OFF,
                 "service <sid> start-fails <node|all> on|off")
        else:
            raise CommandError(f"unknown service action {action!r}")
    elif verb == "node-maintenance":
        need(len(args) == 2 and args[0] in ("enable", "disable") and args[1] in nodes,
             "node-maintenance enable|disable <node>")
    elif verb == "fence-confirm":
        need(len(args) == 1 and args[0] in nodes, "fence-confirm <node>")
    elif verb == "crm":
        need(args in (["arm"], ["disarm", "freeze"], ["disarm", "ignore"]),
             "crm disarm freeze|ignore | crm arm")
    else:
        raise CommandError(f"unknown command {verb!r}")


def apply(world: World, line: str) -> None:
    """Execute one validated command at the world's current time."""
    words = line.split()
    verb, args = words[0], words[1:]
    world.log("info", "cmdlist", line)
    if verb == "power":
        if args[1] == "on":
            world.power_on(args[0])
        else:
            world.power_off(args[0], "power cut")
    elif verb == "network":
        on = args[1] == "on"
        world.set_link(args[0], "cluster", on)
        if args[0] in world.nodes:
            world.set_link(args[0], "replication", on)
    elif verb == "link":
        world.set_link(args[0], args[1], args[2] == "on")
    elif verb in ("partition", "heal"):
        world.partition(args[0], args[1], cut=verb == "partition")
    elif verb == "fence-device":
        world.set_fence_health(args[0], args[1])
    elif verb in ("shutdown", "reboot"):
        world.request_shutdown(args[0], "poweroff" if verb == "shutdown" else "reboot")
    elif verb == "pause":
        world.pause(args[0], float(args[1]), crm_first=len(args) == 3)
    elif verb == "restart":
        world.daemon_restart(args[0], float(args[1]) if len(args) > 1 else 2.0)
    elif verb == "service":
        _service(world, args[0], args[1], args[2:])
    elif verb == "node-maintenance":
        _admin(world, f"{args[0]}-node-maintenance {args[1]}")
    elif verb == "fence-confirm":
        refused = world.confirm_fence(args[0])
        if refused:
            world.log("warn", "cmdlist", f"refused: {refused}")
    elif verb == "crm":
        _admin(world, "arm-ha" if args == ["arm"] else f"disarm-ha {args[1]}")


def _admin(world: World, crm_command: str) -> None:
    if not world.admin_ok():
        world.log("warn", "cmdlist", "refused: no node has quorum (the API is read-only)")
        return
    world.queue_command(crm_command)


def _service(world: World, sid: str, action: str, rest: list[str]) -> None:
    if action == "start-fails":
        targets = world.guests.start_fails[sid]
        (targets.add if rest[1] == "on" else targets.discard)(rest[0])
    elif action == "crash":
        for node in world.guests.running_on(sid):
            world.guests._set(sid, node, None, "crashed")
            world.wake(world.nodes[node], "lrm")
    elif action in REQUESTED:
        if not world.admin_ok():
            world.log("warn", "cmdlist", "refused: no node has quorum (the API is read-only)")
            return
        world.set_requested(sid, action)
    else:
        _admin(world, f"{action} {sid} {rest[0]}")
