"""Live migration of a QEMU guest on a replicated disk, on a 2-node + witness lab cluster.

The guest (the tiny image, TCG) serves HTTP on the VM LAN and has a replicated
disk (`repl:0.125`, 128 MiB, protocol C, dual-primary allowed). While a prober
in the root namespace polls its HTTP server every 50 ms, `binome vm migrate 300
n2 --online` moves it: the target starts a paused incoming QEMU (its copy of the
volume made Primary too), the state goes over TCP on the cluster network, the
config moves in one transaction, the source QEMU quits, the target resumes, the
source's copy is demoted. The test checks HTTP kept answering (and reports the
longest gap and QEMU's downtime), the data written before is there, exactly one
QEMU runs, the volume roles, the way back, refusals that change nothing, a
migration whose target QEMU is killed mid-way (the source runs on), and an HA
guest migrated through the HA manager.
"""

from __future__ import annotations

import http.client
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from binome.lab.cluster import BIN, LabCluster, LabClusterError
from tests.integration.harness import wait_for

pytestmark = pytest.mark.lab

VMID = 300
VOL = f"vm-{VMID}-disk-0"


def http_get(host: str, path: str = "/", timeout: float = 2.0) -> str | None:
    conn = http.client.HTTPConnection(host, 80, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read().decode(errors="replace")
        return body if resp.status == 200 else None
    except OSError:
        return None
    finally:
        conn.close()


class Prober:
    """Polls the guest's HTTP server from the root namespace; the longest gap between
    two successful answers while it ran is the guest-visible interruption."""

    def __init__(self, host: str, interval: float = 0.05) -> None:
        self.host, self.interval = host, interval
        self.ok: list[float] = []
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            if http_get(self.host, "/", timeout=0.25) is not None:
                self.ok.append(time.monotonic())
            else:
                self.failures += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)

    def longest_gap(self) -> float:
        return max((b - a for a, b in zip(self.ok, self.ok[1:], strict=False)), default=0.0)


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Iterator[LabCluster]:
    if os.geteuid() != 0:
        pytest.skip("lab tests need root (network namespaces)")
    c = LabCluster(base="198.21", lab_id=f"mg{os.getpid() % 100000:x}"[:8],
                   workdir=tmp_path_factory.mktemp("miglab"), name="migtest")
    c.start()       # stop() kills guests by pid, then every process in the namespaces
    try:
        c.image = c.install_guest_image()
        yield c
    finally:
        c.stop()


def vol(lab: LabCluster, node: str, name: str = VOL) -> dict:
    return next(v for v in lab.json(node, "volume", "list") if v["name"] == name)


def in_sync(st: dict) -> bool:
    return st["cstate"] == "Connected" and st["disk"] == st["peer_disk"] == "UpToDate"


def guest_write(lab: LabCluster, offset: int, text: str, timeout: float = 30) -> None:
    got = http_get(lab.guest_ip(0), f"/cgi-bin/disk?write={offset}&data={text}", timeout)
    assert got == f"ok {len(text)}\n", got


def guest_read(lab: LabCluster, offset: int) -> str | None:
    return http_get(lab.guest_ip(0), f"/cgi-bin/disk?read={offset}", 10)


def qemus(lab: LabCluster, vmid: int = VMID) -> list[tuple[int, str]]:
    """Every QEMU of this lab running vmid: (pid, node whose run dir it uses)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if not argv or b"qemu-system" not in argv[0]:
            continue
        for i, arg in enumerate(argv[:-1]):
            if arg == b"-pidfile" and argv[i + 1].endswith(f"/{vmid}.pid".encode()):
                path = argv[i + 1].decode()
                for node in lab.nodes:
                    if path.startswith(str(lab.state_dir(node)) + "/"):
                        out.append((int(entry.name), node))
    return sorted(out)


def _owner(lab: LabCluster, vmid: int = VMID) -> str:
    rows = lab.json("n1", "api", "get", "/cluster/resources")
    return next(r["node"] for r in rows if r.get("vmid") == vmid)


def migrate(lab: LabCluster, src: str, dst: str, *extra: str,
            check: bool = True) -> subprocess.CompletedProcess:
    return lab.cli(src, "vm", "migrate", str(VMID), dst, "--node", src, "--online", "1",
                   *extra, check=check)


def live_migrate_and_check(lab: LabCluster, src: str, dst: str) -> dict:
    before = guest_read(lab, 4096)
    assert before == "before-migrat", before
    with Prober(lab.guest_ip(0)) as probe:
        wait_for(lambda: len(probe.ok) >= 3, 30, "prober sees the guest")
        started = time.monotonic()
        r = migrate(lab, src, dst)
        took = time.monotonic() - started
        # the guest must answer from its new home before the prober stops
        n = len(probe.ok)
        wait_for(lambda: len(probe.ok) > n + 3, 30, "prober after the migration")
    log = r.stdout
    print(log)
    assert f"starting migration of VM {VMID} to node '{dst}'" in log
    assert "migration status: completed" in log
    assert re.search(r"migration finished successfully \(duration \d\d:\d\d:\d\d\)", log)
    m = re.search(r"migration downtime: (\d+) ms \(QEMU stop-and-copy\) \+ (\d+) ms", log)
    assert m, log
    # a clean migration warns of nothing: a resume that failed and was retried still
    # ends "successfully", a second later
    assert "WARN" not in log, log
    gap = probe.longest_gap()
    print(f"{src}->{dst}: task {took:.1f}s, QEMU downtime {m.group(1)} ms, switch-over "
          f"{m.group(2)} ms, longest HTTP gap {gap * 1000:.0f} ms "
          f"({probe.failures} failed probes of {len(probe.ok) + probe.failures})")
    assert gap < 10.0, f"HTTP interrupted for {gap:.1f}s"
    # exactly one QEMU, on the target; config and owner on the target
    assert [n for _p, n in qemus(lab)] == [dst]
    assert _owner(lab) == dst
    cfg = lab.json(dst, "vm", "config", str(VMID), "--node", dst)
    assert "lock" not in cfg
    assert lab.cli(src, "vm", "config", str(VMID), "--node", src, check=False).returncode != 0
    assert lab.json(dst, "vm", "status", str(VMID), "--node", dst)["status"] == "running"
    # data written before is there; volume roles follow the guest
    assert guest_read(lab, 4096) == before
    wait_for(lambda: vol(lab, src)["role"] == "Secondary", 20, f"{src} demoted")
    assert vol(lab, dst)["role"] == "Primary"
    assert in_sync(vol(lab, dst))
    return {"gap": gap, "downtime_ms": int(m.group(1)), "switch_ms": int(m.group(2))}


def test_live_migration_keeps_the_guest_serving(lab: LabCluster) -> None:
    lab.cli("n1", "storage", "add", "repl", "--type", "replicated", "--content", "images")
    lab.cli("n1", "vm", "create", str(VMID), "--name", "mg", "--memory", "128",
            "--net0", "virtio,bridge=vmbr0", "--virtio0", "repl:0.125",
            "--kernel", lab.image["kernel"], "--initrd", lab.image["initrd"],
            "--append", lab.guest_cmdline(0, "mg"), "--vga", "serial0")
    lab.cli("n1", "vm", "start", str(VMID))
    wait_for(lambda: http_get(lab.guest_ip(0), "/cgi-bin/disk"), 120, "guest disk CGI")
    guest_write(lab, 4096, "before-migrat")
    wait_for(lambda: in_sync(vol(lab, "n1")), 120, "initial sync done")
    check = lab.json("n1", "api", "get", f"/nodes/n1/qemu/{VMID}/migrate")
    assert check["running"] == 1 and check["allowed_nodes"] == ["n2"], check
    assert check["local_disks"] == [] and check["not_allowed_nodes"] == {}
    live_migrate_and_check(lab, "n1", "n2")
    guest_write(lab, 8192, "after-migrate")      # the new Primary mirrors to n1
    wait_for(lambda: in_sync(vol(lab, "n1")), 30, "in sync after the migration")


def test_bad_migrations_are_refused_and_change_nothing(lab: LabCluster) -> None:
    def refused(*args: str) -> str:
        r = lab.cli("n2", *args, check=False)
        assert r.returncode != 0, r.stdout
        return r.stdout + r.stderr

    out = refused("vm", "migrate", str(VMID), "n9", "--node", "n2", "--online", "1")
    assert "no such cluster node 'n9'" in out and "target" in out
    out = refused("vm", "migrate", str(VMID), "n2", "--node", "n2", "--online", "1")
    assert "target is local node." in out
    out = refused("vm", "migrate", str(VMID), "w", "--node", "n2", "--online", "1")
    assert "witness" in out
    out = refused("vm", "migrate", str(VMID), "n1", "--node", "n2")
    assert "can't migrate running VM without --online" in out
    # a VM with a local (dir) disk, running
    lab.cli("n2", "vm", "create", "301", "--name", "local", "--memory", "32",
            "--virtio0", "local:1", "--vga", "none")
    lab.cli("n2", "vm", "start", "301")
    try:
        out = refused("vm", "migrate", "301", "n1", "--node", "n2", "--online", "1")
        assert ("can't live migrate attached local disks without with-local-disks "
                "option: virtio0 (local:301/") in out
        # with it, a target storage missing is refused (the disks would be mirrored there)
        out = refused("vm", "migrate", "301", "n1", "--node", "n2", "--online", "1",
                      "--with-local-disks", "1", "--targetstorage", "nosuch")
        assert "storage 'nosuch' does not exist" in out
        check = lab.json("n2", "api", "get", "/nodes/n2/qemu/301/migrate")
        assert check["local_disks"][0]["drivename"] == "virtio0"
    finally:
        lab.cli("n2", "vm", "stop", "301")
        lab.cli("n2", "vm", "destroy", "301")
    # nothing changed
    assert _owner(lab) == "n2" and [n for _p, n in qemus(lab)] == ["n2"]
    assert "lock" not in lab.json("n2", "vm", "config", str(VMID), "--node", "n2")
    assert vol(lab, "n2")["role"] == "Primary" and vol(lab, "n1")["role"] == "Secondary"


def test_target_with_an_outdated_copy_is_refused(lab: LabCluster) -> None:
    """n1's replication link is cut: n2 (Primary, quorate) records n1's copy Outdated at
    the next write; a migration to n1 is then refused, and allowed again after the resync."""
    lab.lab.link_down("n1", "replication")
    try:
        guest_write(lab, 16384, "while-n1-cut", timeout=40)
        wait_for(lambda: vol(lab, "n2")["peer_disk"] == "Outdated", 30, "n1 outdated")
        check = lab.json("n2", "api", "get", f"/nodes/n2/qemu/{VMID}/migrate")
        assert check["allowed_nodes"] == [], check
        assert check["not_allowed_nodes"]["n1"]["unavailable_storages"] == ["repl"]
        r = lab.cli("n2", "vm", "migrate", str(VMID), "n1", "--node", "n2", "--online", "1",
                    check=False)
        assert r.returncode != 0
        assert f"can't migrate VM {VMID} to n1: the copy of volume {VOL} on n1 is Outdated" \
            in r.stdout + r.stderr, r.stdout + r.stderr
        assert _owner(lab) == "n2" and [n for _p, n in qemus(lab)] == ["n2"]
    finally:
        lab.lab.link_up("n1", "replication")
    wait_for(lambda: in_sync(vol(lab, "n1")), 60, "n1 resynced")
    wait_for(lambda: lab.json("n2", "api", "get", f"/nodes/n2/qemu/{VMID}/migrate")
             ["allowed_nodes"] == ["n1"], 30, "n1 allowed again")


def test_migrating_back(lab: LabCluster) -> None:
    live_migrate_and_check(lab, "n2", "n1")
    assert guest_read(lab, 8192) == "after-migrate"


def test_target_qemu_killed_mid_way_leaves_the_source_running(lab: LabCluster) -> None:
    # a slow migration (bandwidth limit), so that the target can be killed while it runs
    env = dict(os.environ, BINOME_STATE_DIR=str(lab.state_dir("n1")))
    env.pop("BINOME_SOCKET", None)
    proc = subprocess.Popen([str(BIN / "binome"), "vm", "migrate", str(VMID), "n2",
                             "--node", "n1", "--online", "1", "--bwlimit", "512"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")),
                              daemon=True)
    reader.start()
    try:
        wait_for(lambda: any("migration status: active" in ln for ln in lines), 60,
                 "migration active")
        target = [p for p, n in qemus(lab) if n == "n2"]
        assert len(target) == 1, qemus(lab)
        os.kill(target[0], signal.SIGKILL)
        assert proc.wait(120) != 0
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(5)
    out = "".join(lines)
    print(out)
    assert "migration aborted" in out
    assert [n for _p, n in qemus(lab)] == ["n1"]
    assert _owner(lab) == "n1"
    st = lab.json("n1", "vm", "status", str(VMID), "--node", "n1")
    assert st["status"] == "running" and st.get("qmpstatus") == "running", st
    assert "lock" not in lab.json("n1", "vm", "config", str(VMID), "--node", "n1")
    wait_for(lambda: http_get(lab.guest_ip(0)), 30, "guest still serving on n1")
    wait_for(lambda: vol(lab, "n2")["role"] == "Secondary", 20, "n2's copy demoted again")
    assert vol(lab, "n1")["role"] == "Primary"
    guest_write(lab, 12288, "after-failure")
    assert guest_read(lab, 12288) == "after-failure"


def test_ha_guest_migrates_through_the_ha_manager(lab: LabCluster) -> None:
    lab.cli("n1", "ha", "add", f"vm:{VMID}")
    try:
        wait_for(lambda: _ha_state(lab) == ("started", "n1"), 60, "HA service started")
        r = lab.cli("n1", "vm", "migrate", str(VMID), "n2", "--node", "n1", "--online", "1")
        print(r.stdout)
        assert "Requesting HA migration for VM 300 to node n2" in r.stdout
        assert _ha_state(lab) == ("started", "n2")
        assert [n for _p, n in qemus(lab)] == ["n2"] and _owner(lab) == "n2"
        wait_for(lambda: http_get(lab.guest_ip(0)), 30, "guest serving on n2")
        wait_for(lambda: vol(lab, "n1")["role"] == "Secondary", 20, "n1 demoted")
    finally:
        try:
            lab.cli("n1", "ha", "remove", f"vm:{VMID}")
        except LabClusterError as exc:
            print(f"ha remove failed: {exc}")


def _ha_state(lab: LabCluster) -> tuple[str | None, str | None]:
    ms = lab.json("n1", "api", "get", "/cluster/ha/status/manager_status")
    sd = ((ms or {}).get("manager_status") or ms or {}).get("service_status", {}).get(
        f"vm:{VMID}") or {}
    return sd.get("state"), sd.get("node")


def test_offline_migration_of_a_stopped_vm(lab: LabCluster) -> None:
    src = _owner(lab)
    dst = "n1" if src == "n2" else "n2"
    lab.cli(src, "vm", "stop", str(VMID), "--node", src)
    r = lab.cli(src, "vm", "migrate", str(VMID), dst, "--node", src)
    print(r.stdout)
    assert f"VM {VMID}: config moved to node '{dst}'" in r.stdout
    assert "migration finished successfully" in r.stdout
    assert _owner(lab) == dst and qemus(lab) == []
    assert "lock" not in lab.json(dst, "vm", "config", str(VMID), "--node", dst)
    wait_for(lambda: vol(lab, dst)["role"] == "Primary", 20, f"{dst} Primary")
    assert vol(lab, src)["role"] == "Secondary"
    lab.cli(dst, "vm", "start", str(VMID), "--node", dst)
    wait_for(lambda: http_get(lab.guest_ip(0), "/cgi-bin/disk"), 120, "guest on the target")
    assert guest_read(lab, 12288) == "after-failure"     # written on the other node
    lab.cli(dst, "vm", "stop", str(VMID), "--node", dst)
    lab.cli(dst, "vm", "destroy", str(VMID), "--node", dst)
    wait_for(lambda: lab.json("n1", "volume", "list") == lab.json("n2", "volume", "list") == [],
             30, "both copies removed")
