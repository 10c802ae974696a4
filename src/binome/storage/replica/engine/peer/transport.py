"""The peer connection's transport: packets framed in place, data-path handlers run inline.

Why not asyncio streams (the first version): with `StreamReader` every packet
cost two task wake-ups (header, then payload) and a large P_DATA two copies,
and each acknowledgement reached the NBD reply through a future callback plus
a scheduled flush: two more loop iterations per write on the primary. Here:

- the kernel receives into one 4 MiB buffer per connection (a packet larger
  than that into a buffer of its own), packets are parsed in place with
  precompiled structs, and a P_DATA's payload goes to `pwrite` as a
  memoryview of that buffer;
- once the handshake is over (`start(dispatch)`), every complete packet is
  handed to `dispatch(cmd, payload)` from `buffer_updated`, in order; a
  dispatch that returns an awaitable (state changes, bitmaps) holds back the
  following packets until it is done, so ordering is exactly the stream's;
- everything sent while handling one receive batch leaves in one
  `transport.write` (the secondary's acks of a batch: one send), and
  `on_batch_end` lets the volume flush the NBD replies the acks completed in
  the same loop iteration;
- `completion.Completion` is the acknowledgement a mirrored write waits for: its
  callbacks run at once when the ack is handled, not one loop iteration later
  as an asyncio future's would.

Before `start`, during the handshake, `await read()` returns packets one by
one (copies: they are small). `closed` completes, with the error, when the
connection ends; reading pauses while unprocessed data piles up.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Awaitable, Callable

from binome.storage.replica.core import wire
from binome.storage.replica.core.wire import P

log = logging.getLogger("binome.replica.peer")

RX_SIZE = 4 * 1024 * 1024
PAUSE_ABOVE = RX_SIZE // 2      # unprocessed bytes above which reading pauses (not dispatching)
_HDR = wire.HEADER.size

Dispatch = Callable[[P, memoryview], "Awaitable[None] | None"]


class PeerProtocol(asyncio.BufferedProtocol):
    def __init__(self, on_made: Callable[[PeerProtocol], None] | None = None) -> None:
        self.transport: asyncio.Transport | None = None
        self._loop = asyncio.get_event_loop()
        self._rx = bytearray(RX_SIZE)
        self._rxv = memoryview(self._rx)
        self._start = 0
        self._end = 0
        self._big: bytearray | None = None       # a packet larger than _rx, being received
        self._big_filled = 0
        self._dispatch: Dispatch | None = None
        self._blocked = False
        self._paused = False
        self._waiter: asyncio.Future | None = None
        self._out: list[bytes | bytearray | memoryview] = []
        self._flush_scheduled = False
        self._on_made = on_made
        self.on_batch_end: Callable[[], None] | None = None
        self.last_rx = time.monotonic()
        self.closed: asyncio.Future = self._loop.create_future()
        # Whoever ends up not awaiting it must not get "exception never retrieved".
        self.closed.add_done_callback(lambda f: f.cancelled() or f.exception())

    # --- asyncio plumbing ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._on_made is not None:
            self._on_made(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._end_with(ConnectionError(f"connection lost: {exc}") if exc
                       else ConnectionError("the peer closed the connection"))

    def eof_received(self) -> bool:
        return False

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._big is not None:
            return memoryview(self._big)[self._big_filled:]
        if self._end == RX_SIZE:
            self._compact()
        return self._rxv[self._end:]

    def buffer_updated(self, nbytes: int) -> None:
        self.last_rx = time.monotonic()
        if self._big is not None:
            self._big_filled += nbytes
            if self._big_filled < len(self._big):
                return
        else:
            self._end += nbytes
        if self._dispatch is None:
            waiter = self._waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
            self._update_reading()
        else:
            self._run_dispatch()

    # --- framing ------------------------------------------------------------------------

    def _compact(self) -> None:
        n = self._end - self._start
        if self._start:
            self._rx[:n] = self._rx[self._start:self._end]
        self._start, self._end = 0, n

    def _next_packet(self) -> tuple[P, memoryview] | None:
        """The next complete packet, consumed; None if it has not fully arrived."""
        big = self._big
        if big is not None:
            if self._big_filled < len(big):
                return None
            self._big = None
            cmd, _ = wire.parse_header(big[:_HDR])
            return cmd, memoryview(big)[_HDR:]
        start, end = self._start, self._end
        avail = end - start
        if avail < _HDR:
            if start + _HDR > RX_SIZE:
                self._compact()
            return None
        cmd, length = wire.parse_header(self._rxv[start:start + _HDR])
        total = _HDR + length
        if avail >= total:
            payload = self._rxv[start + _HDR:start + total]
            start += total
            if start == end:
                start = end = 0      # the payload stays valid until more data is received
            self._start, self._end = start, end
            return cmd, payload
        if total > RX_SIZE:
            big = bytearray(total)
            big[:avail] = self._rx[start:end]
            self._big, self._big_filled = big, avail
            self._start = self._end = 0
        elif start + total > RX_SIZE:
            self._compact()
        return None

    def _pending(self) -> int:
        return self._end - self._start + (self._big_filled if self._big is not None else 0)

    def _update_reading(self) -> None:
        t = self.transport
        if t is None or t.is_closing():
            return
        want = (self._dispatch is None or self._blocked) and (
            self._pending() >= PAUSE_ABOVE
            or (self._big is not None and self._big_filled == len(self._big)))
        if want and not self._paused:
            t.pause_reading()
            self._paused = True
        elif not want and self._paused:
            t.resume_reading()
            self._paused = False

    # --- pull mode (handshake) ----------------------------------------------------------

    async def read(self) -> tuple[P, bytes]:
        """The next packet (a copy), waiting for it to arrive."""
        while True:
            pkt = self._next_packet()
            if pkt is not None:
                self._update_reading()
                return pkt[0], bytes(pkt[1])
            if self.closed.done():
                self.closed.result()         # raises the connection's end
            self._waiter = self._loop.create_future()
            await self._waiter

    # --- push mode (replication) --------------------------------------------------------

    def start(self, dispatch: Dispatch) -> None:
        """Hand every packet (already buffered ones first) to `dispatch`, inline."""
        self._dispatch = dispatch
        self._run_dispatch()

    def _run_dispatch(self) -> None:
        dispatch = self._dispatch
        assert dispatch is not None
        try:
            while not self._blocked:
                pkt = self._next_packet()
                if pkt is None:
                    break
                pending = dispatch(pkt[0], pkt[1])
                if pending is not None:
                    self._blocked = True
                    task = asyncio.ensure_future(pending)
                    task.add_done_callback(self._unblock)
        except Exception as exc:
            self.fail(exc)
            return
        self.flush()
        if self.on_batch_end is not None:
            self.on_batch_end()
        self._update_reading()

    def _unblock(self, task: asyncio.Future) -> None:
        self._blocked = False
        if task.cancelled():
            self.fail(ConnectionError("packet handling cancelled"))
            return
        exc = task.exception()
        if exc is not None:
            self.fail(exc)
            return
        if not self.closed.done():
            self._run_dispatch()

    # --- sending ------------------------------------------------------------------------

    def send(self, data: bytes | bytearray) -> None:
        """Queue a packet; it leaves with the batch (at the latest, next loop iteration)."""
        t = self.transport
        if t is None or self.closed.done() or t.is_closing():
            raise ConnectionError("not connected")
        self._out.append(data)
        if self._dispatch is None:
            self.flush()            # handshake: nothing to batch, and an error may follow
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self.flush)

    def send_big(self, head: bytes | bytearray, data: bytes | bytearray | memoryview) -> None:
        """Queue `head`, then hand `data` to the transport without joining (no copy of it).

        The transport copies only what the socket does not take at once.
        """
        t = self.transport
        if t is None or self.closed.done() or t.is_closing():
            raise ConnectionError("not connected")
        if head:
            self._out.append(head)
        self.flush()
        t.write(data)

    def flush(self) -> None:
        self._flush_scheduled = False
        out = self._out
        if not out:
            return
        self._out = []
        t = self.transport
        if t is None or t.is_closing():
            return
        t.write(out[0] if len(out) == 1 else b"".join(out))

    # --- ending -------------------------------------------------------------------------

    def fail(self, exc: BaseException) -> None:
        """End the connection because of `exc` (it becomes `closed`'s exception)."""
        self._end_with(exc)
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        if self.transport is not None:
            self.flush()
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _end_with(self, exc: BaseException) -> None:
        if not self.closed.done():
            self.closed.set_exception(exc)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
