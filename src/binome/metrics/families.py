"""The metric table (`METRICS`: every name, type, labels and meaning) and the Prometheus
families a `Snapshot` gives (`build`).

The table is the one definition of a metric: the families are built from it, the
histograms of `exporter` take their help and labels from it, and docs/metrics.md is
checked against it by a test. Names follow Prometheus' conventions: the `binome_`
prefix, base units in the name (`_bytes`, `_seconds`, `_ratio`), `_total` on counters,
one-hot state gauges (`state` label, 1 for the current state, 0 for the others).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)

from binome.ha.model import NodeState, ServiceState
from binome.metrics.snapshot import Snapshot
from binome.storage.replica.core.states import ConnState, DiskState, Role


@dataclass(frozen=True)
class Spec:
    name: str
    kind: str                     # gauge | counter | summary | histogram
    labels: tuple[str, ...]
    help: str


def _specs(*rows: tuple[str, str, str, str]) -> dict[str, Spec]:
    return {name: Spec(name, kind, tuple(labels.split()) if labels else (), text)
            for name, kind, labels, text in rows}


METRICS: dict[str, Spec] = _specs(
    # ---- this node
    ("binome_node_info", "gauge", "node role version",
     "Always 1: the node's name, role (node or witness) and binome version."),
    ("binome_node_cpu_usage_ratio", "gauge", "", "Host CPU busy fraction (0-1), all CPUs."),
    ("binome_node_cpus", "gauge", "", "Number of host CPUs."),
    ("binome_node_load1", "gauge", "", "Host load average over 1 minute."),
    ("binome_node_memory_size_bytes", "gauge", "", "Host memory (MemTotal)."),
    ("binome_node_memory_used_bytes", "gauge", "",
     "Host memory in use (MemTotal - MemAvailable)."),
    ("binome_node_root_filesystem_size_bytes", "gauge", "", "Size of the root filesystem."),
    ("binome_node_root_filesystem_used_bytes", "gauge", "", "Used space on the root filesystem."),
    ("binome_node_network_receive_bytes_total", "counter", "device",
     "Bytes received per host network device (loopback left out)."),
    ("binome_node_network_transmit_bytes_total", "counter", "device",
     "Bytes sent per host network device (loopback left out)."),
    ("binome_node_uptime_seconds", "gauge", "", "Host uptime."),
    # ---- guests on this node (the guest service's 2 s status round)
    ("binome_guest_info", "gauge", "vmid name",
     "Always 1 for each VM whose config is on this node."),
    ("binome_guest_up", "gauge", "vmid", "1 while the VM's QEMU runs on this node."),
    ("binome_guest_cpu_usage_ratio", "gauge", "vmid",
     "VM CPU use as a fraction of its allotted CPUs (PVE's `cpu`)."),
    ("binome_guest_cpus", "gauge", "vmid", "CPUs allotted to the VM."),
    ("binome_guest_memory_size_bytes", "gauge", "vmid", "Memory configured for the VM."),
    ("binome_guest_memory_used_bytes", "gauge", "vmid", "Memory the VM uses (PVE's `mem`)."),
    ("binome_guest_disk_size_bytes", "gauge", "vmid", "Total size of the VM's disks."),
    ("binome_guest_disk_read_bytes_total", "counter", "vmid",
     "Bytes the VM read from its disks since its QEMU started."),
    ("binome_guest_disk_written_bytes_total", "counter", "vmid",
     "Bytes the VM wrote to its disks since its QEMU started."),
    ("binome_guest_network_receive_bytes_total", "counter", "vmid",
     "Bytes into the VM through its NICs (PVE's `netin`)."),
    ("binome_guest_network_transmit_bytes_total", "counter", "vmid",
     "Bytes out of the VM through its NICs (PVE's `netout`)."),
    ("binome_guest_uptime_seconds", "gauge", "vmid", "Seconds since the VM's QEMU started."),
    # ---- cluster and quorum, as this node sees them
    ("binome_cluster_member", "gauge", "", "1 if this node belongs to a cluster."),
    ("binome_cluster_quorate", "gauge", "",
     "1 if this node's last linearizable etcd read succeeded (it has quorum)."),
    ("binome_cluster_expected_votes", "gauge", "", "Votes of all voting members."),
    ("binome_cluster_votes", "gauge", "", "Votes of the voting members that answer."),
    ("binome_cluster_quorum_votes", "gauge", "", "Votes needed for quorum."),
    ("binome_cluster_member_online", "gauge", "member role",
     "1 if the cluster member answers this node's probe (role: node or witness)."),
    # ---- the local etcd member
    ("binome_etcd_up", "gauge", "", "1 if the local etcd member answered its status request."),
    ("binome_etcd_has_leader", "gauge", "", "1 if the local member knows an etcd leader."),
    ("binome_etcd_is_leader", "gauge", "", "1 if the local member is the etcd leader."),
    ("binome_etcd_leader_info", "gauge", "leader", "Always 1: the etcd leader's name."),
    ("binome_etcd_raft_term", "gauge", "", "The local member's raft term (elections raise it)."),
    ("binome_etcd_alarms", "gauge", "", "Alarms the local member reports (NOSPACE, CORRUPT)."),
    ("binome_etcd_request_duration_seconds", "histogram", "request",
     "Latency of the etcd requests each scrape makes: `status` (local member) and "
     "`quorum_read` (a linearizable read: a raft round trip)."),
    # ---- HA (the CRM's status document: the same on every node with quorum)
    ("binome_ha_service_state", "gauge", "sid node state",
     "One-hot: 1 for the HA service's current CRM state on its node."),
    ("binome_ha_node_state", "gauge", "node state", "One-hot: 1 for the HA node state."),
    ("binome_ha_master", "gauge", "node", "1 for the node holding the HA manager lock."),
    ("binome_ha_fences_total", "counter", "node proof",
     "Nodes this node's CRM declared fenced, by proof (device, watchdog, manual, shutdown)."),
    ("binome_ha_fence_duration_seconds", "summary", "node proof",
     "Time from this CRM first seeing the node in `fence` to the proof."),
    ("binome_ha_fence_device_runs_total", "counter", "target action result",
     "Fence device runs by this node's fencer: the power-off and its confirmation "
     "(result: confirmed or failed; `action` is the device's: off or reboot)."),
    ("binome_ha_fence_device_duration_seconds", "summary", "target action result",
     "Time from a fence request to the device's confirmed power-off (or failure), for "
     "runs on this node."),
    ("binome_ha_recoveries_total", "counter", "sid from_node to_node",
     "Services this node's CRM recovered from a fenced node (failovers), counted when the "
     "service leaves `starting` on its new node (to_node: where it ended)."),
    ("binome_ha_recovery_duration_seconds", "summary", "sid from_node to_node",
     "Time from this CRM detecting the loss of the service's node (lease expiry) to the "
     "service `started` on its new node."),
    ("binome_ha_service_downtime_seconds_total", "counter", "sid",
     "Unplanned downtime of the HA service recorded in its availability history (outages: "
     "fencing, recovery, error, migration gaps; an ongoing one counts up to the scrape; "
     "administrator stops excluded). Read from etcd: the same on every node."),
    ("binome_ha_service_outages_total", "counter", "sid",
     "Outages of the HA service recorded in its availability history."),
    # ---- replicated volumes of this node's engine
    ("binome_volume_connection_state", "gauge", "volume peer_node state",
     "One-hot: the replication link's connection state (DRBD's cstate)."),
    ("binome_volume_role", "gauge", "volume role", "One-hot: this copy's role."),
    ("binome_volume_peer_role", "gauge", "volume role", "One-hot: the peer copy's role."),
    ("binome_volume_disk_state", "gauge", "volume state", "One-hot: this copy's disk state."),
    ("binome_volume_peer_disk_state", "gauge", "volume state",
     "One-hot: the peer copy's disk state as this node knows it."),
    ("binome_volume_size_bytes", "gauge", "volume", "Volume size."),
    ("binome_volume_out_of_sync_bytes", "gauge", "volume",
     "Data marked out of sync in this copy's bitmap (to resync)."),
    ("binome_volume_resync_rate_bytes_per_second", "gauge", "volume",
     "Current resync (or verify) speed; 0 when none runs."),
    ("binome_volume_resync_remaining_bytes", "gauge", "volume",
     "Data a running resync still has to transfer; 0 when none runs."),
    ("binome_volume_suspended", "gauge", "volume",
     "1 while I/O is suspended waiting for fencing (quorum fencing)."),
    ("binome_volume_transfer_log_epochs", "gauge", "volume",
     "Write epochs sent to the peer and not yet acknowledged (transfer-log depth)."),
    ("binome_volume_pending_requests", "gauge", "volume kind",
     "Requests in flight: `peer` (sent, not acknowledged), `unacked` (received from the "
     "peer, not acknowledged yet), `application` (NBD requests of the guest)."),
    ("binome_volume_network_sent_bytes_total", "counter", "volume",
     "Bytes sent to the peer since the engine started (DRBD's ns)."),
    ("binome_volume_network_received_bytes_total", "counter", "volume",
     "Bytes received from the peer since the engine started (nr)."),
    ("binome_volume_disk_written_bytes_total", "counter", "volume",
     "Bytes written to this copy's backing file since the engine started (dw)."),
    ("binome_volume_disk_read_bytes_total", "counter", "volume",
     "Bytes read from this copy's backing file since the engine started (dr)."),
    # ---- tasks and the API
    ("binome_tasks", "gauge", "type status",
     "Tasks in this node's task index by type and status (running, ok, warning, error)."),
    ("binome_api_request_duration_seconds", "histogram", "method path code",
     "API request latency on this node, by HTTP method, route template and status code."),
    # ---- notifications this node sent (each event is sent by one node)
    ("binome_notification_deliveries_total", "counter", "target outcome",
     "Messages this node finished delivering per target: `delivered`, or `failed` after "
     "the last retry."),
    ("binome_notification_delivery_attempt_failures_total", "counter", "target",
     "Failed delivery attempts per target (each retry that failed counts)."),
    ("binome_notification_deliveries_pending", "gauge", "target",
     "Messages being delivered or waiting for a retry, per target."),
    ("binome_notification_last_failure_timestamp_seconds", "gauge", "target",
     "Unix time of the last failed delivery attempt per target (absent if none)."),
    ("binome_notification_events_dropped_total", "counter", "",
     "Events dropped by this node: its queue was full, or the configuration unreadable."),
    ("binome_metrics_source_up", "gauge", "source",
     "1 if the exporter could read this source at this scrape (etcd, etcd_quorum_read, "
     "ha, ha_availability, volumes, host)."),
)

SOURCES = ("host", "etcd", "etcd_quorum_read", "ha", "ha_availability", "volumes")
TASK_STATUSES = ("running", "ok", "warning", "error")


class _Builder:
    def __init__(self) -> None:
        self.families: dict[str, Metric] = {}

    def _family(self, name: str) -> Any:
        fam = self.families.get(name)
        if fam is None:
            spec = METRICS[name]
            cls = {"gauge": GaugeMetricFamily, "counter": CounterMetricFamily,
                   "summary": SummaryMetricFamily}[spec.kind]
            fam = self.families[name] = cls(name, spec.help, labels=spec.labels)
        return fam

    def set(self, name: str, value: float, *labels: str) -> None:
        self._family(name).add_metric(list(labels), float(value))

    def one_hot(self, name: str, states: tuple[str, ...], current: str, *labels: str) -> None:
        for state in states if current in states else (*states, current):
            self.set(name, 1.0 if state == current else 0.0, *labels, state)

    def tally(self, name: str, count: int, seconds: float, *labels: str) -> None:
        self._family(name).add_metric(list(labels), count, seconds)


SERVICE_STATES = tuple(str(s) for s in ServiceState)
NODE_STATES = tuple(str(s) for s in NodeState)
CONN_STATES = tuple(s.name for s in ConnState)
DISK_STATES = tuple(s.name for s in DiskState)
ROLES = tuple(r.name for r in Role)


def build(snap: Snapshot) -> Iterator[Metric]:
    b = _Builder()
    _node(b, snap)
    _guests(b, snap)
    _cluster(b, snap)
    _ha(b, snap)
    _volumes(b, snap)
    _tasks(b, snap)
    _notifications(b, snap)
    for source in SOURCES:
        b.set("binome_metrics_source_up", 0.0 if source in snap.failed else 1.0, source)
    yield from b.families.values()


def _node(b: _Builder, snap: Snapshot) -> None:
    b.set("binome_node_info", 1, snap.node, snap.role, snap.version)
    h = snap.host
    if h:
        b.set("binome_node_cpu_usage_ratio", h["cpu"])
        b.set("binome_node_cpus", h["maxcpu"])
        b.set("binome_node_load1", h.get("loadavg", 0.0))
        b.set("binome_node_memory_size_bytes", h["maxmem"])
        b.set("binome_node_memory_used_bytes", h["mem"])
        b.set("binome_node_root_filesystem_size_bytes", h["maxdisk"])
        b.set("binome_node_root_filesystem_used_bytes", h["disk"])
        b.set("binome_node_uptime_seconds", h["uptime"])
    for dev, (rx, tx) in sorted(snap.net.items()):
        b.set("binome_node_network_receive_bytes_total", rx, dev)
        b.set("binome_node_network_transmit_bytes_total", tx, dev)


def _guests(b: _Builder, snap: Snapshot) -> None:
    for vmid, st in sorted(snap.guests.items()):
        v = str(vmid)
        b.set("binome_guest_info", 1, v, str(st.get("name", "")))
        running = st.get("status") == "running"
        b.set("binome_guest_up", 1 if running else 0, v)
        b.set("binome_guest_cpus", st.get("cpus", 0), v)
        b.set("binome_guest_memory_size_bytes", st.get("maxmem", 0), v)
        b.set("binome_guest_disk_size_bytes", st.get("maxdisk", 0), v)
        if not running:
            continue
        b.set("binome_guest_cpu_usage_ratio", st.get("cpu", 0.0), v)
        b.set("binome_guest_memory_used_bytes", st.get("mem", 0), v)
        b.set("binome_guest_disk_read_bytes_total", st.get("diskread", 0), v)
        b.set("binome_guest_disk_written_bytes_total", st.get("diskwrite", 0), v)
        b.set("binome_guest_network_receive_bytes_total", st.get("netin", 0), v)
        b.set("binome_guest_network_transmit_bytes_total", st.get("netout", 0), v)
        b.set("binome_guest_uptime_seconds", st.get("uptime", 0), v)


def _cluster(b: _Builder, snap: Snapshot) -> None:
    b.set("binome_cluster_member", 1 if snap.is_member else 0)
    q = snap.quorum
    if q is not None and q.checked_at:
        b.set("binome_cluster_quorate", 1 if q.quorate else 0)
        b.set("binome_cluster_expected_votes", q.expected_votes)
        b.set("binome_cluster_votes", q.total_votes)
        b.set("binome_cluster_quorum_votes", q.quorum)
        for m in q.members:
            if not m.is_learner:
                b.set("binome_cluster_member_online", 1 if m.online else 0, m.name, m.role)
    if not snap.is_member:
        return
    e = snap.etcd
    b.set("binome_etcd_up", 0 if e is None else 1)
    if e is not None:
        b.set("binome_etcd_has_leader", 1 if e["leader"] else 0)
        b.set("binome_etcd_is_leader", 1 if e["leader"] and e["leader"] == e["member_id"]
              else 0)
        b.set("binome_etcd_raft_term", e["raft_term"])
        b.set("binome_etcd_alarms", len(e.get("errors") or ()))
    if snap.etcd_leader:
        b.set("binome_etcd_leader_info", 1, snap.etcd_leader)


def _ha(b: _Builder, snap: Snapshot) -> None:
    if snap.ha is not None:
        ms = snap.ha.get("ms") or {}
        for sid, sd in sorted((ms.get("service_status") or {}).items()):
            b.one_hot("binome_ha_service_state", SERVICE_STATES, str(sd.get("state")),
                      sid, str(sd.get("node", "")))
        for node, rec in sorted((ms.get("node_status") or {}).items()):
            state = rec.get("state") if isinstance(rec, dict) else rec
            b.one_hot("binome_ha_node_state", NODE_STATES, str(state), node)
        if snap.ha.get("lock"):
            b.set("binome_ha_master", 1, str(snap.ha["lock"]))
    for sid, (downtime, count) in sorted(snap.availability.items()):
        b.set("binome_ha_service_downtime_seconds_total", downtime, sid)
        b.set("binome_ha_service_outages_total", count, sid)
    stats = snap.ha_stats
    if stats is None:
        return
    for (node, proof), t in sorted(stats.fences.items()):
        b.set("binome_ha_fences_total", t.count, node, proof)
        b.tally("binome_ha_fence_duration_seconds", t.count, t.seconds, node, proof)
    for (target, action, result), t in sorted(stats.device_runs.items()):
        b.set("binome_ha_fence_device_runs_total", t.count, target, action, result)
        b.tally("binome_ha_fence_device_duration_seconds", t.count, t.seconds, target, action,
                result)
    for (sid, src, dst), t in sorted(stats.recoveries.items()):
        b.set("binome_ha_recoveries_total", t.count, sid, src, dst)
        b.tally("binome_ha_recovery_duration_seconds", t.count, t.seconds, sid, src, dst)


def _volumes(b: _Builder, snap: Snapshot) -> None:
    for st in snap.volumes or ():
        name = str(st["name"])
        b.one_hot("binome_volume_connection_state", CONN_STATES, str(st.get("cstate")),
                  name, str(st.get("peer_node") or ""))
        b.one_hot("binome_volume_role", ROLES, str(st.get("role")), name)
        b.one_hot("binome_volume_peer_role", ROLES, str(st.get("peer_role")), name)
        b.one_hot("binome_volume_disk_state", DISK_STATES, str(st.get("disk")), name)
        b.one_hot("binome_volume_peer_disk_state", DISK_STATES, str(st.get("peer_disk")), name)
        b.set("binome_volume_size_bytes", st.get("size") or 0, name)
        b.set("binome_volume_out_of_sync_bytes", int(st.get("out_of_sync_kib") or 0) * 1024,
              name)
        sync = (st.get("peer") or {}).get("sync") or {}
        b.set("binome_volume_resync_rate_bytes_per_second",
              int(sync.get("speed_kib") or 0) * 1024, name)
        b.set("binome_volume_resync_remaining_bytes",
              0 if sync.get("verify") else int(sync.get("left_kib") or 0) * 1024, name)
        b.set("binome_volume_suspended", 1 if st.get("suspended") else 0, name)
        c = st.get("counters") or {}
        b.set("binome_volume_transfer_log_epochs", c.get("ep", 0), name)
        for kind, key in (("peer", "pe"), ("unacked", "ua"), ("application", "ap")):
            b.set("binome_volume_pending_requests", c.get(key, 0), name, kind)
        for metric, key in (("binome_volume_network_sent_bytes_total", "ns"),
                            ("binome_volume_network_received_bytes_total", "nr"),
                            ("binome_volume_disk_written_bytes_total", "dw"),
                            ("binome_volume_disk_read_bytes_total", "dr")):
            b.set(metric, int(c.get(key, 0)) * 1024, name)


def task_status(exitstatus: str | None, running: bool) -> str:
    if running:
        return "running"
    if exitstatus == "OK":
        return "ok"
    return "warning" if (exitstatus or "").startswith("WARNINGS") else "error"


def _notifications(b: _Builder, snap: Snapshot) -> None:
    if snap.notifications is None:
        return
    dropped, targets = snap.notifications
    b.set("binome_notification_events_dropped_total", dropped)
    for target, st in sorted(targets.items()):
        b.set("binome_notification_deliveries_total", st["delivered"], target, "delivered")
        b.set("binome_notification_deliveries_total", st["failed"], target, "failed")
        b.set("binome_notification_delivery_attempt_failures_total", st["attempts_failed"],
              target)
        b.set("binome_notification_deliveries_pending", st["pending"], target)
        if st.get("last_failure") is not None:
            b.set("binome_notification_last_failure_timestamp_seconds", st["last_failure"],
                  target)


def _tasks(b: _Builder, snap: Snapshot) -> None:
    counts: dict[tuple[str, str], int] = {}
    for r in snap.tasks:
        key = (r.upid.type, task_status(r.exitstatus, r.status == "running"))
        counts[key] = counts.get(key, 0) + 1
    for (type_, status), n in sorted(counts.items()):
        b.set("binome_tasks", n, type_, status)
