"""`GuestAgent`: what the API and the backup ask of a guest's QEMU guest agent, as
qemu-server does it (``PVE/QemuServer/Agent.pm``, ``PVE/API2/Qemu/Agent.pm``).

Owns the checks before any agent command, with PVE's texts ("No QEMU guest agent
configured", "VM <id> is not running", "QEMU guest agent is not running"), the
multi-command flows (``exec`` arguments, ``exec-status`` decoding, ``file-read`` in
1 MiB chunks up to 16 MiB, ``file-write``, ``set-user-password`` with the password
base64-encoded and never logged) and the filesystem freeze around a backup's
snapshot instant (``freeze-fs``, PVE 8's ``freeze-fs-on-backup``). The wire protocol
is `binome.guest.agent`'s; the socket belongs to the running guest (`runtime`).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Any

from binome.guest import config as vmconf
from binome.guest.agent import AgentError
from binome.guest.context import GuestContext
from binome.guest.errors import GuestError, GuestFailure

__all__ = ["MAX_READ_SIZE", "SIMPLE_COMMANDS", "GuestAgent"]

#: PVE's $MAX_READ_SIZE of file-read
MAX_READ_SIZE = 16 * 1024 * 1024
READ_CHUNK = 1024 * 1024
PING_TIMEOUT = 3.0

#: PVE's $guest_agent_commands: the commands without parameters, by HTTP method
SIMPLE_COMMANDS: dict[str, str] = {
    "ping": "POST", "get-time": "GET", "info": "GET", "fsfreeze-status": "POST",
    "fsfreeze-freeze": "POST", "fsfreeze-thaw": "POST", "fstrim": "POST",
    "network-get-interfaces": "GET", "get-vcpus": "GET", "get-fsinfo": "GET",
    "get-memory-blocks": "GET", "get-memory-block-info": "GET", "suspend-hybrid": "POST",
    "suspend-ram": "POST", "suspend-disk": "POST", "shutdown": "POST",
    "get-host-name": "GET", "get-osinfo": "GET", "get-users": "GET", "get-timezone": "GET",
}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _text(data: bytes) -> str:
    """Bytes as a JSON string: UTF-8 when they are, else one character per byte (what
    PVE's Perl JSON encoder sends for a byte string)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


class GuestAgent:
    def __init__(self, ctx: GuestContext) -> None:
        self.ctx = ctx

    async def _running(self, vmid: int) -> bool:
        try:
            await self.ctx.runtime.agent_command(vmid, "guest-ping", timeout=PING_TIMEOUT)
        except GuestError:   # AgentError, or the guest stopped meanwhile
            return False
        return True

    async def assert_available(self, vmid: int) -> dict[str, Any]:
        """PVE's assert_agent_available; the VM's config."""
        vm = await self.ctx.read(vmid, fresh=False)
        if vm.config.get("agent") in (None, ""):
            raise GuestFailure("No QEMU guest agent configured")
        if not self.ctx.runtime.is_running(vmid):
            raise GuestFailure(f"VM {vmid} is not running")
        if not await self._running(vmid):
            raise GuestFailure("QEMU guest agent is not running")
        return vm.config

    async def _call(self, vmid: int, command: str, args: dict[str, Any] | None = None,
                    errmsg: str | None = None) -> Any:
        """One ``guest-<command>``; PVE's text on failure ("Agent error: ..." for the
        flows that go through agent_cmd, which give `errmsg`)."""
        try:
            result = await self.ctx.runtime.agent_command(vmid, f"guest-{command}", args)
        except AgentError as exc:
            if errmsg is not None and exc.agent_error:
                raise GuestFailure(f"Agent error: {exc}") from None
            raise GuestFailure(str(exc)) from None
        if result is None and errmsg is not None:
            raise GuestFailure(f"Agent error: {errmsg}")
        return result

    async def command(self, vmid: int, command: str) -> dict[str, Any]:
        """One of `SIMPLE_COMMANDS`: ``{"result": <the agent's answer>}``."""
        if command not in SIMPLE_COMMANDS:
            raise GuestFailure(f"unknown guest agent command '{command}'")
        await self.assert_available(vmid)
        return {"result": await self._call(vmid, command)}

    async def exec(self, vmid: int, command: list[str], input_data: str | None
                   ) -> dict[str, Any]:
        """PVE's qemu_exec: start `command` (program + arguments) in the guest, its
        output captured; ``{"pid": N}``."""
        args: dict[str, Any] = {"capture-output": True}
        if command:
            args["path"] = command[0]
            args["arg"] = list(command[1:])
        if input_data is not None:
            args["input-data"] = _b64(input_data.encode())
        if "path" not in args and "input-data" not in args:
            raise GuestFailure("command or input-data (or both) required")
        errmsg = "can't execute command"
        if command:
            errmsg += f" ({args['path']} {' '.join(args['arg'])})".rstrip()
        if input_data is not None:
            errmsg += " (input-data given)"
        await self.assert_available(vmid)
        result = await self._call(vmid, "exec", args, errmsg)
        return dict(result) if isinstance(result, dict) else {"pid": result}

    async def exec_status(self, vmid: int, pid: int) -> dict[str, Any]:
        """PVE's qemu_exec_status: the outputs decoded, booleans as 1/0."""
        await self.assert_available(vmid)
        result = await self._call(vmid, "exec-status", {"pid": int(pid)},
                                  f"can't get exec status for '{pid}'")
        status = dict(result) if isinstance(result, dict) else {}
        for key in ("out-data", "err-data"):
            if status.get(key):
                try:
                    status[key] = _text(base64.b64decode(status[key], validate=True))
                except (binascii.Error, ValueError):
                    pass   # PVE warns and leaves it encoded
        return {k: (int(v) if isinstance(v, bool) else v) for k, v in status.items()}

    async def file_read(self, vmid: int, path: str, *, count: int | None = None,
                        offset: int = 0, decode: bool = True) -> dict[str, Any]:
        """PVE's file-read: up to `count` (at most 16 MiB) bytes from `offset`;
        ``{"content", "bytes-read"[, "truncated": 1]}``."""
        await self.assert_available(vmid)
        limit = MAX_READ_SIZE if count is None else count
        handle = await self._call(vmid, "file-open", {"path": path}, "can't open file")
        try:
            if offset > 0:
                await self._call(vmid, "file-seek", {"handle": handle, "offset": int(offset),
                                                     "whence": "set"},
                                 "can't seek to offset position")
            chunks: list[bytes] = []
            encoded: list[str] = []
            done, eof = 0, False
            while done < limit and not eof:
                read = await self._call(vmid, "file-read",
                                        {"handle": handle,
                                         "count": min(READ_CHUNK, limit - done)},
                                        "can't read from file")
                if not isinstance(read, dict):
                    raise GuestFailure("Agent error: can't read from file")
                if decode:
                    chunks.append(base64.b64decode(read.get("buf-b64") or ""))
                else:
                    encoded.append(str(read.get("buf-b64") or ""))
                done += int(read.get("count") or 0)
                eof = bool(read.get("eof"))
                if not read.get("count") and not eof:
                    break   # no progress and no end: do not spin
        finally:
            try:
                await self._call(vmid, "file-close", {"handle": handle}, "can't close file")
            except GuestFailure:
                pass   # PVE: a warning only
        result: dict[str, Any] = {
            "content": _text(b"".join(chunks)) if decode else "".join(encoded),
            "bytes-read": done,
        }
        if not eof:
            result["truncated"] = 1
        return result

    async def file_write(self, vmid: int, path: str, content: str, *,
                         encode: bool = True) -> None:
        """PVE's file-write: `content` (base64-encoded here unless `encode` is off)
        replaces the file."""
        buf = _b64(content.encode()) if encode else content
        await self.assert_available(vmid)
        handle = await self._call(vmid, "file-open", {"path": path, "mode": "wb"},
                                  "can't open file")
        try:
            await self._call(vmid, "file-write", {"handle": handle, "buf-b64": buf},
                             "can't write to file")
        finally:
            await self._call(vmid, "file-close", {"handle": handle}, "can't close file")

    async def set_user_password(self, vmid: int, username: str, password: str,
                                crypted: bool) -> dict[str, Any]:
        """PVE's set-user-password; the password only ever travels base64-encoded to the
        agent (never into a log or an error text)."""
        await self.assert_available(vmid)
        result = await self._call(vmid, "set-user-password",
                                  {"username": username, "password": _b64(password.encode()),
                                   "crypted": bool(crypted)},
                                  "cannot set user password")
        return {"result": result}

    # ------------------------------------------------------------ backup

    async def freeze_for_backup(self, vmid: int, config: dict[str, Any],
                                log: Callable[[str], None]) -> bool:
        """VZDump's qga_fs_freeze: freeze the guest's filesystems when its agent is
        enabled, allows it and answers. True when a thaw must follow (also after a
        failed freeze: the agent may have frozen some of them)."""
        if not vmconf.agent_settings(config):
            return False
        if not await self._running(vmid):
            log("INFO: skipping guest-agent 'fs-freeze', agent configured but not running?")
            return False
        if not vmconf.agent_freeze_fs(config):
            log("INFO: skipping guest-agent 'fs-freeze', disabled in VM options")
            return False
        log("INFO: issuing guest-agent 'fs-freeze' command")
        try:
            await self.ctx.runtime.agent_command(vmid, "guest-fsfreeze-freeze")
        except GuestError as exc:
            log(f"ERROR: {exc}")
        return True

    async def thaw_after_backup(self, vmid: int, log: Callable[[str], None]) -> None:
        """VZDump's qga_fs_thaw; an error is logged, never raised."""
        log("INFO: issuing guest-agent 'fs-thaw' command")
        try:
            await self.ctx.runtime.agent_command(vmid, "guest-fsfreeze-thaw")
        except GuestError as exc:
            log(f"ERROR: {exc}")
