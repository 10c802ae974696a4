"""The notification event catalogue: each event's severity, fields and admin-facing text.

Pure: builds `Event` values; renders a title and a body saying what happened, why, and what
the administrator should do. The `group_key` lets the dispatcher merge a storm of related
events (one node failure, fifty guests) into one message.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from binome.units import human_duration


class Severity(StrEnum):
    INFO = "info"
    NOTICE = "notice"
    WARNING = "warning"
    ERROR = "error"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class EventKind:
    """One entry of the catalogue: fixed severity (or None: chosen per event), type field, texts."""

    name: str
    type: str
    severity: Severity | None
    required: tuple[str, ...]
    title: str
    body: str
    # Fields that, with the type, form the storm-grouping key (e.g. the failed node).
    group_by: tuple[str, ...] = ()


@dataclass(frozen=True)
class Event:
    kind: str
    severity: Severity
    fields: dict[str, str]
    data: dict[str, Any]
    timestamp: float
    title: str
    message: str
    group_key: str

    @property
    def type(self) -> str:
        return self.fields["type"]


def _k(name: str, type_: str, sev: Severity | None, req: tuple[str, ...], title: str, body: str,
       group_by: tuple[str, ...] = ("hostname",)) -> EventKind:
    return EventKind(name, type_, sev, req, title, body, group_by)


S = Severity
CATALOGUE: dict[str, EventKind] = {k.name: k for k in [
    _k("fence-requested", "fencing", S.ERROR, ("node", "reason"),
       "Fencing node {node}",
       "Node {node} is being fenced: {reason}.\nIts HA services will be recovered on another node "
       "once the fence is confirmed. Check the node's power and network; do not start its guests "
       "by hand meanwhile.", ("node",)),
    _k("fence-succeeded", "fencing", S.ERROR, ("node", "agent"),
       "Node {node} fenced",
       "Node {node} was fenced successfully by {agent}.\nIts HA services are now being recovered "
       "elsewhere. Find out why the node failed before bringing it back.", ("node",)),
    _k("fence-failed", "fencing", S.ERROR, ("node", "error"),
       "Fencing node {node} FAILED",
       "Fencing node {node} failed: {error}.\nIts HA services stay down until a fence succeeds "
       "(recovery without a fence risks a split brain). Check the fence device (IPMI address, "
       "credentials) or power the node off by hand and confirm it with "
       "'binome fence {node} --confirm-off'.", ("node",)),
    _k("node-offline", "node", S.WARNING, ("node",),
       "Node {node} offline",
       "Node {node} stopped answering the cluster ({why}).\nIf it holds HA "
       "services it will be fenced. Check its power, network links and binomed.", ("node",)),
    _k("node-online", "node", S.NOTICE, ("node",),
       "Node {node} back online",
       "Node {node} is back in the cluster.\nReplicated volumes will resync to it; HA services "
       "stay where they are unless a group prefers this node.", ("node",)),
    _k("quorum-lost", "quorum", S.ERROR, ("votes", "expected"),
       "Quorum lost on {hostname}",
       "{lost_text} ({votes} of {expected} votes).\nIt will not start, migrate or "
       "recover HA services, and self-fences if it runs any. Check the links to the other "
       "nodes and the witness."),
    _k("quorum-regained", "quorum", S.NOTICE, ("votes", "expected"),
       "Quorum regained on {hostname}",
       "This node has quorum again ({votes} of {expected} votes). HA management resumes."),
    _k("ha-recovered", "ha", S.NOTICE, ("sid", "from_node", "node"),
       "HA service {sid} recovered on {node}",
       "HA service {sid} was recovered on {node} after {from_node} failed.\nCheck the guest "
       "works; it will not move back automatically unless its group says so.", ("from_node",)),
    _k("ha-recovery-blocked", "ha", S.ERROR, ("sid", "from_node", "reason"),
       "HA service {sid} cannot be recovered",
       "HA service {sid} (was on {from_node}) cannot be recovered: {reason_text}.\n"
       "{reason_action}", ("from_node",)),
    _k("ha-error", "ha", S.ERROR, ("sid", "node", "error"),
       "HA service {sid} in error state",
       "HA service {sid} on {node} entered the error state: {error}.\nThe HA manager no longer "
       "acts on it. Fix the cause, then 'binome ha set {sid} --state disabled' and enable it "
       "again.", ("sid",)),
    _k("split-brain-detected", "split-brain", S.ERROR, ("volume", "peer", "policy"),
       "Split brain on volume {volume}",
       "Volume {volume} has diverging data on {hostname} and {peer}: both copies were written "
       "while they were disconnected, and neither may simply overwrite the other.\n"
       "Why it stays: {policy} (Primary at the reconnect: {primaries}). Replication of "
       "{volume} is stopped (StandAlone) and each node keeps its own data.\n"
       "What to do: decide which node's writes survive. On the other node (the victim), "
       "whose writes since the split are lost: 'binome volume secondary {volume}' (stop its "
       "guest first) and 'binome volume connect {volume} --discard-my-data 1'; then on the "
       "survivor 'binome volume connect {volume}'. The victim resyncs from the survivor.",
       ("volume",)),
    _k("split-brain-resolved", "split-brain", S.WARNING, ("volume", "policy", "victim"),
       "Split brain on volume {volume} resolved",
       "The split brain on volume {volume} was resolved by {policy_text}: {hostname} keeps "
       "its data; the changes made on {victim} while the two were disconnected are "
       "discarded, and {victim} resyncs from {hostname}.\nCheck that no data the guest "
       "wrote on {victim} during the split is needed: it is gone once the resync ends.",
       ("volume",)),
    _k("replication-disconnected", "replication", S.WARNING, ("volume", "peer"),
       "Replication of {volume} to {peer} disconnected",
       "Volume {volume} lost its connection to {peer} ({reason}).\nWrites continue locally; "
       "the peer is out of date and cannot take over until it resyncs. If it was not on "
       "purpose, check the replication link; after a disconnect by hand, 'binome volume "
       "connect {volume}' on both nodes reconnects it.", ("peer",)),
    _k("resync-started", "replication", S.INFO, ("volume", "peer", "out_of_sync_bytes"),
       "Resync of {volume} to {peer} started",
       "Volume {volume} is resyncing {out_of_sync_bytes} bytes to {peer}. {peer} cannot take "
       "over the volume until it finishes.", ("peer",)),
    _k("resync-done", "replication", S.INFO, ("volume", "peer", "duration"),
       "Resync of {volume} to {peer} done",
       "Volume {volume} is UpToDate on {peer} again (resync took {duration} s).", ("peer",)),
    _k("verify-out-of-sync", "replication", S.WARNING, ("volume", "peer", "out_of_sync_bytes"),
       "Verify found differences on {volume}",
       "An online verify of {volume} against {peer} found {out_of_sync_bytes} bytes that "
       "differ.\nDisconnect and reconnect the volume to resync them, and check the disks and "
       "memory of both nodes (this should not happen).", ("volume",)),
    _k("disk-io-error", "disk", S.ERROR, ("volume", "device", "error"),
       "I/O error on {device} ({volume})",
       "The local disk {device} of volume {volume} on {hostname} failed: {error}.\n"
       "{detach_text}Check the disk (the kernel log: 'dmesg'; 'smartctl -a'). Replace it "
       "at the same path; then, on {hostname}, 'binome volume attach {volume}' resyncs the "
       "whole volume from {peer} onto it{attach_text}.", ("device",)),
    _k("backup-result", "vzdump", None, ("job_id", "status", "ok_count", "failed_count"),
       "vzdump backup status ({hostname}): {status_text}",
       "Backup job {job_id} finished: {ok_count} guests backed up, {failed_count} failed, "
       "{total_size} bytes in {total_time} s.\n{details}", ("job_id",)),
    _k("certificate-expiry", "certificate", S.WARNING, ("certificate", "days_left"),
       "Certificate {certificate} expires in {days_left} days",
       "The certificate {certificate} on {hostname} expires on {not_after}.\nClients, and the "
       "other nodes, will refuse this node's API once it has expired. Plan its renewal now: "
       "a custom or ACME certificate (pveproxy-ssl.pem) with 'binome acme cert renew' or a "
       "new upload ('binome cert set'); the node's own certificate (node.pem, issued for 10 "
       "years when a node joins) by joining the node again.",
       ("certificate",)),
    _k("clock-skew", "time", S.WARNING, ("node", "skew", "threshold"),
       "Clock skew on {node}: {skew} s",
       "The clock of {node} differs by {skew} s from the cluster's ({reference}'s; "
       "threshold {threshold} s), compared through the nodes' HA heartbeats.\n"
       "Leases and fencing deadlines use monotonic clocks and are not affected, but logs, "
       "certificates and the availability history are. Check NTP (chrony: 'chronyc "
       "tracking') on {node} and on {reference}.", ("node",)),
    _k("etcd-unhealthy", "etcd", S.ERROR, ("member", "error"),
       "etcd member {member} unhealthy",
       "The etcd member {member} is unhealthy: {error}.\nThe cluster keeps quorum while a "
       "majority is healthy. Check the member's disk latency and its network.", ("member",)),
    _k("availability-budget-exceeded", "availability", S.WARNING,
       ("sid", "month", "downtime", "budget"),
       "HA service {sid} exceeded its downtime budget",
       "HA service {sid} was down {downtime_text} in {month}, over its budget of "
       "{budget_text} ({target}: {used_percent} % used).\nSee 'binome ha availability "
       "{sid}' for the outages and their causes; "
       "a recurring cause (the same node failing, a guest that crashes) is worth fixing "
       "before the next one.",
       ("sid",)),
    _k("availability-budget-nearly", "availability", S.NOTICE,
       ("sid", "month", "downtime", "budget"),
       "HA service {sid} used {used_percent} % of its downtime budget",
       "HA service {sid} was down {downtime_text} in {month}: {used_percent} % of its budget "
       "of {budget_text} ({target}).\nAnother outage this month may exceed it. See "
       "'binome ha availability {sid}' for the outages and their causes, and check why the "
       "service failed.", ("sid",)),
    _k("test", "test", S.INFO, ("target",), "Test notification",
       "This is a test of the notification target '{target}'.", ("target",)),
]}

BLOCKED_REASONS: dict[str, tuple[str, str]] = {
    "no-uptodate-replica": (
        "no node has an UpToDate replica of its disks",
        "Starting it elsewhere would lose data. Bring the failed node back, or, if its disks "
        "are lost, promote an outdated copy by hand knowing the recent writes are lost."),
    "fence-failed": (
        "the failed node could not be fenced",
        "Fence the node by hand (power it off) and confirm it with 'binome fence "
        "{from_node} --confirm-off'."),
    "no-quorum": (
        "the cluster has no quorum",
        "Restore the links between nodes or the witness; recovery resumes with quorum."),
    "no-node": (
        "no node may run it now",
        "Bring a node of its group back online, or widen the group; recovery resumes by "
        "itself as soon as a node can take it."),
}


class EventError(ValueError):
    pass


class _Defaulting(dict):
    def __missing__(self, key: str) -> str:
        return "?"


def make_event(kind: str, hostname: str, *, severity: Severity | str | None = None,
               timestamp: float | None = None, **data: Any) -> Event:
    """Build an event of the catalogue; `data` carries its required and optional fields."""
    spec = CATALOGUE.get(kind)
    if spec is None:
        raise EventError(f"unknown event kind '{kind}'")
    missing = [f for f in spec.required if f not in data]
    if missing:
        raise EventError(f"event '{kind}' is missing: {', '.join(missing)}")
    if severity is None:
        severity = spec.severity
    if kind == "backup-result":
        ok = int(data["failed_count"]) == 0 and data["status"] == "ok"
        severity = severity or (Severity.INFO if ok else Severity.ERROR)
        data.setdefault("status_text", "backup successful" if ok else "backup failed")
    if severity is None:
        raise EventError(f"event '{kind}' needs a severity")
    sev = Severity(severity)
    if kind == "ha-recovery-blocked":
        reason = str(data["reason"])
        if reason not in BLOCKED_REASONS:
            raise EventError(f"unknown recovery-blocked reason '{reason}'")
        detail = f" ({data['detail']})" if data.get("detail") else ""
        data.setdefault("reason_text", BLOCKED_REASONS[reason][0] + detail)
        data.setdefault("reason_action", BLOCKED_REASONS[reason][1].format(
            from_node=data["from_node"]))
    if kind == "split-brain-resolved":
        policy = str(data["policy"])
        data.setdefault("policy_text", {
            "discard-my-data": "hand ('connect --discard-my-data' on the victim)",
            "manual": "hand (the victim was invalidated or its data replaced)",
        }.get(policy, f"the policy '{policy}'"))
    if kind == "split-brain-detected":
        data.setdefault("primaries", "?")
    if kind == "quorum-lost":
        data.setdefault("lost_text", "This node has had no quorum since its daemon started"
                        if data.get("since_start") else "This node lost quorum")
    if kind == "disk-io-error":
        data.setdefault("peer", "the peer")
        data.setdefault("detach_text", (
            f"The disk was detached (on-io-error detach): the volume now reads and writes "
            f"through {data['peer']} (diskless), and {data['peer']} holds its only copy "
            f"until a disk is attached again. ") if data.get("detached") else "")
        data.setdefault("attach_text", " (a Primary must be made Secondary first: migrate or "
                        "stop its guest, then 'binome volume secondary "
                        f"{data['volume']}')" if data.get("role") != "Secondary" else "")
    if spec.type == "availability":
        down, allowed = float(data["downtime"]), float(data["budget"])
        data.setdefault("used_percent", f"{100 * down / allowed:.0f}" if allowed > 0 else "100")
        data.setdefault("downtime_text", human_duration(down))
        data.setdefault("budget_text", human_duration(allowed))
        data.setdefault("target", "the target")
    values = _Defaulting({k: v for k, v in data.items()})
    values["hostname"] = hostname
    fields = {"type": spec.type, "hostname": hostname}
    for name in spec.required:
        if isinstance(data[name], str | int | float):
            fields[name.replace("_", "-")] = str(data[name])
    fields["kind"] = kind
    group = ":".join([spec.type, *(str(values[g]) for g in spec.group_by)])
    return Event(
        kind=kind, severity=sev, fields=fields, data=dict(data),
        timestamp=time.time() if timestamp is None else timestamp,
        title=spec.title.format_map(values), message=spec.body.format_map(values),
        group_key=group,
    )
