"""Randomized fault schedules: one seed -> one scenario (cluster, services, cmdlist).

Each seed draws a cluster (2 nodes with or without a witness, or 3 nodes;
fence devices or not; watchdogs; a shutdown policy), a few services (groups,
priorities, requested states) and a schedule of faults and admin commands.
The schedule ends with a **heal** phase (power, links and devices restored,
maintenance and disarm lifted, start failures repaired, services in `error`
cleared through `disabled`) and a quiet period, after which the requested
states must have converged.

The result is an ordinary `Scenario`, so a failing seed can be written out as
a golden case: `python -m binome.ha.sim.randomized SEED --write DIR`.
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from binome.ha.sim.invariants import InvariantViolation
from binome.ha.sim.scenario import Scenario, parse_scenario, render, start

QUIET = 90.0  # seconds after the heal phase: node boot (10 s) + fencing + restarts + resync


@dataclass
class RandomCase:
    seed: int
    cluster: dict[str, Any]
    services: dict[str, Any]
    cmdlist: str

    def scenario(self) -> Scenario:
        return parse_scenario(f"seed-{self.seed}", self.cluster, self.services, self.cmdlist)

    def describe(self) -> str:
        return (f"BINOME_SIM_SEED={self.seed}\n--- cluster.json\n"
                f"{json.dumps(self.cluster, indent=2)}\n--- services.json\n"
                f"{json.dumps(self.services, indent=2)}\n--- cmdlist\n{self.cmdlist}")

    def write(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        (path / "cluster.json").write_text(json.dumps(self.cluster, indent=2) + "\n")
        (path / "services.json").write_text(json.dumps(self.services, indent=2) + "\n")
        (path / "cmdlist").write_text(self.cmdlist)


def generate(seed: int) -> RandomCase:
    rng = random.Random(seed)
    n = rng.choice([2, 2, 2, 3])
    names = [f"n{i}" for i in range(1, n + 1)]
    witness = "w" if n == 2 and rng.random() < 0.85 else None
    nodes = {}
    for name in names:
        spec: dict[str, Any] = {}
        if rng.random() < 0.6:
            spec["fence_device"] = {"delay": rng.choice([0.5, 1.0, 2.0])}
        if rng.random() < 0.25:  # where only a fence device (or nothing) can prove death
            spec["watchdog"] = False
        nodes[name] = spec
    cluster = {"nodes": nodes, "witness": witness,
               "shutdown_policy": rng.choice(["conditional", "freeze", "failover", "migrate"]),
               "sim": {"node_boot": 10.0}}
    if rng.random() < 0.4:  # fence_delay at the deadline: fencing races the watchdog
        cluster["timers"] = rng.choice([{"fence_delay": 3.8}, {"fence_delay": 6.0},
                                        {"keepalive_interval": 0.5},
                                        {"lease_ttl": 8.0, "self_fence_deadline": 5.0,
                                         "fence_delay": 5.0}])
    members = names + ([witness] if witness else [])
    groups = {}
    if rng.random() < 0.5:
        order = rng.sample(names, len(names))
        groups["g"] = {"nodes": ",".join(f"{nd}:{len(order) - i}" for i, nd in enumerate(order)),
                       "restricted": rng.random() < 0.3, "nofailback": rng.random() < 0.5}
    resources = {}
    for i in range(rng.randint(1, 4)):
        res = {"node": rng.choice(names),
               "state": rng.choice(["started"] * 4 + ["stopped", "disabled"])}
        if groups and rng.random() < 0.5:
            res["group"] = "g"
        resources[f"vm:{100 + i}"] = res
    sids = sorted(resources)
    lines: list[str] = []
    broken: set[str] = set()
    for _ in range(rng.randint(6, 14)):
        lines.append(f"delay {rng.choice([0.5, 1, 2, 3, 4, 5, 8, 12, 20])}")
        lines.append(_fault(rng, names, members, sids, broken,
                            [n for n in names if "fence_device" in nodes[n]]))
    lines = _confirmations(seed, names, lines)
    lines.append("delay 20")
    lines += _heal(names, members, nodes, sids, broken, rng)
    lines.append(f"delay {QUIET:g}")
    services = {"resources": resources, "groups": groups}
    rules = _rules(seed, names, resources)
    if rules:
        services["rules"] = rules
    return RandomCase(seed, cluster, services, "\n".join(lines) + "\n")


def _rules(seed: int, names: list[str], resources: dict[str, Any]) -> dict[str, Any]:
    """HA rules over the services (a separate random stream: each seed's faults stay
    what they were): a negative or positive resource affinity, a node affinity for a
    service without a group. Infeasible combinations are possible: the CRM drops them,
    as upstream does."""
    rng = random.Random(seed * 104729 + 3)
    sids = sorted(resources)
    rules: dict[str, Any] = {}
    if len(sids) >= 2 and rng.random() < 0.5:
        pair = rng.sample(sids, 2)
        rules["pair"] = {"type": "resource-affinity", "resources": ",".join(sorted(pair)),
                         "affinity": rng.choice(["negative", "negative", "positive"])}
    free = [s for s in sids if "group" not in resources[s]]
    if free and rng.random() < 0.4:
        nodes = rng.sample(names, rng.randint(1, len(names)))
        rules["pin"] = {"type": "node-affinity", "resources": rng.choice(free),
                        "nodes": ",".join(nodes), "strict": rng.random() < 0.5}
    return rules


def _confirmations(seed: int, names: list[str], lines: list[str]) -> list[str]:
    """Sprinkle `fence-confirm` (the admin's power-off confirmation) over the schedule.

    A separate random stream, so each seed's faults stay what they were. The
    admin is honest: the simulator confirms only a node that is really off
    (else it logs that the admin did not), and the API's own refusals apply.
    """
    rng = random.Random(seed * 7919 + 1)
    out: list[str] = []
    cut: list[str] = []   # nodes whose power was cut: the ones an admin would confirm
    for line in lines:
        out.append(line)
        words = line.split()
        if words[0] == "power" and words[1] in names and words[2] == "off":
            cut.append(words[1])
        if words[0] == "delay" and rng.random() < 0.3:
            out.append(f"fence-confirm {rng.choice(cut if cut and rng.random() < 0.8 else names)}")
    return out


def _fault(rng: random.Random, names: list[str], members: list[str], sids: list[str],
           broken: set[str], devices: list[str]) -> str:
    node, member, sid = rng.choice(names), rng.choice(members), rng.choice(sids)
    onoff = rng.choice(["on", "off"])
    kind = rng.choices(
        ["power", "network", "link", "partition", "fence", "pause", "shutdown", "state",
         "move", "fails", "crash", "maintenance", "disarm", "restart"],
        weights=[12, 16, 6, 6, 6, 6, 4, 8, 8, 2, 3, 4, 1, 6])[0]
    if kind == "power":
        return f"power {member} {onoff}"
    if kind == "network":
        return f"network {member} {onoff}"
    if kind == "link":
        return f"link {node} {rng.choice(['cluster', 'replication'])} {onoff}"
    if kind == "partition" and len(members) > 2:
        a, b = rng.sample(members, 2)
        return f"{rng.choice(['partition', 'heal'])} {a} {b}"
    if kind == "fence" and devices:
        return f"fence-device {rng.choice(devices)} {rng.choice(['fail', 'dead', 'ok'])}"
    if kind == "pause":  # 3.5 and 4.5: past fence_delay, a resumed master within its lease
        first = rng.choice(["", " crm-first"])
        return f"pause {node} {rng.choice([1, 2.5, 3.5, 4, 4.5, 7, 12])}{first}"
    if kind == "restart":  # binomed restart: down briefly, past the deadlines, or for long
        return f"restart {node} {rng.choice([0.5, 2, 8, 40])}"
    if kind == "shutdown":
        return f"{rng.choice(['shutdown', 'reboot'])} {node}"
    if kind == "state":
        return f"service {sid} {rng.choice(['started', 'started', 'stopped', 'disabled'])}"
    if kind == "move":
        return f"service {sid} {rng.choice(['migrate', 'relocate'])} {node}"
    if kind == "fails":
        broken.add(sid)
        return f"service {sid} start-fails {rng.choice([*names, 'all'])} on"
    if kind == "crash":
        return f"service {sid} crash"
    if kind == "maintenance":
        return f"node-maintenance {rng.choice(['enable', 'disable'])} {node}"
    if kind == "disarm":
        return rng.choice(["crm disarm freeze", "crm disarm ignore", "crm arm"])
    return f"power {member} {onoff}"


def _heal(names: list[str], members: list[str], nodes: dict[str, Any], sids: list[str],
          broken: set[str], rng: random.Random) -> list[str]:
    out = [f"fence-device {n} ok" for n in names if "fence_device" in nodes[n]]
    for m in members:
        out += [f"power {m} on", f"network {m} on"]
    for a in members:
        out += [f"heal {a} {b}" for b in members if a < b]
    for sid in sorted(broken):
        out += [f"service {sid} start-fails {t} off" for t in [*names, "all"]]
    # admin commands need quorum back; a shutdown requested while it was lost may
    # only complete now, so power on once more
    out.append("delay 30")
    out += [f"power {m} on" for m in members]
    out.append("crm arm")
    out += [f"node-maintenance disable {n}" for n in names]
    final = {sid: rng.choice(["started"] * 3 + ["stopped", "ignored"]) for sid in sids}
    out.append("delay 30")
    # a node powered on while the master was fencing it is off again (device action off);
    # admin commands refused while quorum was still missing are given again
    out += [f"power {m} on" for m in members]
    out.append("crm arm")
    out += [f"node-maintenance disable {n}" for n in names]
    # the documented way out of `error`: disabled, then the wanted state
    out += [f"service {sid} disabled" for sid in sids if final[sid] != "ignored"]
    out.append("delay 10")
    out += [f"service {sid} {final[sid]}" for sid in sids]
    return out


@dataclass
class Outcome:
    case: RandomCase
    error: str | None
    log: str


def check(seed: int) -> Outcome:
    """Run one seed; `error` says what broke (an invariant, or no convergence)."""
    case = generate(seed)
    world, end = start(case.scenario())
    try:
        world.run_until(end)
    except InvariantViolation as exc:
        return Outcome(case, f"invariant violated: {exc}", render(world))
    problems = world.invariants.converged()
    log = render(world)
    if problems:
        return Outcome(case, "did not converge after the heal phase: " + "; ".join(problems),
                       log)
    return Outcome(case, None, log)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m binome.ha.sim.randomized")
    parser.add_argument("seed", type=int)
    parser.add_argument("--write", type=Path, help="write the case as a scenario directory")
    parser.add_argument("--log", action="store_true", help="print the event log")
    args = parser.parse_args(argv)
    outcome = check(args.seed)
    print(outcome.case.describe())
    if args.log:
        print(outcome.log, end="")
    print(outcome.error or "ok: invariants held and requested states converged")
    if args.write:
        outcome.case.write(args.write)
    return 1 if outcome.error else 0


if __name__ == "__main__":
    raise SystemExit(main())
