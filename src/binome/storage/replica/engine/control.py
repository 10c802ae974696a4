"""The engine's control socket: one JSON object per line, request and response.

Request:  {"id": 7, "cmd": "primary", "args": {"name": "vm-100-disk-0", "force": true}}
Response: {"id": 7, "ok": true, "result": {...}}
          {"id": 7, "ok": false, "code": "ESTATE", "error": "State change failed: ..."}

A connection may send many requests; they are answered in order. The socket
is a unix socket with mode 0600 (only root, i.e. `binomed`, talks to it).
`ControlClient` is the asyncio client the daemon and the tests use.

A command may answer with a stream (`events`): the reply is
`{"id": 7, "ok": true, "result": {"stream": true}}`, then one JSON object per
line for as long as the client stays connected (the connection then carries
nothing else). `ControlClient.stream` reads them.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

log = logging.getLogger("binome.replica.control")

Handler = Callable[[str, dict[str, Any]], Awaitable[Any]]
MAX_LINE = 1024 * 1024


class ControlError(Exception):
    """An error answer: `code` is stable (ENOENT, EEXIST, EBUSY, EINVAL, ESTATE, EIO)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class Stream:
    """A streaming answer: the server writes every object `source` yields, one per line."""

    def __init__(self, source: AsyncIterator[dict[str, Any]]) -> None:
        self.source = source


class ControlServer:
    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self._server: asyncio.base_events.Server | None = None
        self._clients: set[asyncio.Task] = set()

    async def start(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        self._server = await asyncio.start_unix_server(self._serve, path, limit=MAX_LINE)
        os.chmod(path, 0o600)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        current = asyncio.current_task()
        for task in list(self._clients):
            if task is not current:
                task.cancel()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        try:
            while line := await reader.readline():
                reply = await self._answer(line)
                stream = reply.get("result")
                if isinstance(stream, Stream):
                    reply["result"] = {"stream": True}
                    writer.write(json.dumps(reply).encode() + b"\n")
                    await self._stream(stream, reader, writer)
                    return
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            self._clients.discard(task)
            writer.close()

    @staticmethod
    async def _stream(stream: Stream, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        """Copy the stream to the client until either side ends it."""
        hangup = asyncio.ensure_future(reader.read())    # EOF: the client went away
        items = stream.source.__aiter__()
        try:
            while True:
                nxt = asyncio.ensure_future(items.__anext__())
                await asyncio.wait({nxt, hangup}, return_when=asyncio.FIRST_COMPLETED)
                if not nxt.done():
                    nxt.cancel()
                    with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                        await nxt
                    return
                try:
                    item = nxt.result()
                except StopAsyncIteration:
                    return
                writer.write(json.dumps(item).encode() + b"\n")
                await writer.drain()
        finally:
            hangup.cancel()
            aclose = getattr(stream.source, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()

    async def _answer(self, line: bytes) -> dict[str, Any]:
        rid = None
        try:
            req = json.loads(line)
            if not isinstance(req, dict) or not isinstance(req.get("cmd"), str):
                raise ControlError("EINVAL", "a request is an object with a 'cmd' string")
            rid = req.get("id")
            args = req.get("args") or {}
            if not isinstance(args, dict):
                raise ControlError("EINVAL", "'args' must be an object")
            result = await self._handler(req["cmd"], args)
            return {"id": rid, "ok": True, "result": result}
        except ControlError as e:
            return {"id": rid, "ok": False, "code": e.code, "error": str(e)}
        except json.JSONDecodeError as e:
            return {"id": rid, "ok": False, "code": "EINVAL", "error": f"bad JSON: {e}"}
        except Exception as e:
            log.exception("control: %s failed", line[:200])
            return {"id": rid, "ok": False, "code": "EIO", "error": f"{type(e).__name__}: {e}"}


class ControlClient:
    """asyncio client: `await client.call("status", name="v1")`."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._ids = itertools.count(1)
        self._lock = asyncio.Lock()

    @classmethod
    async def connect(cls, path: str) -> ControlClient:
        reader, writer = await asyncio.open_unix_connection(path, limit=MAX_LINE)
        return cls(reader, writer)

    async def call(self, cmd: str, **args: Any) -> Any:
        async with self._lock:
            rid = next(self._ids)
            self._writer.write(json.dumps({"id": rid, "cmd": cmd, "args": args}).encode() + b"\n")
            await self._writer.drain()
            line = await self._reader.readline()
        if not line:
            raise ConnectionError("engine closed the control connection")
        reply = json.loads(line)
        if reply.get("id") != rid:
            raise ConnectionError(f"reply id {reply.get('id')} for request {rid}")
        if not reply["ok"]:
            raise ControlError(reply.get("code", "EIO"), reply.get("error", "unknown error"))
        return reply["result"]

    async def stream(self, cmd: str, **args: Any) -> AsyncIterator[dict[str, Any]]:
        """Start a streaming command (`events`) and yield its objects until EOF.

        The connection is dedicated to the stream from then on.
        """
        await self.call(cmd, **args)
        while line := await self._reader.readline():
            yield json.loads(line)

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(Exception):
            await self._writer.wait_closed()


async def call(path: str, cmd: str, **args: Any) -> Any:
    """One request on a fresh connection."""
    client = await ControlClient.connect(path)
    try:
        return await client.call(cmd, **args)
    finally:
        await client.close()


def call_sync(path: str, cmd: str, timeout: float = 60.0, **args: Any) -> Any:
    """One request, blocking (for synchronous callers: the CLI, tests, scripts)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(json.dumps({"id": 1, "cmd": cmd, "args": args}).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("engine closed the control connection")
            buf += chunk
    reply = json.loads(buf)
    if not reply["ok"]:
        raise ControlError(reply.get("code", "EIO"), reply.get("error", "unknown error"))
    return reply["result"]
