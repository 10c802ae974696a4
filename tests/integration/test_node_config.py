"""A node's options, Wake-on-LAN and disk list through proxmoxer on the shared cluster:
`/nodes/{node}/config` round trip with PVE's digest and 400s, the magic packet received
by a UDP listener in a network namespace behind a veth (bound interface and broadcast
address), `/nodes/{node}/disks/list` showing a real loop device and its GPT
partitions, and `startall-onboot-delay` waited after a host boot (a one-node cluster of
its own). Every link, namespace, process and loop device is removed by its own name,
even on failure."""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import subprocess
import sys
import time
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import PASSWORD, Cluster, stop_process, wait_for

pytestmark = pytest.mark.integration

EFI = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
LINUX = "0fc63daf-8483-4772-8e79-3d69d8477de4"
MODIFIED = "detected modified configuration - file changed by other user? Try again."


@pytest.fixture(scope="module")
def px(cluster: Cluster):
    from proxmoxer import ProxmoxAPI

    return ProxmoxAPI(cluster["n1"].address, user="admin@pve", password=PASSWORD,
                      verify_ssl=False, timeout=30)


def _root() -> None:
    if os.geteuid() != 0:
        pytest.skip("network namespaces and loop devices need root")


def test_config_round_trip_digest_and_bad_input(px, cluster: Cluster) -> None:
    from proxmoxer import ResourceException

    began = time.monotonic()
    node = px.nodes("n2")       # through n1, proxied to n2 as PVE does
    try:
        first = node.config.get()
        assert first == {}                  # nothing set yet: PVE answers no digest
        node.config.put(digest="0" * 40, description="x")   # none to compare (PVE)
        first = node.config.get()
        assert first == {"description": "x\n",
                         "digest": hashlib.sha1(b"#x\n").hexdigest()}
        px_put = {"description": "Rack 3: 50%\nsecond line",
                  "startall-onboot-delay": 15, "ballooning-target": 70,
                  "wakeonlan": "0a:00:27:00:00:02,broadcast-address=192.0.2.255",
                  "location": "name=Lab,latitude=48.85,longitude=2.35",
                  "acmedomain0": "n2.example.org,plugin=standalone"}
        node.config.put(digest=first["digest"], **px_put)
        conf = node.config.get()
        # PVE's file text and its SHA-1: description as encoded comment lines, keys sorted
        text = ("#Rack 3%3A 50%25\n#second line\nacmedomain0: n2.example.org,plugin="
                "standalone\nballooning-target: 70\nlocation: name=Lab,latitude=48.85,"
                "longitude=2.35\nstartall-onboot-delay: 15\nwakeonlan: 0a:00:27:00:00:02,"
                "broadcast-address=192.0.2.255\n")
        assert conf == {**px_put, "description": "Rack 3: 50%\nsecond line\n",
                        "digest": hashlib.sha1(text.encode()).hexdigest()}
        assert node.config.get(property="startall-onboot-delay") == \
            {"startall-onboot-delay": 15}
        assert node.config.get(property="acme") == {}
        # the other node's config is its own
        assert "description" not in px.nodes("n1").config.get()

        # a stale digest: PVE's text, nothing changed
        with pytest.raises(ResourceException) as stale:
            node.config.put(digest=first["digest"], description="lost")
        assert stale.value.status_code == 500 and MODIFIED in stale.value.content
        # bad values: PVE's 400, one error per parameter, nothing changed
        with pytest.raises(ResourceException) as bad:
            node.config.put(**{"startall-onboot-delay": 301, "wakeonlan": "01:00:00:00:00:01",
                               "acmedomain1": "n2.example.org", "nosuch": 1})
        assert bad.value.status_code == 400
        assert bad.value.errors == {
            "startall-onboot-delay": "value must have a maximum value of 300",
            "wakeonlan": "invalid format - mac: value does not look like a valid unicast "
                         "MAC address",
            "nosuch": "property is not defined in schema and the schema does not allow "
                      "additional properties"}
        # a duplicate ACME domain: PVE's verify_conf text
        with pytest.raises(ResourceException) as dup:
            node.config.put(acmedomain1="N2.example.org")
        assert dup.value.status_code == 500 and \
            "duplicate domain 'n2.example.org' in ACME config properties 'acmedomain1' " \
            "and 'acmedomain0'" in dup.value.content
        assert node.config.get() == conf

        # delete (bpg sends a comma list) with the current digest
        node.config.put(delete="acmedomain0,location", digest=conf["digest"])
        after = node.config.get()
        assert "acmedomain0" not in after and "location" not in after
        assert after["startall-onboot-delay"] == 15

        # the CLI: `binome node config get|set`
        n1 = cluster["n1"]
        n1.cli("node", "config", "set", "n2", "--ballooning-target", "55")
        assert n1.json("node", "config", "get", "n2")["ballooning-target"] == 55
    finally:
        node.config.put(delete="description,startall-onboot-delay,ballooning-target,"
                               "wakeonlan,location,acmedomain0")
    assert node.config.get() == {}      # PVE's answer for an empty config
    print(f"config test runtime {time.monotonic() - began:.1f} s")


LISTENER = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 9))
print("ready", flush=True)
while True:
    data, peer = s.recvfrom(2048)
    print(data.hex(), peer[0], flush=True)
"""


@pytest.fixture
def lan() -> Iterator[tuple[str, str, subprocess.Popen]]:
    """A veth from this namespace (where the cluster's binomed run) into a namespace of
    its own, 10.x.y.1/24 here and .2 there, a UDP listener on port 9 there."""
    _root()
    tag = uuid.uuid4().hex[:6]
    host, peer, ns = f"bnw{tag}", f"bnx{tag}", f"bnwns{tag}"
    net = f"10.{200 + int(tag[:2], 16) % 50}.{int(tag[2:4], 16)}"
    listener: subprocess.Popen | None = None

    def ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True)
    try:
        ip("netns", "add", ns)
        ip("link", "add", host, "type", "veth", "peer", "name", peer)
        ip("link", "set", peer, "netns", ns)
        ip("addr", "add", f"{net}.1/24", "dev", host)
        ip("link", "set", host, "up")
        ip("-n", ns, "addr", "add", f"{net}.2/24", "dev", peer)
        ip("-n", ns, "link", "set", peer, "up")
        ip("-n", ns, "link", "set", "lo", "up")
        listener = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c",
                                     LISTENER], stdout=subprocess.PIPE, text=True)
        assert listener.stdout is not None and listener.stdout.readline().strip() == "ready"
        yield host, net, listener
    finally:
        if listener is not None:
            stop_process(listener)
        subprocess.run(["ip", "link", "del", host], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def _packet(listener: subprocess.Popen) -> tuple[bytes, str]:
    assert listener.stdout is not None
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(listener.stdout, selectors.EVENT_READ)
    assert sel.select(timeout=10), "no packet within 10 s"
    data, source = listener.stdout.readline().split()
    return bytes.fromhex(data), source


def test_wakeonlan_packet_received(px, cluster: Cluster,
                                   lan: tuple[str, str, subprocess.Popen]) -> None:
    from proxmoxer import ResourceException

    began = time.monotonic()
    iface, net, listener = lan
    mac = "0a:00:27:00:00:02"
    magic = b"\xff" * 6 + bytes.fromhex(mac.replace(":", "")) * 16
    try:
        # PVE: the target's MAC from its config; the sender's interface and broadcast
        # address from the config of the node handling the request (n1, not proxied)
        px.nodes("n2").config.put(wakeonlan=mac)
        px.nodes("n1").config.put(wakeonlan=f"02:00:00:00:00:01,bind-interface={iface}")
        # 255.255.255.255 leaves through the bound interface only (SO_BINDTODEVICE)
        assert px.nodes("n2").wakeonlan.post() == mac
        data, source = _packet(listener)
        assert data == magic and source == f"{net}.1"
        # the broadcast address of that LAN, no bound interface; Ansible's extra parameter
        px.nodes("n1").config.put(wakeonlan=f"02:00:00:00:00:01,broadcast-address={net}.255")
        assert px.nodes("n2").wakeonlan.post(node_name="n2") == mac
        assert _packet(listener) == (magic, f"{net}.1")
        # PVE's refusals
        for target, text in (("n1", "'n1' is local node, cannot wake my self!"),
                             ("nosuch", "no such cluster node 'nosuch'")):
            with pytest.raises(ResourceException) as refused:
                px.nodes(target).wakeonlan.post()
            assert refused.value.status_code == 500 and text in refused.value.content
        px.nodes("n2").config.put(delete="wakeonlan")
        with pytest.raises(ResourceException) as none:
            px.nodes("n2").wakeonlan.post()
        assert "No wake on LAN MAC address defined for 'n2'!" in none.value.content
        # the CLI, from n1 to n2
        px.nodes("n2").config.put(wakeonlan=mac)
        assert mac in cluster["n1"].cli("node", "wakeonlan", "n2").stdout
        assert _packet(listener)[0] == magic
    finally:
        for name in ("n1", "n2"):
            px.nodes(name).config.put(delete="wakeonlan")
    print(f"wakeonlan test runtime {time.monotonic() - began:.1f} s")


def _write_gpt(path: Path, size: int) -> None:
    """A GPT (protective MBR, both headers) with an EFI and a Linux partition."""
    nlba = size // 512
    parts = [(2048, 4095, EFI, "efi"), (4096, nlba - 34, LINUX, "data")]
    entries = bytearray(128 * 128)
    for i, (first, last, kind, name) in enumerate(parts):
        entries[i * 128:(i + 1) * 128] = (uuid.UUID(kind).bytes_le + uuid.uuid4().bytes_le
                                          + struct.pack("<QQQ", first, last, 0)
                                          + name.encode("utf-16-le").ljust(72, b"\0"))
    disk_guid = uuid.uuid4().bytes_le

    def header(current: int, backup: int, table: int) -> bytes:
        h = struct.pack("<8sIIIIQQQQ16sQIII", b"EFI PART", 0x10000, 92, 0, 0, current,
                        backup, 34, nlba - 34, disk_guid, table, 128, 128,
                        zlib.crc32(entries))
        return (h[:16] + struct.pack("<I", zlib.crc32(h)) + h[20:]).ljust(512, b"\0")
    mbr = bytearray(512)
    mbr[446:462] = struct.pack("<B3sB3sII", 0, b"\x00\x02\x00", 0xEE, b"\xff\xff\xff", 1,
                               nlba - 1)
    mbr[510:512] = b"\x55\xaa"
    with open(path, "r+b") as f:
        f.write(mbr)
        f.write(header(1, nlba - 1, 2))
        f.write(entries)
        f.seek((nlba - 33) * 512)
        f.write(entries)
        f.write(header(nlba - 1, 1, nlba - 33))


@pytest.fixture
def loop_disk(tmp_path: Path) -> Iterator[str]:
    """A 64 MiB file with a GPT attached as a loop device with its partitions."""
    _root()
    if shutil.which("losetup") is None:
        pytest.skip("losetup (util-linux) is not installed")
    image = tmp_path / "disk.img"
    size = 64 << 20
    with open(image, "wb") as f:
        f.truncate(size)
    _write_gpt(image, size)
    dev = subprocess.run(["losetup", "-f", "--show", "-P", str(image)], check=True,
                         capture_output=True, text=True).stdout.strip()
    try:
        name = Path(dev).name
        if not Path(f"/sys/block/{name}/{name}p1").exists():
            # a kernel without the GPT parser: the partitions added by hand (BLKPG)
            subprocess.run(["partx", "-a", dev], check=True, capture_output=True)
        yield dev
    finally:
        subprocess.run(["losetup", "-d", dev], capture_output=True)


def test_disks_list_shows_the_loop_device(px, cluster: Cluster, loop_disk: str) -> None:
    from proxmoxer import ResourceException

    began = time.monotonic()
    dev = loop_disk
    disks = {d["devpath"]: d for d in px.nodes("n2").disks.list.get(skipsmart=1)}
    d = disks[dev]
    assert (d["size"], d["gpt"], d["used"], d["health"], d["osdid"], d["type"]) == \
        (64 << 20, 1, "EFI", "UNKNOWN", -1, "unknown")
    assert f"{dev}p1" not in disks
    parts = {d["devpath"]: d for d in px.nodes("n1").disks.list.get(**{
        "include-partitions": 1})}
    assert parts[dev]["used"] == "partitions"
    assert (parts[f"{dev}p1"]["parent"], parts[f"{dev}p1"]["size"],
            parts[f"{dev}p1"]["used"]) == (dev, 1 << 20, "EFI")
    assert parts[f"{dev}p2"]["type"] == "partition" and "used" not in parts[f"{dev}p2"]
    unused = {d["devpath"] for d in px.nodes("n1").disks.list.get(
        type="unused", **{"include-partitions": 1})}
    assert f"{dev}p2" in unused and dev not in unused and f"{dev}p1" not in unused
    with pytest.raises(ResourceException) as bad:
        px.nodes("n1").disks.list.get(type="lvm")
    assert bad.value.status_code == 400 and "type" in bad.value.errors
    rows = cluster["n1"].json("node", "disks", "list", "n1")
    assert dev in {r["devpath"] for r in rows}
    print(f"disks test runtime {time.monotonic() - began:.1f} s")


def test_onboot_delay_waited_after_a_host_boot(lone_nodes: Cluster) -> None:
    """`startall-onboot-delay` on a one-node cluster: after a "host boot" (the node's
    per-boot marker removed), binomed logs PVE's line and waits before its on-boot pass
    (which writes the marker when it begins starting guests)."""
    began = time.monotonic()
    lone_nodes.create()
    n1 = lone_nodes["n1"]
    n1.cli("node", "config", "set", "n1", "--startall-onboot-delay", "2")
    marker = n1.state_dir / "run" / "qemu" / "onboot.bootid"
    wait_for(marker.exists, 30, "the first on-boot pass")
    n1.stop()
    marker.unlink()
    n1.start()
    line = "Delaying on-boot 'startall' command for 2 second(s)."
    wait_for(lambda: line in n1.log_path.read_text(), 30, "the delay's log line",
             interval=0.05)
    seen = time.monotonic()
    wait_for(marker.exists, 30, "the on-boot pass after the delay", interval=0.05)
    assert time.monotonic() - seen >= 1.5
    print(f"onboot delay test runtime {time.monotonic() - began:.1f} s")
