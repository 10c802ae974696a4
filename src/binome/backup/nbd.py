"""A small synchronous NBD client for backups: read (and write) one export on a unix socket.

Owns the client side of the NBD protocol as far as a backup or restore needs it:
fixed-newstyle negotiation with `NBD_OPT_GO`, simple replies, `NBD_CMD_READ`,
`NBD_CMD_WRITE`, `NBD_CMD_FLUSH` and `NBD_CMD_DISC`, several reads in flight at once
(`read_ahead`, replies matched by handle); `NBD_OPT_STRUCTURED_REPLY` whenever the server
offers it (holes cost nothing on the socket) and, when meta contexts are asked for (an
incremental backup's `qemu:dirty-bitmap:<name>`), `NBD_OPT_SET_META_CONTEXT` and
`NBD_CMD_BLOCK_STATUS`. QEMU
(`block-export-add`) and `qemu-nbd` serve the exports: the fleecing view of a running
guest's disk, a stopped guest's qcow2 image, a qcow2 restore target. Synchronous
because the backup writer and the restore run in a worker thread. The lab's asyncio
client (`binome.lab.nbd_client`) is a test tool and may not be imported here.
"""

from __future__ import annotations

import socket
import struct
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

NBDMAGIC = b"NBDMAGIC"
IHAVEOPT = b"IHAVEOPT"
_OPT_REPLY_MAGIC = 0x3E889045565A9
_REQUEST_MAGIC = 0x25609513
_SIMPLE_REPLY_MAGIC = 0x67446698
_STRUCTURED_REPLY_MAGIC = 0x668E33EF
_FLAG_FIXED_NEWSTYLE = 1
_FLAG_NO_ZEROES = 2
_OPT_GO = 7
_OPT_STRUCTURED_REPLY = 8
_OPT_SET_META_CONTEXT = 10
_REP_ACK = 1
_REP_META_CONTEXT = 4
_REP_INFO = 3
_INFO_EXPORT = 0
_CMD_READ, _CMD_WRITE, _CMD_DISC, _CMD_FLUSH = 0, 1, 2, 3
_CMD_BLOCK_STATUS = 7
_REPLY_FLAG_DONE = 1
_REPLY_NONE, _REPLY_OFFSET_DATA, _REPLY_OFFSET_HOLE, _REPLY_BLOCK_STATUS = 0, 1, 2, 5
_REPLY_ERROR_BIT = 1 << 15
_REPLY_ERROR_OFFSET = _REPLY_ERROR_BIT + 2
# one block status request asks about at most this much (the length field is 32 bits)
_STATUS_STEP = 1 << 30
STATE_DIRTY = 1   # `qemu:dirty-bitmap:` contexts: bit 0 set = dirty
_TRANSMISSION_READ_ONLY = 1 << 1
# read requests a backup keeps in flight (4 MiB chunks: 16 MiB of socket and server work)
DEFAULT_READ_DEPTH = 4


@dataclass
class _Pending:
    """One request sent and not yet fully answered."""

    command: int
    offset: int
    length: int
    buffer: bytearray | None = None   # a read's, made (zeroed) at its first data reply
    done: bool = False

    def result(self) -> bytes:
        return bytes(self.data())

    def data(self) -> bytes | bytearray:
        """The read's data without a copy: the receive buffer itself, or for a read
        answered by holes only, one shared zero buffer of its length."""
        if self.buffer is not None:
            return self.buffer
        return _zeros(self.length) if self.command == _CMD_READ else b""


_zero_buffers: dict[int, bytes] = {}


def _zeros(length: int) -> bytes:
    zeros = _zero_buffers.get(length)
    if zeros is None:
        zeros = _zero_buffers.setdefault(length, bytes(length)) if len(_zero_buffers) < 8 \
            else bytes(length)
    return zeros


def parse_nbd_unix_uri(uri: str) -> tuple[str, str] | None:
    """(socket path, export name) of QEMU's `nbd+unix:///<export>?socket=<path>` URI
    (how a storage names an NBD export QEMU opens); None for anything else."""
    parts = urlsplit(uri)
    if parts.scheme != "nbd+unix":
        return None
    sockets = parse_qs(parts.query).get("socket")
    if not sockets or parts.netloc:
        return None
    return sockets[0], unquote(parts.path.lstrip("/"))


class NbdError(Exception):
    """The server refused the export or a request, or the connection broke."""


class NbdExport:
    """One negotiated NBD export; `size` is the export's size in bytes.

    `meta_contexts`: the block status contexts to negotiate (e.g.
    `qemu:dirty-bitmap:binome-backup-1a2b`); the server must know every one, else
    NbdError. Structured replies are negotiated whenever the server offers them (a read
    of an unallocated area then costs no data on the socket).
    """

    def __init__(self, path: str, name: str = "", timeout: float = 60.0,
                 meta_contexts: list[str] | None = None) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        self._handle = 0
        self._status_chunks: list[bytes] = []
        self.structured = False
        self.contexts: dict[str, int] = {}   # negotiated meta context name -> id
        try:
            self._sock.connect(path)
            self.size, self.read_only = self._negotiate(name, meta_contexts or [])
        except (OSError, NbdError) as error:
            self._sock.close()
            raise NbdError(f"NBD export '{name}' at {path}: {error}") from error

    def __enter__(self) -> NbdExport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _recv(self, length: int) -> bytes:
        data = bytearray()
        while len(data) < length:
            part = self._sock.recv(min(length - len(data), 1 << 20))
            if not part:
                raise NbdError("connection closed by the NBD server")
            data += part
        return bytes(data)

    def _recv_into(self, length: int) -> bytes:
        buffer = bytearray(length)
        self._recv_exact(memoryview(buffer))
        return bytes(buffer)

    def _recv_exact(self, view: memoryview) -> None:
        got, length = 0, len(view)
        while got < length:
            count = self._sock.recv_into(view[got:], length - got)
            if count == 0:
                raise NbdError("connection closed by the NBD server")
            got += count

    def _option(self, option: int, payload: bytes) -> None:
        self._sock.sendall(IHAVEOPT + struct.pack(">II", option, len(payload)) + payload)

    def _option_replies(self) -> Iterator[tuple[int, bytes]]:
        """(reply type, data) of one option until its ACK; NbdError on an error reply."""
        while True:
            magic, _option, reply, length = struct.unpack(">QIII", self._recv(20))
            if magic != _OPT_REPLY_MAGIC:
                raise NbdError("bad option reply magic")
            data = self._recv(length) if length else b""
            if reply & 0x80000000:
                raise NbdError(f"option refused: {data.decode(errors='replace') or hex(reply)}")
            if reply == _REP_ACK:
                return
            yield reply, data

    def _negotiate(self, name: str, meta_contexts: list[str]) -> tuple[int, bool]:
        if self._recv(8) != NBDMAGIC or self._recv(8) != IHAVEOPT:
            raise NbdError("not a fixed-newstyle NBD server")
        (server_flags,) = struct.unpack(">H", self._recv(2))
        if not server_flags & _FLAG_FIXED_NEWSTYLE:
            raise NbdError("the server does not speak fixed newstyle")
        self._sock.sendall(struct.pack(">I", _FLAG_FIXED_NEWSTYLE | (
            server_flags & _FLAG_NO_ZEROES)))
        encoded = name.encode()
        # structured replies send unallocated areas of a read as holes (no zero bytes on
        # the socket) and are needed for block status; a server that refuses them is
        # only fatal when meta contexts were asked for
        self._option(_OPT_STRUCTURED_REPLY, b"")
        try:
            for _reply in self._option_replies():
                pass
            self.structured = True
        except NbdError:
            if meta_contexts:
                raise
        if meta_contexts:
            queries = b"".join(struct.pack(">I", len(q.encode())) + q.encode()
                               for q in meta_contexts)
            self._option(_OPT_SET_META_CONTEXT, struct.pack(">I", len(encoded)) + encoded
                         + struct.pack(">I", len(meta_contexts)) + queries)
            for reply, data in self._option_replies():
                if reply == _REP_META_CONTEXT and len(data) >= 4:
                    (context_id,) = struct.unpack(">I", data[:4])
                    self.contexts[data[4:].decode(errors="replace")] = context_id
            missing = [q for q in meta_contexts if q not in self.contexts]
            if missing:
                raise NbdError(f"the server has no meta context {', '.join(missing)}")
        self._option(_OPT_GO, struct.pack(">I", len(encoded)) + encoded
                     + struct.pack(">H", 0))
        size, flags = -1, 0
        for reply, data in self._option_replies():
            if reply == _REP_INFO and len(data) >= 12:
                (info,) = struct.unpack(">H", data[:2])
                if info == _INFO_EXPORT:
                    size, flags = struct.unpack(">QH", data[2:12])
        if size < 0:
            raise NbdError("the server did not say the export's size")
        return size, bool(flags & _TRANSMISSION_READ_ONLY)

    def _send(self, command: int, offset: int, length: int, data: bytes = b"") -> int:
        self._handle += 1
        header = struct.pack(">IHHQQI", _REQUEST_MAGIC, 0, command, self._handle, offset,
                             length)
        self._sock.sendall(header + data if len(data) < 65536 else header)
        if len(data) >= 65536:
            self._sock.sendall(data)
        return self._handle

    def _request(self, command: int, offset: int, length: int, data: bytes = b"") -> bytes:
        """Send one request and take its whole reply (simple, or structured chunks for a
        read on a structured connection); a read's data is returned."""
        handle = self._send(command, offset, length, data)
        pending = {handle: _Pending(command, offset, length)}
        while not pending[handle].done:
            self._take_reply(pending)
        return pending[handle].result()

    def _take_reply(self, pending: dict[int, _Pending]) -> None:
        """Receive one simple reply or one structured reply chunk for any request in
        `pending` (the server may answer requests in flight in any order)."""
        (magic,) = struct.unpack(">I", self._recv(4))
        if magic == _SIMPLE_REPLY_MAGIC:
            error, got = struct.unpack(">IQ", self._recv(12))
            request = pending.get(got)
            if request is None:
                raise NbdError("unexpected NBD reply")
            if error:
                raise NbdError(f"NBD request {request.command} at {request.offset}+"
                               f"{request.length} failed: errno {error}")
            if request.command == _CMD_READ:
                request.buffer = bytearray(request.length)
                self._recv_exact(memoryview(request.buffer))
            request.done = True
            return
        if magic != _STRUCTURED_REPLY_MAGIC or not self.structured:
            raise NbdError("unexpected NBD reply")
        flags, kind, got, size = struct.unpack(">HHQI", self._recv(16))
        request = pending.get(got)
        if request is None:
            raise NbdError("unexpected NBD reply")
        reading = request.command == _CMD_READ
        if kind == _REPLY_OFFSET_DATA and reading and size >= 8:
            (at,) = struct.unpack(">Q", self._recv(8))
            start = at - request.offset
            if start < 0 or start + size - 8 > request.length:
                raise NbdError("NBD read reply outside the request")
            if request.buffer is None:
                request.buffer = bytearray(request.length)
            self._recv_exact(memoryview(request.buffer)[start:start + size - 8])
        elif kind == _REPLY_OFFSET_HOLE and reading and size == 12:
            # the buffer starts zeroed (or is not made at all): a hole needs no copy
            at, hole = struct.unpack(">QI", self._recv(12))
            start = at - request.offset
            if start < 0 or start + hole > request.length:
                raise NbdError("NBD hole reply outside the request")
        elif kind & _REPLY_ERROR_BIT:
            payload = self._recv(size)
            error, message_length = struct.unpack(">IH", payload[:6])
            message = payload[6:6 + message_length].decode(errors="replace")
            raise NbdError(f"NBD request {request.command} at {request.offset}+"
                           f"{request.length} failed: errno {error} {message}".rstrip())
        elif kind == _REPLY_BLOCK_STATUS:
            self._status_chunks.append(self._recv(size))
        else:
            self._recv(size)
        if flags & _REPLY_FLAG_DONE:
            request.done = True

    def read_ahead(self, ranges: Iterable[tuple[int, int]],
                   depth: int = DEFAULT_READ_DEPTH) -> Iterator[bytes | bytearray]:
        """The data of each (offset, length) in `ranges`, in order, with up to `depth`
        read requests in flight so the server reads the next chunks while the caller
        works on this one. Not copied: each is the buffer it was received into (the
        caller's from then on), or a shared zero `bytes` for an all-hole range."""
        todo = iter(ranges)
        order: deque[int] = deque()
        pending: dict[int, _Pending] = {}

        def fill() -> None:
            while len(order) < max(1, depth):
                try:
                    offset, length = next(todo)
                except StopIteration:
                    return
                handle = self._send(_CMD_READ, offset, length)
                pending[handle] = _Pending(_CMD_READ, offset, length)
                order.append(handle)

        fill()
        while order:
            head = order[0]
            while not pending[head].done:
                self._take_reply(pending)
            order.popleft()
            data = pending.pop(head).data()
            fill()
            yield data

    def block_status(self, context: str, offset: int = 0,
                     length: int | None = None) -> Iterator[tuple[int, int, int]]:
        """(offset, length, flags) extents of `context` covering [offset, offset+length)
        (the whole export by default), in order."""
        if context not in self.contexts:
            raise NbdError(f"meta context {context} was not negotiated")
        context_id = self.contexts[context]
        end = self.size if length is None else min(self.size, offset + length)
        position = offset
        while position < end:
            self._status_chunks = []
            self._request(_CMD_BLOCK_STATUS, position, min(end - position, _STATUS_STEP))
            advanced = position
            for chunk in self._status_chunks:
                (got_id,) = struct.unpack(">I", chunk[:4])
                if got_id != context_id:
                    continue
                for at in range(4, len(chunk) - 7, 8):
                    extent, flags = struct.unpack(">II", chunk[at:at + 8])
                    extent = min(extent, end - advanced)
                    if extent <= 0:
                        break
                    yield advanced, extent, flags
                    advanced += extent
            if advanced == position:
                raise NbdError(f"no block status for {context} at {position}")
            position = advanced

    def dirty_extents(self, context: str) -> list[tuple[int, int]]:
        """The (offset, length) extents a `qemu:dirty-bitmap:` context marks dirty,
        adjacent ones merged."""
        extents: list[tuple[int, int]] = []
        for offset, length, flags in self.block_status(context):
            if not flags & STATE_DIRTY:
                continue
            if extents and extents[-1][0] + extents[-1][1] == offset:
                extents[-1] = (extents[-1][0], extents[-1][1] + length)
            else:
                extents.append((offset, length))
        return extents

    def pread(self, offset: int, length: int) -> bytes:
        # QEMU's NBD server answers reads of up to 32 MiB
        return self._request(_CMD_READ, offset, length)

    def pwrite(self, offset: int, data: bytes) -> None:
        self._request(_CMD_WRITE, offset, len(data), data)

    def flush(self) -> None:
        self._request(_CMD_FLUSH, 0, 0)

    def close(self) -> None:
        try:
            self._sock.sendall(struct.pack(">IHHQQI", _REQUEST_MAGIC, 0, _CMD_DISC,
                                           self._handle + 1, 0, 0))
        except OSError:
            pass
        self._sock.close()
