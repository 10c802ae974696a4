"""Groups, roles and the ACL (PVE's `/access/groups`, `/access/roles`, `/access/acl`):
declarations, filtering of the listings as PVE filters them, and the escalation check of
ACL changes (a caller gives or takes only what PVE lets them, see `update_acl`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from binome.access import ops
from binome.access.evaluator import Evaluator, PermissionCheckFailed
from binome.access.model import AccessConfig, Group, ValidationError, verify_acl_path
from binome.access.permission import AnyUser, PermModify
from binome.access.roles import BUILTIN_ROLES, RoleError
from binome.api.context import RequestContext
from binome.api.errors import ApiError, ParamError, PermissionDenied
from binome.api.methods.access_users import split_list
from binome.api.methods.common import access_change
from binome.api.registry import CliSpec, privs, registry
from binome.api.schema import Param

GROUPID = Param(description="The group id.", max_length=64, pattern=r"[A-Za-z0-9._-]+")
ROLEID = Param(description="The role id.", max_length=64, pattern=r"[A-Za-z0-9._-]+")
GROUP_AUDIT = ["Sys.Audit", "User.Modify", "Group.Allocate"]


# -- groups -----------------------------------------------------------------------------

@registry.register(
    "GET", "/access/groups", name="group_index",
    permission=AnyUser("groups where one has Sys.Audit, User.Modify or Group.Allocate"),
    description="Group index.", returns={"type": "array"},
    cli=CliSpec(("group", "list"), formatter="table:groupid,users,comment"),
)
async def group_index(ctx: RequestContext, params: dict[str, Any]) -> list[dict[str, Any]]:
    ev = await ctx.services.access.evaluator()
    out = []
    for gid in sorted(ev.config.groups):
        if not ev.check(ctx.userid, f"/access/groups/{gid}", GROUP_AUDIT, any=True):
            continue
        group = ev.config.groups[gid]
        entry: dict[str, Any] = {"groupid": gid, "users": ",".join(ev.config.members(gid))}
        if group.comment:
            entry["comment"] = group.comment
        out.append(entry)
    return out


@registry.register(
    "POST", "/access/groups", name="create_group",
    permission=privs("Group.Allocate", path="/access/groups"),
    description="Create new group.",
    parameters={"groupid": GROUPID, "comment": Param(optional=True, max_length=2048)},
    cli=CliSpec(("group", "add"), positional=("groupid",)),
)
async def create_group(ctx: RequestContext, params: dict[str, Any]) -> None:
    try:
        group = Group(params["groupid"], params.get("comment") or "")
    except ValidationError as exc:
        raise ParamError(exc.errors) from None
    await access_change(ctx, f"create group '{group.groupid}'",
                        lambda cfg: ops.add_group(cfg, group))


@registry.register(
    "GET", "/access/groups/{groupid}", name="read_group",
    permission=privs("Sys.Audit", "Group.Allocate", path="/access/groups", any=True),
    description="Get group configuration.", parameters={"groupid": GROUPID},
    returns={"type": "object"},
)
async def read_group(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    cfg = await ctx.services.access.config()
    group = cfg.groups.get(params["groupid"])
    if group is None:
        raise ApiError(500, f"group '{params['groupid']}' does not exist")
    out: dict[str, Any] = {"members": cfg.members(group.groupid)}
    if group.comment:
        out["comment"] = group.comment
    return out


@registry.register(
    "PUT", "/access/groups/{groupid}", name="update_group",
    permission=privs("Group.Allocate", path="/access/groups"),
    description="Update group data.",
    parameters={"groupid": GROUPID, "comment": Param(optional=True, max_length=2048)},
    cli=CliSpec(("group", "modify"), positional=("groupid",)),
)
async def update_group(ctx: RequestContext, params: dict[str, Any]) -> None:
    gid = params["groupid"]
    await access_change(ctx, f"update group '{gid}'",
                        lambda cfg: ops.update_group(cfg, gid, params.get("comment") or ""))


@registry.register(
    "DELETE", "/access/groups/{groupid}", name="delete_group",
    permission=privs("Group.Allocate", path="/access/groups"),
    description="Delete group.", parameters={"groupid": GROUPID},
    cli=CliSpec(("group", "delete"), positional=("groupid",)),
)
async def delete_group(ctx: RequestContext, params: dict[str, Any]) -> None:
    gid = params["groupid"]
    await access_change(ctx, f"delete group '{gid}'", lambda cfg: ops.delete_group(cfg, gid))


# -- roles ------------------------------------------------------------------------------

def _role_op(op: Callable[[AccessConfig], AccessConfig]) -> Callable[[AccessConfig],
                                                                      AccessConfig]:
    """The roles library refuses with RoleError; PVE answers those as parameter errors."""
    def run(cfg: AccessConfig) -> AccessConfig:
        try:
            return op(cfg)
        except RoleError as exc:
            raise ValidationError(exc.errors) from None
    return run


@registry.register(
    "GET", "/access/roles", name="role_index",
    permission=AnyUser("none: every role is listed, as PVE"),
    description="Role index (built-in roles have 'special': 1).", returns={"type": "array"},
    cli=CliSpec(("role", "list"), formatter="table:roleid,privs,special"),
)
async def role_index(ctx: RequestContext, params: dict[str, Any]) -> list[dict[str, Any]]:
    cfg = await ctx.services.access.config()
    out = []
    for roleid, role_privs in sorted(cfg.all_roles().items()):
        entry: dict[str, Any] = {"roleid": roleid, "privs": ",".join(sorted(role_privs))}
        if roleid in BUILTIN_ROLES:
            entry["special"] = 1
        out.append(entry)
    return out


_PRIVS = Param(optional=True, description="Comma-separated privileges.")


@registry.register(
    "POST", "/access/roles", name="create_role",
    permission=privs("Sys.Modify", path="/access"),
    description="Create new role.", parameters={"roleid": ROLEID, "privs": _PRIVS},
    cli=CliSpec(("role", "add"), positional=("roleid",)),
)
async def create_role(ctx: RequestContext, params: dict[str, Any]) -> None:
    rid = params["roleid"]
    await access_change(ctx, f"create role '{rid}'", _role_op(
        lambda cfg: ops.add_role(cfg, rid, params.get("privs") or "")))


@registry.register(
    "GET", "/access/roles/{roleid}", name="read_role",
    permission=AnyUser("none: every role is readable, as PVE"),
    description="Get role configuration: its privileges.", parameters={"roleid": ROLEID},
    returns={"type": "object"},
)
async def read_role(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    role_privs = (await ctx.services.access.config()).role_privs(params["roleid"])
    if role_privs is None:
        raise ApiError(500, f"role '{params['roleid']}' does not exist")
    return {p: 1 for p in sorted(role_privs)}    # PVE answers the privileges as keys


@registry.register(
    "PUT", "/access/roles/{roleid}", name="update_role",
    permission=privs("Sys.Modify", path="/access"),
    description="Update an existing role.",
    parameters={"roleid": ROLEID, "privs": _PRIVS,
                "append": Param(type="boolean", optional=True,
                                description="Add the privileges instead of replacing them.")},
    cli=CliSpec(("role", "modify"), positional=("roleid",)),
)
async def update_role(ctx: RequestContext, params: dict[str, Any]) -> None:
    rid = params["roleid"]
    if params.get("append") and not params.get("privs"):
        raise ParamError({"append": "requires option 'privs'"})
    await access_change(ctx, f"update role '{rid}'", _role_op(lambda cfg: ops.update_role(
        cfg, rid, params.get("privs") or "", bool(params.get("append")))))


@registry.register(
    "DELETE", "/access/roles/{roleid}", name="delete_role",
    permission=privs("Sys.Modify", path="/access"),
    description="Delete role.", parameters={"roleid": ROLEID},
    cli=CliSpec(("role", "delete"), positional=("roleid",)),
)
async def delete_role(ctx: RequestContext, params: dict[str, Any]) -> None:
    rid = params["roleid"]
    await access_change(ctx, f"delete role '{rid}'", _role_op(
        lambda cfg: ops.delete_role(cfg, rid)))


# -- ACL --------------------------------------------------------------------------------

@registry.register(
    "GET", "/access/acl", name="read_acl",
    permission=AnyUser("every entry with Sys.Audit on /access, else the entries on paths "
                       "where one may modify permissions"),
    description="Get Access Control List (ACLs).", returns={"type": "array"},
    cli=CliSpec(("acl", "list"), formatter="table:path,type,ugid,roleid,propagate"),
)
async def read_acl(ctx: RequestContext, params: dict[str, Any]) -> list[dict[str, Any]]:
    ev = await ctx.services.access.evaluator()
    # PVE (ACL.pm read_acl): an auditor of /access sees them all
    audit = ev.check(ctx.userid, "/access", ["Sys.Audit"])
    return [e.to_public() for e in ev.config.acl
            if audit or ev.can_modify_permissions(ctx.userid, e.path)]


_ACL_PARAMS: dict[str, Param] = {
    "path": Param(description="Access control path.", max_length=256),
    "roles": Param(description="List of roles."),
    "users": Param(optional=True, description="List of users."),
    "groups": Param(optional=True, description="List of groups."),
    "tokens": Param(optional=True, description="List of API tokens."),
    "propagate": Param(type="boolean", optional=True, default=True,
                       description="Allow to propagate (inherit) permissions."),
}


@registry.register(
    "PUT", "/access/acl", name="update_acl", permission=PermModify("{path}"),
    description="Update Access Control List (add or remove permissions).",
    parameters={**_ACL_PARAMS,
                "delete": Param(type="boolean", optional=True,
                                description="Remove permissions (instead of adding them).")},
    cli=(CliSpec(("acl", "modify"), positional=("path",)),
         CliSpec(("acl", "delete"), positional=("path",), fixed=(("delete", "1"),))),
)
async def update_acl(ctx: RequestContext, params: dict[str, Any]) -> None:
    try:     # a malformed path is a parameter error whoever asks, before any right
        path = verify_acl_path(params["path"])
    except ValidationError as exc:
        raise ParamError(exc.errors) from None
    roles = split_list(params["roles"])
    propagate = params.get("propagate")
    propagate = True if propagate is None else bool(propagate)
    delete = bool(params.get("delete"))
    what = "remove" if delete else "add"

    def change(cfg: AccessConfig) -> AccessConfig:
        # Delegation, checked on the configuration the change applies to. Strict, unlike
        # PVE: even holding Permissions.Modify on the path, one gives or takes only roles
        # whose every privilege one holds there, so a delegated Permissions.Modify never
        # escalates (docs/access-control.md). The path bounds the grant too.
        Evaluator(cfg).check_acl_change(ctx.userid, path, roles, propagate, delete,
                                        strict=True)
        return ops.modify_acl(cfg, path, roles, users=split_list(params.get("users")),
                              groups=split_list(params.get("groups")),
                              tokens=split_list(params.get("tokens")),
                              propagate=propagate, delete=delete)

    try:
        await access_change(ctx, f"{what} ACL {path} roles {','.join(roles)}", change)
    except PermissionCheckFailed as exc:
        raise PermissionDenied(str(exc)) from None
