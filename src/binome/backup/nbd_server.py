"""A read-only NBD server for backed-up images: what a live restore's QEMU reads the
blocks it has not restored yet through (PVE's live-restore reads them from PBS).

Owns the server side of the NBD protocol as far as QEMU's client needs it: fixed
newstyle handshake (`NBD_OPT_GO`, `NBD_OPT_INFO`, `NBD_OPT_EXPORT_NAME`, `NBD_OPT_LIST`,
`NBD_OPT_ABORT`; structured replies and meta contexts refused, so QEMU falls back to
simple replies), then `NBD_CMD_READ`, `NBD_CMD_FLUSH` (nothing to flush) and
`NBD_CMD_DISC`; a write, trim or write-zeroes is refused with `EPERM` (the export is
read-only and says so). Each export is one image of one backup (`ImageSource`): a read
loads the chunks it spans from the backup store (checked, decrypted: the store's own
`read_chunk`) in a worker thread, a few recent chunks kept, concurrent reads of one
chunk sharing its load. The client side of the protocol is `binome.backup.nbd`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import logging
import struct
from collections.abc import Callable
from pathlib import Path

from binome.backup.nbd import (
    IHAVEOPT,
    NBDMAGIC,
)

log = logging.getLogger("binome.backup")

_OPT_REPLY_MAGIC = 0x3E889045565A9
_REQUEST_MAGIC = 0x25609513
_SIMPLE_REPLY_MAGIC = 0x67446698
_FLAG_FIXED_NEWSTYLE, _FLAG_NO_ZEROES = 1, 2
_CLIENT_NO_ZEROES = 2
_OPT_EXPORT_NAME, _OPT_ABORT, _OPT_LIST, _OPT_INFO, _OPT_GO = 1, 2, 3, 6, 7
_REP_ACK, _REP_SERVER, _REP_INFO = 1, 2, 3
_REP_ERR_UNSUP, _REP_ERR_INVALID, _REP_ERR_UNKNOWN = 2**31 + 1, 2**31 + 3, 2**31 + 6
_INFO_EXPORT, _INFO_BLOCK_SIZE = 0, 3
_TFLAG_HAS_FLAGS, _TFLAG_READ_ONLY, _TFLAG_SEND_FLUSH = 1, 2, 4
_CMD_READ, _CMD_WRITE, _CMD_DISC, _CMD_FLUSH = 0, 1, 2, 3
MAX_REQUEST = 32 << 20       # the largest read served (QEMU asks 32 MiB at most)
MAX_OPTION = 64 << 10        # an option's data: a name and a few info requests
CACHE_CHUNKS = 8


SECTOR = 512


class ImageSource:
    """One backed-up image read by chunk: `load(position)` returns chunk `position`'s
    data (checked and decrypted by the store), `size` bytes in chunks of `chunk_size`.

    Exported as `export_size`: the size rounded up to whole sectors, zeros past the
    image. QEMU 7.2's client, with simple replies, reads a request's tail padded to the
    sector into the socket while asking the server for the exact bytes (it waited for
    ever for the rest of an unaligned image's last read)."""

    def __init__(self, size: int, chunk_size: int, load: Callable[[int], bytes]) -> None:
        self.size, self.chunk_size, self._load = size, chunk_size, load
        self.export_size = -(-size // SECTOR) * SECTOR
        self._cache: collections.OrderedDict[int, bytes] = collections.OrderedDict()
        self._loading: dict[int, asyncio.Future[bytes]] = {}

    async def chunk(self, position: int) -> bytes:
        data = self._cache.get(position)
        if data is not None:
            self._cache.move_to_end(position)
            return data
        pending = self._loading.get(position)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._loading[position] = future
        try:
            data = await asyncio.to_thread(self._load, position)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()   # retrieved: a reader that gave up must not warn
            raise
        finally:
            self._loading.pop(position, None)
        future.set_result(data)
        self._cache[position] = data
        while len(self._cache) > CACHE_CHUNKS:
            self._cache.popitem(last=False)
        return data

    async def read(self, offset: int, length: int) -> bytes:
        out = bytearray()
        past = max(0, offset + length - self.size)     # the sector padding: zeros
        length -= past
        while length > 0:
            position, within = divmod(offset, self.chunk_size)
            data = await self.chunk(position)
            piece = data[within:within + length]
            if not piece:
                raise OSError(errno.EIO, f"chunk {position} ends before offset {offset}")
            out += piece
            offset += len(piece)
            length -= len(piece)
        return bytes(out) + bytes(past)


class NbdServer:
    """Serves `exports` (name -> ImageSource) read-only on unix socket `path`."""

    def __init__(self, path: Path, exports: dict[str, ImageSource]) -> None:
        self.path, self.exports = path, exports
        self._server: asyncio.base_events.Server | None = None
        self._clients: set[asyncio.Task[None]] = set()
        self.errors: list[str] = []    # read failures, for the task log

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(self._client, path=str(self.path))
        self.path.chmod(0o600)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._clients):
            task.cancel()
        await asyncio.gather(*self._clients, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                      ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        try:
            source = await self._handshake(reader, writer)
            if source is not None:
                await self._transmission(source, reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError, _ProtocolError) as exc:
            log.debug("NBD client on %s gone: %s", self.path, exc)
        except asyncio.CancelledError:
            pass    # the server closes (asyncio's client callback would log a cancel)
        finally:
            self._clients.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    # -- handshake ----------------------------------------------------------------------

    async def _handshake(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                         ) -> ImageSource | None:
        writer.write(NBDMAGIC + IHAVEOPT
                     + struct.pack(">H", _FLAG_FIXED_NEWSTYLE | _FLAG_NO_ZEROES))
        (client_flags,) = struct.unpack(">I", await reader.readexactly(4))
        no_zeroes = bool(client_flags & _CLIENT_NO_ZEROES)
        tflags = _TFLAG_HAS_FLAGS | _TFLAG_READ_ONLY | _TFLAG_SEND_FLUSH
        while True:
            magic, option, length = struct.unpack(">8sII", await reader.readexactly(16))
            if magic != IHAVEOPT or length > MAX_OPTION:
                raise _ProtocolError("bad option header")
            data = await reader.readexactly(length)
            if option == _OPT_EXPORT_NAME:
                source = self.exports.get(data.decode(errors="replace"))
                if source is None:
                    return None     # the protocol's only answer: hang up
                writer.write(struct.pack(">QH", source.export_size, tflags)
                             + (b"" if no_zeroes else bytes(124)))
                return source
            if option == _OPT_ABORT:
                self._reply(writer, option, _REP_ACK)
                await writer.drain()
                return None
            if option == _OPT_LIST:
                for name in self.exports:
                    raw = name.encode()
                    self._reply(writer, option, _REP_SERVER, struct.pack(">I", len(raw)) + raw)
                self._reply(writer, option, _REP_ACK)
            elif option in (_OPT_INFO, _OPT_GO):
                if length < 6:
                    self._reply(writer, option, _REP_ERR_INVALID)
                    continue
                (name_len,) = struct.unpack(">I", data[:4])
                name = data[4:4 + name_len].decode(errors="replace")
                source = self.exports.get(name)
                if source is None:
                    self._reply(writer, option, _REP_ERR_UNKNOWN,
                                f"no export '{name}'".encode())
                    continue
                self._reply(writer, option, _REP_INFO,
                            struct.pack(">HQH", _INFO_EXPORT, source.export_size, tflags))
                self._reply(writer, option, _REP_INFO,
                            struct.pack(">HIII", _INFO_BLOCK_SIZE, 1, 4096, MAX_REQUEST))
                self._reply(writer, option, _REP_ACK)
                if option == _OPT_GO:
                    await writer.drain()
                    return source
            else:       # structured replies, meta contexts, TLS...: simple replies only
                self._reply(writer, option, _REP_ERR_UNSUP)
            await writer.drain()

    @staticmethod
    def _reply(writer: asyncio.StreamWriter, option: int, kind: int, data: bytes = b""
               ) -> None:
        writer.write(struct.pack(">QIII", _OPT_REPLY_MAGIC, option, kind, len(data)) + data)

    # -- transmission -------------------------------------------------------------------

    async def _transmission(self, source: ImageSource, reader: asyncio.StreamReader,
                            writer: asyncio.StreamWriter) -> None:
        while True:
            magic, _flags, kind, handle, offset, length = struct.unpack(
                ">IHHQQI", await reader.readexactly(28))
            if magic != _REQUEST_MAGIC:
                raise _ProtocolError("bad request magic")
            if kind == _CMD_DISC:
                return
            if kind == _CMD_WRITE:
                await reader.readexactly(length)    # its payload, discarded
            error, data = 0, b""
            if kind == _CMD_READ:
                if length > MAX_REQUEST or offset + length > source.export_size:
                    error = errno.EINVAL
                else:
                    try:
                        data = await source.read(offset, length)
                    except Exception as exc:   # a chunk lost or corrupt: the guest sees EIO
                        error = errno.EIO
                        self.errors.append(f"read of {length} bytes at {offset}: {exc}")
                        log.warning("NBD %s: read at %d failed: %s", self.path, offset, exc)
            elif kind != _CMD_FLUSH:
                error = errno.EPERM if kind in (_CMD_WRITE, 4, 6) else errno.EINVAL
            writer.write(struct.pack(">IIQ", _SIMPLE_REPLY_MAGIC, error, handle) + data)
            await writer.drain()


class _ProtocolError(Exception):
    pass
