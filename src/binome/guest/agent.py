"""The QEMU guest agent (QGA) channel of one running guest: binome's client of the
``qemu-ga`` inside the VM, reached through the unix socket QEMU exposes for the
``org.qemu.guest_agent.0`` virtio-serial port (``<run_dir>/<vmid>.qga``).

Owns the wire protocol, as qemu-server's QMPClient speaks it to the agent:

* one connection per command (QEMU's chardev takes one client at a time; a
  client that died mid-command leaves nothing behind);
* every command is preceded by ``guest-sync-delimited`` with a fresh id: the agent
  answers it after a ``0xFF`` byte, which resynchronises the stream past anything
  a previous client left unread (a late answer, half a line), and answers with the
  same id, so the next line is the answer to our command;
* the agent sends no answer at all for a successful ``guest-shutdown`` and
  ``guest-suspend-*`` (the guest goes away): a closed connection or the timeout
  counts as done for those;
* PVE's timeouts per command (QMPClient.pm): 5 s by default, 10 min for
  ``guest-fstrim``/``guest-shutdown``, 1 h for ``guest-fsfreeze-freeze``,
  3 min for ``guest-fsfreeze-thaw``.

Errors are `AgentError`; ``timeout`` says the agent did not answer in time.
Arguments are never logged (``guest-set-user-password`` carries a password).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
from pathlib import Path
from typing import Any

from binome.guest.errors import GuestError

__all__ = ["NO_ANSWER_ON_SUCCESS", "AgentError", "QgaChannel", "command_timeout"]

#: commands the agent does not answer when they succeed (QMPClient's
#: $qga_allow_close_cmds)
NO_ANSWER_ON_SUCCESS = frozenset({"guest-shutdown", "guest-suspend-ram", "guest-suspend-disk",
                                  "guest-suspend-hybrid"})
CONNECT_TIMEOUT = 3.0
SYNC_TIMEOUT = 3.0
MAX_LINE = 64 * 1024 * 1024   # a 16 MiB file-read chunk is ~22 MiB of base64 JSON

_TIMEOUTS = {
    "guest-fsfreeze-freeze": 3600.0,
    "guest-fsfreeze-thaw": 180.0,
    "guest-fstrim": 600.0,
    "guest-shutdown": 600.0,
}


def command_timeout(command: str) -> float:
    """PVE's answer timeout for `command` (QMPClient.pm's table)."""
    return _TIMEOUTS.get(command, 5.0)


class AgentError(GuestError):
    """The agent did not answer, or answered with an error (its ``desc``)."""

    def __init__(self, message: str, *, timeout: bool = False,
                 agent_error: bool = False) -> None:
        super().__init__(message)
        self.timeout = timeout
        self.agent_error = agent_error   # the agent answered {"error": ...}


class QgaChannel:
    """Commands to the agent of guest `vmid` over `socket`, one at a time."""

    # sync ids: unique per process and increasing, as PVE's (the agent echoes them)
    _ids = itertools.count(int.from_bytes(os.urandom(3), "big") + 1)

    def __init__(self, vmid: int, socket: Path) -> None:
        self.vmid = vmid
        self.socket = socket
        self._lock = asyncio.Lock()

    async def command(self, command: str, args: dict[str, Any] | None = None,
                      timeout: float | None = None) -> Any:
        """The agent's ``return`` value for `command`; AgentError otherwise."""
        timeout = command_timeout(command) if timeout is None else timeout
        async with self._lock:
            return await self._exchange(command, args, timeout)

    async def _exchange(self, command: str, args: dict[str, Any] | None,
                        timeout: float) -> Any:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_unix_connection(str(self.socket), limit=MAX_LINE),
                CONNECT_TIMEOUT)
        except (OSError, TimeoutError) as exc:
            raise AgentError(f"unable to connect to VM {self.vmid} qga socket - "
                             f"{exc or 'timeout'}", timeout=isinstance(exc, TimeoutError)
                             ) from None
        try:
            sync_id = next(self._ids)
            request: dict[str, Any] = {"execute": command}
            if args:
                request["arguments"] = args
            # 0xFF first: makes the agent drop a partial request another client left
            writer.write(b"\xff" + json.dumps({"execute": "guest-sync-delimited",
                                               "arguments": {"id": sync_id}}).encode()
                         + b"\n")
            await writer.drain()
            await asyncio.wait_for(self._await_sync(reader, sync_id), SYNC_TIMEOUT)
            writer.write(json.dumps(request).encode() + b"\n")
            await writer.drain()
            try:
                line = await asyncio.wait_for(reader.readline(), timeout)
            except TimeoutError:
                if command in NO_ANSWER_ON_SUCCESS:
                    return None
                raise
            if not line:
                if command in NO_ANSWER_ON_SUCCESS:
                    return None
                raise AgentError(f"VM {self.vmid} qga command '{command}' failed - "
                                 f"connection closed")
            return self._answer(command, line)
        except TimeoutError:
            raise AgentError(f"VM {self.vmid} qga command '{command}' failed - got timeout",
                             timeout=True) from None
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ValueError) as exc:   # ValueError: a line over MAX_LINE
            raise AgentError(f"VM {self.vmid} qga command '{command}' failed - {exc}") \
                from None
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _await_sync(self, reader: asyncio.StreamReader, sync_id: int) -> None:
        """Skip to the 0xFF delimiter, then to the sync answer carrying `sync_id`."""
        while True:
            await reader.readuntil(b"\xff")
            line = await reader.readline()
            if not line:
                raise AgentError(f"VM {self.vmid} qga sync failed - connection closed")
            try:
                answer = json.loads(line)
            except ValueError:
                continue
            if isinstance(answer, dict) and answer.get("return") == sync_id:
                return

    def _answer(self, command: str, line: bytes) -> Any:
        try:
            answer = json.loads(line)
        except ValueError:
            raise AgentError(f"VM {self.vmid} qga command '{command}' failed - "
                             f"malformed answer") from None
        if not isinstance(answer, dict):
            raise AgentError(f"VM {self.vmid} qga command '{command}' failed - "
                             f"malformed answer")
        error = answer.get("error")
        if isinstance(error, dict):
            raise AgentError(str(error.get("desc") or error.get("class") or "unknown error"),
                             agent_error=True)
        return answer.get("return")
