"""DRBD's fence-peer handler for `fencing resource-only` and `resource-and-stonith`, run by
the engine with real handler scripts (binome's own volumes use quorum fencing instead,
where the daemon plays this role). The script's exit code is read from a file the test
writes, and its environment is recorded. Also the out-of-sync handler after a verify."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from binome.storage.replica.engine import control
from tests.integration.replica.pairs import MiB, nbd_writes, synced_pair, wait_for


def fence_cmd(d) -> dict[str, str]:
    return {"fence-peer": f"{{ env; echo END; }} > {d}/$DRBD_MY_NODE.fence-peer; "
                         f"sleep $(cat {d}/delay 2>/dev/null || echo 0); "
                         f"exit $(cat {d}/$DRBD_MY_NODE.code)"}


def fenced_env(path) -> dict[str, str]:
    deadline = time.monotonic() + 20
    while not (path.exists() and path.read_text().endswith("END\n")):
        assert time.monotonic() < deadline, f"{path} never written"
        time.sleep(0.05)
    return dict(ln.split("=", 1) for ln in path.read_text().splitlines() if "=" in ln)


def test_resource_only_outdates_the_peer_and_a_stale_promotion_outdates_itself(pair, tmp_path):
    (tmp_path / "alpha.code").write_text("4")
    (tmp_path / "beta.code").write_text("6")
    synced_pair(pair, fencing="resource-only", handlers=fence_cmd(tmp_path))
    pair.b.call("disconnect", name="r0")
    # A (Primary) lost its peer: fence-peer runs; exit 4 = the peer was outdated.
    st = wait_for(pair.a, lambda s: s["peer_disk"] == "Outdated")
    assert not st["suspended"] and st["fenced_by"] == "the fence-peer handler"
    env = fenced_env(tmp_path / "alpha.fence-peer")
    assert env["DRBD_RESOURCE"] == "r0" and env["DRBD_PEER_NODE"] == "beta"
    assert "s3cret" not in (tmp_path / "alpha.fence-peer").read_text()
    asyncio.run(nbd_writes(st["socket"], [(MiB, b"a" * 4096)]))     # I/O never stopped
    # B promoted while disconnected: its fence-peer says the peer is Primary (6).
    with pytest.raises(control.ControlError, match=r"\(-2\) Need access to UpToDate data"):
        pair.b.call("primary", name="r0")
    assert pair.b.call("status", name="r0")["disk"] == "Outdated"
    fenced_env(tmp_path / "beta.fence-peer")


def test_resource_and_stonith_freezes_io_until_the_handler_returns(pair, tmp_path):
    (tmp_path / "alpha.code").write_text("7")
    (tmp_path / "delay").write_text("1.5")
    synced_pair(pair, fencing="resource-and-stonith", handlers=fence_cmd(tmp_path))
    sock = pair.a.call("status", name="r0")["socket"]
    pair.b.call("disconnect", name="r0")
    wait_for(pair.a, lambda s: s["suspended"])
    started = time.monotonic()
    asyncio.run(nbd_writes(sock, [(MiB, os.urandom(4096))]))         # waits for the handler
    waited = time.monotonic() - started
    st = pair.a.call("status", name="r0")
    assert st["peer_disk"] == "Outdated" and not st["suspended"]
    assert waited >= 0.5, f"the write did not wait for fence-peer ({waited:.2f}s)"
    print(f"write frozen {waited:.2f}s (handler sleeps 1.5 s)")
    # A broken handler (exit 1) leaves I/O frozen; peer-outdated is the way out.
    (tmp_path / "alpha.code").write_text("1")
    (tmp_path / "delay").write_text("0")
    (tmp_path / "alpha.fence-peer").unlink()
    pair.b.call("connect", name="r0")
    wait_for(pair.a, lambda s: s["cstate"] == "Connected" and s["peer_disk"] == "UpToDate")
    pair.b.call("disconnect", name="r0")
    fenced_env(tmp_path / "alpha.fence-peer")
    deadline = time.monotonic() + 20
    while "fence-peer helper broken, returned 1" not in (
            pair.a.state_dir / "engine.log").read_text():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert pair.a.call("status", name="r0")["suspended"]
    st = pair.a.call("peer-outdated", name="r0", by="admin")
    assert not st["suspended"]


def test_out_of_sync_handler_runs_after_a_verify_that_found_blocks(pair, tmp_path):
    cmd = f"{{ env; echo END; }} > {tmp_path}/$DRBD_MY_NODE.$BINOME_HANDLER"
    synced_pair(pair, handlers={"out-of-sync": cmd})
    pair.a.call("verify", name="r0")                     # identical copies: nothing found
    wait_for(pair.a, lambda s: s["cstate"] == "Connected" and (s.get("verify") or {})
             .get("finished"))
    path = pair.b.state_dir / "volumes" / "r0" / "data.img"
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, b"\xde\xad" * 8, 7 * 4096 + 10)   # behind the engine's back
        os.fsync(fd)
    finally:
        os.close(fd)
    assert not (tmp_path / "alpha.out-of-sync").exists()
    pair.a.call("verify", name="r0")
    env = fenced_env(tmp_path / "alpha.out-of-sync")
    assert env["BINOME_HANDLER"] == "out-of-sync" and env["DRBD_RESOURCE"] == "r0"
