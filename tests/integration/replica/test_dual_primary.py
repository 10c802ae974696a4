"""Dual-primary (`allow_two_primaries`, protocol C): two real engines, both Primary, NBD
clients writing on both sides, the live-migration hand-over, link loss with two primaries
(split brain; quorum fencing), and the refusals."""

from __future__ import annotations

import asyncio
import os
import random
import signal

import pytest

from binome.lab.nbd_client import NbdClient, NbdError
from binome.storage.replica.core import nbd_protocol as nbdp
from binome.storage.replica.engine import control
from tests.integration.replica.pairs import (
    MiB,
    Pair,
    in_sync,
    log_of,
    standalone,
    synced_pair,
    wait_for,
)

KiB = 1024


def both_primary(pair: Pair, **kw) -> tuple[str, str]:
    synced_pair(pair, allow_two_primaries=True, **kw)
    st = pair.b.call("primary", name="r0")
    assert (st["role"], st["peer_role"]) == ("Primary", "Primary")
    wait_for(pair.a, lambda s: s["peer_role"] == "Primary")
    return (pair.a.call("status", name="r0")["socket"], st["socket"])


def test_two_primaries_interleaved_writes_land_identically(pair):
    """Both sides write (and trim, and zero) at once, overlapping ranges included: the
    replicas end identical."""
    sa, sb = both_primary(pair)
    rng = random.Random(4)

    def writes(n: int) -> list[tuple[int, bytes]]:
        out = []
        for _ in range(n):
            # a hot 256 KiB area both sides hit (conflicts), and disjoint areas
            if rng.random() < 0.6:
                off = rng.randrange(0, 256 * KiB - 16 * KiB, 512)
            else:
                off = rng.randrange(MiB, 8 * MiB - 16 * KiB, 4096)
            out.append((off, os.urandom(rng.choice((512, 4096, 8192, 12288)))))
        return out

    async def client(sock: str, ws: list[tuple[int, bytes]]) -> None:
        c = await NbdClient.connect(sock, "r0")

        def op(i: int, o: int, d: bytes):
            # one request in ten discards instead (TRIM, WRITE_ZEROES): conflicts too
            if i % 10 == 3:
                return c.trim(o, len(d))
            if i % 10 == 7:
                return c.write_zeroes(o, len(d), no_hole=True)
            return c.write(o, d)
        try:
            for i in range(0, len(ws), 16):        # 16 in flight
                await asyncio.gather(*(op(i + j, o, d)
                                       for j, (o, d) in enumerate(ws[i:i + 16])))
            await c.flush()
        finally:
            await c.close()

    async def scenario() -> None:
        await asyncio.gather(client(sa, writes(600)), client(sb, writes(600)))

    asyncio.run(scenario())
    sta = wait_for(pair.a, in_sync)
    stb = wait_for(pair.b, in_sync)
    assert pair.identical(), "the replicas diverged"
    assert sta["bitmap_bits"] == stb["bitmap_bits"] == 0
    assert (sta["role"], sta["peer_role"]) == ("Primary", "Primary")
    # the side that resolves conflicts (the listener: higher address) counts them
    print("conflicts resolved:", sta["peer"]["conflicts"], stb["peer"]["conflicts"])


def test_live_migration_hand_over_keeps_replicas_equal(pair):
    """Source writes, target promotes and takes over the writes, source demotes."""
    sa, sb = both_primary(pair)

    async def scenario() -> None:
        src = await NbdClient.connect(sa, "r0")
        for i in range(64):
            await src.write(i * 64 * KiB, os.urandom(64 * KiB))
        dst = await NbdClient.connect(sb, "r0")       # the target opens while the source runs
        for i in range(16):
            await src.write(i * 4096, os.urandom(4096))
        await src.flush()
        # what the source wrote is visible on the target at once (protocol C)
        assert await dst.read(0, 4 * MiB) == await src.read(0, 4 * MiB)
        await src.close()                              # the source guest stops
        await asyncio.to_thread(pair.a.call, "secondary", name="r0")
        for i in range(32):
            await dst.write(2 * MiB + i * 8192, os.urandom(8192))
        await dst.flush()
        await dst.close()

    asyncio.run(scenario())
    st = wait_for(pair.a, in_sync)
    assert (st["role"], st["peer_role"]) == ("Secondary", "Primary")
    wait_for(pair.b, in_sync)
    assert pair.identical()
    # the source, now Secondary, refuses I/O again
    with pytest.raises(Exception, match="Secondary"):
        asyncio.run(NbdClient.connect(sa, "r0"))


def test_two_primaries_refused_without_config_or_with_protocol_a_b(pair):
    for proto in ("A", "B"):
        with pytest.raises(control.ControlError, match="allow-two-primaries requires protocol C"):
            pair.a.call("create", name=f"p{proto}", size="4M", address="127.0.0.1:7001",
                        peer_address="127.0.0.1:7002", secret="s", protocol=proto,
                        allow_two_primaries=True)
    synced_pair(pair)
    with pytest.raises(control.ControlError, match=r"\(-1\) Multiple primaries not allowed"):
        pair.b.call("primary", name="r0")
    assert pair.b.call("status", name="r0")["role"] == "Secondary"


def test_link_loss_with_two_primaries_is_a_split_brain(pair):
    """Without fencing both go on writing: reconnecting finds a split brain (after-sb-2pri
    disconnect), resolved by hand: one demotes and discards its data, a resync follows."""
    sa, sb = both_primary(pair)
    pair.a.call("disconnect", name="r0")
    wait_for(pair.b, lambda s: s["peer_disk"] == "DUnknown")

    async def write(sock: str, off: int) -> None:
        c = await NbdClient.connect(sock, "r0")
        try:
            await c.write(off, os.urandom(8192))
            await c.flush()
        finally:
            await c.close()

    asyncio.run(write(sa, 0))
    asyncio.run(write(sb, MiB))
    pair.a.call("connect", name="r0")
    wait_for(pair.a, standalone)
    wait_for(pair.b, standalone)
    assert "Split-Brain detected but unresolved" in log_of(pair.a)
    # the victim: B demotes and discards its changes
    pair.b.call("secondary", name="r0")
    pair.b.call("connect", name="r0", discard_my_data=True)
    pair.a.call("connect", name="r0")
    wait_for(pair.b, in_sync)
    wait_for(pair.a, in_sync)
    assert pair.identical()


def test_link_loss_with_two_primaries_under_quorum_fencing(pair):
    """Both primaries suspend their writes; the side the cluster fenced fails them (EIO),
    the other resumes."""
    sa, sb = both_primary(pair, fencing="quorum")
    pair.a.call("disconnect", name="r0")
    assert wait_for(pair.a, lambda s: s["suspended"])["peer_disk"] == "DUnknown"
    wait_for(pair.b, lambda s: s["suspended"])

    async def scenario() -> None:
        ca = await NbdClient.connect(sa, "r0")
        cb = await NbdClient.connect(sb, "r0")
        try:
            wa = asyncio.ensure_future(ca.write(0, os.urandom(4096)))
            wb = asyncio.ensure_future(cb.write(0, os.urandom(4096)))
            done, _ = await asyncio.wait({wa, wb}, timeout=0.5)
            assert not done, "a write completed while the peer's disk was unknown"
            # the daemon on A won the race for quorum: B is Outdated, A resumes
            await asyncio.to_thread(pair.a.call, "peer-outdated", name="r0", by="alpha")
            await asyncio.to_thread(pair.b.call, "outdated-by-peer", name="r0", by="alpha")
            async with asyncio.timeout(5):
                await wa
            with pytest.raises(NbdError) as info:
                await wb
            assert info.value.error == nbdp.NBD_EIO
        finally:
            await ca.close()
            await cb.close()

    asyncio.run(scenario())
    assert pair.b.call("status", name="r0")["disk"] == "Outdated"
    # B gives up its role; reconnected it is resynced from A
    pair.b.call("secondary", name="r0")
    pair.b.call("connect", name="r0")
    pair.a.call("connect", name="r0")
    wait_for(pair.b, in_sync)
    wait_for(pair.a, in_sync)
    assert pair.identical()


def test_link_blip_with_writes_in_flight_and_two_primaries(pair):
    """Quorum fencing, both Primary, the link drops with A's writes unacknowledged and comes
    back before any fencing decision: equal generations with bits, but the would-be
    SyncTarget is Primary, so it refuses (rr-conflict, StandAlone) and A keeps waiting for
    it. Once B demotes, a reconnect resyncs A's writes to B."""
    sa, _ = both_primary(pair, fencing="quorum")
    writes = [(i * 65536, os.urandom(4096)) for i in range(8)]

    async def scenario() -> None:
        c = await NbdClient.connect(sa, "r0")
        try:
            os.kill(pair.b.handle.pid, signal.SIGSTOP)
            try:
                pending = [asyncio.ensure_future(c.write(o, d)) for o, d in writes]
                done, _ = await asyncio.wait(pending, timeout=0.3)
                assert not done
                await asyncio.to_thread(pair.a.call, "disconnect", name="r0")
            finally:
                os.kill(pair.b.handle.pid, signal.SIGCONT)
            st = await asyncio.to_thread(pair.a.call, "status", name="r0")
            assert st["suspended"] and st["bitmap_bits"] == len(writes)
            await asyncio.to_thread(pair.a.call, "connect", name="r0")
            # B refuses (rr-conflict) and goes StandAlone; A, the would-be source, waits
            await asyncio.to_thread(wait_for, pair.b, standalone)
            # the held writes complete once the peer is known again (fenced here)
            await asyncio.to_thread(pair.a.call, "peer-outdated", name="r0", by="alpha")
            async with asyncio.timeout(10):
                await asyncio.gather(*pending)
        finally:
            await c.close()

    asyncio.run(scenario())
    assert "I shall become SyncTarget, but I am primary!" in log_of(pair.b)
    pair.b.call("secondary", name="r0")
    pair.b.call("connect", name="r0")
    wait_for(pair.b, in_sync)
    wait_for(pair.a, in_sync)
    assert pair.identical()
