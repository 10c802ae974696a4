"""Built-in roles, generated from the privilege tiers exactly as PVE's ``create_roles``,
and the validation of custom roles.

PVE rule: ``PVE<Area>Admin`` = admin+user+audit tiers; ``PVE<Area>User`` = user+audit
when the user tier is non-empty; ``PVEAuditor`` = every audit tier; ``PVEAdmin`` = every
admin+user+audit tier minus ``Mapping.Modify``; ``PVETemplateUser`` = VM.Audit+VM.Clone;
``Administrator`` = every privilege; ``NoAccess`` = none and cancels other roles.
binome's own areas yield ``Binome<Area>Admin``/``Binome<Area>User`` roles only, so the
PVE roles keep PVE's exact privilege sets.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Final

from binome.access.privileges import (
    ALL_PRIVILEGES,
    BINOME_PRIVILEGE_GROUPS,
    PVE_PRIVILEGE_GROUPS,
)

NO_ACCESS: Final = "NoAccess"
ADMINISTRATOR: Final = "Administrator"
ROLE_ID_RE: Final = re.compile(r"^[A-Za-z0-9._-]+$")
# Custom roles may not take a built-in's prefix: PVE reserves "PVE", binome "Binome".
RESERVED_ROLE_PREFIXES: Final = ("pve", "binome")


def _generate() -> dict[str, frozenset[str]]:
    roles: dict[str, set[str]] = {
        ADMINISTRATOR: set(ALL_PRIVILEGES),
        NO_ACCESS: set(),
        "PVEAdmin": set(),
        "PVEAuditor": set(),
    }
    for prefix, groups in (("PVE", PVE_PRIVILEGE_GROUPS), ("Binome", BINOME_PRIVILEGE_GROUPS)):
        for area, (_root, admin, user, audit) in groups.items():
            if admin or user or audit:
                roles.setdefault(f"{prefix}{area}Admin", set()).update(admin, user, audit)
            if user:
                roles.setdefault(f"{prefix}{area}User", set()).update(user, audit)
            if prefix == "PVE":
                roles["PVEAdmin"].update(admin, user, audit)
                roles["PVEAuditor"].update(audit)
    roles["PVEAdmin"].discard("Mapping.Modify")
    roles["PVETemplateUser"] = {"VM.Audit", "VM.Clone"}
    return {name: frozenset(privs) for name, privs in roles.items()}


BUILTIN_ROLES: Final[Mapping[str, frozenset[str]]] = MappingProxyType(_generate())


def is_builtin(roleid: str) -> bool:
    return roleid in BUILTIN_ROLES


class RoleError(ValueError):
    """A refused role definition; `errors` maps the parameter to PVE-style text."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


def parse_privs(privs: str | Iterable[str]) -> frozenset[str]:
    """Privileges from PVE's comma/space/semicolon list or an iterable; unknown ones refused."""
    names = re.split(r"[,;\s]+", privs) if isinstance(privs, str) else list(privs)
    names = [n for n in names if n]
    unknown = sorted({n for n in names if n not in ALL_PRIVILEGES})
    if unknown:
        raise RoleError({"privs": f"invalid privilege '{unknown[0]}'"})
    return frozenset(names)


def validate_custom_role(roleid: str, privs: str | Iterable[str] = ()) -> frozenset[str]:
    """Check a custom role's id and privileges; returns the privilege set."""
    if not ROLE_ID_RE.match(roleid) or len(roleid) > 64:
        raise RoleError({"roleid": f"role name '{roleid}' contains invalid characters"})
    if is_builtin(roleid):
        raise RoleError({"roleid": f"cannot modify built-in role '{roleid}'"})
    if roleid.lower().startswith(RESERVED_ROLE_PREFIXES):
        raise RoleError({"roleid": "cannot use role ID starting with a reserved prefix "
                                   "('PVE' or 'Binome')"})
    return parse_privs(privs)
