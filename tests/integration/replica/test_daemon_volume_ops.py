"""Dual-primary, online verify, resize and a local disk I/O error's notification through
the real path (CLI -> API -> binomed -> engine, etcd, the kernel's EIO, aiosmtpd): one
2-node + witness cluster for the module."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from collections.abc import Iterator

import pytest

from binome.lab.nbd_client import NbdClient
from binome.storage.replica.node.volumes import VolumeService
from tests.integration.access.client import Api
from tests.integration.harness import Cluster, wait_for
from tests.integration.notify.mailbox import Inbox
from tests.integration.replica.test_daemon_volumes import (
    MiB,
    backing,
    in_sync,
    store_get,
    volume_cluster,
    vstatus,
)
from tests.integration.replica.test_io_errors import (  # noqa: F401 (fixture)
    FailingDisk,
    failing_disk,
)


@pytest.fixture(scope="module")
def vc(tmp_path_factory) -> Iterator[Cluster]:
    yield from volume_cluster(tmp_path_factory, "volops")


def test_two_primaries_and_online_verify_through_the_api(
        vc: Cluster, mail: tuple[Inbox, Api]) -> None:
    n1, n2 = vc["n1"], vc["n2"]
    inbox, _ = mail
    r = n1.cli("volume", "create", "d1", "--size", "8M", "--protocol", "A",
               "--allow-two-primaries", "1", check=False)
    assert r.returncode != 0 and "allow-two-primaries requires protocol C" in r.stdout + r.stderr
    n1.cli("volume", "create", "d1", "--size", "8M", "--allow-two-primaries", "1")
    wait_for(lambda: in_sync(vstatus(n2, "d1")), 30, "n2 in sync")
    out = n2.cli("volume", "primary", "d1").stdout
    assert "ro:Primary/Primary" in out
    assert vstatus(n1, "d1")["peer_role"] == "Primary"
    n2.cli("volume", "secondary", "d1")
    # online verify, started through the API, finds a block damaged behind n2's engine
    fd = os.open(backing(n2, "d1"), os.O_WRONLY)
    try:
        os.pwrite(fd, b"rot" * 100, 5 * MiB + 7)
        os.fsync(fd)
    finally:
        os.close(fd)
    out = n1.cli("volume", "verify", "d1").stdout
    assert "d1: cs:" in out
    wait_for(lambda: vstatus(n1, "d1").get("cstate") == "Connected", 30, "verify done")
    show = json.loads(n1.cli("volume", "show", "d1", "--output-format", "json").stdout)
    assert show["verify"]["finished"] and show["verify"]["found_blocks"] == 1
    assert show["verify"]["ranges"] == [[5 * MiB, 4096]]
    assert show["verify"]["verified_kib"] == 8 * 1024 and show["out_of_sync_kib"] == 4
    # cluster-visible: the published state and the cluster log
    wait_for(lambda: ((store_get(vc, "/binome/volumes/d1/state/n1") or {}).get("verify")
                      or {}).get("found_blocks") == 1, 10, "the verify result in etcd")
    wait_for(lambda: any("online verify on n1 finished after 8192 KiB: 1 blocks out of sync"
                         in e["msg"] for e in n1.json("cluster", "log", "--max", "50")),
             10, "the cluster log entry")
    # ... and mailed once, by the node that ran it
    (_, text), = wait_for(lambda: inbox.events("Verify found differences on d1"), 30,
                          "the verify mail")
    assert "against n2 found 4096 bytes that differ" in text, text
    # disconnect/connect resyncs the block
    n2.cli("volume", "disconnect", "d1")
    n2.cli("volume", "connect", "d1")
    wait_for(lambda: in_sync(s := vstatus(n2, "d1")) and s["out_of_sync_kib"] == 0, 30,
             "n2 resynced")
    assert backing(n1, "d1").read_bytes() == backing(n2, "d1").read_bytes()
    r = n1.cli("volume", "verify-stop", "d1", check=False)
    assert r.returncode != 0 and "no online verify is running" in r.stdout + r.stderr
    # grow it through the API: both copies and the record
    n2.cli("volume", "resize", "d1", "--size", "12M")
    for node in (n1, n2):
        wait_for(lambda node=node: vstatus(node, "d1").get("size") == 12 * MiB, 10,
                 f"{node.name}'s copy grown")
        assert backing(node, "d1").stat().st_size == 12 * MiB
    assert store_get(vc, "/binome/volumes/d1/config")["size"] == 12 * MiB
    r = n1.cli("volume", "resize", "d1", "--size", "8M", check=False)
    assert r.returncode != 0 and "shrinking a volume is not supported" in r.stdout + r.stderr


def test_vm_disk_resize_grows_both_copies(vc: Cluster) -> None:
    n1, n2 = vc["n1"], vc["n2"]
    n1.cli("storage", "add", "repl", "--type", "replicated", "--content", "images")
    n1.cli("vm", "create", "300", "--memory", "64", "--virtio0", "repl:0.0625")   # 64 MiB
    name = "vm-300-disk-0"
    wait_for(lambda: in_sync(vstatus(n2, name)), 90, "n2's copy in sync")
    assert vstatus(n1, name)["size"] == 64 * MiB
    n1.cli("vm", "resize", "300", "virtio0", "+64M")
    for node in (n1, n2):
        st = wait_for(lambda node=node: (s := vstatus(node, name)).get("size") == 128 * MiB
                      and s, 20, f"{node.name}'s copy grown")
        assert st["out_of_sync_kib"] == 0
        assert backing(node, name).stat().st_size == 128 * MiB
    assert store_get(vc, f"/binome/volumes/{name}/config")["size"] == 128 * MiB
    conf = n1.json("vm", "config", "300")
    assert "size=128M" in conf["virtio0"]


@pytest.mark.skipif(os.geteuid() != 0 or not all(shutil.which(t) for t in (
    "losetup", "mkfs.ext4", "mount", "blockdev")), reason="needs root and losetup")
def test_a_local_disk_io_error_is_mailed_by_its_node(
        vc: Cluster, mail: tuple[Inbox, Api],
        failing_disk: FailingDisk) -> None:  # noqa: F811 (the fixture)
    """A real kernel EIO under n1's copy (its backing moved onto the failing loop device of
    test_io_errors while the volume was down): the engine detaches the disk, the volume
    is served through n2, and n1's daemon mails it, once."""
    inbox, api = mail
    n1, n2 = vc["n1"], vc["n2"]
    api.ok("POST", "/cluster/notifications/matchers", name="disk-events", target=["mail"],
           **{"match-field": ["exact:type=disk"]})
    n1.cli("volume", "create", "e1", "--size", "16M")       # the failing disk's size
    data = backing(n1, "e1")
    try:
        wait_for(lambda: in_sync(vstatus(n2, "e1")), 30, "n2's copy of e1 in sync")
        n1.cli("volume", "secondary", "e1")
        n1.cli("volume", "down", "e1")
        subprocess.run(["dd", f"if={data}", f"of={failing_disk.device}", "bs=1M",
                        "oflag=direct", "status=none"], check=True)
        data.unlink()
        data.symlink_to(failing_disk.device)
        n1.cli("volume", "up", "e1")
        wait_for(lambda: in_sync(vstatus(n1, "e1")), 30, "n1's copy of e1 up, in sync")
        n1.cli("volume", "primary", "e1")
        written = os.urandom(65536)

        async def io() -> None:
            sockets = VolumeService._socket_dir(n1.state_dir / "replica")  # the daemon's
            c = await NbdClient.connect(str(sockets / "e1.sock"), "e1")
            try:
                await c.write(MiB, written)
                await c.flush()
                failing_disk.fail()
                await c.write(5 * MiB, os.urandom(8192))   # meets the EIO, served by n2
                await c.flush()
                assert await c.read(MiB, 65536) == written
            finally:
                await c.close()

        asyncio.run(io())
        st = wait_for(lambda: (s := vstatus(n1, "e1")).get("disk") == "Diskless" and s, 30,
                      "n1's disk detached")
        assert st["peer_disk"] == "UpToDate", st
        (mail_, text), = wait_for(lambda: inbox.events(f"I/O error on {data} (e1)"), 30,
                                  f"the disk-io-error mail; got {inbox.subjects()}")
        assert f"The local disk {data} of volume e1 returned an I/O error" in text, text
        assert "The disk was detached; the volume now reads and writes through its peer" \
            in text, text
        assert str(mail_["Message-ID"]).endswith("@n1>"), mail_["Message-ID"]
    finally:
        n1.cli("volume", "destroy", "e1", "--yes", check=False)   # releases the device
        api.call("DELETE", "/cluster/notifications/matchers/disk-events")
