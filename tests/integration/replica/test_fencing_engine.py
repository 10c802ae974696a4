"""Quorum fencing at the engine level, the test playing the daemon (the fence-peer handler),
plus the resync controls (pause/resume, invalidate, invalidate-remote), status views and
the events stream, with two real engines over loopback TCP."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from binome.lab.nbd_client import NbdClient, NbdError
from binome.storage.replica.core import nbd_protocol as nbdp
from binome.storage.replica.engine import control
from binome.storage.replica.node import supervisor
from tests.integration.replica.pairs import (
    MiB,
    in_sync,
    log_of,
    nbd_writes,
    synced_pair,
    wait_for,
)


def lost_peer(st: dict) -> bool:
    return st["cstate"] in ("WFConnection", "Unconnected") and st["peer_disk"] == "DUnknown"


def fenced_pair(pair, **kw) -> str:
    synced_pair(pair, fencing="quorum", **kw)
    return pair.a.call("status", name="r0")["socket"]


def test_primary_that_loses_its_peer_suspends_writes_until_the_peer_is_fenced(pair):
    sock = fenced_pair(pair)
    gi_before = pair.a.call("status", name="r0")["gi"]
    pair.b.stop()
    st = wait_for(pair.a, lost_peer)
    assert st["suspended"] and st["fence"] == "needed"
    assert st["gi"] == gi_before, "the new generation waits for the fencing decision"
    payload = os.urandom(4096)

    async def scenario() -> None:
        c = await NbdClient.connect(sock, "r0")
        try:
            # reads still work, writes wait for the fencing decision
            assert len(await c.read(0, 4096)) == 4096
            w = asyncio.ensure_future(c.write(MiB, payload))
            done, _ = await asyncio.wait({w}, timeout=0.5)
            assert not done, "a write completed while the peer's disk was unknown"
            st = await asyncio.to_thread(pair.a.call, "peer-outdated", name="r0", by="n9")
            assert st["changed"] and not st["suspended"] and st["peer_disk"] == "Outdated"
            async with asyncio.timeout(5):
                await w
            await c.write(2 * MiB, payload)                # no longer waits
        finally:
            await c.close()

    asyncio.run(scenario())
    st = pair.a.call("status", name="r0")
    assert st["gi"].split(":")[1] == gi_before.split(":")[0]     # new generation now
    assert st["fenced_by"] == "n9" and st["bitmap_bits"] == 2
    assert "suspending I/O" in log_of(pair.a)
    # the peer's outdated flag survives a restart of the primary's engine
    pair.a.call("down", name="r0")
    pair.a.call("up", name="r0")
    st = pair.a.call("status", name="r0")
    assert st["peer_disk"] == "Outdated" and st["disk"] == "UpToDate"


def test_in_flight_writes_are_held_until_the_peer_is_back(pair):
    """Writes the peer never acknowledged are not completed by the link loss (DRBD would):
    they wait for fencing; here the peer comes back, they complete and are resynced."""
    sock = fenced_pair(pair)
    writes = [(i * 65536, os.urandom(4096)) for i in range(16)]

    async def scenario() -> None:
        c = await NbdClient.connect(sock, "r0")
        try:
            os.kill(pair.b.handle.pid, signal.SIGSTOP)
            pending = [asyncio.ensure_future(c.write(o, d)) for o, d in writes]
            done, _ = await asyncio.wait(pending, timeout=0.3)
            assert not done
            os.kill(pair.b.handle.pid, signal.SIGKILL)
            await asyncio.to_thread(pair.b.handle.process.wait)
            await asyncio.to_thread(wait_for, pair.a, lost_peer)
            done, _ = await asyncio.wait(pending, timeout=0.5)
            assert not done, "the link loss completed writes the peer may lack"
            pair.b.handle = await supervisor.ensure_engine(pair.b.state_dir)
            await asyncio.to_thread(pair.b.call, "up", name="r0")
            async with asyncio.timeout(20):
                await asyncio.gather(*pending)
        finally:
            await c.close()

    asyncio.run(scenario())
    wait_for(pair.b, in_sync)
    wait_for(pair.a, in_sync)
    assert pair.identical()
    assert "No resync, but" in log_of(pair.a)          # equal generations, bits resynced


def test_outdated_copies_refuse_promotion(pair):
    fenced_pair(pair)
    pair.a.call("secondary", name="r0")
    pair.a.call("disconnect", name="r0")
    pair.b.call("disconnect", name="r0")
    # peer's disk unknown: quorum fencing refuses a promotion until the peer is fenced
    with pytest.raises(control.ControlError, match=r"\(-7\) Refusing to be Primary while peer "
                                                   r"is not outdated"):
        pair.b.call("primary", name="r0")
    # the cluster says B's copy is Outdated: refused, even after the peer was fenced
    st = pair.b.call("outdated-by-peer", name="r0", by="alpha")
    assert st["disk"] == "Outdated"
    pair.b.call("peer-outdated", name="r0")
    with pytest.raises(control.ControlError, match=r"\(-2\) Need access to UpToDate data"):
        pair.b.call("primary", name="r0")
    # the flag is on disk: an engine restart does not forget it
    pair.b.stop()
    pair.b.handle = asyncio.run(supervisor.ensure_engine(pair.b.state_dir))
    pair.b.call("up", name="r0")
    pair.b.call("disconnect", name="r0")
    assert pair.b.call("status", name="r0")["disk"] == "Outdated"
    with pytest.raises(control.ControlError, match="Need access to UpToDate data"):
        pair.b.call("primary", name="r0")
    # A (fenced the peer) may be promoted, and an explicit force overrides on B
    pair.a.call("peer-outdated", name="r0")
    assert pair.a.call("primary", name="r0")["role"] == "Primary"
    pair.a.call("secondary", name="r0")
    assert pair.b.call("primary", name="r0", force=True)["disk"] == "UpToDate"


def test_a_primary_outdated_by_its_peer_fails_its_writes(pair):
    sock = fenced_pair(pair)
    pair.b.stop()
    wait_for(pair.a, lost_peer)

    async def scenario() -> None:
        c = await NbdClient.connect(sock, "r0")
        try:
            w = asyncio.ensure_future(c.write(0, os.urandom(4096)))
            done, _ = await asyncio.wait({w}, timeout=0.3)
            assert not done
            await asyncio.to_thread(pair.a.call, "outdated-by-peer", name="r0", by="beta")
            with pytest.raises(NbdError) as info:
                await w
            assert info.value.error == nbdp.NBD_EIO
            with pytest.raises(NbdError):
                await c.write(0, b"x" * 4096)
        finally:
            await c.close()

    asyncio.run(scenario())
    assert pair.a.call("status", name="r0")["disk"] == "Outdated"


def test_standalone_mode_writes_without_fencing(pair):
    sock = fenced_pair(pair)
    pair.b.stop()
    assert wait_for(pair.a, lost_peer)["suspended"]
    st = pair.a.call("set-fencing", name="r0", fencing="dont-care")
    assert not st["suspended"]
    asyncio.run(nbd_writes(sock, [(0, os.urandom(8192))]))
    assert pair.a.call("status", name="r0")["bitmap_bits"] == 2
    assert "fencing set to dont-care" in log_of(pair.a)


def test_pause_resume_invalidate_and_status_views(pair):
    synced_pair(pair, size="16M", resync_rate=8 * MiB)
    # invalidate on the Secondary: a full resync from the Primary, paused and resumed
    pair.b.call("invalidate", name="r0")
    st = wait_for(pair.b, lambda s: s["cstate"] == "SyncTarget")
    assert st["disk"] == "Inconsistent"
    pair.b.call("pause-sync", name="r0")
    wait_for(pair.a, lambda s: s["cstate"] == "PausedSyncS")
    proc = pair.a.call("proc")
    assert "cs:PausedSyncS ro:Primary/Secondary ds:UpToDate/Inconsistent C r-p---" in proc
    assert "sync'ed:" in proc and "finish:" in proc and "K/sec" in proc
    proc_b = pair.b.call("proc")
    assert "cs:PausedSyncT" in proc_b and " r--u--" in proc_b
    left = wait_for(pair.b, lambda s: s["cstate"] == "PausedSyncT")["out_of_sync_kib"]
    assert left > 0
    pair.b.call("resume-sync", name="r0")
    wait_for(pair.b, in_sync)
    wait_for(pair.a, in_sync)
    assert pair.identical()
    assert "Began resync as SyncTarget (will sync 16384 KB" in log_of(pair.b)
    # invalidate-remote on the Primary: the peer becomes the target of a full sync
    received = pair.b.call("status", name="r0")["counters"]["nr"]
    pair.a.call("invalidate-remote", name="r0")
    st = wait_for(pair.b, lambda s: in_sync(s) and s["counters"]["nr"] >= received + 16 * 1024)
    assert st["role"] == "Secondary"
    wait_for(pair.a, in_sync)
    # refusals: a Primary cannot invalidate itself; invalidate-remote needs a peer
    with pytest.raises(control.ControlError, match="Primary"):
        pair.a.call("invalidate", name="r0")
    pair.b.call("disconnect", name="r0")
    with pytest.raises(control.ControlError, match="needs a Connected peer"):
        pair.a.call("invalidate-remote", name="r0")


def test_events_stream_reports_every_state_change(pair):
    synced_pair(pair)

    async def scenario() -> list[dict]:
        client = await control.ControlClient.connect(pair.a.control)
        seen: list[dict] = []
        try:
            events = client.stream("events")
            first = await anext(events)
            assert first["event"] == "exists" and first["name"] == "r0"
            assert await anext(events) == {"event": "exists-end"}    # end of the snapshot
            await asyncio.to_thread(pair.a.call, "disconnect", name="r0")
            async with asyncio.timeout(10):
                async for ev in events:
                    seen.append(ev)
                    if ev["status"]["cstate"] == "StandAlone":
                        break
        finally:
            await client.close()
        return seen

    seen = asyncio.run(scenario())
    assert seen and seen[-1]["status"]["cstate"] == "StandAlone"
    assert all(e["event"] == "change" and e["name"] == "r0" for e in seen)
    assert pair.a.call("ping")["pid"] == pair.a.handle.pid
