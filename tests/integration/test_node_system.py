"""A node's system pages through proxmoxer and the CLI, on the shared cluster: version,
network (the host's real interfaces, with a bridge this test creates), DNS, time,
services, report; bad input is PVE's 400 and changes nothing."""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator

import pytest

from tests.integration.harness import PASSWORD, Cluster

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def px(cluster: Cluster):
    from proxmoxer import ProxmoxAPI

    return ProxmoxAPI(cluster["n1"].address, user="admin@pve", password=PASSWORD,
                      verify_ssl=False, timeout=30)


@pytest.fixture
def bridge() -> Iterator[tuple[str, str, str]]:
    """A real bridge with a veth port and an address in the host's namespace (where the
    loopback cluster's binomed runs); removed even on failure."""
    if os.geteuid() != 0:
        pytest.skip("creating a bridge needs root")
    tag = uuid.uuid4().hex[:6]
    br, port, peer = f"bnt{tag}", f"bnp{tag}", f"bnq{tag}"
    address = f"203.0.113.{int(tag[:2], 16) % 250 + 2}"

    def ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True)
    try:
        ip("link", "add", br, "type", "bridge")
        ip("link", "add", port, "type", "veth", "peer", "name", peer)
        ip("link", "set", port, "master", br)
        ip("addr", "add", f"{address}/32", "dev", br)
        for name in (br, port):
            ip("link", "set", name, "up")
        yield br, port, address
    finally:
        for name in (port, br):
            subprocess.run(["ip", "link", "del", name], capture_output=True)


def test_node_system_pages(px, cluster: Cluster, bridge: tuple[str, str, str]) -> None:
    from proxmoxer import ResourceException

    began = time.monotonic()
    br, port, address = bridge
    n1 = cluster["n1"]
    # version: PVE's three fields (clients gate features on it), via n1 and proxied to n2
    for node in ("n1", "n2"):
        v = px.nodes(node).version.get()
        assert {"version", "release", "repoid"} <= set(v) and v["version"].startswith("8.")

    # network: the bridge, its port, with PVE's field names and types
    ifaces = {e["iface"]: e for e in px.nodes("n1").network.get()}
    assert "lo" not in ifaces
    b = ifaces[br]
    assert (b["type"], b["bridge_ports"], b["method"], b["cidr"], b["address"],
            b["netmask"], b["active"]) == ("bridge", port, "static", f"{address}/32", address,
                                           "255.255.255.255", 1)
    assert b["bridge_stp"] == "off" and isinstance(b["priority"], int)
    assert port not in ifaces            # a bare veth with no address: no host config
    bridges = px.nodes("n1").network.get(type="any_bridge")
    assert br in {e["iface"] for e in bridges} and all(e["type"] == "bridge" for e in bridges)
    assert all(e["type"] == "eth" for e in px.nodes("n1").network.get(type="eth"))
    one = px.nodes("n1").network(br).get()
    assert one["type"] == "bridge" and one["cidr"] == f"{address}/32" and "iface" not in one
    # the same host through n2 (proxied): n2 runs here too
    assert br in {e["iface"] for e in px.nodes("n2").network.get()}
    # bad input: PVE's 400 naming the parameter
    for call, field in ((lambda: px.nodes("n1").network("nosuch0").get(), "iface"),
                        (lambda: px.nodes("n1").network.get(type="wifi"), "type"),
                        (lambda: px.nodes("n1").network("-bad").get(), "iface")):
        with pytest.raises(ResourceException) as bad:
            call()
        assert bad.value.status_code == 400 and field in bad.value.errors, bad.value

    # dns: what the node's resolv.conf says
    dns = px.nodes("n1").dns.get()
    with open("/etc/resolv.conf") as f:
        servers = [line.split()[1] for line in f if line.startswith("nameserver")]
    if servers:
        assert dns["dns1"] == servers[0]
    # time: integers, the node's clock
    t = px.nodes("n1").time.get()
    assert isinstance(t["time"], int) and abs(t["time"] - time.time()) < 30
    assert isinstance(t["localtime"], int) and t["timezone"]

    # services: binomed and its etcd member run, with their pids
    services = {s["service"]: s for s in px.nodes("n1").services.get()}
    assert services["binomed"]["state"] == "running" and \
        services["binomed"]["active-state"] == "active"
    assert services["binomed"]["pid"] == n1.proc.pid
    assert services["etcd"]["state"] == "running" and services["etcd"]["pid"] > 0
    assert px.nodes("n1").services("etcd").state.get()["state"] == "running"
    with pytest.raises(ResourceException) as bad:
        px.nodes("n1").services("sshd").state.get()
    assert bad.value.status_code == 400 and "service" in bad.value.errors

    # report: text sections, the bridge in it, no secret
    report = px.nodes("n1").report.get()
    for section in ("general system info", "cluster", "network", "services"):
        assert f"==== {section} ====" in report
    assert br in report and PASSWORD not in report

    # the CLI: the same methods (`binome node network|services|time`)
    rows = json.loads(n1.cli("node", "network", "n1", "--output-format", "json").stdout)
    assert br in {r["iface"] for r in rows}
    assert "binomed" in n1.cli("node", "services", "n1").stdout
    assert n1.json("node", "time", "n2")["time"] > 0
    print(f"test runtime {time.monotonic() - began:.1f} s")


def test_hosts_certificates_and_subscription(px, cluster: Cluster) -> None:
    """The read-only node pages bpg's and Ansible's modules read: /etc/hosts with its
    digest, the node's certificates, the subscription state (none), the PCI devices."""
    import hashlib

    began = time.monotonic()
    with open("/etc/hosts", "rb") as f:
        raw = f.read()
    assert px.nodes("n2").hosts.get() == {"data": raw.decode(),
                                          "digest": hashlib.sha1(raw).hexdigest()}
    # certificates: the cluster CA and the node's API certificate, as PVE describes them
    nodes = {n["node"]: n for n in px.nodes.get()}
    for name in ("n1", "n2"):
        ca, cert = px.nodes(name).certificates.info.get()
        assert ca["filename"] == "ca.pem" and cert["filename"] == "node.pem"
        assert cert["fingerprint"] == nodes[name]["ssl_fingerprint"]
        assert cert["issuer"] == ca["subject"] and cert["pem"].startswith("-----BEGIN CERT")
        assert name in cert["san"]
        assert isinstance(cert["notafter"], int) and cert["notafter"] > time.time()
        assert (cert["public-key-type"], cert["public-key-bits"]) == ("id-ecPublicKey", 256)
    assert px.nodes("n1").subscription.get() == {"status": "notfound",
                                                 "message": "There is no subscription key"}
    # PCI devices: the host's sysfs, less PVE's default classes (05, 06, 0b)
    from pathlib import Path

    from proxmoxer import ResourceException
    sysfs = Path("/sys/bus/pci/devices")
    expected = sorted(d.name for d in sysfs.iterdir()
                      if not (d / "class").read_text().startswith(("0x05", "0x06", "0x0b")))
    devices = px.nodes("n1").hardware.pci.get()
    assert [d["id"] for d in devices] == expected
    assert all(isinstance(d["iommugroup"], int) and d["vendor"].startswith("0x")
               for d in devices)
    everything = px.nodes("n1").hardware.pci.get(**{"pci-class-blacklist": ""})
    assert len(everything) == len(list(sysfs.iterdir()))
    with pytest.raises(ResourceException) as bad:
        px.nodes("n1").hardware.pci.get(**{"pci-class-blacklist": "zz"})
    assert bad.value.status_code == 400 and "pci-class-blacklist" in bad.value.errors
    # the cluster's join information (Ansible's proxmox_cluster_join_info)
    info = px.cluster.config.join.get()
    listed = {n["name"]: n for n in info["nodelist"]}
    assert info["preferred_node"] == "n1" and {"n1", "n2"} <= set(listed)
    for name in ("n1", "n2"):
        assert listed[name]["pve_fp"] == nodes[name]["ssl_fingerprint"]
        assert listed[name]["pve_addr"] and listed[name]["quorum_votes"] == 1
    assert px.cluster.config.join.get(node="n2")["preferred_node"] == "n2"
    assert len(info["config_digest"]) == 40
    with pytest.raises(ResourceException) as unknown:
        px.cluster.config.join.get(node="nosuch")
    assert unknown.value.status_code == 500 and "unknown node 'nosuch'" in unknown.value.content
    print(f"hosts/certificates/subscription/pci/join: {time.monotonic() - began:.1f} s")
