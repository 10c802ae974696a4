"""Consoles: VNC and serial terminal of a guest over an authenticated websocket, and
PVE's SPICE `spiceproxy` (remote-viewer's config; the proxy on 3128 is api/spiceproxy.py).

`vncproxy` (VNC) or `termproxy` (serial console) hands out a one-time ticket
bound to the user, the VM and the console kind, valid for 30 seconds;
`vncwebsocket` checks the API login *and* that ticket, then relays bytes
between the websocket and the guest's VNC or serial unix socket. noVNC (web
UI) and `binome vm console` use it. The ticket request is proxied to the guest's
node like any method with `proxyto`; the websocket itself is never proxied: it must be
opened on the node that runs the guest, which holds it as a live session of the access
module (access/sessions.py). That closes it (code 1008, "access revoked: <why>") within
moments of the user or token being disabled, expiring, being deleted or regenerated, or
losing VM.Console on the VM, whichever node the change was made on. When QEMU closes its
end (the guest stopped), the close says so ("VM <vmid>: the guest's vnc console closed").
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import secrets
import time
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from binome.api.context import RequestContext
from binome.api.errors import ApiError, fail
from binome.api.methods.common import NODE
from binome.api.methods.qemu import VM_PATH, VMID, guests
from binome.api.registry import privs, registry
from binome.api.schema import Param
from binome.tickets import spice_key

TICKET_LIFETIME = 30
CONSOLE = privs("VM.Console", path=VM_PATH)
_used: dict[str, float] = {}


def _sign(key: bytes, text: str) -> str:
    return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()


def make_console_ticket(key: bytes, user: str, vmid: int, kind: str) -> str:
    stamp = f"{int(time.time()):08X}"
    nonce = secrets.token_hex(8)
    return f"PVEVNC:{kind}:{stamp}:{nonce}::{_sign(key, f'{user}:{vmid}:{kind}:{stamp}:{nonce}')}"


def check_console_ticket(key: bytes, ticket: str, user: str, vmid: int) -> str:
    """Return the console kind of a valid, unused ticket; raise ApiError otherwise."""
    plain, _, signature = ticket.partition("::")
    parts = plain.split(":")
    if len(parts) != 4 or parts[0] != "PVEVNC":
        raise ApiError(401, "invalid console ticket")
    _, kind, stamp, nonce = parts
    expected = _sign(key, f"{user}:{vmid}:{kind}:{stamp}:{nonce}")
    if not hmac.compare_digest(expected, signature):
        raise ApiError(401, "invalid console ticket")
    now = time.time()
    if now - int(stamp, 16) > TICKET_LIFETIME:
        raise ApiError(401, "console ticket expired")
    for old in [t for t, at in _used.items() if now - at > TICKET_LIFETIME]:
        _used.pop(old, None)
    if ticket in _used:
        raise ApiError(401, "console ticket already used")
    _used[ticket] = now
    return kind


async def _proxy_ticket(ctx: RequestContext, params: dict[str, Any], kind: str) -> dict:
    service = guests(ctx)
    vmid = params["vmid"]
    vm = await service.read(vmid, fresh=False)
    service.require_running(vmid)
    vga = str(vm.config.get("vga", "std")).split(",", 1)[0]
    if kind == "vnc" and vga in ("none", "serial0"):
        raise fail(f"VM {vmid} has no display (vga: {vga}); use the serial console")
    key = await ctx.services.authkey()
    return {"user": ctx.userid, "ticket": make_console_ticket(key, ctx.userid, vmid, kind),
            "port": "5900" if kind == "vnc" else "5901", "node": ctx.node}


@registry.register(
    "POST", "/nodes/{node}/qemu/{vmid}/vncproxy", name="vm_vncproxy", permission=CONSOLE,
    proxyto="node", description="Get a ticket for the VM's VNC console over vncwebsocket.",
    parameters={"node": NODE, "vmid": VMID,
                "websocket": Param(type="boolean", optional=True, default=True),
                "generate-password": Param(type="boolean", optional=True, default=False)},
    returns={"type": "object"},
)
async def vm_vncproxy(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    return await _proxy_ticket(ctx, params, "vnc")


@registry.register(
    "POST", "/nodes/{node}/qemu/{vmid}/termproxy", name="vm_termproxy", permission=CONSOLE,
    proxyto="node", description="Get a ticket for the VM's serial console over vncwebsocket.",
    parameters={"node": NODE, "vmid": VMID,
                "serial": Param(optional=True, enum=("serial0",), default="serial0")},
    returns={"type": "object"},
)
async def vm_termproxy(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    return await _proxy_ticket(ctx, params, "serial")


@registry.register(
    "POST", "/nodes/{node}/qemu/{vmid}/spiceproxy", name="vm_spiceproxy", permission=CONSOLE,
    proxyto="node", description="Returns a SPICE configuration to connect to the VM.",
    parameters={"node": NODE, "vmid": VMID,
                "proxy": Param(format="address", optional=True, description=(
                    "SPICE proxy server the client is to use (every node runs one on "
                    "port 3128); by default the VM's node."))},
    returns={"type": "object", "description": "remote-viewer's config (PVE's keys)."},
)
async def vm_spiceproxy(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    key = spice_key(await ctx.services.authkey())
    proxy = params.get("proxy") or ctx.services.config.cluster_address
    return await guests(ctx).spice_config(params["vmid"], proxy, key)


@registry.register(
    "GET", "/nodes/{node}/qemu/{vmid}/vncwebsocket", name="vm_vncwebsocket",
    permission=CONSOLE, description="Open the console websocket (binary frames, raw bytes).",
    parameters={"node": NODE, "vmid": VMID,
                "port": Param(type="integer", minimum=5900, maximum=5999),
                "vncticket": Param(max_length=512)},
    returns={"type": "null"},
)
async def vm_vncwebsocket(ctx: RequestContext, params: dict[str, Any]) -> web.StreamResponse:
    if params["node"] != ctx.node:
        raise fail(f"open the console websocket on node '{params['node']}' itself")
    service = guests(ctx)
    vmid = params["vmid"]
    key = await ctx.services.authkey()
    kind = check_console_ticket(key, params["vncticket"], ctx.userid, vmid)
    service.require_running(vmid)
    path = service.runtime.vnc_socket(vmid) if kind == "vnc" else \
        service.runtime.serial_socket(vmid)
    try:
        reader, writer = await asyncio.open_unix_connection(str(path))
    except OSError as exc:
        raise fail(f"VM {vmid}: cannot open the {kind} console: {exc}") from None
    assert ctx.request is not None
    access = ctx.services.access
    ws = web.WebSocketResponse(protocols=("binary",), max_msg_size=0)
    await ws.prepare(ctx.request)

    async def guest_to_client() -> None:
        while chunk := await reader.read(65536):
            await ws.send_bytes(chunk)

    async def client_to_guest() -> None:
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                writer.write(msg.data)
            elif msg.type == WSMsgType.TEXT:
                writer.write(msg.data.encode())
            else:
                break
            await writer.drain()

    close_code, close_text = WSCloseCode.OK, b""
    try:
        # the access module ends the session when the user or token may no longer
        # open it (disabled, expired, deleted, regenerated, VM.Console gone)
        async with access.live_session(ctx.userid, CONSOLE, params) as session:
            ended = asyncio.create_task(session.ended())
            tasks = [asyncio.create_task(guest_to_client()),
                     asyncio.create_task(client_to_guest()), ended]
            try:
                await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for t in tasks:
                    t.cancel()
            if session.reason is not None:
                # 1008 policy violation; the reason (<= 123 bytes) is what clients show
                close_code = WSCloseCode.POLICY_VIOLATION
                close_text = close_reason(session.reason)
            elif tasks[0].done() and not tasks[0].cancelled() and tasks[0].exception() is None:
                # QEMU closed its end (the guest stopped, or moved): said, not a bare close
                close_text = f"VM {vmid}: the guest's {kind} console closed".encode()
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
        await ws.close(code=close_code, message=close_text)
    return ws


def close_reason(reason: str) -> bytes:
    """A websocket close reason: 'access revoked: <why>', cut to the 123 bytes allowed."""
    text = f"access revoked: {reason}".encode()
    return text[:123].decode(errors="ignore").encode()
