"""Changes to the access configuration, as pure functions `AccessConfig -> AccessConfig`.

Each checks its input the way PVE's access API does (duplicates, unknown realm, role,
group or privilege, built-in roles, pool membership) and raises before anything changes:
`ValidationError` for a bad parameter (HTTP 400 with `errors`), `AccessError` for a
refused action (PVE answers those with a 500 whose text clients match, e.g.
"already exists", "does not exist"). Permission checks are not here: the API's
registry runs them (see evaluator.py) before calling these.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from binome.access.model import (
    ROOT_USER,
    AccessConfig,
    AclEntry,
    Group,
    Pool,
    Realm,
    TfaUser,
    Token,
    User,
    ValidationError,
    split_tokenid,
    verify_acl_path,
    verify_poolid,
    verify_token_name,
)
from binome.access.roles import is_builtin, parse_privs, validate_custom_role


class AccessError(Exception):
    """A refused change; the text is what PVE says (clients match some of it)."""


def _realm_known(cfg: AccessConfig, realm: str) -> bool:
    return realm in ("pam", "pve") or realm in cfg.realms


# -- users ------------------------------------------------------------------------------

def add_user(cfg: AccessConfig, user: User) -> AccessConfig:
    if user.userid in cfg.users or user.userid == ROOT_USER:
        raise AccessError(f"create user failed: user '{user.userid}' already exists")
    if not _realm_known(cfg, user.realm):
        raise ValidationError({"userid": f"domain '{user.realm}' does not exist"})
    _groups_exist(cfg, user.groups)
    return replace(cfg, users={**cfg.users, user.userid: user})


def _groups_exist(cfg: AccessConfig, groups: Iterable[str]) -> None:
    for g in groups:
        if g not in cfg.groups:
            raise ValidationError({"groups": f"no such group '{g}'"})


def _user(cfg: AccessConfig, userid: str) -> User:
    user = cfg.users.get(userid)
    if user is None:
        raise AccessError(f"user '{userid}' does not exist")
    return user


USER_FIELDS = ("enable", "expire", "firstname", "lastname", "email", "comment", "keys")


def update_user(cfg: AccessConfig, userid: str, changes: dict[str, Any],
                groups: Iterable[str] | None = None, append: bool = False,
                delete: Iterable[str] = ()) -> AccessConfig:
    """PUT /access/users/{u}: set fields, replace (or with `append` extend) groups,
    reset the fields named in `delete`."""
    user = _user(cfg, userid)
    unknown = set(changes) - set(USER_FIELDS)
    if unknown:
        raise ValidationError({sorted(unknown)[0]: "property is not defined in schema"})
    new_fields = dict(changes)
    for name in delete:
        if name not in USER_FIELDS:
            raise ValidationError({"delete": f"cannot delete '{name}'"})
        new_fields[name] = True if name == "enable" else 0 if name == "expire" else ""
    if groups is not None:
        groups = tuple(dict.fromkeys(groups))
        _groups_exist(cfg, groups)
        new_fields["groups"] = tuple(dict.fromkeys((*user.groups, *groups))) if append \
            else groups
    return replace(cfg, users={**cfg.users, userid: replace(user, **new_fields)})


def set_password_hash(cfg: AccessConfig, userid: str, password_hash: str) -> AccessConfig:
    user = _user(cfg, userid)
    if user.realm != "pve":
        raise AccessError(f"realm '{user.realm}' does not store passwords in binome")
    return replace(cfg, users={**cfg.users, userid: replace(user, password_hash=password_hash)})


def delete_user(cfg: AccessConfig, userid: str) -> AccessConfig:
    """Remove the user with their tokens, ACL entries (and their tokens'), and TFA."""
    if userid == ROOT_USER:
        raise AccessError("cannot delete user 'root@pam'")
    _user(cfg, userid)
    tokens = {k: v for k, v in cfg.tokens.items() if v.userid != userid}
    gone = {userid} | {k for k in cfg.tokens if k not in tokens}
    acl = tuple(e for e in cfg.acl if e.ugid_type == "group" or e.ugid not in gone)
    users = {k: v for k, v in cfg.users.items() if k != userid}
    tfa = {k: v for k, v in cfg.tfa.items() if k != userid}
    return replace(cfg, users=users, tokens=tokens, acl=acl, tfa=tfa)


# -- groups -----------------------------------------------------------------------------

def add_group(cfg: AccessConfig, group: Group) -> AccessConfig:
    if group.groupid in cfg.groups:
        raise AccessError(f"create group failed: group '{group.groupid}' already exists")
    return replace(cfg, groups={**cfg.groups, group.groupid: group})


def update_group(cfg: AccessConfig, groupid: str, comment: str) -> AccessConfig:
    if groupid not in cfg.groups:
        raise AccessError(f"group '{groupid}' does not exist")
    return replace(cfg, groups={**cfg.groups, groupid: Group(groupid, comment)})


def delete_group(cfg: AccessConfig, groupid: str) -> AccessConfig:
    """Remove the group, its members' membership and its ACL entries (PVE)."""
    if groupid not in cfg.groups:
        raise AccessError(f"group '{groupid}' does not exist")
    users = {k: replace(u, groups=tuple(g for g in u.groups if g != groupid)) if groupid in
             u.groups else u for k, u in cfg.users.items()}
    acl = tuple(e for e in cfg.acl if not (e.ugid_type == "group" and e.ugid == groupid))
    groups = {k: v for k, v in cfg.groups.items() if k != groupid}
    return replace(cfg, groups=groups, users=users, acl=acl)


# -- roles ------------------------------------------------------------------------------

def add_role(cfg: AccessConfig, roleid: str, privs: str | Iterable[str] = ()) -> AccessConfig:
    parsed = validate_custom_role(roleid, privs)
    if roleid in cfg.roles:
        raise AccessError(f"role '{roleid}' already exists")
    return replace(cfg, roles={**cfg.roles, roleid: parsed})


def update_role(cfg: AccessConfig, roleid: str, privs: str | Iterable[str],
                append: bool = False) -> AccessConfig:
    if is_builtin(roleid):
        raise AccessError(f"cannot modify built-in role '{roleid}'")
    if roleid not in cfg.roles:
        raise AccessError(f"role '{roleid}' does not exist")
    parsed = parse_privs(privs)
    new = cfg.roles[roleid] | parsed if append else parsed
    return replace(cfg, roles={**cfg.roles, roleid: new})


def delete_role(cfg: AccessConfig, roleid: str) -> AccessConfig:
    """Remove a custom role. Like PVE, ACL entries naming it stay (and grant nothing)."""
    if is_builtin(roleid):
        raise AccessError(f"cannot delete built-in role '{roleid}'")
    if roleid not in cfg.roles:
        raise AccessError(f"role '{roleid}' does not exist")
    return replace(cfg, roles={k: v for k, v in cfg.roles.items() if k != roleid})


# -- ACL --------------------------------------------------------------------------------

def modify_acl(cfg: AccessConfig, path: str, roles: Iterable[str], *,
               users: Iterable[str] = (), groups: Iterable[str] = (),
               tokens: Iterable[str] = (), propagate: bool = True,
               delete: bool = False) -> AccessConfig:
    """PUT /access/acl: add (or with `delete` remove) each role for each principal."""
    path = verify_acl_path(path)
    roles, users, groups, tokens = list(roles), list(users), list(groups), list(tokens)
    if not roles:
        raise ValidationError({"roles": "property is missing and it is not optional"})
    if not (users or groups or tokens):
        raise AccessError("either 'users', 'groups' or 'tokens' is required")
    principals = [("user", u) for u in users if u != ROOT_USER] + \
        [("group", g) for g in groups] + [("token", t) for t in tokens]
    acl = list(cfg.acl)
    for kind, ugid in principals:
        for roleid in roles:
            entry = AclEntry(path, kind, ugid, roleid, propagate)  # type: ignore[arg-type]
            if not delete:
                cfg.check_acl_entry(entry)
            same = [e for e in acl if (e.path, e.ugid_type, e.ugid, e.roleid) ==
                    (path, kind, ugid, roleid)]
            for e in same:
                acl.remove(e)
            if not delete:
                acl.append(entry)
    return replace(cfg, acl=tuple(acl))


# -- pools ------------------------------------------------------------------------------

def add_pool(cfg: AccessConfig, poolid: str, comment: str = "") -> AccessConfig:
    verify_poolid(poolid, create=True)
    if poolid in cfg.pools:
        raise AccessError(f"pool '{poolid}' already exists")
    parent = poolid.rpartition("/")[0]
    if parent and parent not in cfg.pools:
        raise AccessError(f"parent pool '{parent}' does not exist")
    return replace(cfg, pools={**cfg.pools, poolid: Pool(poolid, comment)})


def update_pool(cfg: AccessConfig, poolid: str, *, comment: str | None = None,
                vms: Iterable[int] = (), storage: Iterable[str] = (),
                delete: bool = False, allow_move: bool = False,
                existing_vms: Iterable[int] | None = None) -> AccessConfig:
    """PUT /pools: add (or with `delete` remove) members. A VM lives in one pool: it is
    moved from another only with `allow_move` (the caller's Pool.Allocate on the old pool
    is the API's check). Adding a member already there is refused, as PVE does.
    `existing_vms`, when given, refuses VM ids that do not exist in the cluster."""
    pool = cfg.pools.get(poolid)
    if pool is None:
        raise AccessError(f"pool '{poolid}' does not exist")
    vms, storage = {int(v) for v in vms}, set(storage)
    pools = dict(cfg.pools)
    if delete:
        missing = sorted(vms - pool.vms)
        if missing:
            raise AccessError(f"VM {missing[0]} is not a pool member")
        missing_s = sorted(storage - pool.storage)
        if missing_s:
            raise AccessError(f"Storage '{missing_s[0]}' is not a pool member")
        new = replace(pool, vms=pool.vms - vms, storage=pool.storage - storage)
    else:
        known = None if existing_vms is None else set(existing_vms)
        for vmid in sorted(vms):
            if known is not None and vmid not in known:
                raise AccessError(f"VM {vmid} does not exist")
            # PVE 8 (pve-manager Pool.pm update_pool): its texts
            if vmid in pool.vms:
                raise AccessError(f"VM {vmid} is already a pool member")
            other = cfg.pool_of_vm(vmid)
            if other:
                if not allow_move:
                    raise AccessError(f"VM {vmid} belongs already to pool '{other}' and "
                                      "'allow-move' is not set")
                pools[other] = replace(pools[other], vms=pools[other].vms - {vmid})
        present = sorted(storage & pool.storage)
        if present:
            raise AccessError(f"Storage '{present[0]}' is already a pool member")
        new = replace(pool, vms=pool.vms | vms, storage=pool.storage | storage)
    if comment is not None:
        new = replace(new, comment=comment)
    pools[poolid] = Pool(new.poolid, new.comment, new.vms, new.storage)  # re-validate
    return replace(cfg, pools=pools)


def delete_pool(cfg: AccessConfig, poolid: str) -> AccessConfig:
    """Only an empty pool (no sub-pool, guest or storage) goes; its ACL entries go too."""
    pool = cfg.pools.get(poolid)
    if pool is None:
        raise AccessError(f"pool '{poolid}' does not exist")
    if pool.vms or pool.storage or any(p.startswith(poolid + "/") for p in cfg.pools):
        raise AccessError(f"pool '{poolid}' is not empty")
    acl = tuple(e for e in cfg.acl if e.path != f"/pool/{poolid}")
    return replace(cfg, pools={k: v for k, v in cfg.pools.items() if k != poolid}, acl=acl)


def remove_vm(cfg: AccessConfig, vmid: int) -> AccessConfig:
    """A destroyed VM leaves its pool and its ACL entries (PVE on purge)."""
    pools = {k: replace(p, vms=p.vms - {vmid}) if vmid in p.vms else p
             for k, p in cfg.pools.items()}
    acl = tuple(e for e in cfg.acl if e.path != f"/vms/{vmid}")
    return replace(cfg, pools=pools, acl=acl)


# -- tokens -----------------------------------------------------------------------------

def add_token(cfg: AccessConfig, userid: str, name: str, secret_hash: str, *,
              expire: int = 0, privsep: bool = True, comment: str = "",
              now: float) -> AccessConfig:
    verify_token_name(name)
    user = _user(cfg, userid) if userid != ROOT_USER else None
    if user is not None and not user.active(now):
        raise AccessError(f"user '{userid}' is disabled or expired")
    tokenid = f"{userid}!{name}"
    if tokenid in cfg.tokens:
        raise AccessError("Token already exists.")
    token = Token(tokenid, secret_hash, expire=expire, privsep=privsep, comment=comment)
    return replace(cfg, tokens={**cfg.tokens, tokenid: token})


def update_token(cfg: AccessConfig, tokenid: str, *, expire: int | None = None,
                 privsep: bool | None = None, comment: str | None = None,
                 secret_hash: str | None = None) -> AccessConfig:
    token = cfg.tokens.get(tokenid)
    if token is None:
        raise AccessError(f"no such token '{split_tokenid(tokenid)[1]}' for user "
                          f"'{split_tokenid(tokenid)[0]}'")
    changes: dict[str, Any] = {k: v for k, v in (("expire", expire), ("privsep", privsep),
                                                  ("comment", comment),
                                                  ("secret_hash", secret_hash)) if v is not None}
    return replace(cfg, tokens={**cfg.tokens, tokenid: replace(token, **changes)})


def delete_token(cfg: AccessConfig, tokenid: str) -> AccessConfig:
    if tokenid not in cfg.tokens:
        user, name = split_tokenid(tokenid)
        raise AccessError(f"no such token '{name}' for user '{user}'")
    acl = tuple(e for e in cfg.acl if not (e.ugid_type == "token" and e.ugid == tokenid))
    return replace(cfg, tokens={k: v for k, v in cfg.tokens.items() if k != tokenid}, acl=acl)


# -- realms -----------------------------------------------------------------------------

def add_realm(cfg: AccessConfig, realm: Realm) -> AccessConfig:
    if realm.realm in cfg.realms or realm.realm in ("pam", "pve"):
        raise AccessError(f"domain '{realm.realm}' already exists")
    if realm.type in ("pam", "pve"):
        raise ValidationError({"type": f"cannot create realm of type '{realm.type}'"})
    return _set_realm(cfg, realm)


def _set_realm(cfg: AccessConfig, realm: Realm) -> AccessConfig:
    realms = dict(cfg.realms)
    if realm.default:   # only one default realm
        realms = {k: replace(v, default=False) for k, v in realms.items()}
    realms[realm.realm] = realm
    return replace(cfg, realms=realms)


def update_realm(cfg: AccessConfig, realm_id: str, changes: dict[str, Any],
                 delete: Iterable[str] = ()) -> AccessConfig:
    """Set or delete options; an absent `password` / `client-key` keeps the secret."""
    realm = cfg.realms.get(realm_id) or (Realm(realm_id, realm_id)  # type: ignore[arg-type]
                                         if realm_id in ("pam", "pve") else None)
    if realm is None:
        raise AccessError(f"domain '{realm_id}' does not exist")
    top: dict[str, Any] = {k: changes[k] for k in ("comment", "default", "tfa") if k in changes}
    options = dict(realm.options)
    options.update({k: v for k, v in changes.items()
                    if k not in ("comment", "default", "tfa", "password", "client-key")})
    password = changes.get("password", realm.bind_password)
    client_key = changes.get("client-key", realm.client_key)
    for name in delete:
        if name in ("comment", "tfa"):
            top[name] = ""
        elif name == "default":
            top[name] = False
        elif name == "password":
            password = None
        elif name == "client-key":
            client_key = None
        else:
            options.pop(name, None)
    new = Realm(realm.realm, realm.type, comment=top.get("comment", realm.comment),
                default=bool(top.get("default", realm.default)), tfa=top.get("tfa", realm.tfa),
                options=options, bind_password=password, client_key=client_key)
    return _set_realm(cfg, new)


def delete_realm(cfg: AccessConfig, realm_id: str) -> AccessConfig:
    if realm_id in ("pam", "pve"):
        raise AccessError(f"cannot remove built-in realm '{realm_id}'")
    if realm_id not in cfg.realms:
        raise AccessError(f"domain '{realm_id}' does not exist")
    return replace(cfg, realms={k: v for k, v in cfg.realms.items() if k != realm_id})


# -- TFA --------------------------------------------------------------------------------

def set_tfa(cfg: AccessConfig, tfa_user: TfaUser) -> AccessConfig:
    """Store a user's TFA state; `keys` becomes "x" while entries exist (PVE)."""
    user = cfg.users.get(tfa_user.userid)
    if user is None and tfa_user.userid != ROOT_USER:
        raise AccessError(f"user '{tfa_user.userid}' does not exist")
    users = dict(cfg.users)
    if user is not None:
        users[user.userid] = replace(user, keys="x" if tfa_user.entries else "")
    tfa = {**cfg.tfa, tfa_user.userid: tfa_user}
    if not tfa_user.entries and not tfa_user.tfa_failures:
        tfa.pop(tfa_user.userid)
    return replace(cfg, users=users, tfa=tfa)
