"""Users, passwords and API tokens (PVE's `/access/users`, `/access/password`,
`/access/users/{userid}/token`): declarations, filtering of the user list, and the
handlers that turn parameters into `access.ops` changes. Secrets never leave: a
password is stored as an argon2 hash, a token's secret is shown once when created."""

from __future__ import annotations

import uuid
from dataclasses import replace
from typing import Any

from binome.access import ops, tfa
from binome.access.model import ROOT_USER, AccessConfig, TfaUser, User, ValidationError
from binome.access.permission import And, AnyUser, Or, UseridGroup, UseridRealm, UseridSelf
from binome.access.secrets import hash_secret
from binome.api.context import RequestContext
from binome.api.errors import ApiError, ParamError, PermissionDenied
from binome.api.methods.common import access_change, reauth_user_for_user_modification
from binome.api.registry import CliSpec, registry
from binome.api.schema import Param

USERID = Param(format="pve-userid", description="Full user ID, in the `name@realm` format.",
               max_length=64)
TOKENID = Param(description="User-specific token identifier.", max_length=64,
                pattern=r"[A-Za-z][A-Za-z0-9._-]+")
MIN_PASSWORD = 8     # PVE's minimum length for a pve-realm password
TOKEN_PERM = Or(UseridSelf(), UseridGroup(("User.Modify",)))

_USER_PARAMS: dict[str, Param] = {
    "enable": Param(type="boolean", optional=True, description="Enable the account."),
    "expire": Param(type="integer", optional=True, minimum=0,
                    description="Account expiration date (seconds since epoch); 0: never."),
    "firstname": Param(optional=True), "lastname": Param(optional=True),
    "email": Param(optional=True, max_length=254),
    "comment": Param(optional=True, max_length=2048),
    "keys": Param(optional=True, description="Legacy two-factor keys."),
    "groups": Param(optional=True, description="Comma-separated group ids."),
}


def split_list(value: str | None) -> list[str]:
    """PVE's `-list` formats: comma, semicolon or space separated, empty items ignored."""
    if not value:
        return []
    return [v for v in value.replace(";", ",").replace(" ", ",").split(",") if v]


def _user_fields(params: dict[str, Any]) -> dict[str, Any]:
    return {k: params[k] for k in ops.USER_FIELDS if params.get(k) is not None}


def _user_record(cfg: AccessConfig, user: User, full: bool, now: float,
                 tfa_state: TfaUser | None) -> dict[str, Any]:
    out = user.to_public()
    out["groups"] = ",".join(user.groups)
    out["realm-type"] = user.realm
    if full:
        out["tokens"] = [t.to_public() for t in sorted(cfg.tokens.values(),
                                                        key=lambda t: t.tokenid)
                         if t.userid == user.userid]
    # PVE's index adds the TFA lock-out state (tfa_lock_status): `totp-locked` when set,
    # `tfa-locked-until` while in the future
    out.update(tfa.lock_status(tfa_state, now))
    return out


@registry.register(
    "GET", "/access/users", name="access_users",
    permission=AnyUser("one's own record, and the users of groups where one has "
                       "User.Modify or Sys.Audit"),
    description="User index (passwords and token secrets are never returned).",
    parameters={"full": Param(type="boolean", optional=True, default=False,
                              description="Include group and token information."),
                "enabled": Param(type="boolean", optional=True,
                                 description="Only list users with this 'enable' state.")},
    returns={"type": "array"},
    cli=CliSpec(("user", "list"), formatter="table:userid,enable,expire,groups,comment"),
)
async def access_users(ctx: RequestContext, params: dict[str, Any]) -> list[dict[str, Any]]:
    ev = await ctx.services.access.evaluator()
    cfg = ev.config
    caller = ctx.userid      # PVE: `$user eq $authuser`; a token is not its user
    privs = ["User.Modify", "Sys.Audit"]
    see_all = ev.check(ctx.userid, "/access/groups", privs, any=True)
    users = dict(cfg.users)
    users.setdefault(ROOT_USER, User(ROOT_USER, comment="system administrator"))
    out = []
    now = ctx.services.access.now()
    tfa_states = await ctx.services.access.tfa_states()
    for userid in sorted(users):
        user = users[userid]
        # PVE: one's own record, else a group the caller audits or modifies
        if not (see_all or userid == caller or any(
                ev.check(ctx.userid, f"/access/groups/{g}", privs, any=True)
                for g in user.groups)):
            continue
        if params.get("enabled") is not None and user.enable != params["enabled"]:
            continue
        out.append(_user_record(cfg, user, bool(params.get("full")), now,
                                tfa_states.get(userid)))
    return out


@registry.register(
    "POST", "/access/users", name="create_user",
    permission=And(UseridRealm(), UseridGroup(("User.Modify",), "create")),
    description="Create a new user.",
    parameters={"userid": USERID, **_USER_PARAMS,
                "password": Param(optional=True, secret=True, max_length=64,
                                  description="Initial password (pve realm).")},
    cli=CliSpec(("user", "add"), positional=("userid",)),
)
async def create_user(ctx: RequestContext, params: dict[str, Any]) -> None:
    groups = split_list(params.get("groups"))
    try:
        user = User(params["userid"], groups=tuple(dict.fromkeys(groups)),
                    **_user_fields(params))
    except ValidationError as exc:
        raise ParamError(exc.errors) from None
    password = params.get("password")
    if password is not None:
        if user.realm != "pve":
            raise ApiError(500, f"realm '{user.realm}' does not store passwords in binome")
        _check_password_length(password)
        user = replace(user, password_hash=hash_secret(password))
    await access_change(ctx, f"create user '{user.userid}'",
                        lambda cfg: ops.add_user(cfg, user))


@registry.register(
    "GET", "/access/users/{userid}", name="read_user",
    permission=UseridGroup(("User.Modify", "Sys.Audit")),
    description="Get user configuration.",
    parameters={"userid": USERID},
    returns={"type": "object"},
    cli=CliSpec(("user", "show"), positional=("userid",)),
)
async def read_user(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    cfg = await ctx.services.access.config()
    user = cfg.users.get(params["userid"])
    if user is None:
        raise ApiError(500, f"user '{params['userid']}' does not exist")
    out = user.to_public()
    out["tokens"] = {t.name: {k: v for k, v in t.to_public().items() if k != "tokenid"}
                     for t in cfg.tokens.values() if t.userid == user.userid}
    return out


@registry.register(
    "PUT", "/access/users/{userid}", name="update_user",
    permission=UseridGroup(("User.Modify",), "update"),
    description="Update user configuration.",
    parameters={"userid": USERID, **_USER_PARAMS,
                "append": Param(type="boolean", optional=True,
                                description="Add the groups instead of replacing them."),
                "delete": Param(optional=True, description="Settings to reset.")},
    cli=CliSpec(("user", "modify"), positional=("userid",)),
)
async def update_user(ctx: RequestContext, params: dict[str, Any]) -> None:
    groups = split_list(params["groups"]) if params.get("groups") is not None else None
    if params.get("append") and groups is None:
        raise ParamError({"append": "requires option 'groups'"})
    userid = params["userid"]
    await access_change(ctx, f"update user '{userid}'", lambda cfg: ops.update_user(
        cfg, userid, _user_fields(params), groups, bool(params.get("append")),
        split_list(params.get("delete"))))


@registry.register(
    "DELETE", "/access/users/{userid}", name="delete_user",
    permission=And(UseridRealm(), UseridGroup(("User.Modify",))),
    description="Delete a user (with their tokens, ACL entries and second factors).",
    parameters={"userid": USERID},
    cli=CliSpec(("user", "delete"), positional=("userid",)),
)
async def delete_user(ctx: RequestContext, params: dict[str, Any]) -> None:
    userid = params["userid"]
    await access_change(ctx, f"delete user '{userid}'",
                        lambda cfg: ops.delete_user(cfg, userid))


@registry.register(
    "PUT", "/access/users/{userid}/unlock-tfa", name="unlock_tfa",
    permission=UseridGroup(("User.Modify",)),
    description="Unlock a user's TFA authentication.",
    parameters={"userid": USERID},
    returns={"type": "boolean"},
    cli=CliSpec(("user", "tfa", "unlock"), positional=("userid",)),
)
async def unlock_tfa(ctx: RequestContext, params: dict[str, Any]) -> int:
    """PVE 7.3+ (User.pm `unlock_tfa`, proxmox-tfa `unlock_and_reset_tfa`): clear the TOTP
    lock, the hour-long lock of every factor and both failure counters; answers whether
    the user was locked. A user without TFA data is PVE's "no such user"."""
    userid = params["userid"]
    now = ctx.services.access.now()
    was: list[bool] = [False]

    def op(cfg: AccessConfig) -> AccessConfig:
        current: TfaUser | None = cfg.tfa.get(userid)
        if current is None:
            raise ops.AccessError("no such user")
        new, was[0] = tfa.unlock(current, now)
        return ops.set_tfa(cfg, new)

    await access_change(ctx, f"unlock TFA of '{userid}'", op)
    return int(was[0])


def _check_password_length(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise ParamError({"password": f"value must be at least {MIN_PASSWORD} characters"})


@registry.register(
    "PUT", "/access/password", name="change_password",
    permission=Or(UseridSelf(), And(UseridRealm(), UseridGroup(("User.Modify",)))),
    allow_token=False,
    description="Change user password.",
    parameters={"userid": USERID,
                "password": Param(secret=True, max_length=64, description="The new password."),
                "confirmation-password": Param(optional=True, secret=True, max_length=64,
                                               description="The current password of the "
                                               "user performing the change (not needed "
                                               "for root@pam).")},
    cli=CliSpec(("passwd",), positional=("userid",)),
)
async def change_password(ctx: RequestContext, params: dict[str, Any]) -> None:
    """PVE 8+ (AccessControl.pm `change_password`): the caller confirms with their own
    current password (root@pam excepted), only root@pam changes root@pam's, and a pam
    user's password is not another user's to change."""
    userid, password = params["userid"], params["password"]
    _check_password_length(password)
    await reauth_user_for_user_modification(ctx, userid, params.get("confirmation-password"),
                                            "confirmation-password")
    if ctx.userid not in (ROOT_USER, userid) and userid.endswith("@pam"):
        raise PermissionDenied()
    if userid.endswith("@pam"):
        # PAM passwords belong to the node's system accounts, not to binome
        raise ApiError(500, f"user '{userid}' is a pam user: change the password on "
                            "each node with the system's passwd")
    digest = hash_secret(password)
    await access_change(ctx, f"change password of '{userid}'",
                        lambda cfg: ops.set_password_hash(cfg, userid, digest))


# -- API tokens -------------------------------------------------------------------------

def _full(params: dict[str, Any]) -> str:
    return f"{params['userid']}!{params['tokenid']}"


def _token_info(cfg: AccessConfig, tokenid: str) -> dict[str, Any]:
    token = cfg.tokens.get(tokenid)
    if token is None:
        user, _, name = tokenid.partition("!")
        raise ApiError(500, f"no such token '{name}' for user '{user}'")
    return {k: v for k, v in token.to_public().items() if k != "tokenid"}


@registry.register(
    "GET", "/access/users/{userid}/token", name="token_index", permission=TOKEN_PERM,
    description="Get user API tokens.", parameters={"userid": USERID},
    returns={"type": "array"},
    cli=CliSpec(("user", "token", "list"), positional=("userid",),
                formatter="table:tokenid,expire,privsep,comment"),
)
async def token_index(ctx: RequestContext, params: dict[str, Any]) -> list[dict[str, Any]]:
    cfg = await ctx.services.access.config()
    if params["userid"] not in cfg.users and params["userid"] != ROOT_USER:
        raise ApiError(500, f"user '{params['userid']}' does not exist")
    return [t.to_public() for t in sorted(cfg.tokens.values(), key=lambda t: t.tokenid)
            if t.userid == params["userid"]]


@registry.register(
    "GET", "/access/users/{userid}/token/{tokenid}", name="read_token",
    permission=TOKEN_PERM, description="Get specific API token information.",
    parameters={"userid": USERID, "tokenid": TOKENID}, returns={"type": "object"},
)
async def read_token(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    return _token_info(await ctx.services.access.config(), _full(params))


_TOKEN_OPTS: dict[str, Param] = {
    "expire": Param(type="integer", optional=True, minimum=0,
                    description="API token expiration date (seconds since epoch); "
                                "0: the user's."),
    "privsep": Param(type="boolean", optional=True,
                     description="Restrict API token privileges with separate ACLs "
                                 "(default), or give full privileges of the user."),
    "comment": Param(optional=True, max_length=2048),
}


@registry.register(
    "POST", "/access/users/{userid}/token/{tokenid}", name="generate_token",
    permission=TOKEN_PERM,
    description="Generate a new API token for a specific user. The secret is shown "
                "only in this answer.",
    parameters={"userid": USERID, "tokenid": TOKENID, **_TOKEN_OPTS},
    returns={"type": "object"},
    cli=CliSpec(("user", "token", "add"), positional=("userid", "tokenid")),
)
async def generate_token(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    tokenid = _full(params)
    secret = str(uuid.uuid4())        # PVE's token values are UUIDs
    digest = hash_secret(secret)
    now = ctx.services.access.now()
    privsep = params.get("privsep")
    change = await access_change(ctx, f"create API token '{tokenid}'", lambda cfg: ops.add_token(
        cfg, params["userid"], params["tokenid"], digest, expire=params.get("expire") or 0,
        privsep=True if privsep is None else bool(privsep),
        comment=params.get("comment") or "", now=now))
    return {"full-tokenid": tokenid, "info": _token_info(change.config, tokenid),
            "value": secret}


_TOKEN_DELETABLE = ("comment",)


@registry.register(
    "PUT", "/access/users/{userid}/token/{tokenid}", name="update_token",
    permission=TOKEN_PERM,
    description="Update API token for a specific user. NOTE: when 'regenerate' is set, "
                "the returned token value needs to be stored as it cannot be retrieved "
                "afterwards!",
    parameters={"userid": USERID, "tokenid": TOKENID, **_TOKEN_OPTS,
                "regenerate": Param(type="boolean", optional=True,
                                    description="Regenerate the token's secret value. All "
                                    "users of the previous secret will lose access after "
                                    "this operation."),
                "delete": Param(optional=True, max_length=4096,
                                description="A list of settings you want to delete.")},
    returns={"type": "object"},
    cli=CliSpec(("user", "token", "modify"), positional=("userid", "tokenid")),
)
async def update_token(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    """PVE 9.1 (User.pm `update_token_info`): `regenerate` replaces the secret at once
    (the old one stops working: the token cache is keyed by the stored hash) and the
    answer carries the new `value` and `full-tokenid`, as the only time it is shown."""
    tokenid = _full(params)
    privsep = params.get("privsep")
    delete = [d for d in str(params.get("delete") or "").replace(";", ",").split(",")
              if d.strip()]
    for key in delete:
        if key.strip() not in _TOKEN_DELETABLE:
            raise ParamError({"delete": f"unknown option '{key.strip()}'"})
    comment = params.get("comment")
    if delete:
        comment = ""
    regenerate = bool(params.get("regenerate"))
    secret = str(uuid.uuid4()) if regenerate else None      # PVE's token values are UUIDs
    digest = hash_secret(secret) if secret is not None else None
    change = await access_change(
        ctx, f"{'regenerate' if regenerate else 'update'} API token '{tokenid}'",
        lambda cfg: ops.update_token(
            cfg, tokenid, expire=params.get("expire"),
            privsep=None if privsep is None else bool(privsep), comment=comment,
            secret_hash=digest))
    info = _token_info(change.config, tokenid)
    if secret is not None:
        info.update({"value": secret, "full-tokenid": tokenid})
    return info


@registry.register(
    "DELETE", "/access/users/{userid}/token/{tokenid}", name="remove_token",
    permission=TOKEN_PERM, description="Remove API token for a specific user.",
    parameters={"userid": USERID, "tokenid": TOKENID},
    cli=CliSpec(("user", "token", "remove"), positional=("userid", "tokenid")),
)
async def remove_token(ctx: RequestContext, params: dict[str, Any]) -> None:
    tokenid = _full(params)
    await access_change(ctx, f"delete API token '{tokenid}'",
                        lambda cfg: ops.delete_token(cfg, tokenid))
