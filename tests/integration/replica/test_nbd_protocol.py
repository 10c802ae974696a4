"""The NBD server against our asyncio client: negotiation edge cases, errors, a checksum oracle."""

from __future__ import annotations

import asyncio
import hashlib
import random
import struct

import pytest

from binome.lab.nbd_client import NbdClient, NbdError, NbdOptionError
from binome.storage.replica.core import nbd_protocol as p

MiB = 1 << 20


async def test_list_info_and_block_size(volume):
    vol = volume("16M")
    c = await NbdClient.open_unix(vol.socket)
    try:
        assert c.handshake_flags == p.FLAG_FIXED_NEWSTYLE | p.FLAG_NO_ZEROES
        assert await c.list_exports() == [vol.name]
        infos = await c.info(vol.name, requests=(p.INFO_BLOCK_SIZE, p.INFO_NAME,
                                                  p.INFO_DESCRIPTION))
        assert c.size == 16 * MiB
        assert struct.unpack(">III", infos[p.INFO_BLOCK_SIZE]) == (1, 4096, 32 * MiB)
        assert infos[p.INFO_NAME] == vol.name.encode()
        assert c.flags & (p.TF_HAS_FLAGS | p.TF_SEND_FLUSH | p.TF_SEND_FUA | p.TF_SEND_TRIM
                          | p.TF_SEND_WRITE_ZEROES | p.TF_CAN_MULTI_CONN) == 0x16D
        assert not c.flags & p.TF_SEND_DF          # no structured replies negotiated yet
        assert not c.flags & p.TF_READ_ONLY
        # INFO leaves option haggling open: GO on the default ("") export still works.
        await c.go("")
        await c.write(0, b"x" * 4096)
        assert await c.read(0, 4096) == b"x" * 4096
    finally:
        await c.close()


async def test_refusals_during_negotiation(volume):
    vol = volume("16M")
    c = await NbdClient.open_unix(vol.socket)
    try:
        with pytest.raises(NbdOptionError) as e:
            await c.info("nope")
        assert e.value.reply == p.REP_ERR_UNKNOWN
        for option in (p.OPT_STARTTLS, p.OPT_EXTENDED_HEADERS, 42):
            with pytest.raises(NbdOptionError) as e:
                await c.option(option)
            assert e.value.reply == p.REP_ERR_UNSUP
        with pytest.raises(NbdOptionError) as e:          # contexts need structured replies
            await c.list_meta_context(vol.name, [])
        assert e.value.reply == p.REP_ERR_INVALID
        with pytest.raises(NbdOptionError) as e:
            await c.option(p.OPT_LIST, b"junk")
        assert e.value.reply == p.REP_ERR_INVALID
        with pytest.raises(NbdOptionError) as e:
            await c.option(p.OPT_STRUCTURED_REPLY, b"junk")
        assert e.value.reply == p.REP_ERR_INVALID
        await c.option(p.OPT_STRUCTURED_REPLY)
        assert await c.list_meta_context(vol.name, []) == [p.BASE_ALLOCATION]
        assert await c.list_meta_context(vol.name, ["base:"]) == [p.BASE_ALLOCATION]
        assert await c.list_meta_context(vol.name, ["qemu:dirty-bitmap:x"]) == []
        assert await c.set_meta_context(vol.name, ["base:"]) == {}   # a namespace selects none
        # ABORT is acknowledged, then the server hangs up.
        assert await c.option(p.OPT_ABORT) == []
        assert await c.reader.read() == b""
    finally:
        await c.close()


async def test_go_refused_on_a_secondary(volume):
    vol = volume("16M", primary=False)
    c = await NbdClient.open_unix(vol.socket)
    try:
        with pytest.raises(NbdOptionError) as e:
            await c.go(vol.name)
        assert e.value.reply == p.REP_ERR_POLICY
        assert "Secondary" in str(e.value)
    finally:
        await c.close()


async def test_export_name_and_simple_replies(volume):
    vol = volume("16M")
    c = await NbdClient.open_unix(vol.socket)
    try:
        await c.export_name(vol.name)
        assert c.size == 16 * MiB
        await c.write(4096, b"\x42" * 8192, fua=True)
        assert await c.read(4096, 8192) == b"\x42" * 8192
        with pytest.raises(NbdError) as e:
            await c.read(16 * MiB - 512, 1024)
        assert e.value.error == p.NBD_EINVAL
        await c.flush()
    finally:
        await c.close()


async def test_transmission_errors_keep_the_connection_usable(volume):
    vol = volume("16M")
    c = await NbdClient.connect(vol.socket, vol.name)
    try:
        assert c.flags & p.TF_SEND_DF
        with pytest.raises(NbdError) as e:                 # structured error chunk
            await c.read(16 * MiB, 4096)
        assert e.value.error == p.NBD_EINVAL and "beyond the end" in str(e.value)
        with pytest.raises(NbdError) as e:                 # payload consumed, then ENOSPC
            await c.write(16 * MiB - 4096, b"z" * 8192)
        assert e.value.error == p.NBD_ENOSPC
        with pytest.raises(NbdError) as e:
            await c.command(99, 0, 0)
        assert e.value.error == p.NBD_EINVAL
        with pytest.raises(NbdError) as e:                 # no context negotiated
            await c.block_status(0, 4096)
        assert e.value.error == p.NBD_EINVAL
        with pytest.raises(NbdError):
            await c.trim(16 * MiB, 4096)
        await c.write(0, b"ok" * 2048)
        assert await c.read(0, 4096, flags=p.CMD_FLAG_DF) == b"ok" * 2048
    finally:
        await c.close()


async def test_block_status_base_allocation(volume):
    vol = volume("16M")
    c = await NbdClient.connect(vol.socket, vol.name, contexts=(p.BASE_ALLOCATION,))
    try:
        assert list(c.contexts.values()) == [p.BASE_ALLOCATION]
        await c.write(2 * MiB, b"d" * MiB)
        extents = await c.block_status(0, 16 * MiB)
        assert extents == [(2 * MiB, p.STATE_HOLE | p.STATE_ZERO), (MiB, 0),
                           (13 * MiB, p.STATE_HOLE | p.STATE_ZERO)]
        assert await c.block_status(0, 16 * MiB, req_one=True) == extents[:1]
        await c.trim(2 * MiB, MiB)
        assert await c.block_status(2 * MiB, MiB) == [(MiB, p.STATE_HOLE | p.STATE_ZERO)]
        assert await c.read(2 * MiB, MiB) == bytes(MiB)
    finally:
        await c.close()


async def test_largest_request_and_oversized_write(volume):
    vol = volume("64M")
    c = await NbdClient.connect(vol.socket, vol.name)
    try:
        big = random.randbytes(32 * MiB)
        await c.write(MiB, big)
        assert await c.read(MiB, 32 * MiB) == big
        with pytest.raises(NbdError) as e:
            await c.read(0, 32 * MiB + 1)
        assert e.value.error == p.NBD_EINVAL
        # A write larger than the advertised maximum is a protocol violation: hang up.
        with pytest.raises(ConnectionError):
            await c.write(0, bytes(32 * MiB + 4096))
    finally:
        await c.close()


async def test_disc_completes_inflight_requests(volume):
    """Requests sent before NBD_CMD_DISC are all answered, then the server hangs up."""
    vol = volume("16M")
    c = await NbdClient.connect(vol.socket, vol.name)
    futs = [asyncio.ensure_future(c.write(i * 65536, bytes([i]) * 65536)) for i in range(64)]
    await asyncio.sleep(0)          # every write request is on the wire ...
    c.send_disc()                   # ... before the disconnect
    await asyncio.gather(*futs)
    async with asyncio.timeout(10):
        await c.closed_by_server()
    await c.close()
    c = await NbdClient.connect(vol.socket, vol.name)
    try:
        for i in range(64):
            assert await c.read(i * 65536, 65536) == bytes([i]) * 65536
    finally:
        await c.close()


async def test_random_write_checksum_oracle_two_connections(volume, engine):
    """Pipelined random writes (512 B .. 1 MiB, FUA sometimes, trims, zeroes) on two
    connections at once (MULTI_CONN), each on its own half; the model and the export
    must then be identical, through NBD and in the backing file."""
    size = 64 * MiB
    vol = volume(size)
    model = bytearray(size)
    rng = random.Random(4242)
    clients = [await NbdClient.connect(vol.socket, vol.name) for _ in range(2)]

    async def worker(c: NbdClient, lo: int, hi: int) -> None:
        sem = asyncio.Semaphore(48)
        tasks = []

        async def one(coro):
            async with sem:
                await coro

        # Requests in flight at the same time never overlap (NBD leaves their order open).
        busy: list[tuple[int, int]] = []
        for _ in range(600):
            length = rng.choice([512, 4096, 4096, 12288, 65536, 262144, MiB])
            off = rng.randrange(lo, hi - length) // 512 * 512
            if any(off < e and s < off + length for s, e in busy):
                await asyncio.gather(*tasks)
                tasks.clear()
                busy.clear()
            busy.append((off, off + length))
            kind = rng.random()
            if kind < 0.8:
                data = rng.randbytes(length)
                model[off:off + length] = data
                coro = c.write(off, data, fua=rng.random() < 0.1)
            elif kind < 0.9:
                model[off:off + length] = bytes(length)
                coro = c.trim(off, length)
            else:
                model[off:off + length] = bytes(length)
                coro = c.write_zeroes(off, length, no_hole=rng.random() < 0.5)
            tasks.append(asyncio.ensure_future(one(coro)))
        await asyncio.gather(*tasks)
        await c.flush()

    try:
        await asyncio.gather(worker(clients[0], 0, size // 2), worker(clients[1], size // 2, size))
        got = hashlib.sha256()
        for off in range(0, size, 8 * MiB):
            got.update(await clients[0].read(off, 8 * MiB))
        assert got.hexdigest() == hashlib.sha256(model).hexdigest()
    finally:
        for c in clients:
            await c.close()
    backing = engine.state_dir / "volumes" / vol.name / "data.img"
    assert hashlib.sha256(backing.read_bytes()).hexdigest() == hashlib.sha256(model).hexdigest()
