"""A QEMU guest whose disk is a replicated volume, on a 2-node + witness lab cluster.

The guest (the tiny image, TCG) is created with `--virtio0 repl:1` on n1: the
`replicated` storage allocates `vm-300-disk-0` on n1 (Primary) and n2, QEMU opens
n1's NBD export, and what the guest writes through its `/cgi-bin/disk` CGI is in
both nodes' backing files. Then the replication link of n2 is cut for real (its
veth goes down): n1 still holds quorum over the cluster network, records n2's copy
Outdated in etcd and the guest's writes go on; when the link comes back n2 resyncs
only what changed and the mark is cleared. The disaster drill backs the running guest
up to a backup server outside the cluster and brings it back on a fresh node.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from binome.lab.cluster import BIN, LabCluster
from binome.lab.nbd_client import NbdClient
from tests.integration.harness import wait_for

pytestmark = pytest.mark.lab

VMID = 300
VOL = f"vm-{VMID}-disk-0"
MiB = 1 << 20




def http_get(url: str, timeout: float = 2.0) -> str | None:
    r = subprocess.run(["curl", "-s", "-f", "--max-time", str(timeout), url],
                       capture_output=True, text=True)
    return r.stdout if r.returncode == 0 else None


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Iterator[LabCluster]:
    if os.geteuid() != 0:
        pytest.skip("lab tests need root (network namespaces)")
    c = LabCluster(base="198.19", lab_id=f"rv{os.getpid() % 100000:x}"[:8],
                   workdir=tmp_path_factory.mktemp("replab"), name="repltest")
    c.start()       # stop() kills guests by pid, and every process in the namespaces
    try:            # (the volume engines outlive binomed by design)
        c.image = c.install_guest_image()
        yield c
    finally:
        c.stop()


def volume_file(lab: LabCluster, node: str, name: str) -> Path:
    return lab.state_dir(node) / "replica" / "volumes" / name / "data.img"


def backing(lab: LabCluster, node: str) -> Path:
    return volume_file(lab, node, VOL)


def on_disk(lab: LabCluster, node: str, offset: int, text: str) -> bool:
    with open(backing(lab, node), "rb") as f:
        f.seek(offset)
        return f.read(len(text)) == text.encode()


def vol(lab: LabCluster, node: str, name: str = VOL) -> dict:
    return next(v for v in lab.json(node, "volume", "list") if v["name"] == name)


def in_sync(st: dict) -> bool:
    return st["cstate"] == "Connected" and st["disk"] == st["peer_disk"] == "UpToDate"


def guest_write(lab: LabCluster, offset: int, text: str, timeout: float = 30) -> None:
    url = f"http://{lab.guest_ip(0)}/cgi-bin/disk?write={offset}&data={text}"
    assert http_get(url, timeout=timeout) == f"ok {len(text)}\n"


def test_guest_disk_on_a_replicated_volume(lab: LabCluster) -> None:
    lab.cli("n1", "storage", "add", "repl", "--type", "replicated", "--content", "images")
    started = time.monotonic()
    lab.cli("n1", "vm", "create", str(VMID), "--name", "rg", "--memory", "128",
            "--net0", "virtio,bridge=vmbr0", "--virtio0", "repl:1",
            "--kernel", lab.image["kernel"], "--initrd", lab.image["initrd"],
            "--append", lab.guest_cmdline(0, "rg"), "--vga", "serial0")
    print(f"VM with a 1 GiB replicated disk created in {time.monotonic() - started:.1f}s")
    assert lab.json("n1", "vm", "config", str(VMID))["virtio0"] == f"repl:{VOL},size=1G"
    lab.cli("n1", "vm", "start", str(VMID))
    assert wait_for(lambda: http_get(f"http://{lab.guest_ip(0)}/cgi-bin/disk"), 90,
                    "guest disk CGI") == "present 1073741824\n"
    guest_write(lab, 4096, "hello-replica")
    assert on_disk(lab, "n1", 4096, "hello-replica")
    assert on_disk(lab, "n2", 4096, "hello-replica")     # protocol C: already on n2
    st = wait_for(lambda: in_sync(s := vol(lab, "n1")) and s, 120, "initial sync done")
    assert st["role"] == "Primary" and st["open_count"] == 1 and st["storage"] == "repl"
    text = lab.cli("n2", "volume", "status", VOL).stdout
    assert "cs:Connected ro:Secondary/Primary ds:UpToDate/UpToDate C r-----" in text


def test_replication_link_cut_with_quorum_outdates_the_peer(lab: LabCluster) -> None:
    lab.lab.link_down("n2", "replication")
    try:
        started = time.monotonic()
        guest_write(lab, 8192, "written-while-cut", timeout=40)
        print(f"guest write during the cut took {time.monotonic() - started:.1f}s "
              f"(peer loss detection + fencing)")
        st = vol(lab, "n1")
        assert st["peer_disk"] == "Outdated" and not st["suspended"]
        show = lab.json("n1", "volume", "show", VOL)
        assert show["outdated"]["n2"]["by"] == "n1"
        assert on_disk(lab, "n1", 8192, "written-while-cut")
        assert not on_disk(lab, "n2", 8192, "written-while-cut")
        r = lab.cli("n2", "volume", "primary", VOL, check=False)
        assert r.returncode != 0
        assert "Multiple primaries" in r.stdout or "recorded Outdated" in r.stdout
    finally:
        lab.lab.link_up("n2", "replication")
    # n1's Outdated mark on n2 goes once n2 resynced; n2's own status alone may still be
    # its view from before the cut (a short cut: n2 has not timed its peer out yet)
    wait_for(lambda: lab.json("n1", "volume", "show", VOL)["outdated"] == {}, 80,
             "Outdated mark cleared")
    wait_for(lambda: in_sync(vol(lab, "n2")), 60, "n2 resynced")
    assert on_disk(lab, "n2", 8192, "written-while-cut")
    log = (lab.state_dir("n2") / "replica" / "engine.log").read_text()
    resyncs = [int(k) for k in re.findall(r"Began resync as SyncTarget \(will sync (\d+) KB",
                                          log)]
    assert resyncs[0] == 1024 * 1024                   # the initial full sync
    assert 4 <= resyncs[-1] <= 64, resyncs             # after the cut: only what changed
    guest_write(lab, 12288, "after-heal")
    assert on_disk(lab, "n2", 12288, "after-heal")


def test_oracle_across_a_real_link_cut_resyncs_only_the_dirty_blocks(lab: LabCluster) -> None:
    """Random writes through NBD with a checksum oracle; the replication link is cut in the
    middle of the stream (writes stall until n1 fences n2, then go on); after the link is
    back both replicas equal the oracle and the resync moved about the dirty bytes only."""
    name, size = "ov", 64 * MiB
    lab.cli("n1", "volume", "create", name, "--size", "64M")
    st = wait_for(lambda: in_sync(s := vol(lab, "n1", name)) and s, 60, "initial sync")
    model = bytearray(size)
    rng = random.Random(4)
    cut_at = {}

    async def writer() -> None:
        c = await NbdClient.connect(st["socket"], name)
        try:
            for batch in range(60):
                if batch == 20:
                    await asyncio.to_thread(lab.lab.link_down, "n2", "replication")
                    cut_at["t"] = time.monotonic()
                if batch == 21:
                    cut_at["stall"] = time.monotonic() - cut_at["t"]
                writes: list[tuple[int, bytes]] = []
                for _ in range(16):
                    length = rng.choice([4096, 16384, 65536])
                    off = rng.randrange(0, size - length) // 4096 * 4096
                    if any(off < o + len(d) and o < off + length for o, d in writes):
                        continue
                    data = rng.randbytes(length)
                    model[off:off + length] = data
                    writes.append((off, data))
                await asyncio.gather(*(c.write(o, d) for o, d in writes))
            await c.flush()
        finally:
            await c.close()

    try:
        asyncio.run(asyncio.wait_for(writer(), 120))
        a = vol(lab, "n1", name)
        assert a["peer_disk"] == "Outdated" and a["out_of_sync_kib"] > 0
        dirty = a["out_of_sync_kib"] * 1024
        received_before = vol(lab, "n2", name)["counters"]["nr"] * 1024
    finally:
        lab.lab.link_up("n2", "replication")
    print(f"writes stalled {cut_at['stall']:.1f}s at the cut (loss detection + fencing)")
    b = wait_for(lambda: in_sync(s := vol(lab, "n2", name)) and s, 60, "n2 resynced")
    wait_for(lambda: in_sync(vol(lab, "n1", name)), 20, "n1 in sync")
    data_a = volume_file(lab, "n1", name).read_bytes()
    assert hashlib.sha256(data_a).digest() == hashlib.sha256(model).digest()
    assert data_a == volume_file(lab, "n2", name).read_bytes()
    moved = b["counters"]["nr"] * 1024 - received_before
    print(f"resync moved {moved // 1024} KiB for {dirty // 1024} KiB dirty")
    assert dirty <= moved + 1024 <= 1.2 * dirty + 64 * 1024 + 1024
    lab.cli("n1", "volume", "destroy", name, "--yes")


TOKEN = "backup@pbs!drill"
DR_MARK = "dr-drill-marker"


def _sha256_head(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        left = size
        while left:
            block = f.read(min(left, 8 * MiB))
            assert block, f"{path} is shorter than {size} bytes"
            digest.update(block)
            left -= len(block)
    return digest.hexdigest()


@pytest.fixture
def backup_server(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A real binome-backup-server in the root namespace, on every lab bridge's root
    address (the lab hosts reach it over their cluster network): a third machine that
    outlives the cluster."""
    data_dir = tmp_path / "backup-server"
    server = str(BIN / "binome-backup-server")

    def run(*args: str) -> str:
        return subprocess.run([server, "--data-dir", str(data_dir), *args], check=True,
                              capture_output=True, text=True).stdout

    fingerprint = run("init").split("fingerprint: ")[1].strip()
    run("datastore-create", "main")
    secret = re.search(r"^secret: (\S+)$", run("token-create", TOKEN), re.M)
    assert secret is not None
    secret_file = tmp_path / "token-secret"
    secret_file.write_text(secret[1] + "\n")
    secret_file.chmod(0o600)
    with socket.socket() as probe:
        probe.bind(("0.0.0.0", 0))
        port = probe.getsockname()[1]
    log = tmp_path / "backup-server.log"
    with open(log, "ab") as out:
        process = subprocess.Popen([server, "--data-dir", str(data_dir), "serve", "--listen",
                                    "0.0.0.0", "--port", str(port)],
                                   stdout=out, stderr=out, stdin=subprocess.DEVNULL)
    try:
        wait_for(lambda: "listening on" in log.read_text(), 20, "backup server listening")
        yield {"port": str(port), "fingerprint": fingerprint,
               "secret_file": str(secret_file)}
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def _add_backup_storage(cluster: LabCluster, node: str, server: dict[str, str]) -> None:
    cluster.cli(node, "storage", "add", "offsite", "--type", "binome-backup",
                "--server", cluster.lab.root_addresses["cluster"], "--port", server["port"],
                "--datastore", "main", "--username", TOKEN,
                "--password-file", server["secret_file"],
                "--fingerprint", server["fingerprint"])


def test_disaster_drill_the_replicated_guest_comes_back_on_a_fresh_node(
        lab: LabCluster, backup_server: dict[str, str], tmp_path_factory) -> None:
    """The seeds' disaster: the running guest on the replicated volume is backed up to
    the backup server; then a fresh node with nothing of this cluster (its own lab:
    namespaces, bridges, subnets, state; no route to the old cluster) adds the backup
    server as a storage, lists the backup, restores the guest to its dir storage and
    boots it: the restored disk hashes like the replicated disk at the backup's instant,
    and the booted guest reads the restored data."""
    from tests.integration.backup.test_vzdump import Console, wait_shell

    size = 1 << 30
    guest_write(lab, 20480, DR_MARK)
    source = _sha256_head(backing(lab, "n1"), size)
    _add_backup_storage(lab, "n1", backup_server)
    started = time.monotonic()
    out = lab.cli("n1", "vzdump", str(VMID), "--storage", "offsite").stdout
    print(f"backup of the replicated guest: {time.monotonic() - started:.1f}s")
    assert "INFO: status = running" in out and "INFO: Backup job finished successfully" in out
    # the guest wrote nothing meanwhile: the disk at the backup's instant is `source`
    assert _sha256_head(backing(lab, "n1"), size) == source

    fresh = LabCluster(base="198.24", nodes=("f1",), witness=None,
                       lab_id=f"dr{os.getpid() % 100000:x}"[:8],
                       workdir=tmp_path_factory.mktemp("drill"), name="drill")
    started = time.monotonic()
    fresh.start()
    try:
        fresh.install_guest_image()
        print(f"fresh node up in {time.monotonic() - started:.1f}s")
        _add_backup_storage(fresh, "f1", backup_server)
        listed = [b for b in fresh.json("f1", "storage", "content", "offsite")
                  if b.get("vmid") == VMID]
        assert len(listed) == 1, listed
        started = time.monotonic()
        fresh.cli("f1", "qmrestore", listed[0]["volid"], str(VMID), "--storage", "local")
        print(f"restore: {time.monotonic() - started:.1f}s")
        config = fresh.json("f1", "vm", "config", str(VMID))
        volname = config["virtio0"].split(",")[0].split(":", 1)[1]
        assert config["virtio0"].startswith(f"local:{VMID}/vm-{VMID}-disk-0.raw"), config
        restored = fresh.state_dir("f1") / "storage" / "local" / "images" / volname
        assert _sha256_head(restored, size) == source
        fresh.cli("f1", "vm", "start", str(VMID))
        console = Console(fresh.state_dir("f1") / "run" / "qemu" / f"{VMID}.serial")
        wait_shell(console)
        # the booted guest reads the restored block and writes a copy of it
        console("dd if=/dev/vda of=/dev/vda bs=4096 skip=5 seek=7 count=1 conv=notrunc "
                "2>/dev/null; sync")
        fresh.cli("f1", "vm", "stop", str(VMID))
        with open(restored, "rb") as f:
            f.seek(7 * 4096)
            assert f.read(len(DR_MARK)) == DR_MARK.encode()
    finally:
        fresh.stop()


def test_destroying_the_vm_removes_both_copies(lab: LabCluster) -> None:
    lab.cli("n1", "vm", "stop", str(VMID))
    lab.cli("n1", "vm", "destroy", str(VMID))
    wait_for(lambda: not backing(lab, "n2").exists(), 30, "n2's copy removed")
    assert not backing(lab, "n1").exists()
    assert lab.json("n1", "volume", "list") == [] and lab.json("n2", "volume", "list") == []
