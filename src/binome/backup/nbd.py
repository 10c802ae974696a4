"""A small synchronous NBD client for backups: read (and write) one export on a unix socket.

Owns the client side of the NBD protocol as far as a backup or restore needs it:
fixed-newstyle negotiation with `NBD_OPT_GO`, simple replies, `NBD_CMD_READ`,
`NBD_CMD_WRITE`, `NBD_CMD_FLUSH` and `NBD_CMD_DISC`. QEMU (`block-export-add`) and
`qemu-nbd` serve the exports: the fleecing view of a running guest's disk, a stopped
guest's qcow2 image, a qcow2 restore target. Synchronous because the backup writer and
the restore run in a worker thread. The lab's asyncio client (`binome.lab.nbd_client`)
is a test tool and may not be imported here.
"""

from __future__ import annotations

import socket
import struct

NBDMAGIC = b"NBDMAGIC"
IHAVEOPT = b"IHAVEOPT"
_OPT_REPLY_MAGIC = 0x3E889045565A9
_REQUEST_MAGIC = 0x25609513
_SIMPLE_REPLY_MAGIC = 0x67446698
_FLAG_FIXED_NEWSTYLE = 1
_FLAG_NO_ZEROES = 2
_OPT_GO = 7
_REP_ACK = 1
_REP_INFO = 3
_INFO_EXPORT = 0
_CMD_READ, _CMD_WRITE, _CMD_DISC, _CMD_FLUSH = 0, 1, 2, 3
_TRANSMISSION_READ_ONLY = 1 << 1


class NbdError(Exception):
    """The server refused the export or a request, or the connection broke."""


class NbdExport:
    """One negotiated NBD export; `size` is the export's size in bytes."""

    def __init__(self, path: str, name: str = "", timeout: float = 60.0) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        self._handle = 0
        try:
            self._sock.connect(path)
            self.size, self.read_only = self._negotiate(name)
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
        view = memoryview(buffer)
        got = 0
        while got < length:
            count = self._sock.recv_into(view[got:], length - got)
            if count == 0:
                raise NbdError("connection closed by the NBD server")
            got += count
        return bytes(buffer)

    def _negotiate(self, name: str) -> tuple[int, bool]:
        if self._recv(8) != NBDMAGIC or self._recv(8) != IHAVEOPT:
            raise NbdError("not a fixed-newstyle NBD server")
        (server_flags,) = struct.unpack(">H", self._recv(2))
        if not server_flags & _FLAG_FIXED_NEWSTYLE:
            raise NbdError("the server does not speak fixed newstyle")
        self._sock.sendall(struct.pack(">I", _FLAG_FIXED_NEWSTYLE | (
            server_flags & _FLAG_NO_ZEROES)))
        encoded = name.encode()
        payload = struct.pack(">I", len(encoded)) + encoded + struct.pack(">H", 0)
        self._sock.sendall(IHAVEOPT + struct.pack(">II", _OPT_GO, len(payload)) + payload)
        size, flags = -1, 0
        while True:
            magic, _option, reply, length = struct.unpack(">QIII", self._recv(20))
            if magic != _OPT_REPLY_MAGIC:
                raise NbdError("bad option reply magic")
            data = self._recv(length) if length else b""
            if reply & 0x80000000:
                raise NbdError(f"export refused: {data.decode(errors='replace') or hex(reply)}")
            if reply == _REP_INFO and len(data) >= 12:
                (info,) = struct.unpack(">H", data[:2])
                if info == _INFO_EXPORT:
                    size, flags = struct.unpack(">QH", data[2:12])
            elif reply == _REP_ACK:
                break
        if size < 0:
            raise NbdError("the server did not say the export's size")
        return size, bool(flags & _TRANSMISSION_READ_ONLY)

    def _request(self, command: int, offset: int, length: int, data: bytes = b"") -> bytes:
        self._handle += 1
        header = struct.pack(">IHHQQI", _REQUEST_MAGIC, 0, command, self._handle, offset,
                             length)
        self._sock.sendall(header + data if len(data) < 65536 else header)
        if len(data) >= 65536:
            self._sock.sendall(data)
        magic, error, handle = struct.unpack(">IIQ", self._recv(16))
        if magic != _SIMPLE_REPLY_MAGIC or handle != self._handle:
            raise NbdError("unexpected NBD reply")
        if error:
            raise NbdError(f"NBD request {command} at {offset}+{length} failed: errno {error}")
        return self._recv_into(length) if command == _CMD_READ else b""

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
