"""The serial console helpers against a stand-in serial socket and a real pty."""

from __future__ import annotations

import asyncio
import os
import pty
import termios
from pathlib import Path

import pytest

from binome.guest.console import ESCAPE, attach_terminal, open_serial
from binome.guest.errors import GuestError


async def _read_fd(fd: int, want: bytes, timeout: float = 5.0) -> bytes:
    loop = asyncio.get_running_loop()
    got = b""
    deadline = loop.time() + timeout
    while want not in got:
        assert loop.time() < deadline, f"{want!r} not seen, got {got!r}"
        fut: asyncio.Future[bytes] = loop.create_future()
        loop.add_reader(fd, lambda f=fut: f.done() or f.set_result(os.read(fd, 4096)))
        try:
            got += await asyncio.wait_for(fut, deadline - loop.time())
        finally:
            loop.remove_reader(fd)
    return got


async def test_attach_terminal_copies_both_ways_and_quits_on_ctrl_bracket(tmp_path: Path
                                                                          ) -> None:
    sock = tmp_path / "100.serial"
    received = asyncio.Queue[bytes]()
    to_guest_done = asyncio.Event()

    async def guest(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"login: ")
        await writer.drain()
        while data := await reader.read(4096):
            await received.put(data)
        to_guest_done.set()
        writer.close()

    server = await asyncio.start_unix_server(guest, path=str(sock))
    master, slave = pty.openpty()
    try:
        before = termios.tcgetattr(slave)
        reader, writer = await open_serial(sock)
        session = asyncio.create_task(
            attach_terminal(reader, writer, stdin_fd=slave, stdout_fd=slave))
        assert b"login: " in await _read_fd(master, b"login: ")
        # raw mode while attached: no echo, no line buffering, ^C is a byte
        assert not termios.tcgetattr(slave)[3] & (termios.ECHO | termios.ICANON | termios.ISIG)
        os.write(master, b"root\x03")
        got = b""
        while got != b"root\x03":
            got += await asyncio.wait_for(received.get(), 5)
        os.write(master, b"ls" + ESCAPE + b"ignored")
        await asyncio.wait_for(session, 5)
        await asyncio.wait_for(to_guest_done.wait(), 5)  # the socket was closed
        tail = b""
        while not received.empty():
            tail += received.get_nowait()
        assert tail == b"ls"  # bytes after the escape never reach the guest
        assert termios.tcgetattr(slave) == before  # terminal restored
    finally:
        server.close()
        await server.wait_closed()
        os.close(master)
        os.close(slave)


async def test_attach_terminal_ends_when_the_guest_goes_away(tmp_path: Path) -> None:
    sock = tmp_path / "101.serial"

    async def guest(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"bye\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_unix_server(guest, path=str(sock))
    master, slave = pty.openpty()
    try:
        reader, writer = await open_serial(sock)
        await asyncio.wait_for(attach_terminal(reader, writer, stdin_fd=slave, stdout_fd=slave),
                               5)
        assert b"bye" in await _read_fd(master, b"bye")
    finally:
        server.close()
        await server.wait_closed()
        os.close(master)
        os.close(slave)


async def test_open_serial_of_a_stopped_vm_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(GuestError, match="not available"):
        await open_serial(tmp_path / "102.serial")
