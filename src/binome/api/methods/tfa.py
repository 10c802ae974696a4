"""/access/tfa: users' second factors (PVE 7+'s TFA.pm: TOTP and recovery keys).

Secrets (TOTP seeds, recovery keys) are never returned, except the recovery keys once,
in the answer that creates them. Writes refuse API tokens and, for anyone but root@pam,
need the caller's current password (PVE's `password` confirmation).
"""

from __future__ import annotations

import secrets
from dataclasses import replace
from typing import Any

from binome.access import ops, tfa
from binome.access.model import ROOT_USER, AccessConfig, TfaUser
from binome.access.permission import AnyUser, Or, UseridGroup, UseridSelf
from binome.api import auth
from binome.api.context import RequestContext
from binome.api.errors import ApiError, ParamError
from binome.api.methods.common import access_change
from binome.api.registry import CliSpec, registry
from binome.schema import Param

USERID = Param(format="pve-userid", description="User ID (user@realm).", max_length=64)
TFA_ID = Param(description="A TFA entry id.", max_length=64)
PASSWORD = Param(optional=True, secret=True, max_length=64,
                 description="The current password of the user performing the change.")
WRITE = Or(UseridSelf(), UseridGroup(("User.Modify",)))


async def _confirm_password(ctx: RequestContext, params: dict[str, Any]) -> None:
    """PVE asks everyone but root@pam for their current password before a TFA change:
    a stolen ticket alone must not be enough to replace a second factor."""
    if ctx.userid == ROOT_USER:
        return
    password = params.get("password")
    if not password:
        raise ParamError({"password": "property is missing and it is not optional"})
    access = ctx.services.access
    source = ctx.request.remote if ctx.request is not None and ctx.request.remote else "local"
    # the login limiter here too: a stolen ticket must not become a password oracle
    wait = access.limiter.retry_after(ctx.userid, source, access.now())
    if wait > 0:
        raise ApiError(500, access.limiter.message(wait))
    if not await access.verify_password(ctx.userid, password, auth.pam_authenticate):
        access.limiter.failure(ctx.userid, source, access.now())
        raise ApiError(500, "authentication failure")


def _user_entries(cfg: AccessConfig, userid: str) -> TfaUser:
    return cfg.tfa.get(userid) or TfaUser(userid)


def _public_user(t: TfaUser, now: float) -> dict[str, Any]:
    out: dict[str, Any] = {"userid": t.userid,
                           "entries": [e.to_public() for e in t.entries]}
    out.update(tfa.lock_status(t, now))
    return out


@registry.register(
    "GET", "/access/tfa", name="tfa_list",
    permission=AnyUser("users whose TFA the caller may see: oneself, or Sys.Audit/User.Modify "
                       "on /access/groups"),
    description="List TFA configurations of users.",
    returns={"type": "array"},
    cli=CliSpec(("tfa", "list"), formatter="json"),
)
async def tfa_list(ctx: RequestContext, params: dict[str, Any]) -> list[dict[str, Any]]:
    cfg = await ctx.services.access.config()
    ev = await ctx.services.access.evaluator()
    everyone = ev.check(ctx.userid, "/access/groups", ["User.Modify", "Sys.Audit"], any=True) \
        if ctx.userid != ROOT_USER else True
    now = ctx.services.access.now()
    # the lock-out state as stored now (logins move it without a configuration bump)
    states = await ctx.services.access.tfa_states()
    return [_public_user(states.get(uid, t), now) for uid, t in sorted(cfg.tfa.items())
            if everyone or uid == ctx.userid]


@registry.register(
    "GET", "/access/tfa/{userid}", name="tfa_user",
    permission=Or(UseridSelf(), UseridGroup(("User.Modify", "Sys.Audit"))),
    description="List TFA entries of a user.",
    parameters={"userid": USERID},
    returns={"type": "array"},
)
async def tfa_user(ctx: RequestContext, params: dict[str, Any]) -> list[dict[str, Any]]:
    cfg = await ctx.services.access.config()
    return [e.to_public() for e in _user_entries(cfg, params["userid"]).entries]


@registry.register(
    "POST", "/access/tfa/{userid}", name="tfa_add", permission=WRITE, allow_token=False,
    description="Add a TFA entry for a user.",
    parameters={
        "userid": USERID,
        "type": Param(enum=("totp", "recovery"), description="TFA entry type."),
        "description": Param(optional=True, max_length=255, description="A description."),
        "totp": Param(optional=True, secret=True, max_length=1024,
                      description="A totp URI (otpauth://totp/...)."),
        "value": Param(optional=True, max_length=64,
                       description="The current value of the TOTP, proving the seed."),
        "password": PASSWORD,
    },
    returns={"type": "object"},
)
async def tfa_add(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    userid = params["userid"]
    await _confirm_password(ctx, params)
    now = ctx.services.access.now()
    kind = params["type"]
    description = params.get("description", "")
    if kind == "totp":
        missing = {k: "property is missing and it is not optional"
                   for k in ("totp", "value") if not params.get(k)}
        if missing:
            raise ParamError(missing)
    entry_id = "recovery" if kind == "recovery" else secrets.token_hex(8)
    keys: list[str] = []

    def op(cfg: AccessConfig) -> AccessConfig:
        user = _user_entries(cfg, userid)
        try:
            if kind == "totp":
                new = tfa.add_totp(user, params["totp"], params["value"], entry_id=entry_id,
                                   description=description, now=now)
            else:
                new, made = tfa.add_recovery(user, entry_id=entry_id,
                                             description=description, now=now)
                keys[:] = made
        except tfa.TfaError as exc:
            raise ParamError(exc.errors) from None
        return ops.set_tfa(cfg, new)

    await access_change(ctx, f"add {kind} TFA entry for {userid}", op)
    out: dict[str, Any] = {"id": entry_id}
    if keys:
        out["recovery"] = keys
    return out


def _find(cfg: AccessConfig, userid: str, entry_id: str) -> tuple[TfaUser, int]:
    user = _user_entries(cfg, userid)
    for i, e in enumerate(user.entries):
        if e.id == entry_id:
            return user, i
    raise ApiError(404, "no such tfa entry")


@registry.register(
    "GET", "/access/tfa/{userid}/{id}", name="tfa_entry",
    permission=Or(UseridSelf(), UseridGroup(("User.Modify", "Sys.Audit"))),
    description="Fetch a requested TFA entry if present.",
    parameters={"userid": USERID, "id": TFA_ID},
    returns={"type": "object"},
)
async def tfa_entry(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    user, i = _find(await ctx.services.access.config(), params["userid"], params["id"])
    return user.entries[i].to_public()


@registry.register(
    "PUT", "/access/tfa/{userid}/{id}", name="tfa_update", permission=WRITE,
    allow_token=False, description="Update a user's TFA entry.",
    parameters={"userid": USERID, "id": TFA_ID,
                "description": Param(optional=True, max_length=255),
                "enable": Param(type="boolean", optional=True,
                                description="Whether the entry should be enabled for login."),
                "password": PASSWORD},
)
async def tfa_update(ctx: RequestContext, params: dict[str, Any]) -> None:
    await _confirm_password(ctx, params)

    def op(cfg: AccessConfig) -> AccessConfig:
        user, i = _find(cfg, params["userid"], params["id"])
        entry = user.entries[i]
        entry = replace(entry, description=params.get("description", entry.description),
                        enable=params.get("enable", entry.enable))
        entries = list(user.entries)
        entries[i] = entry
        return ops.set_tfa(cfg, replace(user, entries=tuple(entries)))

    await access_change(ctx, f"update TFA entry {params['id']} of {params['userid']}", op)


@registry.register(
    "DELETE", "/access/tfa/{userid}/{id}", name="tfa_delete", permission=WRITE,
    allow_token=False, description="Delete a TFA entry by ID.",
    parameters={"userid": USERID, "id": TFA_ID, "password": PASSWORD},
    cli=CliSpec(("tfa", "delete"), positional=("userid", "id")),
)
async def tfa_delete(ctx: RequestContext, params: dict[str, Any]) -> None:
    await _confirm_password(ctx, params)

    def op(cfg: AccessConfig) -> AccessConfig:
        user, i = _find(cfg, params["userid"], params["id"])
        return ops.set_tfa(cfg, replace(user, entries=user.entries[:i] + user.entries[i + 1:]))

    await access_change(ctx, f"delete TFA entry {params['id']} of {params['userid']}", op)
