"""Serial console access: open a guest's ttyS0 socket, bridge it to a terminal.

QEMU serves ttyS0 on ``<run_dir>/<vmid>.serial`` (a listening unix socket).
One client at a time is served: a second connection is accepted by the
kernel but gets no data until the first one closes. Output produced while no
client is connected is dropped by QEMU (the console is live, not a log).

``attach_terminal`` is what ``binome vm console`` runs on the node: raw mode
on the local terminal, bytes copied both ways, ``Ctrl-]`` quits (as telnet
and ``virsh console``). It works on any asyncio stream pair, so the API's
websocket relay can reuse ``open_serial`` the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import termios
import tty
from pathlib import Path

from binome.guest.errors import GuestError

__all__ = ["ESCAPE", "attach_terminal", "open_serial", "run_console"]

ESCAPE = b"\x1d"  # Ctrl-]


async def open_serial(
    path: Path | str, timeout: float = 5.0
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to a guest's serial console socket."""
    try:
        return await asyncio.wait_for(asyncio.open_unix_connection(str(path)), timeout)
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        raise GuestError(f"serial console {path} is not available (VM not running?)") from exc
    except TimeoutError:
        raise GuestError(f"serial console {path} did not answer within {timeout}s") from None


async def attach_terminal(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    *,
    stdin_fd: int = 0,
    stdout_fd: int = 1,
    escape: bytes = ESCAPE,
) -> None:
    """Copy ``stdin_fd`` -> ``writer`` and ``reader`` -> ``stdout_fd`` until escape or EOF.

    A tty on ``stdin_fd`` is put in raw mode (so Ctrl-C, arrows, tab reach
    the guest) and restored afterwards, whatever happens.
    """
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    saved = termios.tcgetattr(stdin_fd) if os.isatty(stdin_fd) else None

    def on_input() -> None:
        try:
            data = os.read(stdin_fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if escape in data:
            data = data.split(escape, 1)[0]
            done.set()
        elif not data:
            done.set()
        if data:
            writer.write(data)

    async def pump() -> None:
        while data := await reader.read(4096):
            os.write(stdout_fd, data)
        done.set()  # the guest went away (QEMU closed the socket)

    if saved is not None:
        tty.setraw(stdin_fd)
    loop.add_reader(stdin_fd, on_input)
    pump_task = loop.create_task(pump())
    try:
        await done.wait()
        with contextlib.suppress(ConnectionError):
            await writer.drain()
    finally:
        loop.remove_reader(stdin_fd)
        pump_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, OSError):
            await pump_task
        if saved is not None:
            termios.tcsetattr(stdin_fd, termios.TCSADRAIN, saved)
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()


async def run_console(path: Path | str) -> None:
    """``binome vm console``: attach this process's terminal to a serial socket."""
    reader, writer = await open_serial(path)
    await attach_terminal(reader, writer)
