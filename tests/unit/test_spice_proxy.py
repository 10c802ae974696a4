"""The SPICE proxy (api/spiceproxy.py): CONNECT parsing, PVE's refusals, and the splice
through one proxy and through another node's, against a stand-in SPICE server on
loopback (the real QEMU path is tests/integration/guest/test_cross_node.py)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest

from binome import tickets
from binome.api.spiceproxy import MAX_HEADER_LINES, Refusal, SpiceProxy, parse_head, read_head

pytestmark = pytest.mark.unit

AUTHKEY = b"a" * 32
A, B = "127.61.0.1", "127.61.0.2"


def free_port(host: str, ports: range) -> int:
    for port in ports:
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    raise AssertionError("no free port")


@pytest.mark.parametrize(("lines", "code", "message"), [
    (["GET / HTTP/1.1", "Host: x"], 501, "method 'GET' not available"),
    (["CONNECT x HTTP/2.0"], 506, "http protocol version 2.0 not supported"),
    (["CONNECT x HTTP/1.1", "no colon here"], 506, "unable to parse request header"),
    (["hello"], 400, "bad request"),
    ([""], 400, "bad request"),
])
def test_parse_head_refuses_as_pve(lines: list[str], code: int, message: str) -> None:
    with pytest.raises(Refusal) as exc:
        parse_head(lines)
    assert (exc.value.code, exc.value.message) == (code, message)


def test_parse_head_reads_the_ticket_from_host() -> None:
    req = parse_head(["", "CONNECT t:1 HTTP/1.0", "host:  pvespiceproxy:x", "X-A: 1",
                      "  more"])
    assert (req.method, req.target, req.proto, req.connect) == (
        "CONNECT", "t:1", "HTTP/1.0", "pvespiceproxy:x")
    assert req.headers["x-a"] == "1 more"


async def _feed(data: bytes, eof: bool = True) -> asyncio.StreamReader:
    reader = asyncio.StreamReader(limit=8192)
    reader.feed_data(data)
    if eof:
        reader.feed_eof()
    return reader


async def test_read_head_is_bounded() -> None:
    assert await read_head(await _feed(b"CONNECT a HTTP/1.1\r\nHost: a\n\r\nrest")) == [
        "CONNECT a HTTP/1.1", "Host: a"]
    for data in (b"CONNECT a HTTP/1.1\r\n" + b"X: y\r\n" * MAX_HEADER_LINES + b"\r\n",
                 b"CONNECT a HTTP/1.1\r\nX: " + b"y" * 9000 + b"\r\n\r\n",
                 b"CONNECT a HTTP/1.1\r\nHost: a\r\n"):         # EOF in the head
        with pytest.raises(Refusal) as exc:
            await read_head(await _feed(data))
        assert exc.value.code == 0


@pytest.fixture
async def proxies() -> AsyncIterator[tuple[SpiceProxy, SpiceProxy, int]]:
    """n1's and n2's proxies and a stand-in SPICE server of n1's VM (echoes)."""
    async def authkey() -> bytes:
        return AUTHKEY

    port = free_port(A, range(40000, 41000))
    hosts = {"n1": A, "n2": B}
    p1 = SpiceProxy("n1", A, authkey, hosts.get, port)
    p2 = SpiceProxy("n2", B, authkey, hosts.get, port)

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(4096):
            writer.write(data)
        writer.close()

    spice_port = free_port("127.0.0.1", range(61900, 62000))
    server = await asyncio.start_server(echo, "127.0.0.1", spice_port)
    await p1.start()
    await p2.start()
    try:
        yield p1, p2, spice_port
    finally:
        await p1.stop()
        await p2.stop()
        server.close()
        await server.wait_closed()


async def _connect(host: str, port: int, head: str) -> tuple[
        asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(head.encode())
    await writer.drain()
    status = await asyncio.wait_for(reader.readuntil(b"\r\n"), 5)
    return reader, writer, status


def _ticket(node: str, spice_port: int, now: float | None = None) -> str:
    _, ticket = tickets.make_spice_ticket(tickets.spice_key(AUTHKEY), 100, node, spice_port,
                                          now=now)
    return f"{ticket}:{spice_port}"


async def test_connect_splices_here_and_through_the_vms_node(proxies) -> None:
    p1, _, spice_port = proxies
    connect = _ticket("n1", spice_port)
    for host in (A, B):       # B: n2's proxy forwards the CONNECT to n1's
        reader, writer, status = await _connect(
            host, p1.port, f"CONNECT {connect} HTTP/1.1\r\nHost: {connect}\r\n\r\n")
        assert status == b"HTTP/1.1 200 OK\r\n"
        assert await reader.readuntil(b"\r\n") == b"\r\n"
        writer.write(b"REDQ hello")
        await writer.drain()
        assert await asyncio.wait_for(reader.readexactly(10), 5) == b"REDQ hello"
        writer.close()


async def _refusal(host: str, port: int, head: str) -> tuple[bytes, bytes]:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(head.encode())
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 5)     # then the proxy closes
    writer.close()
    status, _, rest = answer.partition(b"\r\n")
    return status, rest.partition(b"\r\n\r\n")[2]


async def test_bad_tickets_and_requests_get_pves_answers(proxies) -> None:
    p1, _, spice_port = proxies
    good = _ticket("n1", spice_port)
    expired = _ticket("n1", spice_port, now=1_000_000)
    forged = good[:-46] + "0" * 40 + good[-6:]
    assert forged != good and len(forged) == len(good)
    for connect in (expired, forged, good.replace(f":{spice_port}", ":61000", 1), "x"):
        status, body = await _refusal(
            A, p1.port, f"CONNECT {connect} HTTP/1.1\r\nHost: {connect}\r\n\r\n")
        assert (status, body) == (b"HTTP/1.1 401 invalid ticket", b"invalid ticket")
    # the ticket is read from Host (as PVE): none there is no ticket
    status, _ = await _refusal(A, p1.port, f"CONNECT {good} HTTP/1.0\r\n\r\n")
    assert status == b"HTTP/1.0 401 invalid ticket"
    status, body = await _refusal(A, p1.port, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == b"HTTP/1.1 501 method 'GET' not available"
    status, _ = await _refusal(A, p1.port, "\x16\x03\x01 garbage\r\n\r\n")
    assert status == b"HTTP/1.0 400 bad request"
    # a loop: a forwarded CONNECT for another node is not forwarded again
    other = _ticket("n2", spice_port)
    status, _ = await _refusal(A, p1.port, f"CONNECT {other} HTTP/1.1\r\nHost: {other}\r\n"
                                           f"PVEDisableProxy: true\r\n\r\n")
    assert status == b"HTTP/1.1 500 proxy loop detected"
    # out of the SPICE port range, an unknown node, nothing listening: closed, no answer
    for connect in (_ticket("n1", 22), _ticket("n9", spice_port),
                    _ticket("n1", free_port("127.0.0.1", range(61000, 61900)))):
        assert await _refusal(A, p1.port, f"CONNECT {connect} HTTP/1.1\r\nHost: {connect}"
                                          f"\r\n\r\n") == (b"", b"")
    # a head too large is closed
    assert await _refusal(A, p1.port, "CONNECT x HTTP/1.1\r\n" + "X: y\r\n" * 100) == (
        b"", b"")
