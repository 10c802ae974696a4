"""The lab topology: namespaces, bridges, veths, spawned process trees, link cuts,
partitions, and cleanup (after down, after an exception, after a crashed owner).

Lab tests need root. They use 198.19.x.0/24 (still RFC 2544) rather than the default
198.18.x.0/24 so they run even while a `make demo` lab holds the defaults.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from binome.lab import processes, topology
from binome.lab.topology import (
    DEFAULT_NETWORKS,
    IFNAME_MAX,
    Firewall,
    Lab,
    LabError,
    NetworkSpec,
    bridge_name,
    cleanup_stale,
    veth_name,
)

TEST_NETWORKS = [
    NetworkSpec("cluster", "198.19.1.0/24"),
    NetworkSpec("replication", "198.19.2.0/24"),
    NetworkSpec("vmlan", "198.19.3.0/24"),
]
OTHER_NETWORKS = [NetworkSpec("cluster", "198.19.11.0/24")]

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="lab tests need root (network namespaces, bridges, iptables)"
)
needs_ping = pytest.mark.skipif(
    shutil.which("ping") is None, reason="ping not installed (apt-get install iputils-ping)"
)


# --- helpers ---------------------------------------------------------------------------


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def ping_from(lab: Lab, src: str, dst: str, network: str) -> bool:
    ip = lab.host(dst).addresses[network]
    argv = ["ping", "-c1", "-W1", ip]
    return lab.host(src).run(argv, check=False, capture_output=True).returncode == 0


def ping_root(ip: str) -> bool:
    return subprocess.run(["ping", "-c1", "-W1", ip], capture_output=True).returncode == 0


def tcp_open_from(lab: Lab, src: str, ip: str, port: int) -> bool:
    script = f"import socket; socket.create_connection(({ip!r}, {port}), timeout=1).close()"
    argv = [sys.executable, "-c", script]
    return lab.host(src).run(argv, check=False, capture_output=True).returncode == 0


UDP_RECEIVER = textwrap.dedent("""
    import socket, sys
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((sys.argv[1], 9999))
    s.settimeout(1.5)
    print("ready", flush=True)
    try:
        s.recv(64)
    except TimeoutError:
        sys.exit(1)
""")
UDP_SENDER = textwrap.dedent("""
    import socket, sys, time
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for _ in range(10):
        s.sendto(b"x", (sys.argv[1], 9999))
        time.sleep(0.02)
""")


def udp_delivered(lab: Lab, src: str, dst: str, network: str) -> bool:
    """Whether a datagram from src reaches dst on network (one direction only)."""
    ip = lab.host(dst).addresses[network]
    receiver = subprocess.Popen(
        lab.host(dst).exec_argv([sys.executable, "-c", UDP_RECEIVER, ip]),
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert receiver.stdout is not None
        assert receiver.stdout.readline().strip() == "ready"
        lab.host(src).run([sys.executable, "-c", UDP_SENDER, ip])
        return receiver.wait(timeout=10) == 0
    finally:
        receiver.kill()
        receiver.wait()


def our_names(lab: Lab) -> list[str]:
    return [
        *(h.netns for h in lab.hosts.values()),
        *lab.bridges.values(),
        *(v for h in lab.hosts.values() for v in h.veths.values()),
    ]


def process_gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"  # a zombie no longer runs


def assert_lab_gone(lab: Lab, pids: list[int]) -> None:
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    ns_names = {line.split()[0] for line in netns.splitlines() if line.strip()}
    link_names = {line.split(":")[1].strip().split("@")[0] for line in links.splitlines()}
    for name in our_names(lab):
        assert name not in ns_names and name not in link_names, f"{name} left behind"
    assert not [n for n in ns_names | link_names if n.startswith("bn") and lab.lab_id in n]
    assert [pid for pid in pids if not process_gone(pid)] == []
    assert not lab.state_path.exists()


def netns_pids(lab: Lab) -> list[int]:
    pids = []
    for host in lab.hosts.values():
        out = subprocess.run(["ip", "netns", "pids", host.netns], capture_output=True, text=True)
        pids += [int(p) for p in out.stdout.split()]
    return pids


@pytest.fixture
def lab() -> Iterator[Lab]:
    lab = Lab(["n1", "n2", "w"], TEST_NETWORKS)
    lab.up()
    try:
        yield lab
    finally:
        lab.down()


# --- planning (pure) -------------------------------------------------------------------


@pytest.mark.unit
def test_default_networks_are_the_rfc2544_lab_convention() -> None:
    assert [(n.name, n.subnet) for n in DEFAULT_NETWORKS] == [
        ("cluster", "198.18.1.0/24"),
        ("replication", "198.18.2.0/24"),
        ("vmlan", "198.18.3.0/24"),
    ]
    lab = Lab(["n1", "n2", "w"])
    assert lab.host("n1").addresses == {
        "cluster": "198.18.1.1", "replication": "198.18.2.1", "vmlan": "198.18.3.1",
    }
    assert lab.host("w").addresses["cluster"] == "198.18.1.3"
    assert lab.root_addresses == {
        "cluster": "198.18.1.254", "replication": "198.18.2.254", "vmlan": "198.18.3.254",
    }
    assert lab.host("n2").interfaces == {
        "cluster": "cluster", "replication": "replication", "vmlan": "vmlan",
    }
    assert lab.host("n2").netns == f"bn-{lab.lab_id}-n2"


@pytest.mark.unit
def test_names_fit_ifnamsiz_and_never_collide_across_ids() -> None:
    longest = "z" * topology.LAB_ID_MAX
    assert len(veth_name(longest, 35, 35)) <= IFNAME_MAX
    assert len(bridge_name(longest, 35)) <= IFNAME_MAX
    with pytest.raises(ValueError):
        veth_name("a", 36, 1)
    with pytest.raises(ValueError):
        Lab(["n1"], lab_id="toolongid")
    with pytest.raises(ValueError):
        Lab(["n1"], lab_id="Bad-Id")
    names = set()
    for lab_id in ("a", "a1", "a11", "1", "11"):
        for h in range(1, 4):
            for n in range(1, 4):
                names.add(veth_name(lab_id, h, n))
        names |= {bridge_name(lab_id, n) for n in range(1, 4)}
    assert len(names) == 5 * (9 + 3)
    first, second = Lab(["n1"]).lab_id, Lab(["n1"]).lab_id
    assert first != second and first[:6] == second[:6] == f"{os.getpid():06x}"


@pytest.mark.unit
def test_attach_explicit_addresses_and_long_network_names() -> None:
    nets = [*TEST_NETWORKS, NetworkSpec("replication-backup", "198.19.4.0/24")]
    lab = Lab(
        ["n1", "n2", "w"], nets,
        attach={"w": ["cluster"]},
        addresses={"n2": {"cluster": "198.19.1.42"}},
    )
    assert lab.host("w").addresses == {"cluster": "198.19.1.3"}
    assert lab.host("n2").addresses["cluster"] == "198.19.1.42"
    assert lab.host("n2").addresses["replication"] == "198.19.2.2"
    assert lab.host("n1").interfaces["replication-backup"] == "replication-bac"
    with pytest.raises(ValueError, match="taken"):
        Lab(["n1"], [NetworkSpec("replication-backup-a", "198.19.5.0/24"),
                     NetworkSpec("replication-backup-b", "198.19.6.0/24")])
    with pytest.raises(ValueError, match="overlaps"):
        Lab(["n1"], [NetworkSpec("a", "198.19.0.0/16"), NetworkSpec("b", "198.19.7.0/24")])
    with pytest.raises(ValueError, match="unusable"):
        Lab(["n1", "n2"], TEST_NETWORKS, addresses={"n2": {"cluster": "198.19.1.1"}})
    with pytest.raises(ValueError, match="unusable"):
        Lab(["n1"], TEST_NETWORKS, addresses={"n1": {"cluster": "198.19.1.254"}})
    with pytest.raises(ValueError, match="unknown network"):
        Lab(["n1"], TEST_NETWORKS, attach={"n1": ["storage"]})


# --- real namespaces -------------------------------------------------------------------


@pytest.mark.lab
@needs_root
@needs_ping
def test_hosts_reach_each_other_and_the_root_namespace_reaches_hosts(lab: Lab) -> None:
    assert ping_from(lab, "n1", "n2", "cluster")
    assert ping_from(lab, "n1", "w", "cluster")
    for host in lab.hosts.values():
        for ip in host.addresses.values():
            assert ping_root(ip), f"root namespace cannot reach {host.name} at {ip}"
    links = lab.host("n1").run(["ip", "-br", "addr"], capture_output=True, text=True).stdout
    names = {line.split()[0].split("@")[0]: line.split() for line in links.splitlines()}
    assert set(names) == {"lo", "cluster", "replication", "vmlan"}
    assert "198.19.1.1/24" in names["cluster"]
    assert "UNKNOWN" in names["lo"] or "UP" in names["lo"]


@pytest.mark.lab
@needs_root
def test_spawned_server_in_one_host_is_reachable_from_another(lab: Lab, tmp_path: Path) -> None:
    ip = lab.host("n2").addresses["cluster"]
    log = tmp_path / "http.log"
    server = lab.host("n2").spawn(
        [sys.executable, "-m", "http.server", "--bind", ip, "8000"], log_path=log
    )
    wait_for(lambda: tcp_open_from(lab, "n1", ip, 8000), f"http.server on {ip}:8000")
    assert server.alive()
    n2_pids = subprocess.run(["ip", "netns", "pids", lab.host("n2").netns],
                             capture_output=True, text=True).stdout.split()
    assert str(server.pid) in n2_pids
    # Not reachable on the other networks' addresses: it is bound to the cluster one.
    assert not tcp_open_from(lab, "n1", lab.host("n2").addresses["replication"], 8000)


@pytest.mark.lab
@needs_root
@needs_ping
def test_link_down_cuts_exactly_that_link(lab: Lab) -> None:
    lab.link_down("n1", "cluster")
    assert not ping_from(lab, "n1", "n2", "cluster")
    assert ping_from(lab, "n1", "n2", "replication")
    assert ping_from(lab, "n2", "w", "cluster")
    carrier = lab.host("n1").run(["cat", "/sys/class/net/cluster/carrier"],
                                 capture_output=True, text=True, check=False)
    assert carrier.stdout.strip() != "1"  # the node sees a real loss of carrier
    lab.link_up("n1", "cluster")
    wait_for(lambda: ping_from(lab, "n1", "n2", "cluster"), "cluster link back")


@pytest.mark.lab
@needs_root
@needs_ping
@pytest.mark.parametrize("firewall", ["iptables", "nft"])
def test_partition_two_way_and_heal(firewall: Firewall) -> None:
    if shutil.which(firewall) is None:
        pytest.skip(f"{firewall} not installed")
    with Lab(["n1", "n2", "w"], TEST_NETWORKS, firewall=firewall) as lab:
        assert lab.firewall == firewall
        lab.partition("n1", "n2", "cluster")
        assert not ping_from(lab, "n1", "n2", "cluster")
        assert not ping_from(lab, "n2", "n1", "cluster")
        assert ping_from(lab, "n1", "n2", "replication")
        assert ping_from(lab, "n1", "w", "cluster")
        lab.partition("n1", "n2", "cluster")  # idempotent
        lab.heal("n1", "n2")
        assert lab.partitions == set()
        wait_for(lambda: ping_from(lab, "n1", "n2", "cluster"), "healed cluster path")

        lab.partition("n1", "n2")  # every network they share
        for net in lab.networks:
            assert not ping_from(lab, "n1", "n2", net)
        assert ping_from(lab, "w", "n1", "cluster") and ping_from(lab, "w", "n2", "cluster")
        lab.heal("n1", "n2")
        for net in lab.networks:
            wait_for(lambda net=net: ping_from(lab, "n1", "n2", net), f"healed {net}")


@pytest.mark.lab
@needs_root
@pytest.mark.parametrize("firewall", ["iptables", "nft"])
def test_partition_one_way_drops_only_that_direction(firewall: Firewall) -> None:
    if shutil.which(firewall) is None:
        pytest.skip(f"{firewall} not installed")
    with Lab(["n1", "n2", "w"], TEST_NETWORKS, firewall=firewall) as lab:
        assert udp_delivered(lab, "n1", "n2", "cluster")
        lab.partition("n1", "n2", "cluster", one_way=True)
        assert lab.partitions == {("n1", "n2", "cluster")}
        assert not udp_delivered(lab, "n1", "n2", "cluster")
        assert udp_delivered(lab, "n2", "n1", "cluster")
        assert udp_delivered(lab, "n1", "n2", "replication")
        lab.heal("n1", "n2", "cluster")
        assert udp_delivered(lab, "n1", "n2", "cluster")


@pytest.mark.lab
@needs_root
def test_terminate_escalates_and_kill_takes_the_whole_tree(lab: Lab) -> None:
    stubborn = lab.host("n1").spawn(["sh", "-c", "trap '' TERM; sleep 300 & sleep 300 & wait"])
    wait_for(lambda: len(processes.group_members(stubborn.pgid)) == 3, "sh and two sleeps")
    members = processes.group_members(stubborn.pgid)
    t0 = time.monotonic()
    stubborn.terminate(timeout=0.5)
    assert time.monotonic() - t0 < 5
    assert not stubborn.alive()
    wait_for(lambda: all(process_gone(p) for p in members), "the group to be reaped")

    node = lab.host("n2").spawn(["sh", "-c", "sleep 300 & sleep 300 & wait"])
    wait_for(lambda: len(processes.group_members(node.pgid)) == 3, "sh and two sleeps")
    members = processes.group_members(node.pgid)
    node.kill()  # power off
    assert not node.alive()
    assert node.returncode == -9
    wait_for(lambda: all(process_gone(p) for p in members), "the group to be reaped")


@pytest.mark.lab
@needs_root
def test_down_removes_everything_and_is_idempotent(tmp_path: Path) -> None:
    lab = Lab(["n1", "n2", "w"], TEST_NETWORKS)
    try:
        lab.up()
        assert lab.state_path.exists()
        ip = lab.host("n2").addresses["cluster"]
        lab.host("n2").spawn([sys.executable, "-m", "http.server", "--bind", ip, "8000"],
                             log_path=tmp_path / "n2.log")
        lab.host("n1").spawn(["sh", "-c", "sleep 300 & wait"])
        # A daemon that left its process group: only the namespace sweep can find it.
        lab.host("w").spawn(["sh", "-c", "setsid sleep 300 & wait"])
        wait_for(lambda: len(netns_pids(lab)) >= 5, "all processes started")
        pids = netns_pids(lab)
        t0 = time.monotonic()
        lab.down()
        elapsed = time.monotonic() - t0
        assert_lab_gone(lab, pids)
        assert elapsed < 10
        lab.down()  # idempotent
        with pytest.raises(LabError, match="not up"):
            lab.host("n1").spawn(["sleep", "300"])
        assert lab.host("n1").processes == []
    finally:
        lab.down()


@pytest.mark.lab
@needs_root
def test_exception_inside_with_still_cleans_up() -> None:
    lab = Lab(["n1", "n2", "w"], TEST_NETWORKS)
    pids: list[int] = []
    try:
        with pytest.raises(RuntimeError, match="boom"), lab:
            pids.append(lab.host("n1").spawn(["sleep", "300"]).pid)
            raise RuntimeError("boom")
        assert_lab_gone(lab, pids)
    finally:
        lab.down()


@pytest.mark.lab
@needs_root
def test_failed_up_rolls_back_and_leaves_foreign_things_alone() -> None:
    lab = Lab(["n1", "n2", "w"], TEST_NETWORKS)
    foreign = lab.host("w").netns  # someone else's namespace with the name we want
    subprocess.run(["ip", "netns", "add", foreign], check=True)
    try:
        with pytest.raises(LabError, match="ip netns add"):
            lab.up()
        assert not lab.is_up and not lab.state_path.exists()
        netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert foreign in netns
        assert lab.host("n1").netns not in netns and lab.host("n2").netns not in netns
        links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
        assert lab.lab_id not in links
    finally:
        lab.down()
        subprocess.run(["ip", "netns", "del", foreign], check=False)


@pytest.mark.lab
@needs_root
@needs_ping
def test_parallel_labs_need_distinct_ids_and_subnets(lab: Lab) -> None:
    with pytest.raises(LabError, match="in use"):
        Lab(["n1"], OTHER_NETWORKS, lab_id=lab.lab_id).up()
    with pytest.raises(LabError, match="overlaps"):
        Lab(["n1"], TEST_NETWORKS).up()
    with Lab(["n1", "n2"], OTHER_NETWORKS) as other:
        assert ping_from(other, "n1", "n2", "cluster")
        assert ping_root(other.host("n2").addresses["cluster"])
        assert ping_from(lab, "n1", "n2", "cluster")
    assert lab.state_path.exists()
    assert ping_from(lab, "n1", "n2", "cluster")


@pytest.mark.lab
@needs_root
def test_cleanup_stale_removes_an_abandoned_lab() -> None:
    lab = Lab(["n1", "n2", "w"], TEST_NETWORKS)
    try:
        lab.up()
        pids = [lab.host("n1").spawn(["sh", "-c", "sleep 300 & wait"]).pid]
        wait_for(lambda: len(netns_pids(lab)) >= 2, "sh and sleep")
        pids = netns_pids(lab)
        # Without an id, only labs whose owner is gone are touched: we are alive.
        assert lab.lab_id not in cleanup_stale()
        assert lab.state_path.exists()
        # The owner "crashed" (never calls down); cleanup by id.
        assert cleanup_stale(lab.lab_id) == [lab.lab_id]
        assert_lab_gone(lab, pids)
    finally:
        lab.down()


@pytest.mark.lab
@needs_root
def test_cleanup_stale_after_the_owner_process_died(tmp_path: Path) -> None:
    lab_id = f"c{os.getpid() % 100000:x}"
    script = textwrap.dedent(f"""
        import os, sys
        from pathlib import Path
        from binome.lab.topology import Lab, NetworkSpec
        lab = Lab(["n1", "n2"], [NetworkSpec("cluster", "198.19.21.0/24")], lab_id={lab_id!r})
        lab.up()
        proc = lab.host("n1").spawn(["sleep", "300"], log_path=Path(sys.argv[1]))
        print(proc.pid, flush=True)
        os._exit(1)  # crash: no down()
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    # The orphan logs to a file: inheriting our pipe would keep it open for 300 s.
    argv = [sys.executable, "-c", script, str(tmp_path / "orphan.log")]
    out = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 1, out.stderr
    orphan = int(out.stdout.split()[0])
    ghost = Lab(["n1", "n2"], [NetworkSpec("cluster", "198.19.21.0/24")], lab_id=lab_id)
    try:
        assert ghost.state_path.exists()
        assert not process_gone(orphan)
        assert lab_id in cleanup_stale()
        assert_lab_gone(ghost, [orphan])
    finally:
        cleanup_stale(lab_id)
