"""A real Prometheus (Debian's `prometheus`) scrapes a real binome cluster.

One loopback 2-node + witness cluster (real etcd, binomed, QEMU with TCG). Prometheus,
started here with its own config and storage directory, scrapes n1 and n2 on the API
port (HTTPS, the cluster CA, an API token with PVEAuditor on /) and the witness on its
plain-HTTP `metrics_listen` address. PromQL through Prometheus' HTTP API must show:
- the quorum, the etcd leader, the HA state of a service, and the change after an HA
  start through the API (the service `started` on n1, the guest up with its usage
  series, the API latency histogram of that request);
- after n1 dies (binomed, etcd, QEMU SIGKILLed) and is fenced through its fence agent
  (a test program obeying the fence_* protocol), the service started on n2, the fence
  and recovery counters of the node that did them, the votes down to 2.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from binome.cluster.pki import PkiPaths
from binome.config import NodeConfig
from tests.integration.ha.guests import _pid, api, guest_cluster, kill_pid, qemu_pid
from tests.integration.harness import Cluster, wait_for
from tests.integration.replica.test_daemon_volumes import in_sync, kill_engine, vstatus

pytestmark = pytest.mark.integration

PROMETHEUS = "/usr/bin/prometheus"


def free_port(address: str) -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    if not os.access(PROMETHEUS, os.X_OK):
        pytest.skip("prometheus is not installed (make setup installs it)")
    gen = guest_cluster(tmp_path_factory, "metrics")
    c = next(gen)
    try:
        yield c
    finally:
        with contextlib.suppress(StopIteration):
            next(gen)          # guests, daemons, supervisors
        for node in c.nodes.values():
            kill_engine(node)  # volume engines outlive their daemons by design


class Prometheus:
    """A Prometheus process of our own: temp config and TSDB, a free port, stopped by pid."""

    def __init__(self, root: Path, config: dict[str, Any]) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        (root / "prometheus.yml").write_text(json.dumps(config))   # JSON is YAML
        self.port = free_port("127.0.0.1")
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(root / "prometheus.log", "wb")
        self.proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={root / 'prometheus.yml'}",
             f"--storage.tsdb.path={root / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
        wait_for(self._ready, 30, "prometheus ready")

    def _ready(self) -> bool:
        assert self.proc.poll() is None, (self.root / "prometheus.log").read_text()[-2000:]
        with contextlib.suppress(requests.RequestException):
            return requests.get(self.url + "/-/ready", timeout=1).status_code == 200
        return False

    def query(self, promql: str) -> list[dict[str, Any]]:
        r = requests.get(self.url + "/api/v1/query", params={"query": promql}, timeout=5)
        body = r.json()
        assert r.status_code == 200 and body["status"] == "success", (promql, body)
        return list(body["data"]["result"])

    def values(self, promql: str) -> dict[str, float]:
        """instance (or the series' labels) -> value."""
        return {json.dumps(s["metric"], sort_keys=True): float(s["value"][1])
                for s in self.query(promql)}

    def targets(self) -> list[dict[str, Any]]:
        r = requests.get(self.url + "/api/v1/targets", timeout=5)
        return list(r.json()["data"]["activeTargets"])

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.log.close()


def set_metrics_listen(c: Cluster, name: str, listen: str) -> None:
    """Restart a node with `metrics_listen` set in its node.json (as an admin would)."""
    node = c[name]
    node.stop()
    cfg = NodeConfig.load(node.state_dir)
    cfg.metrics_listen = listen
    cfg.save()
    node.start()


def make_token(px: Any, role: str | None) -> str:
    """An API token of admin@pve (privilege-separated), with `role` on / if given."""
    name = f"prom{int(time.time() * 1000) % 100000}"
    secret = px.access.users("admin@pve").token(name).post(privsep=1)["value"]
    if role is not None:
        px.access.acl.put(path="/", roles=role, tokens=f"admin@pve!{name}")
    return f"admin@pve!{name}={secret}"


@pytest.fixture(scope="module")
def scraped(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[tuple[Prometheus, str, str]]:
    """Prometheus scraping n1, n2 (API port, token) and w (plain listener); with the
    auditor token and w's listen address."""
    c = cluster
    n1, n2, w = c["n1"], c["n2"], c["w"]
    auditor = make_token(api(n2), "PVEAuditor")
    listen = f"{w.address}:{free_port(w.address)}"
    set_metrics_listen(c, "w", listen)
    wait_for(w.quorate, 30, "the witness back in quorum")
    tokenid, _, secret = auditor.rpartition("=")
    ca = PkiPaths(n1.state_dir / "pki").ca_cert    # the cluster CA signs every node's cert
    root = tmp_path_factory.mktemp("prometheus")
    prom = Prometheus(root, {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s",
                   "evaluation_interval": "1s"},
        "scrape_configs": [
            {"job_name": "binome",
             "scheme": "https",
             "tls_config": {"ca_file": str(ca)},
             # Prometheus sends "Authorization: PVEAPIToken <id>=<secret>", which the
             # API accepts like PVE's "PVEAPIToken=<id>=<secret>"
             "authorization": {"type": "PVEAPIToken", "credentials": f"{tokenid}={secret}"},
             "static_configs": [{"targets": [f"{n1.address}:8006", f"{n2.address}:8006"]}]},
            {"job_name": "binome-plain",
             "static_configs": [{"targets": [listen]}]},
        ]})
    try:
        yield prom, auditor, listen
    finally:
        prom.stop()
        shutil.rmtree(root, ignore_errors=True)


def create_vm(px: Any, node: str, name: str) -> int:
    vmid = int(px.cluster.nextid.get())
    upid = px.nodes(node).qemu.post(vmid=vmid, name=name, memory=64, cores=1,
                                    kernel="local:iso/vmlinuz", initrd="local:iso/initrd.gz",
                                    vga="serial0")
    wait_for(lambda: px.nodes(node).tasks(upid).status.get()["status"] == "stopped", 60,
             f"creation of VM {vmid}")
    return vmid


def test_metrics_endpoint_needs_sys_audit(cluster: Cluster) -> None:
    n1 = cluster["n1"]
    px = api(cluster["n2"])
    auditor, nobody = make_token(px, "PVEAuditor"), make_token(px, None)
    url = f"https://{n1.address}:8006/metrics"
    plain = requests.get(url, verify=False, timeout=10)
    assert plain.status_code == 401, plain.text
    bad = requests.get(url, verify=False, timeout=10,
                       headers={"Authorization": f"PVEAPIToken={auditor}x"})
    assert bad.status_code == 401, bad.text
    denied = requests.get(url, verify=False, timeout=10,
                          headers={"Authorization": f"PVEAPIToken={nobody}"})
    assert denied.status_code == 403, denied.text
    ok = requests.get(url, verify=False, timeout=10,
                      headers={"Authorization": f"PVEAPIToken={auditor}"})
    assert ok.status_code == 200, ok.text
    assert ok.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert "binome_cluster_quorate 1.0" in ok.text, ok.text[:2000]
    assert secret_free(ok.text, auditor)


def secret_free(text: str, token: str) -> bool:
    return token.rpartition("=")[2] not in text


def test_prometheus_sees_quorum_and_an_ha_start(
        cluster: Cluster, scraped: tuple[Prometheus, str, str]) -> None:
    began = time.monotonic()
    c = cluster
    n1, n2 = c["n1"], c["n2"]
    prom, _auditor, listen = scraped
    px = api(n2)
    wait_for(lambda: len(prom.values("up == 1")) == 3, 30,
             "all three targets up", interval=0.5)
    # quorum and votes, seen by every node
    wait_for(lambda: sorted(prom.values("binome_cluster_quorate").values())
             == [1.0, 1.0, 1.0], 30, "quorate on every node")
    assert set(prom.values("binome_cluster_expected_votes").values()) == {3.0}
    assert set(prom.values("binome_cluster_votes").values()) == {3.0}
    # exactly one etcd leader, and every node names the same one
    assert sum(prom.values("binome_etcd_is_leader").values()) == 1.0
    leaders = {json.loads(k)["leader"] for k in prom.values("binome_etcd_leader_info")}
    assert len(leaders) == 1, leaders
    assert prom.values('binome_etcd_request_duration_seconds_count{request="quorum_read"}'), \
        "no etcd latency samples"
    roles = prom.values('binome_node_info{role="witness"}')
    assert [json.loads(k)["node"] for k in roles] == ["w"]
    assert prom.values(f'binome_node_memory_size_bytes{{instance="{listen}"}} > 0')

    # ---- an HA service, stopped: its state in every node's view
    vmid = create_vm(px, "n1", "metrics")
    sid = f"vm:{vmid}"
    try:
        n1.cli("ha", "add", sid, "--state", "stopped")
        state = f'binome_ha_service_state{{sid="{sid}"}} == 1'
        wait_for(lambda: {json.loads(k)["state"] for k in prom.values(state)} == {"stopped"},
                 30, f"{sid} stopped in Prometheus", interval=0.5)
        # the guest service's status round (every 2 s) lists it, stopped
        wait_for(lambda: prom.values(f'binome_guest_up{{vmid="{vmid}"}} == 0'), 30,
                 "the stopped guest", interval=0.5)

        # ---- the action through the API: an HA start; the series follow
        t0 = time.monotonic()
        px.nodes("n1").qemu(vmid).status.start.post()
        wait_for(lambda: qemu_pid(n1, vmid), 60, f"QEMU of {vmid}")
        started = (f'max by (sid, node) (binome_ha_service_state{{sid="{sid}",'
                   f'state="started"}}) == 1')
        series = wait_for(lambda: prom.query(started), 60, f"{sid} started in Prometheus",
                          interval=0.5)
        assert series[0]["metric"]["node"] == "n1", series
        wait_for(lambda: prom.values(f'binome_guest_up{{vmid="{vmid}"}} == 1'), 30,
                 "the guest up", interval=0.5)
        print(f"HA start -> Prometheus shows started and up: {time.monotonic() - t0:.1f} s")
        wait_for(lambda: prom.values(f'binome_guest_memory_used_bytes{{vmid="{vmid}"}} > 0'),
                 30, "guest memory series", interval=0.5)
        assert prom.values(f'binome_guest_network_receive_bytes_total{{vmid="{vmid}"}}')
        # the start request itself, in n1's or n2's latency histogram (route template)
        latency = ('sum(binome_api_request_duration_seconds_count{method="POST",'
                   'path="/nodes/{node}/qemu/{vmid}/status/start"})')
        wait_for(lambda: prom.values(latency) and min(prom.values(latency).values()) >= 1,
                 30, "the start request in the latency histogram", interval=0.5)
        tasks = prom.values('sum(binome_tasks{type="hastart"})')
        assert tasks and min(tasks.values()) >= 1, tasks
        assert prom.values('binome_metrics_source_up{source="ha"} == 0') == {}
    finally:
        n2.cli("ha", "remove", sid, check=False)
        kill_pid(qemu_pid(n1, vmid))
    print(f"test took {time.monotonic() - began:.1f} s")


def test_prometheus_sees_a_replicated_volume_resync(
        cluster: Cluster, scraped: tuple[Prometheus, str, str]) -> None:
    """A replicated volume: connected, roles and disk states on both nodes; the peer's
    copy invalidated while the sync is paused: 16 MiB out of sync, then resynced."""
    began = time.monotonic()
    n1, n2 = cluster["n1"], cluster["n2"]
    prom = scraped[0]
    i1, i2 = f"{n1.address}:8006", f"{n2.address}:8006"
    n1.cli("volume", "create", "mv1", "--size", "16M")
    try:
        wait_for(lambda: in_sync(vstatus(n2, "mv1")), 30, "mv1 in sync")

        def one_hot(metric: str, state_label: str) -> dict[str, str]:
            rows = prom.query(f'{metric}{{volume="mv1"}} == 1')
            return {r["metric"]["instance"]: r["metric"][state_label] for r in rows}

        wait_for(lambda: one_hot("binome_volume_connection_state", "state")
                 == {i1: "Connected", i2: "Connected"}, 30, "both copies connected",
                 interval=0.5)
        # the creator's promotion may come a scrape after the connection (both copies
        # connect Secondary first): the roles are waited for too, not assumed
        wait_for(lambda: one_hot("binome_volume_role", "role")
                 == {i1: "Primary", i2: "Secondary"}, 30, "n1 Primary in the scrapes",
                 interval=0.5)
        assert one_hot("binome_volume_peer_role", "role") == {i1: "Secondary", i2: "Primary"}
        assert one_hot("binome_volume_disk_state", "state") == {i1: "UpToDate", i2: "UpToDate"}
        assert set(prom.values('binome_volume_size_bytes{volume="mv1"}').values()) == {16 << 20}
        assert set(prom.values('binome_volume_out_of_sync_bytes{volume="mv1"}').values()) \
            == {0.0}

        # n2's copy thrown away while the resync may not run: all of it out of sync
        n1.cli("volume", "pause-sync", "mv1")
        n2.cli("volume", "invalidate", "mv1")
        oos = f'binome_volume_out_of_sync_bytes{{volume="mv1",instance="{i2}"}}'
        wait_for(lambda: list(prom.values(oos).values()) == [float(16 << 20)], 30,
                 "16 MiB out of sync on n2", interval=0.5)
        assert one_hot("binome_volume_disk_state", "state")[i2] == "Inconsistent"
        n1.cli("volume", "resume-sync", "mv1")
        wait_for(lambda: list(prom.values(oos).values()) == [0.0]
                 and one_hot("binome_volume_disk_state", "state")[i2] == "UpToDate", 60,
                 "n2 resynced", interval=0.5)
    finally:
        n1.cli("volume", "destroy", "mv1", "--yes", check=False)
    print(f"test took {time.monotonic() - began:.1f} s")


class Receivers:
    """The three kinds of external metric server, as sockets of our own: InfluxDB over
    UDP, InfluxDB's HTTP API (`/health`, `/api/v2/write`), Graphite over TCP."""

    def __init__(self) -> None:
        import http.server
        import socketserver
        import threading

        self.udp: list[str] = []
        self.http: list[tuple[str, str, str]] = []     # (path, Authorization, body)
        self.tcp: list[str] = []
        self._udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._udp.bind(("127.0.0.1", 0))
        self._udp.settimeout(0.2)
        self.udp_port = self._udp.getsockname()[1]
        receivers = self

        class Influx(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200 if self.path == "/health" else 404)
                self.end_headers()

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receivers.http.append((self.path, self.headers.get("Authorization", ""),
                                       body.decode()))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        class Carbon(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                for line in self.rfile:
                    receivers.tcp.append(line.decode().rstrip("\n"))

        self._http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Influx)
        self._tcp = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Carbon)
        self._tcp.daemon_threads = True
        self.http_port = self._http.server_address[1]
        self.tcp_port = self._tcp.server_address[1]
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._http.serve_forever, daemon=True),
                         threading.Thread(target=self._tcp.serve_forever, daemon=True),
                         threading.Thread(target=self._read_udp, daemon=True)]
        for t in self._threads:
            t.start()

    def _read_udp(self) -> None:
        while not self._stop.is_set():
            try:
                data, _ = self._udp.recvfrom(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            assert len(data) <= 1500 - 50, len(data)     # PVE: mtu - 50 per datagram
            self.udp.extend(data.decode().splitlines())

    def stop(self) -> None:
        self._stop.set()
        self._http.shutdown()
        self._tcp.shutdown()
        self._http.server_close()
        self._tcp.server_close()
        for t in self._threads:
            t.join(5)
        self._udp.close()


def test_external_metric_servers_receive_pve_formats(
        cluster: Cluster, scraped: tuple[Prometheus, str, str]) -> None:
    """/cluster/metrics/server through proxmoxer; every node pushes its data to an
    InfluxDB UDP socket, an InfluxDB HTTP API (with its token) and a Graphite TCP port."""
    began = time.monotonic()
    n1, n2 = cluster["n1"], cluster["n2"]
    px = api(n2)
    token = "tok-" + os.urandom(8).hex()
    rx = Receivers()
    vmid = create_vm(px, "n1", "pushed")
    # in n1's guest status round (what a push sends) before the first push
    wait_for(lambda: scraped[0].values(f'binome_guest_info{{vmid="{vmid}"}}'), 20,
             "the VM in n1's status round", interval=0.3)
    try:
        assert px.cluster.metrics.get() == [{"name": "server"}]
        px.cluster.metrics.server("iudp").post(type="influxdb", server="127.0.0.1",
                                               port=rx.udp_port)
        px.cluster.metrics.server("ihttp").post(
            type="influxdb", server="127.0.0.1", port=rx.http_port, influxdbproto="http",
            token=token, organization="org1", bucket="b1")
        px.cluster.metrics.server("carbon").post(type="graphite", server="127.0.0.1",
                                                 port=rx.tcp_port, proto="tcp",
                                                 path="binome.test")
        listed = px.cluster.metrics.server.get()
        assert [(e["id"], e["type"], e["port"]) for e in listed] == [
            ("carbon", "graphite", rx.tcp_port), ("ihttp", "influxdb", rx.http_port),
            ("iudp", "influxdb", rx.udp_port)]
        shown = px.cluster.metrics.server("ihttp").get()
        assert shown["influxdbproto"] == "http" and "token" not in shown
        assert token not in json.dumps(listed) + json.dumps(shown)

        # bad input: PVE's 400 per parameter, 500 for a duplicate or a failed test
        s = requests.Session()
        s.verify, s.trust_env = False, False     # the environment's CA bundle would win
        s.headers["Authorization"] = f"PVEAPIToken={make_token(px, 'Administrator')}"
        base = f"https://{n2.address}:8006/api2/json/cluster/metrics/server"
        r = s.post(f"{base}/bad", data={"type": "influxdb", "server": "127.0.0.1"})
        assert r.status_code == 400 and "port" in r.json()["errors"], r.text
        r = s.post(f"{base}/bad", data={"type": "graphite", "server": "x", "bogus": "1"})
        assert r.status_code == 400 and "bogus" in r.json()["errors"], r.text
        r = s.post(f"{base}/iudp", data={"type": "influxdb", "server": "127.0.0.1",
                                         "port": "1"})
        assert r.status_code == 500 and "already exists" in r.text, r.text
        closed = free_port("127.0.0.1")
        r = s.post(f"{base}/down", data={"type": "influxdb", "server": "127.0.0.1",
                                         "port": str(closed), "influxdbproto": "http",
                                         "token": token})
        assert r.status_code == 500 and "connection test" in r.text, r.text
        assert token not in r.text
        assert "down" not in [e["id"] for e in px.cluster.metrics.server.get()]

        # every node pushes its own data, in PVE's formats
        wait_for(lambda: {h for h in ("n1", "n2", "w")
                          if any(f"object=nodes,host={h} " in ln for ln in rx.udp)}
                 == {"n1", "n2", "w"}, 20, "node data of n1, n2, w over UDP", interval=0.3)
        # the VM: once the guest service's status round (2 s) lists it, at a next push
        wait_for(lambda: any(ln.startswith(f"system,object=qemu,vmid={vmid},nodename=n1,"
                                           "host=pushed ") and 'name="pushed"' in ln
                             for ln in rx.udp), 25, "the VM over UDP", interval=0.3)
        assert any(ln.startswith("cpustat,object=nodes,host=n1 ") for ln in rx.udp)
        wait_for(lambda: any(f"object=qemu,vmid={vmid}," in body for _, _, body in rx.http),
                 25, "the VM over InfluxDB HTTP", interval=0.3)
        path, auth, _ = rx.http[0]
        assert path == "/api/v2/write?org=org1&bucket=b1" and auth == f"Token {token}"
        wait_for(lambda: any(ln.startswith("binome.test.nodes.n2.cpustat.cpu ")
                             for ln in rx.tcp), 20, "Graphite over TCP", interval=0.3)
        wait_for(lambda: any(ln.startswith(f"binome.test.qemu.{vmid}.maxmem 67108864 ")
                             for ln in rx.tcp), 25, "the VM over Graphite", interval=0.3)

        # disable and remove
        px.cluster.metrics.server("carbon").put(disable=1)
        assert px.cluster.metrics.server("carbon").get()["disable"] == 1
        for sid in ("iudp", "ihttp", "carbon"):
            px.cluster.metrics.server(sid).delete()
        assert px.cluster.metrics.server.get() == []
        for node in (n1, n2):
            assert token not in node.log_path.read_text()
    finally:
        for sid in ("iudp", "ihttp", "carbon"):
            with contextlib.suppress(Exception):
                px.cluster.metrics.server(sid).delete()
        rx.stop()
    print(f"test took {time.monotonic() - began:.1f} s")


FENCE_AGENT = """#!/bin/sh
# A fence agent for the test (fence_* stdin protocol): the node's "power" is a file.
state={state}
action=
while read -r line; do
    case "$line" in action=*) action="${{line#action=}}" ;; esac
done
case "$action" in
    off) echo off > "$state"; exit 0 ;;
    on) echo on > "$state"; exit 0 ;;
    status|monitor) [ "$(cat "$state" 2>/dev/null)" = off ] && exit 2; exit 0 ;;
esac
exit 1
"""


def test_prometheus_sees_a_failover(cluster: Cluster, scraped: tuple[Prometheus, str, str],
                                    tmp_path: Path) -> None:
    """n1 dies with an HA guest; n2 fences it (agent) and recovers the guest: the
    counters of the node that did it, the service on n2, the votes, n1's target down."""
    began = time.monotonic()
    c = cluster
    n1, n2 = c["n1"], c["n2"]
    prom = scraped[0]
    px = api(n2)
    agent = tmp_path / "fence_test"
    agent.write_text(FENCE_AGENT.format(state=tmp_path / "n1.power"))
    agent.chmod(0o755)
    vmid = create_vm(px, "n1", "failover")
    sid = f"vm:{vmid}"
    try:
        n2.cli("fence", "add", "n1", "--type", "agent", "--agent", str(agent),
               "--action", "off")
        n1.cli("ha", "add", sid, "--state", "started")
        on_n1 = (f'max by (node) (binome_ha_service_state{{sid="{sid}",state="started"}})'
                 ' == 1')
        wait_for(lambda: [s["metric"]["node"] for s in prom.query(on_n1)] == ["n1"], 90,
                 f"{sid} started on n1", interval=0.5)

        # ---- n1 "loses power": its binomed (and etcd), its QEMU, its supervisor
        t0 = time.monotonic()
        kill_pid(qemu_pid(n1, vmid))
        kill_pid(_pid(n1.state_dir / "run" / "ha-watchdog.pid"))
        n1.kill()
        wait_for(lambda: [s["metric"]["node"] for s in prom.query(on_n1)] == ["n2"], 90,
                 f"{sid} started on n2", interval=0.5)
        print(f"failover seen in Prometheus after {time.monotonic() - t0:.1f} s")
        n2_target = f"{n2.address}:8006"
        # n1's lease expired before its device was driven: fenced by the watchdog proof
        fences = wait_for(lambda: prom.values('binome_ha_fences_total{node="n1"}'), 10,
                          "the fence counter", interval=0.5)
        assert list(fences.values()) == [1.0], fences
        labels = json.loads(next(iter(fences)))
        assert labels["instance"] == n2_target and labels["proof"] in ("watchdog", "device")
        recoveries = wait_for(lambda: prom.values(f'binome_ha_recoveries_total{{sid="{sid}"}}'),
                              10, "the recovery counter", interval=0.5)
        assert list(recoveries.values()) == [1.0], recoveries
        labels = json.loads(next(iter(recoveries)))
        assert (labels["from_node"], labels["to_node"]) == ("n1", "n2"), labels
        took = prom.values(f'binome_ha_recovery_duration_seconds_sum{{sid="{sid}"}}')
        assert 0 < next(iter(took.values())) < time.monotonic() - t0, took
        assert prom.values(f'up{{instance="{n1.address}:8006"}} == 0')
        wait_for(lambda: set(prom.values("binome_cluster_votes").values()) == {2.0}, 30,
                 "two votes left", interval=0.5)
        assert prom.values('binome_cluster_member_online{member="n1"} == 0')
        assert prom.values('binome_ha_node_state{node="n1",state="fence"} == 1') == {}
    finally:
        n2.cli("ha", "remove", sid, check=False)
        n2.cli("fence", "remove", "n1", check=False)
        kill_pid(qemu_pid(n1, vmid))
        kill_pid(qemu_pid(n2, vmid))
        if not n1.running:
            n1.start()
    print(f"test took {time.monotonic() - began:.1f} s")
