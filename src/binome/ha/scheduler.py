"""Node selection for one service (pure): groups, priorities, replicas, load.

The rules, in the order they filter (the first one that leaves no node
becomes the visible reason):

1. only nodes the CRM can place on now: online and not in maintenance;
2. a `restricted` group allows only its members; an unrestricted group
   prefers them (non-members rank below every member, as in Proxmox);
3. hard storage constraint: the node must hold an **UpToDate** replica of
   every replicated volume of the service (never Outdated or Inconsistent);
4. nodes where the service already failed to start (`avoid`) are skipped;
5. keep the highest group priority class;
6. stay on the current node if it is still a candidate and either it is in the
   top class or the group says `nofailback` (no needless migrations);
7. otherwise the least loaded node by HA service count, ties by name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from binome.ha.model import GroupConfig

UPTODATE = "UpToDate"


@dataclass(frozen=True)
class Placement:
    """Everything node selection looks at; built by the manager from its round's reads."""

    sid: str
    current: str | None
    group: GroupConfig | None
    online: Sequence[str]
    load: Mapping[str, int] = field(default_factory=dict)
    replicas: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    avoid: frozenset[str] = frozenset()
    stay: bool = True


@dataclass(frozen=True)
class Choice:
    node: str | None
    reason: str


def priority(group: GroupConfig | None, node: str) -> int:
    """Group priority of a node; non-members of an unrestricted group rank last."""
    if group is None or not group.nodes:
        return 0
    return group.nodes.get(node, -1)


def allowed(group: GroupConfig | None, node: str) -> bool:
    return group is None or not group.restricted or node in group.nodes


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
    if p.group is not None and p.group.restricted:
        candidates = [n for n in candidates if n in p.group.nodes]
        if not candidates:
            members = ", ".join(sorted(p.group.nodes)) or "none"
            return Choice(None, f"no online node in restricted group {p.group.name} "
                                f"(members: {members})")
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
    top = max(priority(p.group, n) for n in candidates)
    best = [n for n in candidates if priority(p.group, n) == top]
    if p.stay and p.current in candidates:
        if p.current in best:
            return Choice(p.current, "current node is among the preferred nodes")
        if p.group is not None and p.group.nofailback:
            return Choice(p.current, "current node kept (nofailback)")
    node = min(best, key=lambda n: (p.load.get(n, 0), n))
    why = f"priority {top}" if p.group is not None and p.group.nodes else "no group"
    return Choice(node, f"{why}, least loaded ({p.load.get(node, 0)} services)")
