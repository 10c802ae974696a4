"""Per-method permission declarations, PVE's check primitives (exec_api2_perm_check),
for the API registry to declare on every method and enforce before the handler runs.

    Perm("/vms/{vmid}", ("VM.PowerMgmt",))                     ['perm', path, privs]
    Perm("/vms/{vmid}", ("VM.Snapshot", "VM.Snapshot.Rollback"), any=True)
    Perm("/pool/{pool}", ("VM.Allocate",), require_param="pool")
    And(a, b), Or(a, b)
    UseridSelf()                                                ['userid-param', 'self']
    UseridRealm("Realm.AllocateUser")                           ['userid-param', priv]
    UseridGroup(("User.Modify",), groups_param="create")        ['userid-group', ...]
    PermModify("{path}")                                        ['perm-modify', path]
    ANY_USER / AnyUser("list filtered by VM.Audit")             user => 'all'
    WORLD                                                       user => 'world'
    ROOT_ONLY                                                   no permissions: root@pam

`check(decl, evaluator, authid, params)` answers; `describe(decl)` gives the OpenAPI text.
root@pam passes every check; its tokens are held to their ACLs (PVE).
A token is never its user for `UseridSelf` (PVE compares the full `user@realm!token` id).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from binome.access.evaluator import Evaluator
from binome.access.model import ROOT_USER, is_tokenid, normalize_path, split_userid


@dataclass(frozen=True)
class Perm:
    path: str
    privs: tuple[str, ...]
    any: bool = False
    require_param: str | None = None


@dataclass(frozen=True)
class And:
    items: tuple[Decl, ...]

    def __init__(self, *items: Decl) -> None:
        object.__setattr__(self, "items", items)


@dataclass(frozen=True)
class Or:
    items: tuple[Decl, ...]

    def __init__(self, *items: Decl) -> None:
        object.__setattr__(self, "items", items)


@dataclass(frozen=True)
class UseridSelf:
    param: str = "userid"


@dataclass(frozen=True)
class UseridRealm:
    priv: str = "Realm.AllocateUser"
    param: str = "userid"


@dataclass(frozen=True)
class UseridGroup:
    privs: tuple[str, ...]
    groups_param: str | None = None      # "create" | "update" | None
    param: str = "userid"


@dataclass(frozen=True)
class PermModify:
    path: str


@dataclass(frozen=True)
class AnyUser:
    """Any authenticated user or token; `filter` says what the handler hides."""

    filter: str = ""


@dataclass(frozen=True)
class World:
    pass


@dataclass(frozen=True)
class RootOnly:
    pass


Decl = Perm | And | Or | UseridSelf | UseridRealm | UseridGroup | PermModify | AnyUser | \
    World | RootOnly

ANY_USER = AnyUser()
WORLD = World()
ROOT_ONLY = RootOnly()


class MissingParam(KeyError):
    pass


def _fill(template: str, params: Mapping[str, Any]) -> str:
    try:
        filled = template.format_map({k: str(v) for k, v in params.items()})
    except KeyError as exc:
        raise MissingParam(str(exc)) from None
    return normalize_path(filled) or filled


def check(decl: Decl, ev: Evaluator, authid: str, params: Mapping[str, Any]) -> bool:
    """Whether `authid` may call a method declared with `decl` with these parameters."""
    if isinstance(decl, World | AnyUser):
        return True
    if authid == ROOT_USER:
        return True
    if isinstance(decl, RootOnly):
        return False
    if isinstance(decl, And):
        return all(check(d, ev, authid, params) for d in decl.items)
    if isinstance(decl, Or):
        return any(check(d, ev, authid, params) for d in decl.items)
    if isinstance(decl, Perm):
        if decl.require_param and params.get(decl.require_param) in (None, ""):
            return False
        try:
            path = _fill(decl.path, params)
        except MissingParam:
            return False
        return ev.check(authid, path, decl.privs, any=decl.any)
    if isinstance(decl, UseridSelf):
        # PVE compares the authenticated id itself: a token's id is `user@realm!name`,
        # never a userid, so a token is never "self" (else a privsep token could lift its
        # own separation or mint tokens for its user); it needs the real privileges
        target = params.get(decl.param)
        return not is_tokenid(authid) and target == authid and target in ev.config.users
    if isinstance(decl, UseridRealm):
        target = params.get(decl.param)
        return isinstance(target, str) and bool(target) and ev.check(
            authid, f"/access/realm/{split_userid(target)[1]}",
                                         [decl.priv])
    if isinstance(decl, UseridGroup):
        groups = params.get("groups")
        if isinstance(groups, str):
            groups = [g for g in groups.replace(";", ",").split(",") if g]
        return ev.check_userid_group(authid, decl.privs, params.get(decl.param), groups,
                                     decl.groups_param)
    if isinstance(decl, PermModify):
        try:
            path = _fill(decl.path, params) if decl.path else ""
        except MissingParam:
            return False
        return ev.can_modify_permissions(authid, path)
    raise TypeError(f"unknown permission declaration {decl!r}")


def refuses_tokens(authid: str, allow_token: bool) -> bool:
    """PVE's allowtoken=>0 methods (ticket, password, TFA writes) refuse tokens with 403."""
    return not allow_token and is_tokenid(authid)


def denied_text(decl: Decl, params: Mapping[str, Any]) -> str:
    """What a 403 names, as PVE does: "Permission check failed (/vms/100, VM.PowerMgmt)"."""
    if isinstance(decl, Perm):
        try:
            path = _fill(decl.path, params)
        except MissingParam:
            path = decl.path
        return f"{path}, {'|'.join(decl.privs)}"
    if isinstance(decl, And | Or) and decl.items:
        return denied_text(decl.items[0], params)
    if isinstance(decl, RootOnly):
        return "root@pam only"
    if isinstance(decl, PermModify):
        try:
            path = _fill(decl.path, params) if decl.path else "/access"
        except MissingParam:
            path = decl.path
        return f"{path}, Permissions.Modify"
    return describe(decl)


def describe(decl: Decl) -> str:
    """One line for the OpenAPI document and `binome help`."""
    if isinstance(decl, World):
        return "public (no login)"
    if isinstance(decl, AnyUser):
        return "any user" + (f"; {decl.filter}" if decl.filter else "")
    if isinstance(decl, RootOnly):
        return "root@pam only"
    if isinstance(decl, And | Or):
        joiner = " and " if isinstance(decl, And) else " or "
        return "(" + joiner.join(describe(d) for d in decl.items) + ")"
    if isinstance(decl, Perm):
        word = "any of " if decl.any and len(decl.privs) > 1 else ""
        extra = f" (needs {decl.require_param})" if decl.require_param else ""
        return f"{word}{', '.join(decl.privs)} on {decl.path}{extra}"
    if isinstance(decl, UseridSelf):
        return f"the user named in '{decl.param}' themselves"
    if isinstance(decl, UseridRealm):
        return f"{decl.priv} on /access/realm/<realm of {decl.param}>"
    if isinstance(decl, UseridGroup):
        return f"any of {', '.join(decl.privs)} on /access/groups or on a group of the user"
    return f"Permissions.Modify (or the path's Allocate privilege) on {decl.path or '/access'}"
