"""Online verify (VerifyS/VerifyT, verify-alg) and checksum-based resync (csums-alg) with
two real engines: corruption behind the engines' back is found block-exactly and repaired by
a reconnect; identical data on both sides is not transferred again."""

from __future__ import annotations

import asyncio
import os
import time

from binome.lab.nbd_client import NbdClient
from tests.integration.replica.pairs import (
    MiB,
    Pair,
    connected,
    in_sync,
    log_of,
    nbd_writes,
    standalone,
    synced_pair,
    wait_for,
)

BLOCK = 4096
CORRUPT = [5, 1000, 1001, 3000]        # 4 KiB blocks damaged on the secondary


def corrupt(pair: Pair, blocks: list[int]) -> None:
    path = pair.b.state_dir / "volumes" / "r0" / "data.img"
    fd = os.open(path, os.O_WRONLY)
    try:
        for b in blocks:
            os.pwrite(fd, b"\xde\xad\xbe\xef" * 4, b * BLOCK + 100)   # behind the engine's back
        os.fsync(fd)
    finally:
        os.close(fd)


def test_online_verify_finds_exactly_the_corrupted_blocks_and_a_reconnect_repairs_them(pair):
    # 4 MiB/s: a 16 MiB verify takes about 4 s, long enough to watch its progress
    synced_pair(pair, size="16M", resync_rate=4 * MiB)
    sock = pair.a.call("status", name="r0")["socket"]
    asyncio.run(nbd_writes(sock, [(i * MiB, os.urandom(MiB)) for i in range(0, 16, 3)]))
    wait_for(pair.b, in_sync)
    corrupt(pair, CORRUPT)
    assert not pair.identical()

    t0 = time.monotonic()
    st = pair.a.call("verify", name="r0")
    assert st["cstate"] == "VerifyS"
    assert wait_for(pair.b, lambda s: s["cstate"] == "VerifyT")
    # progress and ETA while it runs, in the status and the /proc view
    st = wait_for(pair.a, lambda s: s["peer"].get("sync") and 10 < s["peer"]["sync"]["done"] < 90,
                  timeout=10)
    sync = st["peer"]["sync"]
    assert sync["verify"] and sync["eta_s"] is not None and sync["speed_kib"] > 0
    assert "verified:" in pair.a.call("proc")
    st = wait_for(pair.a, connected, timeout=30)
    elapsed = time.monotonic() - t0
    res = st["verify"]
    assert res["finished"] and res["found_blocks"] == len(CORRUPT)
    assert res["ranges"] == [[5 * BLOCK, BLOCK], [1000 * BLOCK, 2 * BLOCK], [3000 * BLOCK, BLOCK]]
    assert res["verified_kib"] == 16 * 1024
    assert 2.5 < elapsed < 15, f"verify of 16 MiB at 4 MiB/s took {elapsed:.1f} s"
    stb = wait_for(pair.b, connected)
    assert stb["verify"]["found_blocks"] == len(CORRUPT)
    assert stb["verify"]["ranges"] == res["ranges"]
    # marked out of sync on both sides (oos:), exactly those blocks
    for engine in (pair.a, pair.b):
        bm = engine.call("bitmap", name="r0")
        assert bm["runs"] == [[5, 1], [1000, 2], [3000, 1]]
        assert engine.call("status", name="r0")["out_of_sync_kib"] == 16
    assert "Online verify found 4 4k block out of sync!" in log_of(pair.a)
    # a disconnect/connect resyncs them (from the Primary), and the copies are equal again
    pair.b.call("disconnect", name="r0")
    pair.b.call("connect", name="r0")
    wait_for(pair.b, in_sync)
    wait_for(pair.a, in_sync)
    assert pair.identical()
    assert pair.b.call("status", name="r0")["out_of_sync_kib"] == 0

    # a second verify (of the second half) finds nothing; a third is stopped half-way
    # (from the VerifyT side)
    pair.a.call("verify", name="r0", start=8 * MiB)
    st = wait_for(pair.a, connected, timeout=30)
    assert st["verify"]["finished"] and st["verify"]["found_blocks"] == 0
    assert st["verify"]["verified_kib"] == 8 * 1024
    pair.a.call("verify", name="r0")
    wait_for(pair.b, lambda s: s["cstate"] == "VerifyT" and s["peer"]["sync"]["done"] > 5)
    st = pair.b.call("verify-stop", name="r0")
    assert st["cstate"] == "Connected" and st["verify"]["stopped"]
    st = wait_for(pair.a, connected)
    assert st["verify"]["stopped"] and 0 < st["verify"]["verified_kib"] < 16 * 1024


def test_verify_refused_when_not_connected(pair):
    synced_pair(pair, size="4M")
    pair.b.call("disconnect", name="r0")
    wait_for(pair.a, lambda s: s["cstate"] != "Connected")
    try:
        pair.a.call("verify", name="r0")
    except Exception as e:          # ControlError ESTATE
        assert "needs a Connected peer" in str(e)
    else:
        raise AssertionError("verify ran without a peer")


def _diverge_identically(pair: Pair, name: str, data: list[tuple[int, bytes]]) -> None:
    """Both sides write the same data while disconnected (split brain), B is the victim."""
    sa = pair.a.call("status", name=name)["socket"]
    sb = pair.b.call("status", name=name)["socket"]
    pair.a.call("disconnect", name=name)
    pair.b.call("disconnect", name=name)
    pair.b.call("primary", name=name)

    async def write(sock: str) -> None:
        c = await NbdClient.connect(sock, name)
        try:
            for off, d in data:
                await c.write(off, d)
            await c.flush()
        finally:
            await c.close()

    asyncio.run(write(sa))
    asyncio.run(write(sb))
    pair.b.call("secondary", name=name)
    pair.a.call("connect", name=name)
    pair.b.call("connect", name=name)
    wait_for(pair.a, standalone, name=name)
    wait_for(pair.b, standalone, name=name)
    pair.b.call("connect", name=name, discard_my_data=True)
    pair.a.call("connect", name=name)
    wait_for(pair.b, in_sync, name=name)
    wait_for(pair.a, in_sync, name=name)


def test_checksum_resync_skips_blocks_both_sides_wrote_identically(pair):
    data = [(i * 256 * 1024, os.urandom(256 * 1024)) for i in range(16)]      # 4 MiB
    moved = {}
    for name, csums in (("r0", "sha256"), ("r1", "")):
        pair.create(name=name, size="16M", csums_alg=csums)
        wait_for(pair.a, connected, name=name)
        pair.a.call("primary", name=name, force=True)
        wait_for(pair.b, in_sync, name=name)
        ns0 = pair.a.call("status", name=name)["counters"]["ns"]
        _diverge_identically(pair, name, data)
        st = pair.a.call("status", name=name)
        moved[name] = st["counters"]["ns"] - ns0       # KiB sent by the SyncSource
        assert pair.data(pair.a, name) == pair.data(pair.b, name)
        last = pair.b.call("status", name=name)["peer"]["last_resync"]
        assert last["total_kib"] == 4096
        if csums:
            assert last["equal_kib"] == 4096 and last["transferred_kib"] == 0
            assert "100 % had equal checksums, eliminated: 4096K" in log_of(pair.b)
    # plain resync sends the 4 MiB again; checksum-based sends (almost) nothing
    assert moved["r1"] >= 4096
    assert moved["r0"] < 64, moved


def test_verify_while_two_primaries_write_reports_nothing(pair):
    """Writes from both sides during a verify are not differences (the `applied` mark):
    a verify over two busy primaries finds no block out of sync."""
    synced_pair(pair, size="16M", resync_rate=8 * MiB, allow_two_primaries=True)
    pair.b.call("primary", name="r0")
    sa = pair.a.call("status", name="r0")["socket"]
    sb = pair.b.call("status", name="r0")["socket"]

    async def writer(sock: str, stop: asyncio.Event, seed: int) -> int:
        c = await NbdClient.connect(sock, "r0")
        n = 0
        try:
            while not stop.is_set():
                off = ((seed * 7919 + n * 104729) % 4000) * 4096
                await asyncio.gather(*(c.write((off + k * 4096) % (16 * MiB),
                                               os.urandom(4096)) for k in range(8)))
                n += 1
        finally:
            await c.close()
        return n

    async def scenario() -> int:
        stop = asyncio.Event()
        writers = [asyncio.ensure_future(writer(sa, stop, 1)),
                   asyncio.ensure_future(writer(sb, stop, 2))]
        await asyncio.sleep(0.2)
        await asyncio.to_thread(pair.a.call, "verify", name="r0")
        await asyncio.to_thread(wait_for, pair.a, connected, "r0", 60)
        stop.set()
        return sum(await asyncio.gather(*writers))

    batches = asyncio.run(scenario())
    st = pair.a.call("status", name="r0")
    assert st["verify"]["finished"] and st["verify"]["verified_kib"] == 16 * 1024
    assert st["verify"]["found_blocks"] == 0, st["verify"]
    assert wait_for(pair.b, connected)["verify"]["found_blocks"] == 0
    assert batches > 20, "the writers hardly ran during the verify"
    wait_for(pair.a, in_sync)
    assert pair.identical()
