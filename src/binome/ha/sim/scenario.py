"""Scenarios: load a directory (`cluster.json`, `services.json`, `cmdlist`), run it, get the log.

A scenario directory holds:

- `cluster.json`, `services.json`: see `binome.ha.sim.config`;
- `cmdlist`: timed commands, see `binome.ha.sim.commands`;
- `log.expect`: the expected event log (golden file);
- `README` (optional): one paragraph saying what the case shows.

`run()` starts the cluster at t=0 (every node up, nothing running: the CRM
starts the services), runs the commands at their times, and continues
`sim.end_after` seconds after the last one. Invariants are checked during
the whole run; a violation raises `InvariantViolation`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from binome.ha.sim.clock import ms
from binome.ha.sim.commands import apply, parse_cmdlist
from binome.ha.sim.config import ClusterSpec, ServicesSpec, parse_cluster, parse_services
from binome.ha.sim.world import World


@dataclass
class Scenario:
    name: str
    cluster: ClusterSpec
    services: ServicesSpec
    commands: list[tuple[int, str]]


def parse_scenario(name: str, cluster: dict[str, Any], services: dict[str, Any],
                   cmdlist: str) -> Scenario:
    cspec = parse_cluster(cluster)
    sspec = parse_services(services, cspec)
    sids = {s.config.sid for s in sspec.services}
    return Scenario(name, cspec, sspec, parse_cmdlist(cmdlist, cspec, sids))


def load_scenario(path: Path) -> Scenario:
    path = Path(path)
    return parse_scenario(path.name, json.loads((path / "cluster.json").read_text()),
                          json.loads((path / "services.json").read_text()),
                          (path / "cmdlist").read_text())


def start(scenario: Scenario) -> tuple[World, int]:
    """Build the world with its commands scheduled; returns it and the end time (ms)."""
    world = World(scenario.cluster, scenario.services)
    for when, line in scenario.commands:
        world.q.at(when, apply, world, line)
    last = max((when for when, _ in scenario.commands), default=0)
    return world, last + ms(scenario.cluster.sim.end_after)


def run(scenario: Scenario) -> World:
    world, end = start(scenario)
    world.run_until(end)
    return world


def render(world: World) -> str:
    return "\n".join(world.lines) + "\n"
