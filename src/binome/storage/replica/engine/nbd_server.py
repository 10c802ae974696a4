"""The NBD server: fixed-newstyle negotiation and the transmission phase over asyncio.

One `NbdServer` listens on a unix socket (or TCP) and serves `Export`s; the
engine runs one per volume. Each connection is an `asyncio.BufferedProtocol`:
the kernel receives straight into a per-connection buffer, requests are parsed
in place (a small write's payload is handed to the export as a memoryview of
that buffer, no copy), and replies produced while handling one receive batch
go out in a single `transport.write`. Requests are pipelined: the export
completes most of them synchronously (page-cache I/O), the rest (flush, FUA,
cold activity-log extents, later the peer's acknowledgement) complete through
futures, and their replies are sent out of order as the protocol allows.

Large writes (>= 64 KiB) that do not fit the receive buffer switch the
connection to "direct" mode: the rest of the payload is received straight into
a buffer of its own, which the export may keep until the request completes.

Negotiation supports NBD_OPT_GO/INFO/EXPORT_NAME/LIST/ABORT/STRUCTURED_REPLY
and LIST/SET_META_CONTEXT with the `base:allocation` context; STARTTLS and
extended headers are answered NBD_REP_ERR_UNSUP.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import struct
from collections.abc import Callable
from typing import Protocol, cast

from binome.storage.replica.core import nbd_protocol as p
from binome.storage.replica.engine.completion import Pending

log = logging.getLogger("binome.replica.nbd")

RX_SIZE = 256 * 1024
DIRECT_MIN = 64 * 1024
MAX_OPTION = 64 * 1024
MAX_INFLIGHT = 256           # pause reading above this many unanswered async requests
BIG_REPLY = 64 * 1024        # replies at least this big are written on their own, not joined
BASE_ALLOCATION_ID = 1

_REQ = p.REQUEST
_REQ_SIZE = _REQ.size
_unpack_req = _REQ.unpack_from
_pack_simple = p.SIMPLE_REPLY.pack_into
_pack_struct = p.STRUCTURED_HDR.pack_into
_SIMPLE_MAGIC = p.SIMPLE_REPLY_MAGIC
_STRUCT_MAGIC = p.STRUCTURED_REPLY_MAGIC
_READ_HDR = p.READ_CHUNK_HEADER_SIZE

Reply = Pending | None  # what an export returns: None = done now, else a future


class Export(Protocol):
    """What the NBD server needs from a volume."""

    name: str
    size: int

    def description(self) -> str: ...
    def refuse_reason(self) -> str | None:
        """Why a client may not use the export now (None: it may)."""
    def opened(self) -> None: ...
    def closed(self) -> None: ...
    def read_into(self, offset: int, view: memoryview) -> Reply: ...
    def write(self, offset: int, data: memoryview, fua: bool) -> Reply: ...
    def trim(self, offset: int, length: int, fua: bool) -> Reply: ...
    def write_zeroes(self, offset: int, length: int, fua: bool, no_hole: bool,
                     fast: bool) -> Reply: ...
    def flush(self) -> Reply: ...
    def block_status(self, offset: int, length: int) -> list[tuple[int, int]]: ...


class NbdServer:
    """Serves exports to NBD clients on one listening socket."""

    def __init__(self, lookup: Callable[[str], Export | None],
                 listing: Callable[[], list[Export]]) -> None:
        self._lookup = lookup
        self._listing = listing
        self._server: asyncio.base_events.Server | None = None
        self.connections: set[NbdConnection] = set()
        self.pending: set[NbdConnection] = set()     # connections with replies to send
        # Called after each batch of requests is handled (the volume sends what the batch
        # queued for its peer then, in one write, before waiting for anything).
        self.after_batch: Callable[[], None] | None = None

    def flush_pending(self) -> None:
        """Send the replies completed so far now, not at the next loop iteration."""
        while self.pending:
            self.pending.pop()._flush_out()

    def export(self, name: str) -> Export | None:
        return self._lookup(name)

    def exports(self) -> list[Export]:
        return self._listing()

    def inflight(self) -> int:
        """Requests received and not yet answered, over every connection (DRBD's `ap:`)."""
        return sum(c._inflight for c in self.connections)

    async def start_unix(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(lambda: NbdConnection(self), path)
        os.chmod(path, 0o600)

    async def start_tcp(self, host: str, port: int) -> int:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: NbdConnection(self), host, port)
        return self._server.sockets[0].getsockname()[1]

    async def close(self, *, abort: bool = True) -> None:
        """Stop listening; drop (abort) or drain the open connections."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        conns = list(self.connections)
        for conn in conns:
            conn.abort() if abort else conn.drain_and_close()
        if conns:
            async with asyncio.timeout(30):
                await asyncio.gather(*(c.gone for c in conns))


class _Direct:
    """A large write whose payload is being received into its own buffer."""

    __slots__ = ("buf", "cookie", "filled", "flags", "length", "offset", "view")

    def __init__(self, length: int, flags: int, cookie: int, offset: int) -> None:
        self.buf = bytearray(length)
        self.view = memoryview(self.buf)
        self.filled = 0
        self.length = length
        self.flags = flags
        self.cookie = cookie
        self.offset = offset


_CLIENT_FLAGS, _OPTIONS, _TRANSMISSION, _CLOSED = range(4)


class NbdConnection(asyncio.BufferedProtocol):
    def __init__(self, server: NbdServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self._rx = bytearray(RX_SIZE)
        self._rxv = memoryview(self._rx)
        self._start = 0
        self._end = 0
        self._phase = _CLIENT_FLAGS
        self._direct: _Direct | None = None
        self._out: list[bytes | bytearray] = []
        self._flush_scheduled = False
        self._inflight = 0
        self._read_paused = False
        self._write_paused = False
        self._closing = False
        self._no_zeroes = False
        self._structured = False
        self._meta_export: str | None = None
        self._meta_contexts: list[str] = []
        self._base_allocation = False
        self.export: Export | None = None
        self._size = 0
        self._loop = asyncio.get_event_loop()
        self.gone: asyncio.Future = self._loop.create_future()

    # --- asyncio plumbing ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Not an isinstance check: uvloop's transports do not subclass asyncio's.
        t = cast(asyncio.Transport, transport)
        self.transport = t
        sock = t.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.connections.add(self)
        t.write(struct.pack(">QQH", p.NBDMAGIC, p.IHAVEOPT,
                                    p.FLAG_FIXED_NEWSTYLE | p.FLAG_NO_ZEROES))

    def connection_lost(self, exc: Exception | None) -> None:
        self._phase = _CLOSED
        self.server.connections.discard(self)
        if self.export is not None:
            self.export.closed()
            self.export = None
        if not self.gone.done():
            self.gone.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._update_reading()

    def _update_reading(self) -> None:
        t = self.transport
        if t is None or t.is_closing():
            return
        want_pause = self._write_paused or self._inflight >= MAX_INFLIGHT
        if want_pause and not self._read_paused:
            t.pause_reading()
            self._read_paused = True
        elif not want_pause and self._read_paused:
            t.resume_reading()
            self._read_paused = False

    def get_buffer(self, sizehint: int) -> memoryview:
        d = self._direct
        if d is not None:
            return d.view[d.filled:]
        if self._end == RX_SIZE:
            self._compact()
        return self._rxv[self._end:]

    def buffer_updated(self, nbytes: int) -> None:
        d = self._direct
        if d is not None:
            d.filled += nbytes
            if d.filled == d.length:
                self._direct = None
                self._run(d.cookie, self._write_direct, d)
                self._batch_done()
                self._flush_out()
            return
        self._end += nbytes
        try:
            if self._phase == _TRANSMISSION:
                self._requests()
            else:
                self._negotiate()
        except _ProtocolViolation as e:
            log.warning("nbd: closing connection: %s", e)
            self.abort()

    def _batch_done(self) -> None:
        hook = self.server.after_batch
        if hook is not None:
            hook()

    def eof_received(self) -> bool:
        return False

    def abort(self) -> None:
        self._phase = _CLOSED
        if self.transport is not None:
            self.transport.abort()

    def drain_and_close(self) -> None:
        self._closing = True
        if self._inflight == 0 and self.transport is not None:
            self.transport.close()

    def _compact(self) -> None:
        n = self._end - self._start
        if self._start:
            self._rx[:n] = self._rx[self._start:self._end]
        self._start, self._end = 0, n

    # --- negotiation --------------------------------------------------------------------

    def _negotiate(self) -> None:
        while self._phase in (_CLIENT_FLAGS, _OPTIONS):
            avail = self._end - self._start
            if self._phase == _CLIENT_FLAGS:
                if avail < 4:
                    return
                (cflags,) = struct.unpack_from(">I", self._rx, self._start)
                self._start += 4
                if cflags & ~(p.FLAG_C_FIXED_NEWSTYLE | p.FLAG_C_NO_ZEROES):
                    raise _ProtocolViolation(f"unknown client flags {cflags:#x}")
                self._no_zeroes = bool(cflags & p.FLAG_C_NO_ZEROES)
                self._phase = _OPTIONS
                continue
            if avail < p.OPTION_HDR.size:
                return
            magic, option, length = p.OPTION_HDR.unpack_from(self._rx, self._start)
            if magic != p.IHAVEOPT:
                raise _ProtocolViolation("bad option magic")
            if length > MAX_OPTION:
                raise _ProtocolViolation(f"option {option} too long ({length} bytes)")
            if avail < p.OPTION_HDR.size + length:
                if self._start + p.OPTION_HDR.size + length > RX_SIZE:
                    self._compact()
                return
            begin = self._start + p.OPTION_HDR.size
            data = bytes(self._rx[begin:begin + length])
            self._start = begin + length
            self._option(option, data)
        if self._start == self._end:
            self._start = self._end = 0
        if self._phase == _TRANSMISSION and self._end > self._start:
            self._requests()

    def _reply(self, option: int, reply: int, data: bytes = b"") -> None:
        assert self.transport is not None
        self.transport.write(p.option_reply(option, reply, data))

    def _error(self, option: int, reply: int, message: str) -> None:
        self._reply(option, reply, message.encode()[:p.MAX_STRING])

    def _option(self, option: int, data: bytes) -> None:
        if option == p.OPT_EXPORT_NAME:
            self._opt_export_name(data)
        elif option == p.OPT_ABORT:
            self._reply(option, p.REP_ACK)
            self._phase = _CLOSED
            assert self.transport is not None
            self.transport.close()
        elif option == p.OPT_LIST:
            if data:
                return self._error(option, p.REP_ERR_INVALID, "NBD_OPT_LIST takes no data")
            for exp in self.server.exports():
                name = exp.name.encode()
                self._reply(option, p.REP_SERVER,
                            struct.pack(">I", len(name)) + name + exp.description().encode())
            self._reply(option, p.REP_ACK)
        elif option in (p.OPT_INFO, p.OPT_GO):
            self._opt_info_go(option, data)
        elif option == p.OPT_STRUCTURED_REPLY:
            if data:
                return self._error(option, p.REP_ERR_INVALID,
                                   "NBD_OPT_STRUCTURED_REPLY takes no data")
            self._structured = True
            self._reply(option, p.REP_ACK)
        elif option in (p.OPT_LIST_META_CONTEXT, p.OPT_SET_META_CONTEXT):
            self._opt_meta(option, data)
        else:
            # STARTTLS, EXTENDED_HEADERS and anything unknown.
            self._error(option, p.REP_ERR_UNSUP, f"option {option} not supported")

    def _find(self, name: str) -> Export | None:
        return self.server.export(name)

    def _flags(self) -> int:
        flags = (p.TF_HAS_FLAGS | p.TF_SEND_FLUSH | p.TF_SEND_FUA | p.TF_SEND_TRIM
                 | p.TF_SEND_WRITE_ZEROES | p.TF_SEND_FAST_ZERO | p.TF_CAN_MULTI_CONN)
        if self._structured:
            flags |= p.TF_SEND_DF
        return flags

    def _opt_export_name(self, data: bytes) -> None:
        exp = self._find(data.decode("utf-8", "replace"))
        # NBD_OPT_EXPORT_NAME cannot answer an error: the protocol says hang up.
        if exp is None or exp.refuse_reason() is not None:
            self.abort()
            return
        assert self.transport is not None
        tail = b"" if self._no_zeroes else bytes(124)
        self.transport.write(struct.pack(">QH", exp.size, self._flags()) + tail)
        self._enter_transmission(exp, meta_export=None)

    def _opt_info_go(self, option: int, data: bytes) -> None:
        try:
            name, infos = p.parse_info_request(data)
        except p.OptionParseError as e:
            return self._error(option, p.REP_ERR_INVALID, str(e))
        exp = self._find(name)
        if exp is None:
            return self._error(option, p.REP_ERR_UNKNOWN, f"export '{name}' not present")
        reason = exp.refuse_reason()
        if reason is not None and option == p.OPT_GO:
            return self._error(option, p.REP_ERR_POLICY, reason)
        self._reply(option, p.REP_INFO, p.info_export(exp.size, self._flags()))
        if p.INFO_NAME in infos:
            self._reply(option, p.REP_INFO, struct.pack(">H", p.INFO_NAME) + exp.name.encode())
        if p.INFO_DESCRIPTION in infos:
            self._reply(option, p.REP_INFO,
                        struct.pack(">H", p.INFO_DESCRIPTION) + exp.description().encode())
        if p.INFO_BLOCK_SIZE in infos:
            self._reply(option, p.REP_INFO,
                        p.info_block_size(1, p.PREFERRED_BLOCK, p.MAX_REQUEST))
        self._reply(option, p.REP_ACK)
        if option == p.OPT_GO:
            self._enter_transmission(exp, meta_export=name)

    def _opt_meta(self, option: int, data: bytes) -> None:
        if not self._structured:
            return self._error(option, p.REP_ERR_INVALID,
                               "structured replies must be negotiated first")
        try:
            name, queries = p.parse_meta_request(data)
        except p.OptionParseError as e:
            return self._error(option, p.REP_ERR_INVALID, str(e))
        if self._find(name) is None:
            return self._error(option, p.REP_ERR_UNKNOWN, f"export '{name}' not present")
        listing = option == p.OPT_LIST_META_CONTEXT
        # We know one context. A bare namespace ("base:") only lists; it selects nothing.
        matched = False
        if listing and not queries:
            matched = True
        for q in queries:
            if q == p.BASE_ALLOCATION or (listing and q == "base:"):
                matched = True
        if matched:
            ctx_id = 0 if listing else BASE_ALLOCATION_ID
            self._reply(option, p.REP_META_CONTEXT,
                        struct.pack(">I", ctx_id) + p.BASE_ALLOCATION.encode())
        if not listing:
            self._meta_export = name
            self._base_allocation = matched
        self._reply(option, p.REP_ACK)

    def _enter_transmission(self, exp: Export, meta_export: str | None) -> None:
        if meta_export is None or meta_export != self._meta_export:
            # Contexts negotiated for another export do not carry over (NBD spec).
            self._base_allocation = False
        self.export = exp
        self._size = exp.size
        exp.opened()
        self._phase = _TRANSMISSION

    # --- transmission -------------------------------------------------------------------

    def _requests(self) -> None:
        rx = self._rx
        start, end = self._start, self._end
        exp = self.export
        assert exp is not None
        size = self._size
        while end - start >= _REQ_SIZE and not self._closing:
            magic, flags, cmd, cookie, offset, length = _unpack_req(rx, start)
            if magic != p.REQUEST_MAGIC:
                raise _ProtocolViolation(f"bad request magic {magic:#x}")
            if cmd == p.CMD_WRITE:
                total = _REQ_SIZE + length
                if end - start < total:
                    if length > p.MAX_REQUEST:
                        raise _ProtocolViolation(f"write of {length} bytes is too large")
                    if length >= DIRECT_MIN:
                        d = _Direct(length, flags, cookie, offset)
                        have = end - start - _REQ_SIZE
                        d.buf[:have] = rx[start + _REQ_SIZE:end]
                        d.filled = have
                        self._direct = d
                        start = end = 0
                    elif start + total > RX_SIZE:
                        self._start, self._end = start, end
                        self._compact()
                        start, end = self._start, self._end
                    break
                data = self._rxv[start + _REQ_SIZE:start + total]
                start += total
                if offset + length > size:
                    self._simple(cookie, p.NBD_ENOSPC)
                    continue
                self._inflight += 1
                try:
                    pending = exp.write(offset, data, bool(flags & p.CMD_FLAG_FUA))
                except OSError as e:
                    self._done(cookie, p.nbd_errno(e.errno))
                    continue
                if pending is None:
                    self._inflight -= 1
                    self._out.append(_simple_ok(cookie))
                else:
                    self._wait(cookie, pending)
                continue
            start += _REQ_SIZE
            if cmd == p.CMD_READ:
                self._read(flags, cookie, offset, length)
            elif cmd == p.CMD_FLUSH:
                self._run(cookie, exp.flush)
            elif cmd == p.CMD_TRIM:
                if self._range_ok(cookie, offset, length, p.NBD_EINVAL):
                    self._run(cookie, exp.trim, offset, length, bool(flags & p.CMD_FLAG_FUA))
            elif cmd == p.CMD_WRITE_ZEROES:
                if self._range_ok(cookie, offset, length, p.NBD_ENOSPC):
                    self._run(cookie, exp.write_zeroes, offset, length,
                              bool(flags & p.CMD_FLAG_FUA), bool(flags & p.CMD_FLAG_NO_HOLE),
                              bool(flags & p.CMD_FLAG_FAST_ZERO))
            elif cmd == p.CMD_BLOCK_STATUS:
                self._block_status(flags, cookie, offset, length)
            elif cmd == p.CMD_DISC:
                self._closing = True
            else:
                self._simple(cookie, p.NBD_EINVAL)
        if start == end:
            start = end = 0
        self._start, self._end = start, end
        self._batch_done()
        self._flush_out()
        if self._closing:
            self.drain_and_close()

    def _range_ok(self, cookie: int, offset: int, length: int, err: int) -> bool:
        if offset + length > self._size:
            self._simple(cookie, err)
            return False
        return True

    def _simple(self, cookie: int, error: int) -> None:
        self._out.append(p.simple_reply(cookie, error))

    def _run(self, cookie: int, fn: Callable[..., Reply], *args: object) -> None:
        """Run an export call whose answer is a bare status; reply now or on completion."""
        self._inflight += 1
        try:
            pending = fn(*args)
        except OSError as e:
            self._done(cookie, p.nbd_errno(e.errno))
            return
        if pending is None:
            self._done(cookie, 0)
        else:
            self._wait(cookie, pending)

    def _write_direct(self, d: _Direct) -> Reply:
        if d.offset + d.length > self._size:
            raise OSError(errno.ENOSPC, "write beyond the end of the export")
        assert self.export is not None
        return self.export.write(d.offset, d.view, bool(d.flags & p.CMD_FLAG_FUA))

    def _wait(self, cookie: int, pending: Pending) -> None:
        pending.add_done_callback(lambda f: self._completed(cookie, f))
        self._update_reading()

    def _completed(self, cookie: int, fut: Pending) -> None:
        if fut.cancelled():
            err = p.NBD_ESHUTDOWN
        else:
            exc = fut.exception()
            err = 0 if exc is None else p.nbd_errno(getattr(exc, "errno", None))
            if exc is not None and not isinstance(exc, OSError):
                log.error("nbd: request failed: %r", exc)
        self._done(cookie, err)
        self._schedule_flush()

    def _done(self, cookie: int, err: int) -> None:
        self._inflight -= 1
        if self._phase != _CLOSED:
            self._out.append(p.simple_reply(cookie, err))
        if self._read_paused:
            self._update_reading()
        if self._closing and self._inflight == 0:
            self._flush_out()
            self.drain_and_close()

    def _read(self, flags: int, cookie: int, offset: int, length: int) -> None:
        if offset + length > self._size or length > p.MAX_REQUEST:
            self._read_error(cookie, p.NBD_EINVAL, "read beyond the end of the export"
                             if length <= p.MAX_REQUEST else "read too large")
            return
        structured = self._structured
        hdr = _READ_HDR if structured else p.SIMPLE_REPLY.size
        buf = bytearray(hdr + length)
        assert self.export is not None
        self._inflight += 1
        try:
            pending = self.export.read_into(offset, memoryview(buf)[hdr:])
        except OSError as e:
            self._inflight -= 1
            self._read_error(cookie, p.nbd_errno(e.errno), str(e))
            return
        if structured:
            _pack_struct(buf, 0, _STRUCT_MAGIC, p.REPLY_FLAG_DONE, p.REPLY_TYPE_OFFSET_DATA,
                         cookie, 8 + length)
            struct.pack_into(">Q", buf, 20, offset)
        else:
            _pack_simple(buf, 0, _SIMPLE_MAGIC, 0, cookie)
        if pending is None:
            self._inflight -= 1
            self._send(buf)
            return

        def finished(fut: Pending) -> None:
            self._inflight -= 1
            exc = None if fut.cancelled() else fut.exception()
            if fut.cancelled() or exc is not None:
                self._read_error(cookie, p.nbd_errno(getattr(exc, "errno", None)), str(exc))
            else:
                self._send(buf)
            self._schedule_flush()
            if self._closing and self._inflight == 0:
                self.drain_and_close()

        pending.add_done_callback(finished)

    def _read_error(self, cookie: int, err: int, message: str) -> None:
        if self._structured:
            self._out.append(p.structured_error(cookie, err, message))
        else:
            self._out.append(p.simple_reply(cookie, err))

    def _block_status(self, flags: int, cookie: int, offset: int, length: int) -> None:
        if not self._base_allocation:
            self._read_error(cookie, p.NBD_EINVAL, "no metadata context negotiated")
            return
        if offset + length > self._size or length == 0:
            self._read_error(cookie, p.NBD_EINVAL, "block status beyond the end of the export")
            return
        assert self.export is not None
        try:
            extents = self.export.block_status(offset, length)
        except OSError as e:
            self._read_error(cookie, p.nbd_errno(e.errno), str(e))
            return
        if flags & p.CMD_FLAG_REQ_ONE:
            extents = extents[:1]
        self._out.append(p.block_status_reply(cookie, BASE_ALLOCATION_ID, extents))

    def _send(self, data: bytes | bytearray) -> None:
        if self._phase == _CLOSED:
            return
        if len(data) >= BIG_REPLY:
            self._flush_out()
            assert self.transport is not None
            self.transport.write(data)
        else:
            self._out.append(data)

    def _schedule_flush(self) -> None:
        # Completions that land in the same loop iteration share one write (or leave
        # earlier, when whoever completed them calls NbdServer.flush_pending).
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.server.pending.add(self)
            self._loop.call_soon(self._flush_out)

    def _flush_out(self) -> None:
        self._flush_scheduled = False
        self.server.pending.discard(self)
        out = self._out
        if not out:
            return
        self._out = []
        t = self.transport
        if t is None or self._phase == _CLOSED:
            return
        t.write(out[0] if len(out) == 1 else b"".join(out))


class _ProtocolViolation(Exception):
    pass



def _simple_ok(cookie: int) -> bytes:
    return p.SIMPLE_REPLY.pack(_SIMPLE_MAGIC, 0, cookie)
