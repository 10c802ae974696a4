"""POST /access/ticket: login (realms `pve` and `pam`) and ticket renewal."""

from __future__ import annotations

import asyncio
from typing import Any

from binome.api import auth
from binome.api.context import RequestContext
from binome.api.errors import AuthError, PermissionDenied
from binome.api.registry import ANY_USER, WORLD, CliSpec, registry
from binome.api.registry import privs as privs_
from binome.api.schema import Param

LOGIN_FAILURE_DELAY = 0.5
PRIVILEGES = ("Sys.Audit", "Sys.Modify", "Sys.Console", "Sys.PowerMgmt", "VM.Allocate",
              "VM.Audit", "VM.Config.Disk", "VM.Config.CPU", "VM.Config.Memory",
              "VM.Config.Network", "VM.Config.Options", "VM.PowerMgmt", "VM.Migrate",
              "VM.Console", "VM.Clone", "Datastore.Allocate", "Datastore.AllocateSpace",
              "Datastore.Audit", "Permissions.Modify", "User.Modify", "Pool.Allocate",
              "Pool.Audit")


async def _check_password(ctx: RequestContext, userid: str, password: str) -> bool:
    key = await ctx.services.authkey()
    try:
        if auth.verify_ticket(key, password) == userid:
            return True   # renewal: the password is a still-valid ticket of this user
    except AuthError:
        pass
    name, realm = auth.split_userid(userid)
    if realm == "pve":
        user = await ctx.services.get_user(userid)
        if not user or not user.get("enable", 1) or not user.get("password"):
            return False
        return auth.verify_password(user["password"], password)
    if realm == "pam":
        if userid != "root@pam" and not await ctx.services.get_user(userid):
            return False   # PAM users must be known to the cluster, as in PVE
        return await auth.pam_authenticate(name, password)
    return False


@registry.register(
    "POST", "/access/ticket", name="create_ticket", permission=WORLD,
    description="Create or verify an authentication ticket.",
    parameters={
        "username": Param(description="User name (user@realm).", max_length=64),
        "password": Param(description="The secret password, or a valid ticket to renew.",
                          secret=True),
        "realm": Param(optional=True, description="Realm, if not part of the user name.",
                       max_length=32),
        "otp": Param(optional=True, description="One-time password (not supported yet)."),
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
    if not await _check_password(ctx, userid, params["password"]):
        await asyncio.sleep(LOGIN_FAILURE_DELAY)
        raise AuthError("authentication failure")
    key = await ctx.services.authkey()
    superuser = await ctx.services.is_superuser(userid)
    privs = {p: 1 for p in PRIVILEGES} if superuser else {}
    data = {"username": userid, "ticket": auth.make_ticket(key, userid),
            "CSRFPreventionToken": auth.make_csrf_token(key, userid),
            "cap": {"vms": privs, "storage": privs, "access": privs, "nodes": privs,
                    "dc": privs, "sdn": {}, "mapping": {}}}
    if ctx.services.cluster.cluster_name:
        data["clustername"] = ctx.services.cluster.cluster_name
    return data


@registry.register(
    "GET", "/access/permissions", name="access_permissions", permission=ANY_USER,
    description="The effective privileges of a user (default: the caller) by path.",
    parameters={"userid": Param(optional=True, format="pve-userid"),
                "path": Param(optional=True, max_length=256)},
    returns={"type": "object"},
)
async def access_permissions(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    userid = params.get("userid") or ctx.userid
    if userid != ctx.userid and not await ctx.services.is_superuser(ctx.userid):
        raise PermissionDenied("/access, User.Modify")
    privs = {p: 1 for p in PRIVILEGES} if await ctx.services.is_superuser(userid) else {}
    return {params.get("path") or "/": privs}


@registry.register(
    "GET", "/access/users", name="access_users", permission=privs_("User.Modify"),
    description="The users defined in the cluster (passwords are never returned).",
    parameters={"full": Param(type="boolean", optional=True, default=False),
                "enabled": Param(type="boolean", optional=True)},
    returns={"type": "array"},
    cli=CliSpec(("user", "list"), formatter="table:userid,enable,comment"),
)
async def access_users(ctx: RequestContext, params: dict[str, Any]) -> list[dict[str, Any]]:
    users = [{"userid": "root@pam", "enable": 1, "comment": "system administrator"}]
    for stored in await ctx.services.cluster.users():
        users.append({k: v for k, v in stored.items() if k not in ("password", "superuser")})
    if params.get("enabled") is not None:
        users = [u for u in users if bool(u.get("enable", 1)) == params["enabled"]]
    return users


@registry.register(
    "GET", "/pools", name="pools", permission=ANY_USER,
    description="Resource pools (none yet: binome has no pools; clients get an empty list).",
    parameters={"poolid": Param(optional=True, max_length=64),
                "type": Param(optional=True, enum=("qemu", "lxc", "storage"))},
    returns={"type": "array"},
)
async def pools(ctx: RequestContext, params: dict[str, Any]) -> list[dict[str, Any]]:
    return []
