"""The SPICE proxy on port 3128 of every node (PVE's spiceproxy), what remote-viewer
connects through with the config `spiceproxy` hands out.

The client sends ``CONNECT <proxy ticket>:<port> HTTP/1.x`` with the same text as its
``Host`` header (PVE reads the ticket from ``Host``). A valid ticket (signed with the
cluster's SPICE ticket key, -20..40 s old: binome.tickets) names the VM's node and its
SPICE TLS port: on this node the proxy connects to 127.0.0.1:<port>; for another node it
forwards the CONNECT to that node's proxy (marked ``PVEDisableProxy`` so it goes no
further), as PVE's. Then ``HTTP/1.x 200 OK`` and bytes are copied both ways until either
side closes; the TLS and SPICE's own password check are between remote-viewer and QEMU.

Refusals are PVE's answers (pve-http-server's AnyEvent.pm): ``401 invalid ticket``,
``501 method 'GET' not available``, ``400 bad request``, ``506 http protocol version
2.0 not supported`` / ``unable to parse request header``, ``500 proxy loop detected``;
a port outside 61000-61999, an unknown node, a connection that fails, a head over 64
lines or 8 KiB: the connection is closed. The head must arrive within 10 s. Nothing but
the proxy's own answers reaches the client (no traceback); log lines never carry the
ticket. Owns no cluster state.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from binome.tickets import spice_key, verify_spice_connect

__all__ = ["MAX_HEADER_LINES", "MAX_HEADER_SIZE", "SPICE_PROXY_PORT", "ConnectRequest",
           "Refusal", "SpiceProxy", "parse_head", "read_head"]

log = logging.getLogger("binome.spiceproxy")

SPICE_PROXY_PORT = 3128
SPICE_PORTS = range(61000, 62000)     # PVE's spice_port_range
MAX_HEADER_LINES = 64                  # PVE's limit_max_headers
MAX_HEADER_SIZE = 8 * 1024             # PVE's limit_max_header_size
HEAD_TIMEOUT = 10.0
CONNECT_TIMEOUT = 10.0
CHUNK = 65536
_REQUEST_LINE = re.compile(r"(\S+) (\S+) HTTP/(\d+)\.(\d+)")
_HEADER_LINE = re.compile(r"^([^:\s]+)\s*:\s*(.*)")


class Refusal(Exception):
    """An answer to the client (``code`` and PVE's message), or just a close (code 0)."""

    def __init__(self, code: int, message: str, proto: str = "HTTP/1.0") -> None:
        super().__init__(message)
        self.code, self.message, self.proto = code, message, proto


@dataclass
class ConnectRequest:
    method: str
    target: str
    proto: str                          # "HTTP/1.0" or "HTTP/1.1"
    headers: dict[str, str] = field(default_factory=dict)   # names lower case

    @property
    def connect(self) -> str:
        """What PVE verifies: the Host header."""
        return self.headers.get("host", "")


def parse_head(lines: list[str]) -> ConnectRequest:
    """The request line and headers (without the blank line); Refusal for what PVE
    refuses. Empty lines before the request line are skipped, as PVE's."""
    while lines and lines[0] == "":
        lines = lines[1:]
    if not lines:
        raise Refusal(400, "bad request")
    m = _REQUEST_LINE.search(lines[0])
    if m is None:
        raise Refusal(400, "bad request")
    method, target, major, minor = m.groups()
    proto = f"HTTP/{major}.{minor}"
    if major != "1":
        raise Refusal(506, f"http protocol version {major}.{minor} not supported")
    headers: dict[str, str] = {}
    key: str | None = None
    for line in lines[1:]:
        if (h := _HEADER_LINE.match(line)) is not None:
            key = h.group(1).lower()
            headers[key] = h.group(2)
        elif line[:1] in (" ", "\t") and key is not None:
            headers[key] += " " + line.strip()
        else:
            raise Refusal(506, "unable to parse request header", proto)
    if method != "CONNECT":
        raise Refusal(501, f"method '{method}' not available", proto)
    return ConnectRequest(method, target, proto, headers)


async def read_head(reader: asyncio.StreamReader) -> list[str]:
    """The lines of a request head up to its blank line (CRLF or LF); Refusal(0) (close)
    past MAX_HEADER_LINES or MAX_HEADER_SIZE, or on EOF first."""
    lines: list[str] = []
    size = 0
    while True:
        try:
            raw = await reader.readuntil(b"\n")
        except asyncio.IncompleteReadError:
            raise Refusal(0, "connection closed in the request head") from None
        except asyncio.LimitOverrunError:
            raise Refusal(0, "http header too large") from None
        size += len(raw)
        if size > MAX_HEADER_SIZE:
            raise Refusal(0, "http header too large")
        line = raw.rstrip(b"\r\n").decode("latin-1")
        if line == "" and any(lines):
            return lines
        lines.append(line)
        if len(lines) >= MAX_HEADER_LINES:
            raise Refusal(0, f"too many http header lines (> {MAX_HEADER_LINES})")


def error_response(proto: str, code: int, message: str) -> bytes:
    """PVE's error answer (HTTP::Response through its response()): the message is the
    reason and the body; the connection closes."""
    date = email.utils.formatdate(usegmt=True)
    body = message.encode()
    head = (f"{proto} {code} {message}\r\n"
            f"Cache-Control: max-age=0\r\n"
            f"Connection: close\r\n"
            f"Date: {date}\r\n"
            f"Pragma: no-cache\r\n"
            f"Server: pve-api-daemon/3.0\r\n"
            f"Content-Length: {len(body)}\r\n"
            f"Expires: {date}\r\n\r\n")
    return head.encode() + body


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()


class SpiceProxy:
    """The proxy of one node: ``node`` its name, ``bind`` the API's address,
    ``authkey`` the cluster's auth key (the ticket key derives from it), ``node_host``
    a cluster node's address (None: unknown)."""

    def __init__(self, node: str, bind: str, authkey: Callable[[], Awaitable[bytes]],
                 node_host: Callable[[str], str | None], port: int = SPICE_PROXY_PORT
                 ) -> None:
        self.node, self.bind, self.port = node, bind, port
        self._authkey = authkey
        self._node_host = node_host
        self._server: asyncio.Server | None = None
        self._sessions: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        try:
            self._server = await asyncio.start_server(
                self._serve, self.bind, self.port, reuse_address=True,
                limit=MAX_HEADER_SIZE)
        except OSError as exc:
            log.error("spice proxy: cannot listen on %s:%d: %s", self.bind, self.port,
                      exc.strerror)
            return
        log.info("spice proxy listening on %s:%d", self.bind, self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for task in list(self._sessions):
            task.cancel()
        for task in list(self._sessions):
            with contextlib.suppress(BaseException):
                await task

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                     ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._sessions.add(task)
        peer = writer.get_extra_info("peername")
        client = peer[0] if isinstance(peer, tuple) else "?"
        try:
            await self._session(reader, writer, client)
        except Refusal as r:
            log.info("spice proxy: %s refused: %s", client, r.message)
            if r.code:
                with contextlib.suppress(Exception):
                    writer.write(error_response(r.proto, r.code, r.message))
                    await writer.drain()
        except asyncio.CancelledError:
            pass
        except Exception as exc:   # never a traceback to the client: it is closed
            log.warning("spice proxy: %s: %s: %s", client, type(exc).__name__, exc)
        finally:
            self._sessions.discard(task)
            await _close(writer)

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       client: str) -> None:
        try:
            lines = await asyncio.wait_for(read_head(reader), HEAD_TIMEOUT)
        except TimeoutError:
            raise Refusal(0, "timeout reading the request head") from None
        req = parse_head(lines)
        key = spice_key(await self._authkey())
        target = verify_spice_connect(key, req.connect)
        if target is None:
            raise Refusal(401, "invalid ticket", req.proto)
        vmid, node, port = target
        if port not in SPICE_PORTS:
            raise Refusal(0, f"SPICE Port {port} is not in allowed range "
                             f"({SPICE_PORTS.start}, {SPICE_PORTS.stop - 1})")
        local = node == "localhost" or node.lower() == self.node.lower()
        if local:
            host, remote_port = "127.0.0.1", port
        else:
            if "pvedisableproxy" in req.headers:
                raise Refusal(500, "proxy loop detected", req.proto)
            found = self._node_host(node)
            if found is None:
                raise Refusal(0, f"unable to get remote node IP of '{node}'")
            host, remote_port = found, self.port     # every node's proxy: the same port
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(host, remote_port), CONNECT_TIMEOUT)
        except (OSError, TimeoutError) as exc:
            raise Refusal(0, f"connect to '{host}:{remote_port}' failed: {exc}") from None
        try:
            if not local:
                if not await self._forward(req, client, up_reader, up_writer, writer):
                    return
            log.info("spice proxy: %s connected to VM %d on %s (%s:%d)", client, vmid,
                     node, host, remote_port)
            writer.write(f"{req.proto} 200 OK\r\n\r\n".encode())
            await writer.drain()
            pipes = [asyncio.create_task(_pipe(reader, up_writer)),
                     asyncio.create_task(_pipe(up_reader, writer))]
            try:
                await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for p in pipes:
                    p.cancel()
                await asyncio.gather(*pipes, return_exceptions=True)
        finally:
            await _close(up_writer)

    async def _forward(self, req: ConnectRequest, client: str,
                       up_reader: asyncio.StreamReader, up_writer: asyncio.StreamWriter,
                       writer: asyncio.StreamWriter) -> bool:
        """PVE's CONNECT to the VM's node's proxy; True once it answered 200 (its
        blank line read), else its status line went to the client."""
        connect = req.connect
        up_writer.write((f"CONNECT {connect} {req.proto}\r\n"
                         f"Host: {connect}\r\n"
                         f"Proxy-Connection: keep-alive\r\n"
                         f"User-Agent: spiceproxy\r\n"
                         f"PVEDisableProxy: true\r\n"
                         f"PVEClientIP: {client}\r\n\r\n").encode())
        await up_writer.drain()
        try:
            line = await asyncio.wait_for(up_reader.readuntil(b"\n"), CONNECT_TIMEOUT)
            status = line.rstrip(b"\r\n")
            if status == f"{req.proto} 200 OK".encode():
                await asyncio.wait_for(up_reader.readuntil(b"\n"), CONNECT_TIMEOUT)
                return True
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError,
                OSError):
            raise Refusal(0, "the VM's node's spice proxy did not answer") from None
        log.info("spice proxy: %s: the VM's node's proxy refused: %s", client,
                 status[:200].decode("latin-1"))
        writer.write(status + b"\r\n")
        await writer.drain()
        return False
