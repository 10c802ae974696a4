"""Two real engines replicating over loopback TCP: handshake refusals, initial sync,
protocol C, resync of only the changed blocks after a disconnect, split brain."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import signal

import pytest

from binome.lab.nbd_client import NbdClient
from binome.storage.replica.core.states import MetaFlags
from binome.storage.replica.core.uuids import GenerationIds
from binome.storage.replica.engine.meta import MetaFile
from binome.storage.replica.node import supervisor
from tests.integration.replica.conftest import EngineProc
from tests.integration.replica.pairs import (
    MiB,
    connected,
    free_port,
    in_sync,
    log_of,
    nbd_writes,
    standalone,
    synced_pair,
    wait_for,
)

# --- refusals: nothing is exchanged ---------------------------------------------------------

def test_wrong_secret_never_connects(pair):
    pair.create(b={"secret": "not the secret"})
    for engine in (pair.a, pair.b):
        st = wait_for(engine, standalone)
        assert st["peer"]["last_error"] == "Authentication of peer failed"
        assert st["gi"].startswith("0000000000000004:") and st["counters"]["nr"] == 0
    assert "Peer authenticated" not in log_of(pair.a) + log_of(pair.b)


@pytest.mark.parametrize("b, error", [
    ({"protocol": "B"}, "incompatible protocol settings"),
    ({"after_sb_0pri": "discard-zero-changes"}, "incompatible after-sb-0pri settings"),
])
def test_incompatible_settings_refused(pair, b, error):
    pair.create(b=b)
    for engine in (pair.a, pair.b):
        assert wait_for(engine, standalone)["peer"]["last_error"] == error


def test_size_mismatch_refused(pair):
    pa, pb = free_port(), free_port()
    common = {"secret": "x", "connect_int": 0.1}
    pair.a.call("create", name="r0", size="16M", address=f"127.0.0.1:{pa}",
                peer_address=f"127.0.0.1:{pb}", **common)
    pair.b.call("create", name="r0", size="32M", address=f"127.0.0.1:{pb}",
                peer_address=f"127.0.0.1:{pa}", **common)
    pair.a.call("up", name="r0")
    pair.b.call("up", name="r0")
    st = wait_for(pair.a, standalone)
    assert "The peer's disk size differs" in st["peer"]["last_error"]
    assert wait_for(pair.b, standalone)["counters"]["dw"] == 0


def set_gi(engine: EngineProc, gi: GenerationIds, name: str = "r0") -> None:
    """Like DRBD's tests (`drbdmeta set-gi`): write generation identifiers into the metadata."""
    meta = MetaFile.open(engine.state_dir / "volumes" / name / "meta")
    try:
        flags = MetaFlags.CONSISTENT | MetaFlags.WAS_UP_TO_DATE | MetaFlags.AL_CLEAN
        meta.write_superblock(meta.sb.with_(gi=gi, flags=flags))
    finally:
        meta.close()


def test_unrelated_data_refused(pair):
    pair.create(up=False)
    set_gi(pair.a, GenerationIds(0xA0, 0, (0xA2, 0xA4)))
    set_gi(pair.b, GenerationIds(0xB0, 0, (0xB2, 0xB4)))
    pair.a.call("up", name="r0")
    pair.b.call("up", name="r0")
    for engine in (pair.a, pair.b):
        st = wait_for(engine, standalone)
        assert st["peer"]["last_error"] == "Unrelated data, aborting!"
        assert st["counters"]["dw"] == 0 and st["bitmap_bits"] == 0
    assert "uuid_compare()=-1000 by rule 100" in log_of(pair.a)


def test_crafted_generations_pick_the_resync_direction(pair):
    """Rule 50/70 from metadata alone: B's current is A's bitmap UUID, A resyncs B."""
    pair.create(up=False)
    set_gi(pair.a, GenerationIds(0xC0, 0xB0, (0xA0, 0)))
    set_gi(pair.b, GenerationIds(0xB0, 0, (0xA0, 0)))
    pair.a.call("up", name="r0")
    pair.b.call("up", name="r0")
    wait_for(pair.a, connected)
    wait_for(pair.b, connected)
    assert "uuid_compare()=1 by rule 70" in log_of(pair.a)
    assert "uuid_compare()=-1 by rule 50" in log_of(pair.b)


# --- replication ----------------------------------------------------------------------------

def test_initial_full_sync_then_protocol_c(pair):
    pair.create()
    st = wait_for(pair.a, connected)
    assert (st["disk"], st["peer_disk"]) == ("Inconsistent", "Inconsistent")
    pair.a.call("primary", name="r0", force=True)
    b = wait_for(pair.b, in_sync)
    a = wait_for(pair.a, in_sync)
    assert a["gi"].split(":")[1:] == b["gi"].split(":")[1:]          # same bitmap/history
    assert int(a["gi"].split(":")[0], 16) & ~1 == int(b["gi"].split(":")[0], 16)
    assert b["role"] == "Secondary" and a["peer_role"] == "Secondary"
    assert b["counters"]["nr"] >= 16 * 1024                          # the whole 16 MiB
    writes = [(random.randrange(0, 4096) * 4096, os.urandom(4096)) for _ in range(200)]
    writes.append((3 * MiB, os.urandom(MiB)))
    asyncio.run(nbd_writes(a["socket"], writes))
    assert pair.identical()
    assert pair.a.call("bitmap", name="r0")["weight"] == 0           # mirrored, not marked
    assert "cs:Connected ro:Secondary/Primary ds:UpToDate/UpToDate C" in pair.b.call("proc")


def test_acknowledged_write_is_on_the_peer_when_the_primary_dies(pair):
    synced_pair(pair)
    sock = pair.a.call("status", name="r0")["socket"]
    payload = os.urandom(64 * 1024)

    async def write_then_kill() -> None:
        c = await NbdClient.connect(sock, "r0")
        await c.write(5 * MiB, payload)             # acknowledged under protocol C ...
        os.kill(pair.a.handle.pid, signal.SIGKILL)  # ... and the primary dies at once
        await c.close()

    asyncio.run(write_then_kill())
    pair.a.handle.process.wait()
    assert pair.data(pair.b)[5 * MiB:5 * MiB + len(payload)] == payload
    wait_for(pair.b, lambda s: s["cstate"] in ("WFConnection", "Unconnected"))


def test_disconnect_then_resync_moves_only_the_changed_blocks(pair):
    synced_pair(pair, size="64M")
    pair.b.stop()                                     # the secondary goes away (SIGTERM)
    wait_for(pair.a, lambda s: s["cstate"] == "WFConnection")
    rng = random.Random(7)
    blocks = sorted(rng.sample(range(16384), 300))
    writes = [(blk * 4096, rng.randbytes(4096)) for blk in blocks]
    sock = pair.a.call("status", name="r0")["socket"]
    asyncio.run(nbd_writes(sock, writes))
    bm = pair.a.call("bitmap", name="r0")
    assert bm["weight"] == len(blocks)
    dirty = len(blocks) * 4096
    pair.b.handle = asyncio.run(supervisor.ensure_engine(pair.b.state_dir))
    pair.b.call("up", name="r0")
    b = wait_for(pair.b, in_sync)
    wait_for(pair.a, in_sync)
    assert pair.identical()
    # Resync traffic: the dirty blocks plus the (compressed) bitmap, nothing more.
    received = b["counters"]["nr"] * 1024
    assert dirty <= received <= 1.2 * dirty + 64 * 1024
    assert "uuid_compare()=1 by rule 70" in log_of(pair.a)
    assert "uuid_compare()=-1 by rule 50" in log_of(pair.b)
    assert pair.a.call("bitmap", name="r0")["weight"] == 0


def test_split_brain_resolved_by_discard_zero_changes(pair):
    synced_pair(pair, after_sb_0pri="discard-zero-changes")
    pair.a.call("disconnect", name="r0")
    pair.b.call("disconnect", name="r0")
    sock_a = pair.a.call("status", name="r0")["socket"]
    asyncio.run(nbd_writes(sock_a, [(MiB, os.urandom(8192))]))
    pair.b.call("primary", name="r0")                 # B promoted too: split brain
    pair.a.call("secondary", name="r0")
    pair.b.call("secondary", name="r0")
    pair.a.call("connect", name="r0")
    pair.b.call("connect", name="r0")
    wait_for(pair.b, in_sync)
    wait_for(pair.a, in_sync)
    assert pair.identical()
    log_b = log_of(pair.b)
    assert "uuid_compare()=100 by rule 90" in log_b
    assert "Split-Brain detected, 0 primaries, automatically solved. Sync from peer node" in log_b


def test_split_brain_unresolved_then_manual_recovery(pair):
    synced_pair(pair)
    pair.a.call("disconnect", name="r0")
    pair.b.call("disconnect", name="r0")
    sock_a = pair.a.call("status", name="r0")["socket"]
    asyncio.run(nbd_writes(sock_a, [(MiB, os.urandom(8192))]))
    st_b = pair.b.call("primary", name="r0")
    asyncio.run(nbd_writes(st_b["socket"], [(2 * MiB, os.urandom(4096))]))
    pair.a.call("secondary", name="r0")
    pair.b.call("secondary", name="r0")
    pair.a.call("connect", name="r0")
    pair.b.call("connect", name="r0")
    for engine in (pair.a, pair.b):
        st = wait_for(engine, standalone)
        assert st["peer"]["last_error"] == ("Split-Brain detected but unresolved, dropping "
                                            "connection!")
    assert not pair.identical()
    # Manual recovery: the victim (B) discards its data, the survivor just connects.
    pair.b.call("connect", name="r0", discard_my_data=True)
    pair.a.call("connect", name="r0")
    wait_for(pair.b, in_sync)
    wait_for(pair.a, in_sync)
    assert pair.identical()
    assert "Split-Brain detected, manually solved. Sync from peer node" in log_of(pair.b)


def test_link_cut_mid_stream_loses_nothing(pair):
    """Random writes keep flowing while the secondary is killed and comes back: afterwards
    both replicas equal the oracle (unacknowledged and un-barriered writes were marked
    out of sync on the primary and resynced)."""
    synced_pair(pair, size="32M")
    sock = pair.a.call("status", name="r0")["socket"]
    size = 32 * MiB
    model = bytearray(pair.data(pair.a))
    rng = random.Random(99)

    async def scenario() -> None:
        c = await NbdClient.connect(sock, "r0")
        stop = asyncio.Event()

        async def writer() -> None:
            while not stop.is_set():
                batch = []
                for _ in range(16):
                    length = rng.choice([4096, 16384, 65536, 262144])
                    off = rng.randrange(0, size - length) // 4096 * 4096
                    if any(off < o + len(d) and o < off + length for o, d in batch):
                        continue
                    data = rng.randbytes(length)
                    model[off:off + length] = data
                    batch.append((off, data))
                await asyncio.gather(*(c.write(o, d) for o, d in batch))

        task = asyncio.ensure_future(writer())
        try:
            await asyncio.sleep(0.3)
            os.kill(pair.b.handle.pid, signal.SIGKILL)           # cut, mid-stream
            await asyncio.to_thread(pair.b.handle.process.wait)
            await asyncio.sleep(0.3)                              # writes while disconnected
            pair.b.handle = await supervisor.ensure_engine(pair.b.state_dir)
            await asyncio.to_thread(pair.b.call, "up", name="r0")
            await asyncio.to_thread(wait_for, pair.b, in_sync)
            await asyncio.sleep(0.2)                              # replicated again
        finally:
            stop.set()
            await task
        await c.flush()
        await c.close()

    asyncio.run(scenario())
    wait_for(pair.a, in_sync)
    a_data = pair.data(pair.a)
    assert hashlib.sha256(a_data).digest() == hashlib.sha256(model).digest()
    assert pair.identical()
    assert pair.a.call("bitmap", name="r0")["weight"] == 0
    assert "not acknowledged by a barrier marked out of sync" in log_of(pair.a)


def test_unacknowledged_writes_are_marked_and_resynced(pair):
    """Writes the peer never acknowledged (it is frozen, then killed) complete for the
    client only once the link is declared lost, and are resynced afterwards."""
    synced_pair(pair, size="16M")
    sock = pair.a.call("status", name="r0")["socket"]
    writes = [(i * 65536, os.urandom(4096)) for i in range(32)]

    async def scenario() -> None:
        c = await NbdClient.connect(sock, "r0")
        try:
            os.kill(pair.b.handle.pid, signal.SIGSTOP)
            pending = [asyncio.ensure_future(c.write(o, d)) for o, d in writes]
            done, _ = await asyncio.wait(pending, timeout=0.5)
            assert not done, "protocol C acknowledged a write the peer never saw"
            os.kill(pair.b.handle.pid, signal.SIGKILL)
            await asyncio.to_thread(pair.b.handle.process.wait)
            async with asyncio.timeout(20):
                await asyncio.gather(*pending)        # local write done: success (DRBD)
        finally:
            await c.close()

    asyncio.run(scenario())
    bits = pair.a.call("bitmap", name="r0")
    assert {tuple(r) for r in bits["runs"]} >= {(i * 16, 1) for i in range(32)}
    pair.b.handle = asyncio.run(supervisor.ensure_engine(pair.b.state_dir))
    pair.b.call("up", name="r0")
    wait_for(pair.b, in_sync)
    wait_for(pair.a, in_sync)
    assert pair.identical()


def test_a_crashed_primary_is_uptodate_again_after_its_resync(pair):
    """Soak finding: the volume engine of the Primary killed (quorum fencing, so the
    restarted copy comes up Consistent, not UpToDate); the crashed primary resyncs its
    hot extents to the peer as SyncSource and must then be UpToDate, as in DRBD
    (drbd_resync_finished sets both disks UpToDate). It stayed Consistent for good:
    never promotable again ("Need access to UpToDate data"), the mirror degraded."""
    synced_pair(pair, fencing="quorum")
    asyncio.run(nbd_writes(pair.a.call("status", name="r0")["socket"],
                           [(i * MiB, os.urandom(4096)) for i in range(4)]))
    os.kill(pair.a.handle.pid, signal.SIGKILL)
    pair.a.handle.process.wait()
    pair.a.handle = asyncio.run(supervisor.ensure_engine(pair.a.state_dir))
    st = pair.a.call("up", name="r0")
    assert st["crashed_primary"] and st["disk"] == "Consistent"
    st = wait_for(pair.a, lambda s: s["cstate"] == "Connected" and not s["crashed_primary"])
    st = wait_for(pair.a, in_sync)
    assert st["role"] == "Secondary"
    wait_for(pair.b, in_sync)
    assert pair.identical()
    pair.a.call("primary", name="r0")   # not forced: its data is UpToDate
