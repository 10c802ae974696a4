"""Writes while disconnected mark the dirty bitmap (4 KiB blocks), in memory and on disk,
and the activity log brings them back after a crash."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

from binome.lab.nbd_client import NbdClient
from binome.storage.replica.core.states import MetaFlags
from binome.storage.replica.engine.meta import MetaFile
from binome.storage.replica.node import supervisor
from tests.integration.replica.conftest import make_volume_factory

MiB = 1 << 20


def runs(engine, name):
    return [tuple(r) for r in engine.call("bitmap", name=name)["runs"]]


async def test_written_blocks_are_marked_exactly(volume, engine):
    vol = volume("64M")
    assert engine.call("bitmap", name=vol.name)["weight"] == 0
    c = await NbdClient.connect(vol.socket, vol.name)
    try:
        await c.write(0, b"a" * 4096)                   # block 0
        await c.write(10 * 4096 + 100, b"b" * 10)       # inside block 10
        await c.write(20 * 4096 - 1, b"c" * 2)          # straddles blocks 19 and 20
        await c.write(MiB, b"d" * MiB)                  # blocks 256..511 (direct mode)
        await c.trim(8 * MiB, 8192)                     # 2048..2049
        await c.write_zeroes(9 * MiB + 4096, 4096)      # 2305
        await c.write(63 * MiB + 1, b"e" * (MiB - 1))   # the last 256 blocks, unaligned
        await c.read(32 * MiB, 4 * MiB)                 # reads mark nothing
    finally:
        await c.close()
    expected = [(0, 1), (10, 1), (19, 2), (256, 256), (2048, 2), (2305, 1), (16128, 256)]
    assert runs(engine, vol.name) == expected
    status = engine.call("status", name=vol.name)
    assert status["out_of_sync_kib"] == 519 * 4
    assert status["cstate"] == "StandAlone" and status["peer_disk"] == "DUnknown"
    # The same bits reach the metadata file.
    engine.call("write-bitmap", name=vol.name)
    meta = MetaFile.open(engine.state_dir / "volumes" / vol.name / "meta")
    try:
        assert list(meta.bitmap.runs()) == expected
    finally:
        meta.close()


def test_bitmap_granularity_is_configurable(volume, engine):
    vol = volume("64M", bm_block_size=65536)
    asyncio.run(_write(vol.socket, vol.name, [(70_000, 10), (MiB, 4096)]))
    assert engine.call("bitmap", name=vol.name)["block_size"] == 65536
    assert runs(engine, vol.name) == [(1, 1), (16, 1)]


async def _write(sock: str, name: str, writes: list[tuple[int, int]]) -> None:
    c = await NbdClient.connect(sock, name)
    try:
        for off, length in writes:
            await c.write(off, os.urandom(length))
        await c.flush()
    finally:
        await c.close()


def test_clean_down_and_up_keeps_the_bitmap(volume, engine):
    vol = volume("64M")
    asyncio.run(_write(vol.socket, vol.name, [(4096 * 7, 4096), (40 * MiB, 8192)]))
    engine.call("down", name=vol.name)
    st = engine.call("up", name=vol.name)
    assert st["role"] == "Secondary" and st["disk"] == "UpToDate"
    assert not st["crashed_primary"]
    assert runs(engine, vol.name) == [(7, 1), (10240, 2)]


def test_crashed_primary_resyncs_only_its_hot_extents(fresh_engine):
    """SIGKILL the engine while Primary: after restart the volume is a crashed primary and
    every extent of the activity log is marked out of sync (apply-al), nothing else."""
    make, _ = make_volume_factory(fresh_engine)
    vol = make("256M", al_extents=7)              # DRBD's minimum: forces evictions
    writes = [(e * 4 * MiB + 4096 * e, 4096) for e in range(0, 40, 3)]  # 14 extents
    asyncio.run(_write(vol.socket, vol.name, writes))
    written_bits = {off // 4096 for off, _ in writes}
    st = fresh_engine.call("status", name=vol.name)
    assert st["al_hot"] == 7 and st["counters"]["al"] >= 14
    meta_path = fresh_engine.state_dir / "volumes" / vol.name / "meta"
    m = MetaFile.open(meta_path)
    try:
        hot_before = sorted(e for e in m.al_table if e != 0xFFFFFFFF)
    finally:
        m.close()
    os.kill(fresh_engine.handle.pid, signal.SIGKILL)
    fresh_engine.handle.process.wait()
    fresh_engine.handle = asyncio.run(supervisor.ensure_engine(fresh_engine.state_dir))
    st = fresh_engine.call("up", name=vol.name)
    assert st["crashed_primary"] and st["disk"] == "UpToDate"
    bits = set()
    for first, count in runs(fresh_engine, vol.name):
        bits.update(range(first, first + count))
    assert written_bits <= bits
    # Only the hot extents (1024 bits each) plus bits flushed on eviction are marked.
    hot_bits = {b for e in hot_before for b in range(e * 1024, (e + 1) * 1024)}
    assert bits == hot_bits | written_bits
    assert len(hot_before) == 7
    m = MetaFile.open(meta_path)
    try:
        assert m.sb.flags & MetaFlags.CRASHED_PRIMARY
    finally:
        m.close()


def test_metadata_reflects_roles_and_generations(volume, engine):
    vol = volume("16M", primary=False)
    meta_path = Path(engine.state_dir) / "volumes" / vol.name / "meta"

    def sb():
        m = MetaFile.open(meta_path)
        try:
            return m.sb
        finally:
            m.close()

    assert sb().gi.current == 4 and not sb().flags & MetaFlags.CONSISTENT
    engine.call("primary", name=vol.name, force=True)
    s = sb()
    assert s.gi.current & 1 and s.gi.bitmap == 4
    assert s.flags & (MetaFlags.PRIMARY_IND | MetaFlags.CONSISTENT | MetaFlags.WAS_UP_TO_DATE) \
        == MetaFlags.PRIMARY_IND | MetaFlags.CONSISTENT | MetaFlags.WAS_UP_TO_DATE
    current = s.gi.current
    engine.call("secondary", name=vol.name)
    assert sb().gi.current == current & ~1 and not sb().flags & MetaFlags.PRIMARY_IND
    # Promoting again while disconnected keeps the generation: the bitmap UUID is set.
    engine.call("primary", name=vol.name)
    assert sb().gi.current == current
    engine.call("secondary", name=vol.name)
    engine.call("outdate", name=vol.name)
    assert engine.call("status", name=vol.name)["disk"] == "Outdated"
    assert not sb().flags & MetaFlags.WAS_UP_TO_DATE
