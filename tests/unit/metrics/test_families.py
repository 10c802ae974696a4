"""The families a scrape snapshot gives, read back with prometheus_client's parser, and
the HA agent's fence/recovery counts (`HaStats`) over committed CRM rounds."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from binome.config import ConfigError, NodeConfig
from binome.ha.agent.stats import HaStats
from binome.metrics.exporter import _ScrapeCollector
from binome.metrics.snapshot import Snapshot
from binome.tasks.manager import TaskRecord
from binome.tasks.upid import Upid

pytestmark = pytest.mark.unit

KiB = 1024


def samples(snap: Snapshot) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    collector = _ScrapeCollector()
    collector.snapshot = snap
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    text = generate_latest(registry).decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def volume_status(**over: Any) -> dict[str, Any]:
    """A volume's status as the engine reports it (engine/volume/report.status)."""
    st = {"name": "v1", "size": 16 << 20, "role": "Primary", "peer_role": "Secondary",
          "cstate": "SyncSource", "disk": "UpToDate", "peer_disk": "Inconsistent",
          "suspended": False, "peer_node": "n2", "out_of_sync_kib": 4096,
          "peer": {"sync": {"speed_kib": 2048, "left_kib": 4096, "verify": False}},
          "counters": {"ns": 100, "nr": 2, "dw": 50, "dr": 7, "pe": 3, "ua": 1, "ap": 2,
                       "ep": 4}}
    return st | over


def test_volume_series_one_hot_states_and_bytes() -> None:
    snap = Snapshot(node="n1", role="node", volumes=[volume_status()])
    got = samples(snap)

    def value(name: str, **labels: str) -> float:
        return got[(name, tuple(sorted(labels.items())))]

    assert value("binome_volume_connection_state", volume="v1", peer_node="n2",
                 state="SyncSource") == 1
    assert value("binome_volume_connection_state", volume="v1", peer_node="n2",
                 state="Connected") == 0
    states = [k for k in got if k[0] == "binome_volume_connection_state"]
    assert len(states) == 24      # one series per DRBD connection state
    assert value("binome_volume_peer_disk_state", volume="v1", state="Inconsistent") == 1
    assert value("binome_volume_role", volume="v1", role="Primary") == 1
    assert value("binome_volume_out_of_sync_bytes", volume="v1") == 4096 * KiB
    assert value("binome_volume_resync_rate_bytes_per_second", volume="v1") == 2048 * KiB
    assert value("binome_volume_resync_remaining_bytes", volume="v1") == 4096 * KiB
    assert value("binome_volume_network_sent_bytes_total", volume="v1") == 100 * KiB
    assert value("binome_volume_transfer_log_epochs", volume="v1") == 4
    assert value("binome_volume_pending_requests", volume="v1", kind="application") == 2
    # an engine state this exporter does not know still shows (one more series)
    odd = samples(Snapshot(node="n1", role="node", volumes=[volume_status(cstate="Weird")]))
    assert odd[("binome_volume_connection_state",
                (("peer_node", "n2"), ("state", "Weird"), ("volume", "v1")))] == 1


def test_ha_state_tasks_and_sources() -> None:
    ms = {"service_status": {"vm:100": {"state": "started", "node": "n2"}},
          "node_status": {"n1": {"state": "fence"}, "n2": {"state": "online"}}}
    stats = HaStats()
    stats.nodes_seen({"n1": True}, now=10.0)
    stats.node_fenced("n1", "device", now=14.5)
    stats.device_run("n1", "off", "confirmed", 1.25)
    tasks = [TaskRecord(Upid("n1", 1, 1, 1, "hastart", "100", "root@pam"), "stopped", "OK"),
             TaskRecord(Upid("n1", 2, 1, 2, "hastart", "100", "root@pam"), "stopped",
                        "start failed"),
             TaskRecord(Upid("n1", 3, 1, 3, "qmigrate", "100", "root@pam"))]
    snap = Snapshot(node="n1", role="node", ha={"ms": ms, "lock": "n2"}, ha_stats=stats,
                    tasks=tasks, failed={"volumes"})
    got = samples(snap)
    assert got[("binome_ha_service_state",
                (("node", "n2"), ("sid", "vm:100"), ("state", "started")))] == 1
    assert got[("binome_ha_service_state",
                (("node", "n2"), ("sid", "vm:100"), ("state", "fence")))] == 0
    assert got[("binome_ha_node_state", (("node", "n1"), ("state", "fence")))] == 1
    assert got[("binome_ha_master", (("node", "n2"),))] == 1
    assert got[("binome_ha_fences_total", (("node", "n1"), ("proof", "device")))] == 1
    assert got[("binome_ha_fence_duration_seconds_sum",
                (("node", "n1"), ("proof", "device")))] == 4.5
    assert got[("binome_ha_fence_device_runs_total",
                (("action", "off"), ("result", "confirmed"), ("target", "n1")))] == 1
    assert got[("binome_tasks", (("status", "ok"), ("type", "hastart")))] == 1
    assert got[("binome_tasks", (("status", "error"), ("type", "hastart")))] == 1
    assert got[("binome_tasks", (("status", "running"), ("type", "qmigrate")))] == 1
    assert got[("binome_metrics_source_up", (("source", "volumes"),))] == 0
    assert got[("binome_metrics_source_up", (("source", "ha"),))] == 1


def test_ha_stats_over_rounds_of_a_failover() -> None:
    """n1 lost at t=100 (unknown), fenced at 105, vm:100 handed to n2 at 105 and
    started at 109; vm:101 handed over then removed before it started."""
    s = HaStats()
    s.nodes_seen({"n1": True, "n2": False}, now=100.0)
    s.nodes_seen({"n1": True, "n2": False}, now=103.0)     # still lost: clock kept
    s.node_fenced("n1", "watchdog", now=105.0)
    s.recovery_assigned("vm:100", "n1", "n2", now=105.0)
    s.recovery_assigned("vm:101", "n1", "n2", now=105.0)
    s.services_seen({"vm:100": ("starting", "n2"), "vm:101": ("starting", "n2")}, now=105.0)
    assert s.recoveries == {}
    s.services_seen({"vm:100": ("started", "n2")}, now=109.0)   # vm:101 removed
    assert s.fences[("n1", "watchdog")].count == 1
    assert s.fences[("n1", "watchdog")].seconds == 5.0
    assert list(s.recoveries) == [("vm:100", "n1", "n2")]
    assert s.recoveries[("vm:100", "n1", "n2")].seconds == 9.0
    assert s.recovering == {}
    # a master that takes over in the middle starts its clock when it sees the loss
    late = HaStats()
    late.node_fenced("n1", "device", now=50.0)
    assert late.fences[("n1", "device")].seconds == 0.0


@pytest.mark.parametrize("value", ["10.0.0.1:9650", "[::1]:9650", "0.0.0.0:1"])
def test_metrics_listen_accepts_address_port(tmp_path, value: str) -> None:
    cfg = NodeConfig(name="n1", state_dir=tmp_path, cluster_address="10.0.0.1",
                     metrics_listen=value)
    assert cfg.metrics_listen == value


@pytest.mark.parametrize("value", ["9650", "host:9650", "10.0.0.1:0", "10.0.0.1:x", "::1:9"])
def test_metrics_listen_refuses_the_rest(tmp_path, value: str) -> None:
    with pytest.raises(ConfigError, match="metrics_listen"):
        NodeConfig(name="n1", state_dir=tmp_path, cluster_address="10.0.0.1",
                   metrics_listen=value)


def test_ha_service_downtime_counters() -> None:
    snap = Snapshot(node="n1", role="node", availability={"vm:100": (8.65, 1)},
                    failed={"ha_availability"})
    got = samples(snap)
    assert got[("binome_ha_service_downtime_seconds_total", (("sid", "vm:100"),))] == 8.65
    assert got[("binome_ha_service_outages_total", (("sid", "vm:100"),))] == 1
    assert got[("binome_metrics_source_up", (("source", "ha_availability"),))] == 0
