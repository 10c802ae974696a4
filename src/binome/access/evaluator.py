"""Permission evaluation exactly as Proxmox VE does it (AccessControl::roles,
RPCEnvironment::permissions/compile_acl_path/compute_api_permission), plus the checks
that ACL, user and group changes need (perm-modify, delegation, userid-group).

Pure: built over one `AccessConfig` snapshot; build a new Evaluator when it changes.

Rules, in PVE's words restated:
* walking from ``/`` to the target, each level with an applicable entry (the target
  itself, or a propagating entry) *replaces* the roles so far; at one level a token's
  own entries win, then the user's, then the union over the user's groups;
* a final set containing NoAccess is NoAccess alone;
* pool roles (the roles on ``/pool/<p>``) are added, non-propagating, to exactly
  ``/vms/<member>`` and ``/storage/<member>`` unless a regular NoAccess is there; a
  NoAccess on the pool wins over the regular roles;
* ``root@pam`` has every privilege everywhere; a token without privilege separation
  is its user; a privsep token has its own entries intersected with its user's privileges.
* binome compatibility: a user record with ``superuser`` (issue 10's two administrators)
  counts as a user entry ``/`` Administrator (propagating).
"""

from __future__ import annotations

import builtins
from collections.abc import Iterable

from binome.access.model import (
    ROOT_USER,
    AccessConfig,
    AclEntry,
    is_tokenid,
    normalize_path,
    split_tokenid,
    split_userid,
)
from binome.access.privileges import ALL_PRIVILEGES, PERMISSIONS_MODIFY
from binome.access.roles import ADMINISTRATOR, NO_ACCESS

# priv -> propagate flag, as PVE's permissions() returns it
Privs = dict[str, bool]

# GET /access/permissions without a path always looks at these (PVE).
BASE_PATHS = ("/", "/access", "/access/groups", "/nodes", "/pool", "/sdn", "/storage", "/vms")
# The ticket's `cap` areas and their privilege prefixes (compute_api_permission).
_CAP_AREAS = {
    "vms": ("VM.", "Permissions.Modify"),
    "access": ("User.", "Group.", "Permissions.Modify"),
    "storage": ("Datastore.", "Permissions.Modify"),
    "nodes": ("Sys.", "Permissions.Modify"),
    "sdn": ("SDN.", "Permissions.Modify"),
    "mapping": ("Mapping.", "Permissions.Modify"),
    "dc": ("Sys.Audit", "Sys.Modify", "SDN."),
}
_CAP_PATHS = ("/", "/nodes", "/access/groups", "/vms", "/storage", "/sdn", "/mapping")


class PermissionCheckFailed(Exception):
    """A refused check; str() is the detail PVE puts in "Permission check failed (...)"."""


def _ancestors(path: str) -> list[str]:
    """'/vms/100' -> ['/', '/vms', '/vms/100']."""
    if path == "/":
        return ["/"]
    parts = path.strip("/").split("/")
    return ["/"] + ["/" + "/".join(parts[: i + 1]) for i in range(len(parts))]


class Evaluator:
    """Answers "which privileges has this user or token on this path" over one snapshot."""

    def __init__(self, config: AccessConfig) -> None:
        self.config = config
        self._by_path: dict[str, list[AclEntry]] = {}
        for entry in config.acl:
            self._by_path.setdefault(entry.path, []).append(entry)
        for user in config.users.values():
            if user.superuser:
                self._by_path.setdefault("/", []).append(
                    AclEntry("/", "user", user.userid, ADMINISTRATOR, True))
        self._groups_of = {u.userid: set(u.groups) for u in config.users.values()}
        self._cache: dict[tuple[str, str], Privs] = {}

    # -- roles (AccessControl::roles) ---------------------------------------------------

    def roles(self, authid: str, path: str) -> dict[str, bool]:
        """Role -> propagate for a user or token on `path`, pools not considered."""
        if authid == ROOT_USER:
            return {ADMINISTRATOR: True}
        if is_tokenid(authid):
            token = self.config.tokens.get(authid)
            if token is None:
                return {}
            if not token.privsep:
                return self.roles(token.userid, path)
        groups = self._groups_of.get(authid, set())
        ancestors = _ancestors(path)
        result: dict[str, bool] = {}
        for level in ancestors:
            last = level == ancestors[-1]
            entries = [e for e in self._by_path.get(level, ()) if e.propagate or last]
            if not entries:
                continue
            for kind in ("token", "user"):
                own = {e.roleid: e.propagate for e in entries
                       if e.ugid_type == kind and e.ugid == authid}
                if own:
                    result = own
                    break
            else:
                union: dict[str, bool] = {}
                for e in entries:
                    if e.ugid_type == "group" and e.ugid in groups:
                        union[e.roleid] = union.get(e.roleid, False) or e.propagate
                if union:
                    result = union
        if NO_ACCESS in result:
            return {NO_ACCESS: result[NO_ACCESS]}
        return result

    def _pool_roles(self, authid: str, path: str) -> dict[str, bool] | None:
        parts = path.split("/")
        if len(parts) != 3 or parts[1] not in ("vms", "storage"):
            return None
        if parts[1] == "vms":
            if not parts[2].isdigit():
                return None
            pool = self.config.pool_of_vm(int(parts[2]))
            pools = [pool] if pool else []
        else:
            pools = self.config.pools_of_storage(parts[2])
        if not pools:
            return None
        merged: dict[str, bool] = {}
        for pool in pools:
            for role in self.roles(authid, f"/pool/{pool}"):
                merged[role] = False
        return merged

    # -- privileges (RPCEnvironment::permissions) --------------------------------------

    def privileges(self, authid: str, path: str) -> Privs:
        """Privilege -> propagate for a user or token on `path` (PVE's permissions())."""
        norm = normalize_path(path)
        if norm is None:
            return {}
        if authid == ROOT_USER:
            return dict.fromkeys(ALL_PRIVILEGES, True)
        key = (authid, norm)
        if key not in self._cache:
            self._cache[key] = self._compute(authid, norm)
        return dict(self._cache[key])

    def _compute(self, authid: str, path: str) -> Privs:
        owner: str | None = None
        if is_tokenid(authid):
            token = self.config.tokens.get(authid)
            if token is None:
                return {}
            if not token.privsep:
                return self.privileges(token.userid, path)
            owner = token.userid
        roles = self.roles(authid, path)
        pool_roles = self._pool_roles(authid, path)
        if pool_roles and NO_ACCESS not in roles:
            if NO_ACCESS in pool_roles:
                roles = {NO_ACCESS: False}
            else:
                for role in pool_roles:
                    roles.setdefault(role, False)
        privs: Privs = {}
        if NO_ACCESS not in roles:
            for role, propagate in roles.items():
                for priv in self.config.role_privs(role) or ():
                    privs[priv] = privs.get(priv, False) or propagate
        if owner is not None and owner != ROOT_USER:
            mine = self.privileges(owner, path)
            privs = {p: prop and mine[p] for p, prop in privs.items() if p in mine}
        return privs

    def check(self, authid: str, path: str, privs: Iterable[str], any: bool = False) -> bool:
        """All of `privs` on `path` (or at least one with `any`); no privs asks nothing."""
        wanted = list(privs)
        if not wanted:
            return True
        have = self.privileges(authid, path)
        hits = [p in have for p in wanted]
        return builtins.any(hits) if any else all(hits)

    def require(self, authid: str, path: str, privs: Iterable[str], any: bool = False) -> None:
        """`check` raising PermissionCheckFailed with PVE's detail text."""
        wanted = list(privs)
        if not self.check(authid, path, wanted, any):
            raise PermissionCheckFailed(f"{normalize_path(path) or path}, "
                                        f"{'|' if any else ''}{', '.join(wanted)}")

    # -- GET /access/permissions -------------------------------------------------------

    def permissions(self, authid: str, path: str | None = None) -> dict[str, dict[str, int]]:
        """What GET /access/permissions answers: {path: {priv: propagate 0|1}}."""
        if path is not None:
            norm = normalize_path(path) or path
            return {norm: {p: int(v) for p, v in sorted(self.privileges(authid, norm).items())}}
        paths = set(BASE_PATHS) | {e.path for e in self.config.acl}
        for pool in self.config.pools.values():
            paths |= {f"/vms/{vmid}" for vmid in pool.vms}
            paths |= {f"/storage/{s}" for s in pool.storage}
        out: dict[str, dict[str, int]] = {}
        for p in sorted(paths):
            privs = self.privileges(authid, p)
            if privs:
                out[p] = {k: int(v) for k, v in sorted(privs.items())}
        return out

    def cap(self, authid: str) -> dict[str, dict[str, int]]:
        """The ticket's `cap` (compute_api_permission).

        Each path feeds the area named by its first component (``/`` feeds ``dc``) with
        the privileges matching that area's prefixes; pool paths feed VM.* to ``vms`` and
        Datastore.* to ``storage`` (Permissions.Modify to both).
        """
        out: dict[str, dict[str, int]] = {area: {} for area in _CAP_AREAS}
        paths = dict.fromkeys(_CAP_PATHS) | dict.fromkeys(e.path for e in self.config.acl)
        for p in paths:
            privs = self.privileges(authid, p)
            area = p.split("/")[1] if p != "/" else "dc"
            if area == "pool":
                for priv in privs:
                    if priv.startswith("VM.") or priv == PERMISSIONS_MODIFY:
                        out["vms"][priv] = 1
                    if priv.startswith("Datastore.") or priv == PERMISSIONS_MODIFY:
                        out["storage"][priv] = 1
                continue
            prefixes = _CAP_AREAS.get(area)
            if prefixes is None:
                continue
            for priv in privs:
                if priv.startswith(prefixes):
                    out[area][priv] = 1
        return out

    # -- checks for access-control changes ----------------------------------------------

    def can_modify_permissions(self, authid: str, path: str) -> bool:
        """PVE's 'perm-modify': Permissions.Modify, or the path type's Allocate privilege."""
        norm = normalize_path(path)
        if not norm:
            return self.check(authid, "/access", [PERMISSIONS_MODIFY])
        alt = {"storage": "Datastore.Allocate", "vms": "VM.Allocate",
               "pool": "Pool.Allocate"}.get(norm.split("/")[1] if norm != "/" else "")
        if norm.count("/") >= 2 and alt:
            return self.check(authid, norm, [PERMISSIONS_MODIFY, alt], any=True)
        return self.check(authid, norm, [PERMISSIONS_MODIFY])

    def check_acl_change(self, authid: str, path: str, roleids: Iterable[str],
                         propagate: bool, delete: bool = False, *,
                         strict: bool = False) -> None:
        """May `authid` add (or remove) these roles on `path`? Raise PermissionCheckFailed.

        PVE: perm-modify on the path is needed; without Permissions.Modify there, only
        roles whose every privilege the caller holds there (and holds propagating, when
        adding with propagate) may be given or taken; NoAccess needs Permissions.Modify.
        `strict` applies the held-privileges rule to Permissions.Modify holders too
        (binome option; PVE lets them give any role on that path). root@pam is exempt.
        """
        norm = normalize_path(path) or path
        if authid == ROOT_USER:
            return
        if not self.can_modify_permissions(authid, norm):
            raise PermissionCheckFailed(f"{norm}, Permissions.Modify")
        has_modify = self.check(authid, norm, [PERMISSIONS_MODIFY])
        if has_modify and not strict:
            return
        mine = self.privileges(authid, norm)
        for roleid in roleids:
            if roleid == NO_ACCESS:
                if not has_modify:
                    raise PermissionCheckFailed(f"{norm}, Permissions.Modify")
                continue
            for priv in sorted(self.config.role_privs(roleid) or ()):
                if priv not in mine:
                    raise PermissionCheckFailed(f"{norm}, {priv}")
                if propagate and not delete and not mine[priv]:
                    raise PermissionCheckFailed(f"{norm}, {priv} (propagated)")

    def check_userid_group(self, authid: str, privs: Iterable[str], target: str | None = None,
                           groups: Iterable[str] | None = None,
                           mode: str | None = None) -> bool:
        """PVE's ['userid-group', privs, groups_param => mode] check.

        Any of `privs` on /access/groups passes. Otherwise with `mode` ("create" or
        "update") the listed `groups` must be non-empty and each held; unless "create",
        `target` must exist and be in a group where the caller holds one of `privs`.
        """
        wanted = list(privs)
        if self.check(authid, "/access/groups", wanted, any=True):
            return True
        if mode is not None:
            listed = list(groups or ())
            if not listed:
                return False
            if not all(self.check(authid, f"/access/groups/{g}", wanted, any=True)
                       for g in listed):
                return False
            if mode == "create":
                return True
        user = self.config.users.get(target or "")
        if user is None:
            return False
        return builtins.any(self.check(authid, f"/access/groups/{g}", wanted, any=True)
                            for g in user.groups)

    def check_userid_realm(self, authid: str, userid: str,
                           priv: str = "Realm.AllocateUser") -> bool:
        """PVE's ['userid-param', 'Realm.AllocateUser']: the privilege on the user's realm."""
        return self.check(authid, f"/access/realm/{split_userid(userid)[1]}", [priv])

    def owner_of(self, authid: str) -> str:
        """The user behind a user or token id."""
        return split_tokenid(authid)[0] if is_tokenid(authid) else authid

