"""The QEMU guest agent API, /nodes/{node}/qemu/{vmid}/agent/... (qemu-server's
PVE/API2/Qemu/Agent.pm): the command index, one endpoint per parameterless command
with PVE's HTTP method, the old generic ``POST .../agent`` with ``command``, and
``exec``, ``exec-status``, ``file-read``, ``file-write``, ``set-user-password``.

PVE 9's privileges: ``VM.GuestAgent.Audit`` / ``FileSystemMgmt`` / ``FileRead`` /
``FileWrite`` / ``VM.PowerMgmt`` per command, each also granted by
``VM.GuestAgent.Unrestricted`` (which alone allows exec and passwords). The guest
service (`binome.guest.guest_agent`) checks the agent and runs the commands;
its refusals are PVE's 500s with PVE's text.
"""

from __future__ import annotations

from typing import Any

from binome.access.permission import AnyUser
from binome.api.context import RequestContext
from binome.api.errors import param_error
from binome.api.methods.common import NODE
from binome.api.methods.qemu import VM_PATH, VMID, guests
from binome.api.registry import CliSpec, privs, registry
from binome.api.schema import Param
from binome.guest.guest_agent import MAX_READ_SIZE, SIMPLE_COMMANDS

AGENT_PATH = "/nodes/{node}/qemu/{vmid}/agent"
UNRESTRICTED = "VM.GuestAgent.Unrestricted"
_COMMAND_PRIVS: dict[str, tuple[str, ...]] = {
    "fsfreeze-status": ("VM.GuestAgent.Audit", "VM.GuestAgent.FileSystemMgmt"),
    **{c: ("VM.GuestAgent.FileSystemMgmt",)
       for c in ("fsfreeze-freeze", "fsfreeze-thaw", "fstrim")},
    **{c: ("VM.PowerMgmt",)
       for c in ("suspend-hybrid", "suspend-ram", "suspend-disk", "shutdown")},
}
RESULT = {"type": "object", "description": "Returns an object with a single `result` property."}


def _command_perm(command: str):
    names = _COMMAND_PRIVS.get(command, ("VM.GuestAgent.Audit",))
    return privs(*names, UNRESTRICTED, path=VM_PATH, any=True)


@registry.register(
    "GET", AGENT_PATH, name="vm_agent_index", proxyto="node",
    permission=AnyUser("nothing: the fixed list of command names (PVE: user => all)"),
    description="QEMU Guest Agent command index.",
    parameters={"node": NODE, "vmid": VMID},
    returns={"type": "array", "items": {"type": "object"}},
)
async def agent_index(ctx: RequestContext, params: dict[str, Any]) -> list[dict[str, str]]:
    names = [*SIMPLE_COMMANDS, "exec", "exec-status", "file-read", "file-write",
             "set-user-password"]
    return [{"name": name} for name in sorted(names)]


@registry.register(
    "POST", AGENT_PATH, name="vm_agent", permission=privs(UNRESTRICTED, path=VM_PATH),
    proxyto="node", description="Execute QEMU Guest Agent commands.",
    parameters={"node": NODE, "vmid": VMID,
                "command": Param(enum=tuple(sorted(SIMPLE_COMMANDS)),
                                 description="The QGA command.")},
    returns=RESULT,
    cli=CliSpec(("vm", "guest", "cmd"), positional=("vmid", "command")),
)
async def agent_generic(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    return await guests(ctx).agent.command(params["vmid"], params["command"])


def _simple(command: str, method: str) -> None:
    @registry.register(
        method, f"{AGENT_PATH}/{command}", name=f"vm_agent_{command.replace('-', '_')}",
        permission=_command_perm(command), proxyto="node", description=f"Execute {command}.",
        parameters={"node": NODE, "vmid": VMID}, returns=RESULT,
    )
    async def handler(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
        return await guests(ctx).agent.command(params["vmid"], command)


for _command, _method in sorted(SIMPLE_COMMANDS.items()):
    _simple(_command, _method)


@registry.register(
    "POST", f"{AGENT_PATH}/exec", name="vm_agent_exec",
    permission=privs(UNRESTRICTED, path=VM_PATH), proxyto="node",
    description="Executes the given command in the vm via the guest-agent and returns an "
                "object with the pid.",
    parameters={"node": NODE, "vmid": VMID,
                "command": Param(type="array", optional=True, items=Param(),
                                 description="The command as a list of program + arguments."),
                "input-data": Param(optional=True, max_length=64 * 1024,
                                    extra={"multiline": True},
                                    description="Data to pass as 'input-data' to the guest. "
                                                "Usually treated as STDIN to 'command'.")},
    returns={"type": "object", "properties": {"pid": {"type": "integer"}}},
)
async def agent_exec(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    return await guests(ctx).agent.exec(params["vmid"], list(params.get("command") or []),
                                        params.get("input-data"))


@registry.register(
    "GET", f"{AGENT_PATH}/exec-status", name="vm_agent_exec_status",
    permission=privs(UNRESTRICTED, path=VM_PATH), proxyto="node",
    description="Gets the status of the given pid started by the guest-agent",
    parameters={"node": NODE, "vmid": VMID,
                "pid": Param(type="integer", description="The PID to query")},
    returns={"type": "object"},
    cli=CliSpec(("vm", "guest", "exec-status"), positional=("vmid", "pid")),
)
async def agent_exec_status(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    return await guests(ctx).agent.exec_status(params["vmid"], int(params["pid"]))


@registry.register(
    "GET", f"{AGENT_PATH}/file-read", name="vm_agent_file_read",
    permission=privs("VM.GuestAgent.FileRead", UNRESTRICTED, path=VM_PATH, any=True),
    proxyto="node",
    description=f"Reads the given file via guest agent. Is limited to {MAX_READ_SIZE} bytes.",
    parameters={"node": NODE, "vmid": VMID,
                "file": Param(description="The path to the file"),
                "count": Param(type="integer", optional=True, minimum=1,
                               maximum=MAX_READ_SIZE, description="Number of bytes to read."),
                "offset": Param(type="integer", optional=True, minimum=0, default=0,
                                description="Offset to start reading at"),
                "decode": Param(type="boolean", optional=True, default=True,
                                description="Decode the agent's base64 data.")},
    returns={"type": "object"},
)
async def agent_file_read(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    count = params.get("count")
    return await guests(ctx).agent.file_read(
        params["vmid"], params["file"], count=int(count) if count is not None else None,
        offset=int(params.get("offset") or 0), decode=bool(params.get("decode", True)))


@registry.register(
    "POST", f"{AGENT_PATH}/file-write", name="vm_agent_file_write",
    permission=privs("VM.GuestAgent.FileWrite", UNRESTRICTED, path=VM_PATH, any=True),
    proxyto="node", description="Writes the given file via guest agent.",
    parameters={"node": NODE, "vmid": VMID,
                "file": Param(description="The path to the file."),
                "content": Param(max_length=60 * 1024, extra={"multiline": True},
                                 description="The content to write into the file."),
                "encode": Param(type="boolean", optional=True, default=True,
                                description="Base64-encode the content (QEMU needs it); "
                                            "off: the content is encoded already.")},
    returns={"type": "null"},
)
async def agent_file_write(ctx: RequestContext, params: dict[str, Any]) -> None:
    await guests(ctx).agent.file_write(params["vmid"], params["file"], params["content"],
                                       encode=bool(params.get("encode", True)))


@registry.register(
    "POST", f"{AGENT_PATH}/set-user-password", name="vm_agent_set_user_password",
    permission=privs(UNRESTRICTED, path=VM_PATH), proxyto="node",
    description="Sets the password for the given user to the given password",
    parameters={"node": NODE, "vmid": VMID,
                "username": Param(description="The user to set the password for."),
                "password": Param(secret=True, description="The new password.",
                                  max_length=1024),
                "crypted": Param(type="boolean", optional=True, default=False,
                                 description="set to 1 if the password has already been "
                                             "passed through crypt()")},
    returns=RESULT,
)
async def agent_set_user_password(ctx: RequestContext, params: dict[str, Any]
                                  ) -> dict[str, Any]:
    if len(params["password"]) < 5:
        # PVE's minLength 5 (the text never contains the value)
        raise param_error("password", "value must be at least 5 characters long")
    return await guests(ctx).agent.set_user_password(
        params["vmid"], params["username"], params["password"], bool(params.get("crypted")))
