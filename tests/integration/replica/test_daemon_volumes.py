"""Replicated volumes through the real path: CLI -> API -> binomed -> volume engine, with etcd.

One 2-node + witness cluster for the module (real etcd, real binomed, real engines on
127.N.0.x). Covers: engine supervision (started on demand, adopted across a daemon
restart, I/O going on without the daemon), `binome volume create|status|...`, the peer
creating its copy from the etcd record, states published to etcd, the secret never
returned, and quorum fencing end to end (the daemon is the fence-peer handler).
The engines outlive their daemons by design: the fixture stops them by pid.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from binome.storage.replica.nbd.client import NbdClient
from tests.integration.harness import Cluster, Node, make_cluster, wait_for

MiB = 1 << 20


def engine_pid(node: Node) -> int | None:
    try:
        pid = int((node.state_dir / "replica" / "engine.pid").read_text().split()[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError, IndexError):
        return None
    if b"binome.storage.replica" not in cmdline or \
            str(node.state_dir).encode() not in cmdline:
        return None
    return pid


def kill_engine(node: Node, sig: int = signal.SIGKILL) -> None:
    pid = engine_pid(node)
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    wait_for(lambda: engine_pid(node) != pid or not _running(pid), 15, f"engine {pid} to exit")


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@pytest.fixture(scope="module")
def vc(tmp_path_factory) -> Iterator[Cluster]:
    from tests.integration.conftest import _nets, _require_tools

    _require_tools()
    c = make_cluster(tmp_path_factory.mktemp("vols"), next(_nets))
    try:
        yield c
    finally:
        try:
            c.stop()
        finally:
            for node in c.nodes.values():
                kill_engine(node)


def vstatus(node: Node, name: str = "v1", via: Node | None = None) -> dict:
    rows = (via or node).json("volume", "list", "--node", node.name)
    return next((r for r in rows if r["name"] == name), {})


def in_sync(st: dict) -> bool:
    return st.get("cstate") == "Connected" and st.get("disk") == st.get("peer_disk") == \
        "UpToDate"


def store_get(c: Cluster, key: str, via: str = "n1"):
    async def get():
        store = c.raw_store(via)
        try:
            entry = await store.get(key, serializable=True)
            return None if entry is None else entry.value
        finally:
            await store.close()
    return asyncio.run(get())


async def _nbd_write(sock: str, offset: int, data: bytes) -> None:
    c = await NbdClient.connect(sock, "v1")
    try:
        await c.write(offset, data)
        await c.flush()
    finally:
        await c.close()


def backing(node: Node, name: str = "v1") -> Path:
    return node.state_dir / "replica" / "volumes" / name / "data.img"


def test_no_engine_without_volumes_then_create_replicates(vc: Cluster) -> None:
    n1, n2 = vc["n1"], vc["n2"]
    assert engine_pid(n1) is None and engine_pid(n2) is None, "an engine with no volumes"
    assert n1.json("volume", "list") == []
    started = time.monotonic()
    out = n1.cli("volume", "create", "v1", "--size", "16M")
    assert "replicated between n1 and n2" in out.stdout and "connected to n2" in out.stdout
    print(f"volume create (16 MiB) task: {time.monotonic() - started:.1f}s")
    st2 = wait_for(lambda: in_sync(s := vstatus(n2)) and s, 30, "n2 in sync")
    assert st2["role"] == "Secondary" and st2["peer_role"] == "Primary"
    st1 = vstatus(n1)
    assert in_sync(st1) and st1["role"] == "Primary" and st1["peer_node"] == "n2"
    assert st1["desired_primary"] == "n1" and st1["port"] >= 7789
    # the status views
    text = n1.cli("volume", "status", "v1").stdout
    assert " 0: cs:Connected ro:Primary/Secondary ds:UpToDate/UpToDate C r-----" in text
    assert "ns:" in text and " oos:0" in text
    assert "v1 role:Primary\n  disk:UpToDate\n  n2 role:Secondary\n    peer-disk:UpToDate" \
        in text
    # the published states, for the HA manager
    wait_for(lambda: (store_get(vc, "/binome/volumes/v1/state/n2") or {}).get("role")
             == "Secondary", 10, "n2's state in etcd")
    s1 = store_get(vc, "/binome/volumes/v1/state/n1")
    assert s1["role"] == "Primary" and s1["disk"] == "UpToDate" and s1["gi"]
    # the secret: in etcd and in the engines' 0600 files, never in an API answer
    secret = store_get(vc, "/binome/volume-secrets/v1")["secret"]
    assert len(secret) == 64
    for node in (n1, n2):
        cfg = node.state_dir / "replica" / "volumes" / "v1" / "volume.json"
        assert json.loads(cfg.read_text())["secret"] == secret
        assert stat.S_IMODE(cfg.stat().st_mode) == 0o600
    answers = [n1.cli("volume", "show", "v1", "--output-format", "json").stdout,
               n1.cli("volume", "list", "--output-format", "json").stdout,
               n1.cli("volume", "show", "v1", "--node", "n2", "--output-format", "json").stdout,
               n1.cli("api", "get", "/nodes/n1/volumes/v1", "--output-format", "json").stdout]
    assert all(secret not in a for a in answers)
    show = json.loads(answers[2])
    assert show["role"] == "Secondary" and show["cluster"]["nodes"].keys() == {"n1", "n2"}
    # a write through n1's NBD export lands in both backing files
    payload = os.urandom(64 * 1024)
    asyncio.run(_nbd_write(st1["socket"], 3 * MiB, payload))
    assert backing(n2).read_bytes()[3 * MiB:3 * MiB + len(payload)] == payload
    assert backing(n1).read_bytes() == backing(n2).read_bytes()


def test_engine_outlives_the_daemon_and_is_adopted(vc: Cluster) -> None:
    n1 = vc["n1"]
    pid = engine_pid(n1)
    sock = vstatus(n1)["socket"]
    n1.stop()                              # SIGTERM binomed (and its etcd)
    assert engine_pid(n1) == pid and _running(pid)
    payload = os.urandom(4096)
    asyncio.run(_nbd_write(sock, 5 * MiB, payload))     # guest I/O goes on meanwhile
    assert backing(vc["n2"]).read_bytes()[5 * MiB:5 * MiB + 4096] == payload
    n1.start()
    st = wait_for(lambda: in_sync(s := vstatus(n1)) and s, 30, "n1 back")
    assert engine_pid(n1) == pid and st["role"] == "Primary"
    assert "volume engine adopted" in n1.log_path.read_text()


def test_a_dead_engine_is_restarted_and_the_volume_comes_back(vc: Cluster) -> None:
    n2 = vc["n2"]
    pid = engine_pid(n2)
    kill_engine(n2)
    st = wait_for(lambda: in_sync(s := vstatus(n2)) and s, 30, "n2's engine restarted")
    assert engine_pid(n2) not in (None, pid) and st["role"] == "Secondary"
    wait_for(lambda: in_sync(vstatus(vc["n1"])), 20, "n1 in sync")


def test_quorum_fencing_with_quorum_outdates_the_peer_and_continues(vc: Cluster) -> None:
    n1, n2 = vc["n1"], vc["n2"]
    sock = vstatus(n1)["socket"]
    n2.kill()                              # the peer's node dies: daemon, etcd ...
    kill_engine(n2)                        # ... and its engine
    payload = os.urandom(4096)
    started = time.monotonic()
    asyncio.run(asyncio.wait_for(_nbd_write(sock, 7 * MiB, payload), 30))
    print(f"write completed {time.monotonic() - started:.1f}s after the peer died "
          f"(n1 + witness quorate: n2 recorded Outdated)")
    marks = store_get(vc, "/binome/volumes/v1/fencing")["outdated"]
    assert marks["n2"]["by"] == "n1"
    st = vstatus(n1)
    assert st["peer_disk"] == "Outdated" and not st["suspended"] and st["fenced_by"] == "n1"
    assert "recorded Outdated by n1" in n1.cli("cluster", "log").stdout
    # the outdated copy comes back: told it is Outdated, resynced, then the mark is cleared
    n2.start()
    wait_for(lambda: in_sync(vstatus(n2)), 40, "n2 resynced")
    wait_for(lambda: store_get(vc, "/binome/volumes/v1/fencing")["outdated"] == {}, 20,
             "the Outdated mark cleared")
    assert backing(n2).read_bytes()[7 * MiB:7 * MiB + 4096] == payload


def test_without_quorum_writes_wait_and_the_outdated_copy_refuses_promotion(
        vc: Cluster) -> None:
    n1, n2, w = vc["n1"], vc["n2"], vc["w"]
    sock = vstatus(n1)["socket"]
    w.kill()
    n2.kill()                              # n1 alone: 1 of 3 votes, no quorum ...
    wait_for(lambda: not n1.quorate(), 20, "n1 without quorum")
    kill_engine(n2)                        # ... when it loses its peer
    payload = os.urandom(4096)

    async def write_waits() -> float:
        task = asyncio.ensure_future(_nbd_write(sock, 9 * MiB, payload))
        done, _ = await asyncio.wait({task}, timeout=4.0)
        assert not done, "a write completed on a Primary without its peer and without quorum"
        started = time.monotonic()
        await asyncio.to_thread(w.start)                  # quorum is back
        async with asyncio.timeout(30):
            await task
        return time.monotonic() - started

    took = asyncio.run(write_waits())
    print(f"write completed {took:.1f}s after the witness was started again")
    assert store_get(vc, "/binome/volumes/v1/fencing")["outdated"]["n2"]["by"] == "n1"
    # n2 returns while n1 keeps it away (StandAlone): its copy is Outdated and stays so
    n1.cli("volume", "disconnect", "v1")
    n2.start()
    st = wait_for(lambda: (s := vstatus(n2)).get("disk") == "Outdated" and s, 30,
                  "n2's engine told its copy is Outdated")
    assert st["cstate"] in ("WFConnection", "Unconnected")
    r = n2.cli("volume", "primary", "v1", check=False)
    assert r.returncode != 0 and "recorded Outdated by n1" in r.stdout + r.stderr
    assert vstatus(n2)["role"] == "Secondary"
    # n1 reconnects: n2 resyncs, the mark goes away
    n1.cli("volume", "connect", "v1")
    wait_for(lambda: in_sync(vstatus(n2)), 40, "n2 resynced")
    wait_for(lambda: store_get(vc, "/binome/volumes/v1/fencing")["outdated"] == {}, 20,
             "the Outdated mark cleared")
    assert backing(n1).read_bytes() == backing(n2).read_bytes()


def test_actions_and_destroy(vc: Cluster) -> None:
    n1, n2 = vc["n1"], vc["n2"]
    r = n2.cli("volume", "primary", "v1", check=False)
    assert r.returncode != 0 and "Multiple primaries not allowed" in r.stdout + r.stderr
    n1.cli("volume", "pause-sync", "v1")
    n1.cli("volume", "resume-sync", "v1")
    out = n2.cli("volume", "invalidate", "v1").stdout
    assert "v1: cs:" in out
    wait_for(lambda: in_sync(vstatus(n2)), 30, "n2 resynced after invalidate")
    r = n1.cli("volume", "destroy", "v1", check=False)
    assert r.returncode != 0                    # needs --yes (no terminal to confirm on)
    n1.cli("volume", "destroy", "v1", "--yes")
    wait_for(lambda: not backing(n2).exists(), 20, "n2's copy removed")
    assert not backing(n1).exists()
    assert store_get(vc, "/binome/volumes/v1/config") is None
    assert store_get(vc, "/binome/volume-secrets/v1") is None
    assert n1.json("volume", "list") == [] and n2.json("volume", "list") == []
