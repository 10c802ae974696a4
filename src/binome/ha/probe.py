"""Power probes: the CRM reads a silent node's chassis power state to recover it sooner.

Owns when a probe is asked for and which probe results count as proof (pure; the
env carries the probe out: `CrmEnv.probe_power`).

Lease expiry (5 s) or the fence delay (4 s) is a long wait for a node that simply
lost its power or crashed off, the most common failure. A node that misses a
renewal (its heartbeat is `power_probe_after` late) has its fence device asked
for its power *status*: a read, no action, so a node that is merely slow or cut
off loses nothing (zero unneeded fences) and costs one status query. A chassis
read "off" between two checks that the node's heartbeat is unchanged proves it
runs nothing, the same proof a confirmed fence gives: the env revokes its lease
and the CRM recovers its services at once (`FenceProof.POWER_OFF`).

The master probes every other node; a CRM that is not master probes the node
holding the manager lock, whose revoked lease frees the lock for it, so the loss
of the master's node is as fast as any other.

A probe answer is kept in memory only: a new master without it falls back to the
slower proofs, which stay valid.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from binome.ha.env import CrmEnv
from binome.ha.model import FenceState, NodeFacts, NodeInfo
from binome.ha.timers import HaTimers


@dataclass(frozen=True)
class Probe:
    request_id: str
    asked_at: float           # env time the probe was asked
    renewal: float            # the node's last renewal the probe was asked against


def _probeable(env: CrmEnv, node: str, info: NodeInfo | None, fact: NodeFacts) -> bool:
    """Another node with a fence device and a live lease: one whose silence a power read
    can explain."""
    return (info is not None and info.fence_device and node != env.node
            and fact.lease_alive and fact.last_renewal is not None)


class PowerProber:
    """The probes one CRM asked for, by node (lives as long as the `Crm`)."""

    def __init__(self) -> None:
        self.probes: dict[str, Probe] = {}

    def step(self, env: CrmEnv, timers: HaTimers, now: float, facts: dict[str, NodeFacts],
             nodes: dict[str, NodeInfo], targets: Iterable[str]) -> None:
        """Ask for a probe of each target whose renewal is overdue by `power_probe_after`.

        A node probed "on" (or unreadable) is probed again every `keepalive_interval`
        while it stays silent: it may lose its power later. A node seen renewing after
        a probe forgets it (a new life; the old answer says nothing about it)."""
        for node in targets:
            info, fact = nodes.get(node), facts.get(node)
            probe = self.probes.get(node)
            if fact is not None and fact.lease_alive and fact.last_renewal is not None:
                if probe is not None and fact.last_renewal > probe.renewal:
                    del self.probes[node]   # renewed since: alive, the answer is stale
                    probe = None
            if fact is None or fact.last_renewal is None or not _probeable(env, node, info, fact):
                continue
            if now - fact.last_renewal < timers.probe_after:
                continue
            if probe is not None:
                st = env.power_probe_status(node)
                busy = (st is not None and st.request_id == probe.request_id
                        and st.state != FenceState.FAILED)
                if busy or now - probe.asked_at < timers.keepalive_interval:
                    continue
            again = probe is not None and probe.renewal == fact.last_renewal
            self.probes[node] = Probe(env.probe_power(node), now, fact.last_renewal)
            if not again:   # once per silence: the retries are not news
                env.log("info", f"node {node}: no renewal for {now - fact.last_renewal:.1f} s; "
                                "reading its power state through its fence device")

    def next_due(self, env: CrmEnv, timers: HaTimers, facts: dict[str, NodeFacts],
                 nodes: dict[str, NodeInfo], targets: Iterable[str]) -> float | None:
        """When the next first probe of a silence falls due (env time), if any: the
        daemon wakes its CRM then instead of at its next periodic round, so a probe
        starts `power_probe_after` after the last renewal, not up to a round later."""
        due = []
        for node in targets:
            fact = facts.get(node)
            if fact is None or fact.last_renewal is None \
                    or not _probeable(env, node, nodes.get(node), fact):
                continue
            probe = self.probes.get(node)
            if probe is not None and probe.renewal == fact.last_renewal:
                continue   # this silence is being probed; retries follow the rounds
            due.append(fact.last_renewal + timers.probe_after)
        return min(due, default=None)

    def powered_off(self, env: CrmEnv) -> dict[str, str]:
        """Nodes whose latest probe read their chassis off (node -> detail)."""
        out = {}
        for node, probe in self.probes.items():
            st = env.power_probe_status(node)
            if (st is not None and st.request_id == probe.request_id
                    and st.state == FenceState.CONFIRMED):
                out[node] = st.detail or "chassis power is off"
        return out
