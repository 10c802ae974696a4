"""HA rules (PVE 9's `/cluster/ha/rules`): parsing, feasibility, transform, compile (pure).

Owns no keys: `binome.ha.config` stores the rules document (`/binome/ha/rules`)
and this module is its pure logic, used by the API (to refuse an infeasible
rule) and by the CRM (to compile the rule set it places with). It follows
pve-ha-manager's `PVE::HA::Rules`, `Rules::NodeAffinity`,
`Rules::ResourceAffinity` and `Groups::migrate_groups_to_rules`:

- a **node-affinity** rule ties resources to nodes with priorities
  (`node[:prio],...`); `strict` restricts them to those nodes, otherwise the
  other nodes rank below every listed node (priority -1);
- a **resource-affinity** rule keeps its resources together (`positive`) or
  apart (`negative`);
- HA groups still work as in PVE 8: every group used by a resource becomes the
  node-affinity rule `ha-group-<group>` (`restricted` -> `strict`), so one
  placement logic serves both (upstream does the same before its one-time
  migration; binome keeps the groups, see docs/ha.md);
- `check_feasibility` gives upstream's errors per rule and property (a
  resource in two node-affinity rules, a positive and a negative rule sharing
  two resources, more negative resources than nodes...); the API refuses a rule
  that has errors, the CRM drops such rules ("Drop rule 'x', because ...")
  and keeps the others;
- `compile_rules` gives the CRM what it places with (`CompiledRules`).

Disabled rules (`disable`) are kept, shown and ignored everywhere else.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from binome.ha.model import GroupConfig, ResourceConfig

NODE_AFFINITY = "node-affinity"
RESOURCE_AFFINITY = "resource-affinity"
RULE_TYPES = (NODE_AFFINITY, RESOURCE_AFFINITY)
AFFINITIES = ("positive", "negative")
GROUP_RULE_PREFIX = "ha-group-"

_RULE_ID = re.compile(r"[a-z][a-z0-9_-]+", re.IGNORECASE)
_NODE_PRIO = re.compile(r"([a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?::(\d+))?")
_SID = re.compile(r"[a-z]+:\S+")


# ---------------------------------------------------------------- values


def check_rule_id(text: str) -> str:
    """PVE's `pve-configid` (a rule's name); ValueError with PVE's text."""
    if not _RULE_ID.fullmatch(text):
        raise ValueError(f"invalid configuration ID '{text}'")
    return text


def _split(text: str) -> list[str]:
    return [item for item in re.split(r"[,;\s]+", text) if item]


def parse_resources(text: str) -> frozenset[str]:
    """`vm:100,vm:101` -> the set of sids; ValueError with PVE's text."""
    out = set()
    for item in _split(text):
        if not _SID.fullmatch(item):
            raise ValueError(f"value '{item}' does not look like a valid ha resource id")
        kind, _, name = item.partition(":")
        if kind != "vm" or not (name.isascii() and name.isdigit()):
            raise ValueError(f"resource '{item}': only VMs (vm:<vmid>) are supported")
        out.add(f"vm:{int(name)}")
    return frozenset(out)


def parse_nodes(text: str) -> dict[str, int]:
    """`n1:2,n2` -> {node: priority} (priority 0 when not given); ValueError as PVE."""
    out: dict[str, int] = {}
    for item in _split(text):
        m = _NODE_PRIO.fullmatch(item)
        if m is None or (m.group(2) is not None and len(m.group(2)) > 9):
            raise ValueError(f"unable to parse HA node entry '{item}'")
        out[m.group(1)] = int(m.group(2) or 0)
    return out


def encode_resources(resources: Iterable[str]) -> str:
    return ",".join(sorted(resources))


def encode_nodes(nodes: Mapping[str, int]) -> str:
    """PVE's form: sorted by name, `node:prio`, a 0 priority left out."""
    return ",".join(f"{n}:{p}" if p else n for n, p in sorted(nodes.items()))


# ---------------------------------------------------------------- the rules


@dataclass(frozen=True)
class Rule:
    """One rule as stored: `nodes`/`strict` for node affinity, `affinity` for resources."""

    id: str
    type: str
    resources: frozenset[str]
    nodes: Mapping[str, int] = field(default_factory=dict)
    strict: bool = False
    affinity: str | None = None
    disable: bool = False
    comment: str = ""
    order: int = 0

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "resources": sorted(self.resources),
                               "order": self.order}
        if self.type == NODE_AFFINITY:
            out["nodes"] = dict(sorted(self.nodes.items()))
            out["strict"] = self.strict
        else:
            out["affinity"] = self.affinity
        if self.disable:
            out["disable"] = True
        if self.comment:
            out["comment"] = self.comment
        return out

    @classmethod
    def from_dict(cls, rule_id: str, data: Mapping[str, Any]) -> Rule:
        rtype = str(data.get("type", ""))
        if rtype not in RULE_TYPES:
            raise ValueError(f"invalid rule type '{rtype}'")
        nodes = data.get("nodes") or {}
        if isinstance(nodes, str):
            nodes = parse_nodes(nodes)
        resources = data.get("resources") or []
        if isinstance(resources, str):
            resources = parse_resources(resources)
        affinity = data.get("affinity")
        if rtype == RESOURCE_AFFINITY and affinity not in AFFINITIES:
            raise ValueError(f"invalid affinity '{affinity}'")
        return cls(id=rule_id, type=rtype, resources=frozenset(resources),
                   nodes={str(n): int(p) for n, p in nodes.items()},
                   strict=bool(data.get("strict", False)),
                   affinity=str(affinity) if rtype == RESOURCE_AFFINITY else None,
                   disable=bool(data.get("disable", False)),
                   comment=str(data.get("comment") or ""), order=int(data.get("order", 0)))

    def api(self) -> dict[str, Any]:
        """PVE's answer shape (`GET /cluster/ha/rules/{rule}`), without `digest`/`errors`."""
        out: dict[str, Any] = {"rule": self.id, "type": self.type,
                               "resources": encode_resources(self.resources),
                               "order": self.order}
        if self.type == NODE_AFFINITY:
            out["nodes"] = encode_nodes(self.nodes)
            out["strict"] = int(self.strict)
        else:
            out["affinity"] = self.affinity
        if self.disable:
            out["disable"] = 1
        if self.comment:
            out["comment"] = self.comment
        return out


def decode_rules(doc: Mapping[str, Any] | None) -> dict[str, Rule]:
    """The stored rules document as `Rule`s (an undecodable entry is skipped)."""
    out = {}
    for rule_id, data in (doc or {}).items():
        try:
            out[rule_id] = Rule.from_dict(rule_id, data)
        except (TypeError, ValueError):
            continue
    return out


def next_order(rules: Mapping[str, Rule]) -> int:
    return max((r.order for r in rules.values()), default=0) + 1


def migrate_groups(rules: Mapping[str, Rule], groups: Mapping[str, GroupConfig],
                   resources: Mapping[str, ResourceConfig]) -> dict[str, Rule]:
    """`rules` plus one node-affinity rule `ha-group-<g>` per group used by a resource
    (upstream's migrate_groups_to_rules: `restricted` becomes `strict`)."""
    out = dict(rules)
    members: dict[str, set[str]] = {}
    for sid, cfg in resources.items():
        if cfg.group:
            members.setdefault(cfg.group, set()).add(sid)
    for name in sorted(members):
        group = groups.get(name)
        if group is None:
            continue
        out[GROUP_RULE_PREFIX + name] = Rule(
            id=GROUP_RULE_PREFIX + name, type=NODE_AFFINITY, resources=frozenset(members[name]),
            nodes=dict(group.nodes), strict=group.restricted,
            comment=f"Generated from HA group '{name}'.", order=next_order(out))
    return out


# ---------------------------------------------------------------- feasibility

Errors = dict[str, dict[str, list[str]]]


def _enabled(rules: Mapping[str, Rule], rtype: str, affinity: str | None = None
             ) -> dict[str, Rule]:
    return {i: r for i, r in rules.items() if r.type == rtype and not r.disable
            and (affinity is None or r.affinity == affinity)}


def _disjoint_sets(rules: Mapping[str, Rule]) -> list[tuple[list[str], set[str]]]:
    """Upstream's find_disjoint_rules_resource_sets: connected rules' resource unions."""
    out: list[tuple[list[str], set[str]]] = []
    order = sorted(sorted(rules), key=lambda i: min(rules[i].resources, default=""))
    for rule_id in order:
        res = rules[rule_id].resources
        for ids, union in out:
            if not union.isdisjoint(res):
                ids.append(rule_id)
                union.update(res)
                break
        else:
            out.append(([rule_id], set(res)))
    return out


def check_feasibility(rules: Mapping[str, Rule], nodes: Sequence[str]) -> Errors:
    """Upstream's checks on the enabled rules: {rule: {property: [message, ...]}}."""
    errors: Errors = {}

    def add(rule_id: str, message: str, prop: str = "resources") -> None:
        msgs = errors.setdefault(rule_id, {}).setdefault(prop, [])
        if message not in msgs:
            msgs.append(message)

    node_aff = _enabled(rules, NODE_AFFINITY)
    res_aff = _enabled(rules, RESOURCE_AFFINITY)
    positive = _enabled(rules, RESOURCE_AFFINITY, "positive")
    negative = _enabled(rules, RESOURCE_AFFINITY, "negative")

    # node affinity: a resource in one node-affinity rule at most
    users: dict[str, list[str]] = {}
    for rule_id, rule in node_aff.items():
        for sid in rule.resources:
            users.setdefault(sid, []).append(rule_id)
    for sid, ids in sorted(users.items()):
        if len(ids) > 1:
            for rule_id in sorted(ids):
                add(rule_id, f"resource '{sid}' is already used in another node affinity rule")

    # resource affinity
    for rule_id, rule in sorted(res_aff.items()):
        if len(rule.resources) < 2:
            add(rule_id, "rule is ineffective as there are less than two resources")
    for rule_id, rule in sorted(negative.items()):
        if len(rule.resources) > len(nodes):
            add(rule_id, "rule defines more resources than available nodes")
    for ids, union in _disjoint_sets(positive):
        for neg_id, neg in sorted(negative.items()):
            if len(union & neg.resources) < 2:
                continue
            add(neg_id, "rule shares two or more resources with a positive resource "
                        "affinity rule")
            for pos_id in ids:
                add(pos_id, "rule shares two or more resources with a negative resource "
                            "affinity rule")

    # between the types
    for ra_id, ra in sorted(res_aff.items()):
        paired = [na_id for na_id, na in node_aff.items()
                  if not ra.resources.isdisjoint(na.resources)]
        if any(len(set(node_aff[na_id].nodes.values())) > 1 for na_id in paired):
            add(ra_id, "resources are in node affinity rules with multiple priorities")
            for na_id in sorted(paired):
                add(na_id, "resources are in a resource affinity rule and cannot be in a node "
                           "affinity rule with multiple priorities")
    for ids, union in _disjoint_sets(positive):
        paired = [na_id for na_id, na in node_aff.items() if not union.isdisjoint(na.resources)]
        if len(paired) > 1:
            for pos_id in ids:
                add(pos_id, "resources are in multiple node affinity rules")
            for na_id in sorted(paired):
                add(na_id, "at least one resource is in a positive resource affinity rule and "
                           "there are other resources in at least one other node affinity rule "
                           "already")
    for neg_id, neg in sorted(negative.items()):
        located: set[str] = set()
        allowed: set[str] = set()
        paired = []
        for na_id, na in node_aff.items():
            common = neg.resources & na.resources
            if common:
                located |= common
                allowed |= set(na.nodes)
                paired.append(na_id)
        if len(allowed) < len(located):
            add(neg_id, "two or more resources are restricted to less nodes than available to "
                        "the resources")
            for na_id in sorted(paired):
                add(na_id, "at least one resource is in a negative resource affinity rule and "
                           "this rule would restrict these to less nodes than available to the "
                           "resources")
    return errors


def transform(rules: Mapping[str, Rule], nodes: Sequence[str]
              ) -> tuple[dict[str, Rule], list[str]]:
    """The feasible rule set the CRM uses, and why rules were dropped (upstream's
    `Drop rule '<id>', because <message>.`): infeasible rules removed, connected
    positive rules merged, the negative affinities of positive partners made explicit,
    and a positive rule's resources added to the node-affinity rule of any of them."""
    errors = check_feasibility(rules, nodes)
    out = {i: r for i, r in rules.items() if i not in errors}
    messages = [f"Drop rule '{i}', because {m}."
                for i in sorted(errors) for p in sorted(errors[i]) for m in errors[i][p]]
    positive = _enabled(out, RESOURCE_AFFINITY, "positive")
    for ids, union in _disjoint_sets(positive):
        if len(ids) < 2:
            continue
        merged = Rule(id="_merged-" + "-".join(ids), type=RESOURCE_AFFINITY,
                      resources=frozenset(union), affinity="positive", order=out[ids[0]].order)
        for i in ids:
            del out[i]
        out[merged.id] = merged
    positive = _enabled(out, RESOURCE_AFFINITY, "positive")
    negative = _enabled(out, RESOURCE_AFFINITY, "negative")
    for pos_id, pos in sorted(positive.items()):
        separated: dict[str, set[str]] = {}
        for neg in negative.values():
            for sid in pos.resources & neg.resources:
                for csid in neg.resources - {sid}:
                    separated.setdefault(csid, set()).add(sid)
        for csid, already in sorted(separated.items()):
            for sid in sorted(pos.resources - already):
                rid = f"_implicit-negative-{pos_id}-{sid}-{csid}"
                out[rid] = Rule(id=rid, type=RESOURCE_AFFINITY, resources=frozenset({sid, csid}),
                                affinity="negative", order=next_order(out))
    node_aff = _enabled(out, NODE_AFFINITY)
    for pos in positive.values():
        for na_id in sorted(node_aff):
            if not pos.resources.isdisjoint(out[na_id].resources):
                out[na_id] = replace(out[na_id], resources=out[na_id].resources | pos.resources)
                break
    return out, messages


# ---------------------------------------------------------------- compiled


@dataclass(frozen=True)
class NodeAffinity:
    """A service's compiled node affinity: the listed nodes and their priorities."""

    rule: str
    nodes: Mapping[str, int]
    strict: bool

    @property
    def label(self) -> str:
        """How a reason names it: the group it was generated from, or the rule."""
        if self.rule.startswith(GROUP_RULE_PREFIX):
            kind = "restricted group" if self.strict else "group"
            return f"{kind} {self.rule[len(GROUP_RULE_PREFIX):]}"
        return f"{'strict ' if self.strict else ''}node affinity rule {self.rule}"

    def priority(self, node: str) -> int | None:
        """The node's priority; -1 for another node of a non-strict rule; None: not allowed."""
        if node in self.nodes:
            return self.nodes[node]
        return None if self.strict else -1


@dataclass(frozen=True)
class CompiledRules:
    """What placement uses: per service its node affinity, the services it must run with
    (`positive`) and apart from (`negative`), and the services that do not fail back
    (`failback: 0`, or their group says `nofailback`)."""

    node_affinity: Mapping[str, NodeAffinity] = field(default_factory=dict)
    positive: Mapping[str, frozenset[str]] = field(default_factory=dict)
    negative: Mapping[str, frozenset[str]] = field(default_factory=dict)
    nofailback: frozenset[str] = frozenset()


def compile_rules(rules: Mapping[str, Rule], nofailback: Iterable[str] = ()) -> CompiledRules:
    """The enabled rules of a (transformed) rule set, per service."""
    node_affinity: dict[str, NodeAffinity] = {}
    positive: dict[str, set[str]] = {}
    negative: dict[str, set[str]] = {}
    for rule_id, rule in sorted(rules.items(), key=lambda kv: (kv[1].order, kv[0])):
        if rule.disable:
            continue
        if rule.type == NODE_AFFINITY:
            aff = NodeAffinity(rule=rule_id, nodes=dict(rule.nodes), strict=rule.strict)
            for sid in rule.resources:
                node_affinity[sid] = aff
        else:
            target = positive if rule.affinity == "positive" else negative
            for sid in rule.resources:
                target.setdefault(sid, set()).update(rule.resources - {sid})
    return CompiledRules(node_affinity=node_affinity,
                         positive={s: frozenset(v) for s, v in positive.items()},
                         negative={s: frozenset(v) for s, v in negative.items()},
                         nofailback=frozenset(nofailback))


def compile_config(rules: Mapping[str, Rule], groups: Mapping[str, GroupConfig],
                   resources: Mapping[str, ResourceConfig], nodes: Sequence[str]
                   ) -> tuple[CompiledRules, list[str]]:
    """The CRM's whole path: groups as rules, transform, compile; and the drop messages."""
    full = migrate_groups(rules, groups, resources)
    feasible, messages = transform(full, nodes)
    # upstream's migrate_groups_to_resources: a group's nofailback decides for its members
    nofailback = [sid for sid, cfg in resources.items()
                  if (groups[cfg.group].nofailback if cfg.group and cfg.group in groups
                      else not cfg.failback)]
    return compile_rules(feasible, nofailback), messages
