"""POST /access/ticket: login (realms `pve` and `pam`) and ticket renewal."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from binome.access.model import ROOT_USER, is_tokenid, split_tokenid
from binome.access.permission import AnyUser
from binome.access.service import AuthRefused
from binome.api import auth
from binome.api.context import RequestContext
from binome.api.errors import AuthError, PermissionDenied
from binome.api.registry import WORLD, CliSpec, registry
from binome.api.registry import privs as privs_
from binome.api.schema import Param

log = logging.getLogger("binome.api.access")

LOGIN_FAILURE_DELAY = 0.5    # slows a guesser; the rate limiter stops one


def _source(ctx: RequestContext) -> str:
    if ctx.request is None or ctx.request.remote is None:
        return "local"
    return ctx.request.remote


async def _check_password(ctx: RequestContext, userid: str, password: str) -> bool:
    key = await ctx.services.authkey()
    try:
        if auth.verify_ticket(key, password) == userid:
            await ctx.services.access.check_active(userid)
            return True   # renewal: the password is a still-valid ticket of this user
    except (AuthError, AuthRefused):
        pass
    return await ctx.services.access.verify_password(userid, password, auth.pam_authenticate)


@registry.register(
    "POST", "/access/ticket", name="create_ticket", permission=WORLD,
    description="Create or verify an authentication ticket.",
    parameters={
        "username": Param(description="User name (user@realm).", max_length=64),
        "password": Param(description="The secret password, or a valid ticket to renew.",
                          secret=True),
        "realm": Param(optional=True, description="Realm, if not part of the user name.",
                       max_length=32),
        "otp": Param(optional=True, description="One-time password for two-factor login."),
        "tfa-challenge": Param(optional=True, description="TFA challenge ticket."),
        "path": Param(optional=True, description="Verify ticket for this path."),
        "privs": Param(optional=True, description="Verify ticket for these privileges."),
        "new-format": Param(type="boolean", optional=True, description="Ignored."),
    },
    returns={"type": "object", "properties": {"username": {"type": "string"},
                                              "ticket": {"type": "string"},
                                              "CSRFPreventionToken": {"type": "string"}}},
)
async def create_ticket(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    userid = params["username"]
    if "@" not in userid:
        userid = f"{userid}@{params.get('realm') or 'pam'}"
    access = ctx.services.access
    source = _source(ctx)
    wait = access.limiter.retry_after(userid, source, access.now())
    if wait > 0:
        log.warning("authentication refused (rate limit); rhost=%s user=%s", source, userid)
        raise AuthError(access.limiter.message(wait))
    if not await _check_password(ctx, userid, params["password"]):
        access.limiter.failure(userid, source, access.now())
        log.warning("authentication failure; rhost=%s user=%s", source, userid)
        await asyncio.sleep(LOGIN_FAILURE_DELAY)
        raise AuthError("authentication failure")
    access.limiter.success(userid)
    key = await ctx.services.authkey()
    evaluator = await access.evaluator()
    data = {"username": userid, "ticket": auth.make_ticket(key, userid),
            "CSRFPreventionToken": auth.make_csrf_token(key, userid),
            "cap": {**evaluator.cap(userid), "sdn": {}, "mapping": {}}}
    if ctx.services.cluster.cluster_name:
        data["clustername"] = ctx.services.cluster.cluster_name
    return data


@registry.register(
    "GET", "/access/permissions", name="access_permissions",
    permission=AnyUser("another user's or token's: Sys.Audit on /access, or one's own token"),
    description="The effective privileges of a user (default: the caller) by path.",
    parameters={"userid": Param(optional=True, format="pve-userid"),
                "path": Param(optional=True, max_length=256)},
    returns={"type": "object"},
)
async def access_permissions(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    evaluator = await ctx.services.access.evaluator()
    target = params.get("userid") or ctx.userid
    if target != ctx.userid and ctx.userid != ROOT_USER:
        # PVE: another user or token needs Sys.Audit on /access, or be one's own token
        own_token = is_tokenid(target) and split_tokenid(target)[0] == ctx.userid
        if not own_token and not evaluator.check(ctx.userid, "/access", ["Sys.Audit"]):
            raise PermissionDenied("/access, Sys.Audit")
    return evaluator.permissions(target, params.get("path"))


@registry.register(
    "GET", "/access/users", name="access_users", permission=privs_("User.Modify"),
    description="The users defined in the cluster (passwords are never returned).",
    parameters={"full": Param(type="boolean", optional=True, default=False),
                "enabled": Param(type="boolean", optional=True)},
    returns={"type": "array"},
    cli=CliSpec(("user", "list"), formatter="table:userid,enable,comment"),
)
async def access_users(ctx: RequestContext, params: dict[str, Any]) -> list[dict[str, Any]]:
    config = await ctx.services.access.config()
    users = [{"userid": ROOT_USER, "enable": 1, "expire": 0,
              "comment": "system administrator"}]
    users += [u.to_public() for u in sorted(config.users.values(), key=lambda u: u.userid)
              if u.userid != ROOT_USER]
    if params.get("enabled") is not None:
        users = [u for u in users if bool(u.get("enable", 1)) == params["enabled"]]
    return users

