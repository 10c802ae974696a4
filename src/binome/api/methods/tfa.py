"""/access/tfa: users' second factors (PVE 7+'s TFA.pm: TOTP, WebAuthn and recovery keys).

Secrets (TOTP seeds, recovery keys) are never returned, except the recovery keys once,
in the answer that creates them. WebAuthn registers in two POSTs as in PVE: without
`value` the answer's `challenge` holds the creation options; the second POST brings that
challenge back with the client's credential as `value`. Writes refuse API tokens, need
the caller's current password for anyone but root@pam (PVE's `password` confirmation),
and only root@pam changes root@pam's factors (PVE's reauth_user_for_user_modification).
"""

from __future__ import annotations

import secrets
from dataclasses import replace
from typing import Any

from binome.access import ops, tfa
from binome.access.model import ROOT_USER, AccessConfig, TfaUser
from binome.access.permission import AnyUser, Or, UseridGroup, UseridSelf
from binome.access.repository import AccessConflict, AccessRepository
from binome.api.context import RequestContext
from binome.api.errors import ApiError, ParamError
from binome.api.methods.common import access_change, reauth_user_for_user_modification
from binome.api.registry import CliSpec, registry
from binome.schema import Param

USERID = Param(format="pve-userid", description="User ID (user@realm).", max_length=64)
TFA_ID = Param(description="A TFA entry id.", max_length=64)
PASSWORD = Param(optional=True, secret=True, max_length=64,
                 description="The current password of the user performing the change.")
WRITE = Or(UseridSelf(), UseridGroup(("User.Modify",)))


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
    parameters={"userid": Param(optional=True, format="pve-userid",
                                description="binome: only this user's entries (pveum's "
                                            "`user tfa list USERID`).")},
    returns={"type": "array"},
    cli=(CliSpec(("tfa", "list"), formatter="json"),
         CliSpec(("user", "tfa", "list"), positional=("userid",), formatter="tfa_entries")),
)
async def tfa_list(ctx: RequestContext, params: dict[str, Any]) -> list[dict[str, Any]]:
    cfg = await ctx.services.access.config()
    ev = await ctx.services.access.evaluator()
    everyone = ev.check(ctx.userid, "/access/groups", ["User.Modify", "Sys.Audit"], any=True) \
        if ctx.userid != ROOT_USER else True
    now = ctx.services.access.now()
    # the lock-out state as stored now (logins move it without a configuration bump)
    states = await ctx.services.access.tfa_states()
    only = params.get("userid")
    return [_public_user(states.get(uid, t), now) for uid, t in sorted(cfg.tfa.items())
            if (everyone or uid == ctx.userid) and only in (None, uid)]


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
        "type": Param(enum=("totp", "recovery", "webauthn"),
                      description="TFA entry type (binome: not u2f or yubico)."),
        "description": Param(optional=True, max_length=255, description="A description."),
        "totp": Param(optional=True, secret=True, max_length=1024,
                      description="A totp URI (otpauth://totp/...)."),
        "value": Param(optional=True, max_length=16384,
                       description="The current value for the provided totp URI, or a "
                                   "Webauthn challenge response"),
        "challenge": Param(optional=True, max_length=1024,
                           description="When responding to a webauthn challenge: the "
                                       "original challenge string"),
        "password": PASSWORD,
    },
    returns={"type": "object"},
)
async def tfa_add(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    userid = params["userid"]
    await reauth_user_for_user_modification(ctx, params["userid"], params.get("password"))
    now = ctx.services.access.now()
    kind = params["type"]
    description = params.get("description", "")
    if kind == "totp":
        missing = {k: "property is missing and it is not optional"
                   for k in ("totp", "value") if not params.get(k)}
        if missing:
            raise ParamError(missing)
    if kind == "totp" and len(params["value"]) > 64:
        raise ParamError({"value": "value may only be 64 characters long"})
    if kind == "webauthn":
        return await _webauthn_add(ctx, userid, params, description, now)
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


async def _webauthn_add(ctx: RequestContext, userid: str, params: dict[str, Any],
                        description: str, now: float) -> dict[str, Any]:
    cfg = await ctx.services.access.config()
    challenge, value = params.get("challenge"), params.get("value")
    if challenge is None and value is None:
        # step one: the challenge is state (kept with the user's TFA counters), not
        # configuration: no config-version bump
        store = ctx.services.cluster.store
        if store is None:
            raise ApiError(503, "the cluster store is not available")
        try:
            options = await AccessRepository(store).update_tfa_state(
                userid, lambda t: tfa.webauthn_register_begin(
                    t, cfg.webauthn, description=description, now=now))
        except tfa.TfaError as exc:
            raise ApiError(500, "; ".join(exc.errors.values())) from None
        except AccessConflict as exc:
            raise ApiError(500, str(exc)) from None
        return {"challenge": options}
    if challenge is None or value is None:
        raise ParamError({"value" if value is None else "challenge":
                          "missing 'value' parameter (webauthn challenge response missing)"})
    entry_id = secrets.token_hex(8)
    errors: dict[str, str] = {}

    def op(cfg: AccessConfig) -> AccessConfig:
        user = _user_entries(cfg, userid)
        try:
            new = tfa.webauthn_register_finish(user, cfg.webauthn, challenge, value,
                                               entry_id=entry_id, now=now)
        except tfa.TfaError as exc:
            errors.update(exc.errors)
            # the refused answer spends its challenge all the same
            new, _ = tfa.spend_challenge(user, "register", challenge, now)
        return ops.set_tfa(cfg, new)

    await access_change(ctx, f"add webauthn TFA entry for {userid}", op)
    if errors:
        raise ParamError(errors)
    return {"id": entry_id}


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
    await reauth_user_for_user_modification(ctx, params["userid"], params.get("password"))

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
    cli=(CliSpec(("tfa", "delete"), positional=("userid", "id")),
         CliSpec(("user", "tfa", "delete"), positional=("userid",))),   # pveum: --id ID
)
async def tfa_delete(ctx: RequestContext, params: dict[str, Any]) -> None:
    await reauth_user_for_user_modification(ctx, params["userid"], params.get("password"))

    def op(cfg: AccessConfig) -> AccessConfig:
        user, i = _find(cfg, params["userid"], params["id"])
        return ops.set_tfa(cfg, replace(user, entries=user.entries[:i] + user.entries[i + 1:]))

    await access_change(ctx, f"delete TFA entry {params['id']} of {params['userid']}", op)
