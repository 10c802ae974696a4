"""`binome vm console VMID`: the guest's serial console through the API websocket.

Interactive on a terminal (raw mode; Ctrl-] leaves). Without a terminal it is
scriptable: standard input is sent to the console and output is copied until
`--expect TEXT` has been seen (exit 0) or `--timeout` passes (exit 1).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import termios
import tty

import aiohttp

ESCAPE = b"\x1d"   # Ctrl-]


async def _open(socket_path: str | None, base: str, vmid: int, node: str,
                cookies: dict[str, str], headers: dict[str, str], fingerprint: str | None):
    if socket_path:
        connector: aiohttp.BaseConnector = aiohttp.UnixConnector(path=socket_path)
    else:
        pin = aiohttp.Fingerprint(bytes.fromhex(fingerprint.replace(":", ""))) \
            if fingerprint else False
        connector = aiohttp.TCPConnector(ssl=pin)
    session = aiohttp.ClientSession(connector=connector, cookies=cookies, headers=headers)
    try:
        async with session.post(f"{base}/nodes/{node}/qemu/{vmid}/termproxy") as r:
            body = await r.json(content_type=None)
            if r.status != 200:
                raise SystemExit(f"binome: {r.reason} ({r.status})")
        data = body["data"]
        ws = await session.ws_connect(
            f"{base}/nodes/{data['node']}/qemu/{vmid}/vncwebsocket",
            params={"port": data["port"], "vncticket": data["ticket"]}, max_msg_size=0)
    except BaseException:
        await session.close()
        raise
    return session, ws


async def run_console(socket_path: str | None, base: str, vmid: int, node: str = "localhost",
                      expect: str | None = None, timeout: float = 30.0,
                      cookies: dict[str, str] | None = None,
                      headers: dict[str, str] | None = None,
                      fingerprint: str | None = None) -> int:
    session, ws = await _open(socket_path, base, vmid, node, cookies or {}, headers or {},
                              fingerprint)
    try:
        if sys.stdin.isatty() and expect is None:
            return await _interactive(ws)
        return await _scripted(ws, expect, timeout)
    finally:
        await ws.close()
        await session.close()


async def _scripted(ws, expect: str | None, timeout: float) -> int:
    data = sys.stdin.buffer.read() if not sys.stdin.isatty() else b""
    if data:
        await ws.send_bytes(data)
    seen = b""
    out = sys.stdout.buffer
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (left := deadline - loop.time()) > 0:
        try:
            msg = await asyncio.wait_for(ws.receive(), left)
        except TimeoutError:
            break
        if msg.type != aiohttp.WSMsgType.BINARY:
            if _say_why(msg):
                return 1
            break
        out.write(msg.data)
        out.flush()
        seen = (seen + msg.data)[-65536:]
        if expect is not None and expect.encode() in seen:
            return 0
    return 1 if expect is not None else 0


async def _interactive(ws) -> int:
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    loop.add_reader(fd, lambda: queue.put_nowait(os.read(fd, 1024)))
    sys.stderr.write("Connected to the serial console; press Ctrl-] to leave.\r\n")
    tty.setraw(fd)

    async def keyboard() -> None:
        while True:
            data = await queue.get()
            if ESCAPE in data:
                return
            await ws.send_bytes(data)

    why: list[str] = []

    async def screen() -> None:
        while True:
            msg = await ws.receive()
            if msg.type != aiohttp.WSMsgType.BINARY:
                if msg.type == aiohttp.WSMsgType.CLOSE and msg.extra:
                    why.append(str(msg.extra))
                return
            os.write(sys.stdout.fileno(), msg.data)

    tasks = [asyncio.create_task(keyboard()), asyncio.create_task(screen())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        loop.remove_reader(fd)
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        with contextlib.suppress(Exception):
            sys.stderr.write(f"\r\nDisconnected{': ' + why[0] if why else ''}.\n")
    return 1 if why else 0


def _say_why(msg: aiohttp.WSMessage) -> bool:
    """Print the server's reason for closing ("access revoked: user ... was disabled"),
    if it gave one; whether it did."""
    if msg.type == aiohttp.WSMsgType.CLOSE and msg.extra:
        sys.stderr.write(f"binome: console closed: {msg.extra}\n")
        return True
    return False
