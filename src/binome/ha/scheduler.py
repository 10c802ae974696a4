"""Node selection for one service (pure): node affinity, resource affinity, replicas, load.

The rules, in the order they filter (the first one that leaves no node
becomes the visible reason). They follow pve-ha-manager's
`select_service_node` (PVE 9 rules; HA groups reach here as the node-affinity
rules they translate to, `binome.ha.rules`):

1. only nodes the CRM can place on now: online and not in maintenance;
2. a `strict` node-affinity rule (a `restricted` group) allows only its nodes;
   a non-strict one prefers them (other nodes rank below every listed node);
3. hard storage constraint: the node must hold an **UpToDate** replica of
   every replicated volume of the service (never Outdated or Inconsistent);
4. nodes where the service already failed to start (`avoid`) are skipped;
5. negative resource affinity: never a node that runs (or is receiving) a
   service this one must be kept apart from;
6. positive resource affinity: if services it must run with are on usable
   nodes, only the node with most of them;
7. keep the highest priority class among what is left (unlike upstream, which
   takes the class before 5-6 and then finds no node: a non-strict rule may
   still use a lower class, as "non-strict" promises);
8. stay on the current node if it is still a candidate and either it is in the
   top class or failback is off (`nofailback` group): no needless migrations;
9. otherwise the least loaded node by HA service count, ties by name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from binome.ha.model import GroupConfig
from binome.ha.rules import GROUP_RULE_PREFIX, NodeAffinity

UPTODATE = "UpToDate"


@dataclass(frozen=True)
class Placement:
    """Everything node selection looks at; built by the manager from its round's reads.

    `separate`: node -> the services on it this one must be kept apart from;
    `together`: node -> how many services it must run with are there."""

    sid: str
    current: str | None
    online: Sequence[str]
    affinity: NodeAffinity | None = None
    load: Mapping[str, int] = field(default_factory=dict)
    replicas: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    avoid: frozenset[str] = frozenset()
    stay: bool = True
    failback: bool = True
    separate: Mapping[str, frozenset[str]] = field(default_factory=dict)
    together: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Choice:
    node: str | None
    reason: str


def group_affinity(group: GroupConfig | None) -> NodeAffinity | None:
    """A group's node affinity (as `binome.ha.rules.migrate_groups` makes it)."""
    if group is None or not group.nodes:
        return None
    return NodeAffinity(rule=GROUP_RULE_PREFIX + group.name, nodes=dict(group.nodes),
                        strict=group.restricted)


def uptodate_nodes(replicas: Mapping[str, Mapping[str, str]]) -> set[str] | None:
    """Nodes with an UpToDate copy of every volume; None when there is no volume."""
    if not replicas:
        return None
    sets = [{n for n, state in nodes.items() if state == UPTODATE} for nodes in replicas.values()]
    return set.intersection(*sets)


def replica_reason(replicas: Mapping[str, Mapping[str, str]], candidates: Sequence[str]) -> str:
    """Explain which volume has no UpToDate copy on any candidate, and where the good copy is."""
    for vol, nodes in sorted(replicas.items()):
        if not any(nodes.get(n) == UPTODATE for n in candidates):
            good = sorted(n for n, state in nodes.items() if state == UPTODATE)
            where = f"UpToDate only on {', '.join(good)}" if good else "no UpToDate copy anywhere"
            states = ", ".join(f"{n}: {s}" for n, s in sorted(nodes.items()))
            return (f"no UpToDate replica of {vol} on {', '.join(candidates) or 'any node'} "
                    f"({where}; {states})")
    return "no UpToDate replica on any usable node"


def select_node(p: Placement) -> Choice:
    candidates = sorted(p.online)
    if not candidates:
        return Choice(None, "no online node available")
    aff = p.affinity
    if aff is not None and aff.strict:
        candidates = [n for n in candidates if aff.priority(n) is not None]
        if not candidates:
            members = ", ".join(sorted(aff.nodes)) or "none"
            return Choice(None, f"no online node in {aff.label} (members: {members})")
    good = uptodate_nodes(p.replicas)
    if good is not None:
        with_data = [n for n in candidates if n in good]
        if not with_data:
            return Choice(None, replica_reason(p.replicas, candidates))
        candidates = with_data
    untried = [n for n in candidates if n not in p.avoid]
    if not untried:
        return Choice(None, f"already failed on {', '.join(sorted(p.avoid))}; "
                            "no other usable node")
    candidates = untried
    apart = [n for n in candidates if not p.separate.get(n)]
    if not apart:
        busy = "; ".join(f"{n} runs {', '.join(sorted(p.separate[n]))}" for n in candidates)
        return Choice(None, f"negative resource affinity: {busy}")
    candidates = apart
    together = {n: c for n, c in p.together.items() if n in candidates and c > 0}
    note = ""
    if together:
        home = min(together, key=lambda n: (-together[n], n))
        candidates = [home]
        note = ", with its positive resource affinity partners"

    def prio(node: str) -> int:
        return 0 if aff is None else (aff.priority(node) or 0)

    top = max(prio(n) for n in candidates)
    best = [n for n in candidates if prio(n) == top]
    if p.stay and p.current in candidates:
        if p.current in best:
            return Choice(p.current, f"current node is among the preferred nodes{note}")
        if not p.failback:
            return Choice(p.current, "current node kept (nofailback)")
    node = min(best, key=lambda n: (p.load.get(n, 0), n))
    why = f"priority {top}" if aff is not None else "no group"
    return Choice(node, f"{why}, least loaded ({p.load.get(node, 0)} services){note}")
