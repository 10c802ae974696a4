"""Text renderings of API results, in the spirit of pvecm / qm / ha-manager outputs.

The CLI owns its formatting: a method's CLI binding names a formatter
(`CliSpec.formatter`: "table:COL,..." or a name in `FORMATTERS`), and every
named formatter is registered here, never by the API method modules.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from binome.units import human_duration


def render(data: Any, formatter: str | None, output_format: str) -> str:
    if output_format == "json":
        return json.dumps(data, separators=(",", ":"), sort_keys=True)
    if output_format == "json-pretty":
        return json.dumps(data, indent=4, sort_keys=True)
    if formatter and formatter.startswith("table:"):
        return table(data or [], formatter[len("table:"):].split(","))
    if formatter in FORMATTERS:
        return FORMATTERS[formatter](data)
    return default(data)


def default(data: Any) -> str:
    if data is None:
        return ""
    if isinstance(data, list):
        if data and all(isinstance(x, dict) for x in data):
            columns = list(dict.fromkeys(k for row in data for k in row))
            return table(data, columns)
        return "\n".join(str(x) for x in data)
    if isinstance(data, dict):
        width = max((len(k) for k in data), default=0)
        return "\n".join(f"{k + ':':<{width + 1}} {_cell(v)}" for k, v in sorted(data.items()))
    return str(data)


def _cell(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    if value is None:
        return ""
    return str(value)


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip()
              for r in cells]
    return "\n".join(lines)


def cluster_status(entries: list[dict[str, Any]]) -> str:
    cluster = next((e for e in entries if e["type"] == "cluster"), None)
    members = [e for e in entries if e["type"] != "cluster"]
    if cluster is None:
        local = members[0]["name"] if members else "?"
        return (f"Node {local} is not part of a cluster.\n"
                f"Create one with 'binome cluster create NAME' or join one with "
                f"'binome cluster join ADDRESS --fingerprint SHA256'.")
    blocked = "" if cluster["quorate"] else "  Activity blocked"
    out = [
        "Cluster information", "-------------------",
        f"Name:             {cluster['name']}",
        f"Config Version:   {cluster['version']}",
        f"Transport:        {cluster['transport']}",
        f"etcd leader:      {cluster.get('etcd_leader') or '-'}",
        "",
        "Votequorum information", "----------------------",
        f"Date:             {time.strftime('%a %b %d %H:%M:%S %Y')}",
        f"Nodes:            {cluster['nodes']}",
        f"Expected votes:   {cluster['expected_votes']}",
        f"Total votes:      {cluster['total_votes']}",
        f"Quorum:           {cluster['quorum']}{blocked}",
        f"Quorate:          {'Yes' if cluster['quorate'] else 'No'}",
        f"Flags:            {cluster['flags'] or '-'}",
        "",
        "Membership information", "----------------------",
        f"{'Nodeid':>10} {'Votes':>6}  {'Role':<8} {'Name'}",
    ]
    for m in members:
        notes = []
        if m.get("local"):
            notes.append("(local)")
        if not m.get("online"):
            notes.append("(offline)")
        if m.get("learner"):
            notes.append("(joining)")
        out.append(f"{m['nodeid']:>10} {m['votes']:>6}  {m['role']:<8} {m['name']} "
                   f"{' '.join(notes)}".rstrip())
    for warning in cluster.get("warnings") or []:
        out.append(f"\nWARNING: {warning}")
    return "\n".join(out)


def witness_status(entries: list[dict[str, Any]]) -> str:
    cluster = next((e for e in entries if e["type"] == "cluster"), None)
    me = next((e for e in entries if e.get("local")), None)
    if cluster is None or me is None:
        return "This machine is not part of a cluster (join one with 'binome witness join')."
    lines = [f"{'Witness' if me['role'] == 'witness' else 'Node'} {me['name']} of cluster "
             f"'{cluster['name']}' (config version {cluster['version']})",
             f"Vote:     {me['votes']} ({'online' if me['online'] else 'offline'})",
             f"Quorate:  {'Yes' if cluster['quorate'] else 'No'} "
             f"({cluster['total_votes']} of {cluster['expected_votes']} votes, "
             f"{cluster['quorum']} needed)",
             "Sees:"]
    for e in entries:
        if e["type"] == "cluster" or e.get("local"):
            continue
        lines.append(f"  {e['name']:<16} {e['role']:<8} "
                     f"{'online' if e['online'] else 'OFFLINE'}")
    return "\n".join(lines)


def cluster_nodes(rows: list[dict[str, Any]]) -> str:
    return table(rows, ["nodeid", "quorum_votes", "name", "role", "ring0_addr",
                        "replication_addr", "state", "online"])


def cluster_log(rows: list[dict[str, Any]]) -> str:
    out = []
    for e in reversed(rows):
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e["time"]))
        level = {0: "EMERG", 1: "ALERT", 2: "CRIT", 3: "ERROR", 4: "WARN"}.get(e["pri"], "")
        out.append(f"{stamp} {e['node']} {e['tag']}[{e['user']}]: "
                   f"{level + ': ' if level else ''}{e['msg']}")
    return "\n".join(out)


def task_log(rows: list[dict[str, Any]]) -> str:
    return "\n".join(r["t"] for r in rows)


def ha_status(entries: list[dict[str, Any]]) -> str:
    """`ha-manager status`: one line per entry, `type status`."""
    lines = []
    for e in entries:
        text = e.get("status", "")
        if e["type"] == "service" and e.get("reason"):
            text += f" - {e['reason']}"
        if e["type"] == "service" and e.get("availability_target") is not None:
            whose = "" if e.get("availability_target_scope") == "service" else " (cluster)"
            text += f" [availability target {e['availability_target']:.10g} %{whose}]"
        lines.append(f"{e['type']} {text}")
    return "\n".join(lines)


def fence_result(data: dict[str, Any]) -> str:
    """`binome fence test NODE`: the power state the device read, or why it failed."""
    line = f"{data['node']}: power {data.get('state') or 'unknown'}"
    if not data.get("ok"):
        line = f"{data['node']}: device FAILED ({data.get('detail')})"
    return f"{line} [{data.get('duration', 0):.2f}s]"


def volume_status(data: Any) -> str:
    """`binome volume status`: drbdsetup status style."""
    from binome.storage.replica.core import format as vformat

    return vformat.volume_status(data)


def volume_config(data: Any) -> str:
    """`binome volume config`: drbdsetup show style."""
    from binome.storage.replica.core import format as vformat

    return vformat.drbdsetup_show(data)


def ha_availability(reports: list[dict[str, Any]]) -> str:
    """`binome ha availability`: one line per service, then its outages and planned stops."""
    if not reports:
        return "no availability history recorded yet"
    lines = []
    for rep in reports:
        since = time.strftime("%Y-%m-%d %H:%M", time.gmtime(rep["since"]))
        until = time.strftime("%Y-%m-%d %H:%M", time.gmtime(rep["until"]))
        pct = "n/a" if rep["availability"] is None else f"{rep['availability']:.4f} %"
        lines.append(f"{rep['sid']} ({rep['state']}) {since} .. {until} UTC: "
                     f"availability {pct} (class {rep['class']}), "
                     f"downtime {_dur(rep['downtime'])} in {rep['outages']} outage(s), "
                     f"longest {_dur(rep['longest'])}, MTTR {_dur(rep['mttr'])}, "
                     f"planned {_dur(rep['planned_downtime'])}")
        bud = rep.get("budget")
        if bud:
            scope = " (this service's target)" if bud.get("scope") == "service" else ""
            lines.append(f"  budget {bud['target']:.10g} %{scope}: {_dur(bud['used'])} of "
                         f"{_dur(bud['allowed'])} used ({bud['used_percent']:g} %), "
                         f"{_dur(bud['left'])} left")
        for kind, items in (("outage", rep["outage_list"]), ("planned", rep["planned_list"])):
            for o in items:
                start = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(o["start"]))
                phases = ", ".join(f"{p['cause']} {_dur(p['duration'])}"
                                   for p in o["phases"])
                lines.append(f"  {kind:<7} {start}  {_dur(o['duration']):>14}  "
                             f"{o['cause']:<10} on {o['node'] or '?'}"
                             + (" (ongoing)" if o["ongoing"] else "")
                             + (f"  [{phases}]" if len(o["phases"]) > 1 else ""))
    return "\n".join(lines)


def permissions(data: dict[str, dict[str, int]]) -> str:
    """pveum's print_perm_result: one row per path, its privileges one a line, '(*)'
    marking the propagating ones."""
    rows = []
    for path in sorted(data or {}):
        privs = data[path]
        lines = [f"{p} (*)" if privs[p] else p for p in sorted(privs)] or [""]
        rows += [(path if i == 0 else "", line) for i, line in enumerate(lines)]
    width = max([len("ACL PATH")] + [len(r[0]) for r in rows])
    out = [f"{'ACL PATH':<{width}}  PERMISSIONS".rstrip()]
    out += [f"{path:<{width}}  {line}".rstrip() for path, line in rows]
    out.append("Permissions marked with '(*)' have the 'propagate' flag set.")
    return "\n".join(out)


def tfa_entries(data: list[dict[str, Any]]) -> str:
    """pveum's `user tfa list`: per user, each entry's type, id and description (never a
    secret: the API answers none)."""
    out: list[str] = []
    for user in sorted(data or [], key=lambda u: u["userid"]):
        if out:
            out.append("")
        out.append(f"{user['userid']}:")
        for e in user.get("entries", []):
            state = "" if e.get("enable", 1) else " (disabled)"
            out.append(f"    {e['type'] + ':':<9} {e['id']}{state}")
            out.append(f"        {e.get('description') or ''}".rstrip())
    return "\n".join(out)


def _dur(seconds: float) -> str:
    return human_duration(seconds, tenths_under_a_minute=True)


def ha_rules(rows: list[dict[str, Any]]) -> str:
    """`ha-manager rules config`: enabled, state (in use / ignored (conflicts)), rule,
    type, resources, comment; nodes/strict/affinity as well, which ha-manager hides."""
    out = []
    for rule in rows or []:
        detail = rule.get("nodes", "") if rule.get("type") == "node-affinity" \
            else rule.get("affinity", "")
        if rule.get("strict"):
            detail += " (strict)"
        out.append({"enabled": int(not rule.get("disable")),
                    "state": "ignored (conflicts)" if rule.get("errors") else "in use",
                    "rule": rule.get("rule"), "type": rule.get("type"),
                    "resources": rule.get("resources"), "nodes/affinity": detail,
                    "comment": rule.get("comment", "")})
    lines = [table(out, ["enabled", "state", "rule", "type", "resources", "nodes/affinity",
                         "comment"])]
    for rule in rows or []:
        for prop, messages in sorted((rule.get("errors") or {}).items()):
            for message in messages:
                lines.append(f"{rule.get('rule')}: {prop}: {message}")
    return "\n".join(lines)


FORMATTERS: dict[str, Callable[[Any], str]] = {
    "ha_rules": ha_rules,
    "ha_availability": ha_availability,
    "cluster_status": cluster_status,
    "witness_status": witness_status,
    "cluster_nodes": cluster_nodes,
    "cluster_log": cluster_log,
    "task_log": task_log,
    "ha_status": ha_status,
    "fence_result": fence_result,
    "volume_status": volume_status,
    "volume_config": volume_config,
    "permissions": permissions,
    "tfa_entries": tfa_entries,
}
