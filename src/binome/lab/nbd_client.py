"""A small asyncio NBD client: fixed-newstyle negotiation, pipelined requests.

Used by the tests (checksum oracle, protocol edge cases) and the NBD benchmark
(bench/nbd_bench.py), never by production code (hence in `lab`). Requests may
be issued concurrently; a reader task matches replies to requests by cookie,
simple or structured.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import struct
from dataclasses import dataclass, field

from binome.storage.replica.core import nbd_protocol as p


class NbdError(Exception):
    def __init__(self, error: int, message: str = "") -> None:
        super().__init__(f"NBD error {error}" + (f": {message}" if message else ""))
        self.error = error


class NbdOptionError(Exception):
    def __init__(self, option: int, reply: int, message: str) -> None:
        super().__init__(f"option {option} refused with {reply:#x}: {message}")
        self.option = option
        self.reply = reply


@dataclass
class _Pending:
    cmd: int
    offset: int
    length: int
    future: asyncio.Future
    chunks: list[tuple[int, bytes]] = field(default_factory=list)
    extents: list[tuple[int, int]] = field(default_factory=list)
    error: NbdError | None = None


class NbdClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.size = 0
        self.flags = 0
        self.structured = False
        self.contexts: dict[int, str] = {}
        self.handshake_flags = 0
        self._cookies = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._reader_task: asyncio.Task | None = None

    # --- connection and negotiation ---------------------------------------------------

    @classmethod
    async def open_unix(cls, path: str) -> NbdClient:
        reader, writer = await asyncio.open_unix_connection(path, limit=64 * 1024 * 1024)
        client = cls(reader, writer)
        await client._greeting()
        return client

    @classmethod
    async def connect(cls, path: str, export: str = "", *, structured: bool = True,
                      contexts: tuple[str, ...] = ()) -> NbdClient:
        """Connect, negotiate and enter transmission with NBD_OPT_GO."""
        client = await cls.open_unix(path)
        try:
            if structured:
                await client.option(p.OPT_STRUCTURED_REPLY)
                client.structured = True
            if contexts:
                await client.set_meta_context(export, list(contexts))
            await client.go(export)
        except BaseException:
            await client.close()
            raise
        return client

    async def _greeting(self) -> None:
        magic, opt, hflags = struct.unpack(">QQH", await self.reader.readexactly(18))
        if magic != p.NBDMAGIC or opt != p.IHAVEOPT:
            raise ConnectionError("not a fixed-newstyle NBD server")
        self.handshake_flags = hflags
        self.writer.write(struct.pack(">I", p.FLAG_C_FIXED_NEWSTYLE | p.FLAG_C_NO_ZEROES))

    def send_option(self, option: int, data: bytes = b"") -> None:
        self.writer.write(p.OPTION_HDR.pack(p.IHAVEOPT, option, len(data)) + data)

    async def read_option_reply(self) -> tuple[int, int, bytes]:
        magic, option, reply, length = p.OPTION_REPLY_HDR.unpack(
            await self.reader.readexactly(p.OPTION_REPLY_HDR.size))
        if magic != p.OPT_REPLY_MAGIC:
            raise ConnectionError("bad option reply magic")
        return option, reply, await self.reader.readexactly(length)

    async def option(self, option: int, data: bytes = b"") -> list[tuple[int, bytes]]:
        """Send an option; return its replies up to the final ACK; raise on an error reply."""
        self.send_option(option, data)
        replies: list[tuple[int, bytes]] = []
        while True:
            opt, reply, payload = await self.read_option_reply()
            if opt != option:
                raise ConnectionError(f"reply for option {opt}, expected {option}")
            if reply & (1 << 31):
                raise NbdOptionError(option, reply, payload.decode(errors="replace"))
            if reply == p.REP_ACK:
                return replies
            replies.append((reply, payload))

    async def list_exports(self) -> list[str]:
        names = []
        for reply, data in await self.option(p.OPT_LIST):
            if reply == p.REP_SERVER:
                (n,) = struct.unpack_from(">I", data)
                names.append(data[4:4 + n].decode())
        return names

    @staticmethod
    def _meta_payload(export: str, queries: list[str]) -> bytes:
        name = export.encode()
        body = struct.pack(">I", len(name)) + name + struct.pack(">I", len(queries))
        for q in queries:
            body += struct.pack(">I", len(q.encode())) + q.encode()
        return body

    async def list_meta_context(self, export: str, queries: list[str]) -> list[str]:
        replies = await self.option(p.OPT_LIST_META_CONTEXT, self._meta_payload(export, queries))
        return [d[4:].decode() for r, d in replies if r == p.REP_META_CONTEXT]

    async def set_meta_context(self, export: str, queries: list[str]) -> dict[int, str]:
        replies = await self.option(p.OPT_SET_META_CONTEXT, self._meta_payload(export, queries))
        self.contexts = {struct.unpack_from(">I", d)[0]: d[4:].decode()
                         for r, d in replies if r == p.REP_META_CONTEXT}
        return self.contexts

    async def info(self, export: str = "", *, go: bool = False,
                   requests: tuple[int, ...] = (p.INFO_BLOCK_SIZE,)) -> dict[int, bytes]:
        name = export.encode()
        data = (struct.pack(">I", len(name)) + name + struct.pack(">H", len(requests))
                + b"".join(struct.pack(">H", r) for r in requests))
        infos: dict[int, bytes] = {}
        for reply, payload in await self.option(p.OPT_GO if go else p.OPT_INFO, data):
            if reply == p.REP_INFO:
                (kind,) = struct.unpack_from(">H", payload)
                infos[kind] = payload[2:]
        if p.INFO_EXPORT in infos:
            self.size, self.flags = struct.unpack(">QH", infos[p.INFO_EXPORT])
        return infos

    async def go(self, export: str = "") -> None:
        await self.info(export, go=True)
        self._start()

    async def export_name(self, export: str = "") -> None:
        self.send_option(p.OPT_EXPORT_NAME, export.encode())
        self.size, self.flags = struct.unpack(">QH", await self.reader.readexactly(10))
        self._start()

    def _start(self) -> None:
        self._reader_task = asyncio.get_running_loop().create_task(self._read_replies())

    # --- transmission -----------------------------------------------------------------

    def _request(self, cmd: int, offset: int, length: int, flags: int = 0,
                 payload: bytes | memoryview = b"") -> asyncio.Future:
        cookie = next(self._cookies)
        fut = asyncio.get_running_loop().create_future()
        self._pending[cookie] = _Pending(cmd, offset, length, fut)
        self.writer.write(p.REQUEST.pack(p.REQUEST_MAGIC, flags, cmd, cookie, offset, length))
        if payload:
            self.writer.write(payload)
        return fut

    async def read(self, offset: int, length: int, *, flags: int = 0) -> bytes:
        return await self._request(p.CMD_READ, offset, length, flags)

    async def write(self, offset: int, data: bytes, *, fua: bool = False) -> None:
        await self._request(p.CMD_WRITE, offset, len(data), p.CMD_FLAG_FUA if fua else 0, data)
        await self.writer.drain()

    async def flush(self) -> None:
        await self._request(p.CMD_FLUSH, 0, 0)

    async def trim(self, offset: int, length: int, *, fua: bool = False) -> None:
        await self._request(p.CMD_TRIM, offset, length, p.CMD_FLAG_FUA if fua else 0)

    async def write_zeroes(self, offset: int, length: int, *, no_hole: bool = False,
                           fast: bool = False, fua: bool = False) -> None:
        flags = ((p.CMD_FLAG_NO_HOLE if no_hole else 0) | (p.CMD_FLAG_FAST_ZERO if fast else 0)
                 | (p.CMD_FLAG_FUA if fua else 0))
        await self._request(p.CMD_WRITE_ZEROES, offset, length, flags)

    async def block_status(self, offset: int, length: int, *,
                           req_one: bool = False) -> list[tuple[int, int]]:
        return await self._request(p.CMD_BLOCK_STATUS, offset, length,
                                   p.CMD_FLAG_REQ_ONE if req_one else 0)

    async def command(self, cmd: int, offset: int, length: int, flags: int = 0) -> object:
        """Any command, for protocol tests (e.g. an unknown command number)."""
        return await self._request(cmd, offset, length, flags)

    def send_disc(self) -> None:
        """Send NBD_CMD_DISC; replies to earlier requests still arrive, then the server hangs up."""
        self.writer.write(p.REQUEST.pack(p.REQUEST_MAGIC, 0, p.CMD_DISC, 0, 0, 0))

    async def closed_by_server(self) -> None:
        """Wait until the server closed the connection (the reply reader saw EOF)."""
        if self._reader_task is not None:
            await asyncio.shield(self._reader_task)

    async def disconnect(self) -> None:
        self.send_disc()
        await self.writer.drain()
        await self.close()

    async def close(self) -> None:
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader_task
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()
        for pend in self._pending.values():
            if not pend.future.done():
                pend.future.set_exception(ConnectionError("NBD connection closed"))

    async def _read_replies(self) -> None:
        rd = self.reader
        try:
            while True:
                (magic,) = struct.unpack(">I", await rd.readexactly(4))
                if magic == p.SIMPLE_REPLY_MAGIC:
                    error, cookie = struct.unpack(">IQ", await rd.readexactly(12))
                    pend = self._pending.pop(cookie)
                    if error:
                        pend.future.set_exception(NbdError(error))
                    elif pend.cmd == p.CMD_READ:
                        pend.future.set_result(await rd.readexactly(pend.length))
                    else:
                        pend.future.set_result(None)
                elif magic == p.STRUCTURED_REPLY_MAGIC:
                    flags, kind, cookie, length = struct.unpack(">HHQI", await rd.readexactly(16))
                    payload = await rd.readexactly(length)
                    self._chunk(cookie, flags, kind, payload)
                else:
                    raise ConnectionError(f"bad reply magic {magic:#x}")
        except (asyncio.IncompleteReadError, ConnectionError) as e:
            for pend in self._pending.values():
                if not pend.future.done():
                    pend.future.set_exception(ConnectionError(f"NBD connection lost: {e}"))
            self._pending.clear()

    def _chunk(self, cookie: int, flags: int, kind: int, payload: bytes) -> None:
        pend = self._pending[cookie]
        if kind == p.REPLY_TYPE_OFFSET_DATA:
            (offset,) = struct.unpack_from(">Q", payload)
            pend.chunks.append((offset, payload[8:]))
        elif kind == p.REPLY_TYPE_OFFSET_HOLE:
            offset, size = struct.unpack_from(">QI", payload)
            pend.chunks.append((offset, bytes(size)))
        elif kind == p.REPLY_TYPE_BLOCK_STATUS:
            n = (len(payload) - 4) // 8
            pend.extents.extend(struct.unpack_from(">II", payload, 4 + 8 * i) for i in range(n))
        elif kind in (p.REPLY_TYPE_ERROR, p.REPLY_TYPE_ERROR_OFFSET):
            error, mlen = struct.unpack_from(">IH", payload)
            pend.error = NbdError(error, payload[6:6 + mlen].decode(errors="replace"))
        if not flags & p.REPLY_FLAG_DONE:
            return
        del self._pending[cookie]
        if pend.error is not None:
            pend.future.set_exception(pend.error)
        elif pend.cmd == p.CMD_READ:
            pend.future.set_result(self._assemble(pend))
        elif pend.cmd == p.CMD_BLOCK_STATUS:
            pend.future.set_result(pend.extents)
        else:
            pend.future.set_result(None)

    @staticmethod
    def _assemble(pend: _Pending) -> bytes:
        buf = bytearray(pend.length)
        for off, data in pend.chunks:
            rel = off - pend.offset
            if rel < 0 or rel + len(data) > pend.length:
                raise ConnectionError("read chunk outside the requested range")
            buf[rel:rel + len(data)] = data
        return bytes(buf)
