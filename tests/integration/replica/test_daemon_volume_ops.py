"""Dual-primary, online verify and resize through the real path (CLI -> API -> binomed ->
engine, etcd): one 2-node + witness cluster for the module."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import pytest

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
