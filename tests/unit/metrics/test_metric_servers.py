"""External metric servers: the records (PVE's status.cfg rules) and the payloads (PVE's
InfluxDB line protocol and Graphite plaintext, the examples of pve-docs)."""

from __future__ import annotations

import pytest

from binome.metrics.push import (
    batches,
    graphite_lines,
    influx_lines,
    node_tags,
    payload_lines,
    qemu_tags,
)
from binome.metrics.servers import (
    MetricServerSettingsError,
    build_record,
    list_entry,
    public_record,
)

pytestmark = pytest.mark.unit


def test_influx_line_of_a_vm_as_pve_writes_it() -> None:
    st = {"vmid": 100, "cpu": 0.02, "cpus": 2, "maxmem": 2147483648, "name": "web",
          "status": "running", "uptime": 360, "lock": "", "ratio": float("nan")}
    lines = influx_lines(st, qemu_tags(100, "pve1", "web"), 1718000000 * 10**9,
                         excluded=("vmid",))
    assert lines == ['system,object=qemu,vmid=100,nodename=pve1,host=web cpu=0.02,cpus=2,'
                     'maxmem=2147483648,name="web",status="running",uptime=360 '
                     '1718000000000000000']


def test_influx_measurements_instances_quoting_and_escapes() -> None:
    data = {"uptime": 5, "cpustat": {"avg1": 0.5, "cpus": 4},
            "nics": {"eth0": {"receive": 10, "transmit": 20}},
            "tags": "123", "note": 'say "hi"'}
    lines = influx_lines(data, node_tags("my node"), 7)
    assert lines == [
        "cpustat,object=nodes,host=my\\ node avg1=0.5,cpus=4 7",
        "nics,object=nodes,host=my\\ node,instance=eth0 receive=10,transmit=20 7",
        'system,object=nodes,host=my\\ node note="say \\"hi\\"",tags="123",uptime=5 7',
    ]


def test_graphite_lines_numbers_only_and_skipped_keys() -> None:
    data = {"cpustat": {"avg1": 0.12}, "name": "web", "pid": 42, "template": 0,
            "disk.read": 3, "ok": True}
    assert graphite_lines(data, "proxmox.nodes.pve1", 1718000000) == [
        "proxmox.nodes.pve1.cpustat.avg1 0.12 1718000000",
        "proxmox.nodes.pve1.disk-read 3 1718000000",
    ]


def test_udp_batches_stay_under_the_limit() -> None:
    lines = [f"m,host=n v={i} 1" for i in range(200)]
    out = batches(lines, 1450)
    assert all(len(b) <= 1450 for b in out) and len(out) > 1
    assert b"".join(out).decode().splitlines() == lines


def test_payload_for_both_types() -> None:
    node = {"uptime": 1, "cpustat": {"cpu": 0.5}}
    guests = {101: {"vmid": 101, "name": "db", "cpu": 0.25, "status": "running"}}
    influx = payload_lines({"type": "influxdb"}, "n1", node, guests, 10.9)
    assert "system,object=nodes,host=n1 uptime=1 10000000000" in influx
    assert 'system,object=qemu,vmid=101,nodename=n1,host=db cpu=0.25,name="db",' \
           'status="running" 10000000000' in influx
    graphite = payload_lines({"type": "graphite", "path": "pve.site"}, "n1", node, guests,
                             10.9)
    assert graphite == ["pve.site.nodes.n1.cpustat.cpu 0.5 10", "pve.site.nodes.n1.uptime 1 10",
                        "pve.site.qemu.101.cpu 0.25 10"]


def test_records_follow_pve_rules() -> None:
    rec = build_record(None, {"type": "influxdb", "server": "10.0.0.9", "port": 8089,
                              "influxdbproto": "http", "token": "s3cret", "disable": False})
    assert rec == {"type": "influxdb", "server": "10.0.0.9", "port": 8089,
                   "influxdbproto": "http", "disable": 0}     # the token is kept apart
    assert list_entry("i1", rec) == {"id": "i1", "disable": 0, "type": "influxdb",
                                     "server": "10.0.0.9", "port": 8089}
    assert public_record("i1", {**rec, "token": "x"}).get("token") is None
    changed = build_record(rec, {"bucket": "b"}, ["influxdbproto"])
    assert changed["bucket"] == "b" and "influxdbproto" not in changed
    graphite = build_record(None, {"type": "graphite", "server": "carbon.example"})
    assert graphite == {"type": "graphite", "server": "carbon.example"}


@pytest.mark.parametrize("old,settings,delete,key", [
    (None, {"server": "a"}, [], "type"),
    (None, {"type": "statsd", "server": "a"}, [], "type"),
    (None, {"type": "influxdb", "server": "a"}, [], "port"),
    (None, {"type": "graphite", "server": "a", "influxdbproto": "udp"}, [], "influxdbproto"),
    (None, {"type": "influxdb", "server": "a", "port": 1, "path": "x"}, [], "path"),
    (None, {"type": "graphite", "server": "-bad-"}, [], "server"),
    (None, {"type": "graphite", "server": "a", "path": "a..b"}, [], "path"),
    ({"type": "graphite", "server": "a"}, {}, ["server"], "delete"),
    ({"type": "graphite", "server": "a"}, {}, ["bogus"], "delete"),
    ({"type": "graphite", "server": "a"}, {"path": "p"}, ["path"], "delete"),
    ({"type": "graphite", "server": "a"}, {"type": "influxdb"}, [], "type"),
])
def test_bad_settings_name_the_option(old, settings, delete, key) -> None:
    with pytest.raises(MetricServerSettingsError) as err:
        build_record(old, settings, delete)
    assert key in err.value.errors, err.value.errors
