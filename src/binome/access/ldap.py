"""LDAP / Active Directory realms: password check by bind, and `realm sync` as
`pveum realm sync` does it (scope users|groups|both, remove-vanished acl;entry;properties,
enable-new, dry-run), over ldap3.

The directory reads (`LdapClient`) do blocking ldap3 calls in a worker thread, over ldap, ldaps or
ldap+starttls with PVE's verify/capath/cert/certkey/sslversion options; the sync
plan (`plan_sync`) is pure: it turns what the directory holds into a new AccessConfig and
a summary of what was added, updated and removed, so a dry run is the plan unapplied.
The bind password is used, never logged or put in an error.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import ldap3
from ldap3.core.exceptions import LDAPException
from ldap3.utils.conv import escape_filter_chars
from ldap3.utils.dn import parse_dn

from binome.access.model import (
    AccessConfig,
    Group,
    Realm,
    User,
    ValidationError,
    verify_groupid,
)

USER_FIELDS = ("enable", "expire", "firstname", "lastname", "email", "comment", "keys")
DEFAULT_USER_CLASSES = ("inetorgperson", "posixaccount", "person", "user")
DEFAULT_GROUP_CLASSES = ("groupOfNames", "group", "univentionGroup", "ipausergroup")
REMOVE_VANISHED = ("acl", "entry", "properties")
DEFAULT_CAPATH = "/etc/ssl/certs"
SSL_VERSIONS = {"tlsv1": ssl.TLSVersion.TLSv1, "tlsv1_1": ssl.TLSVersion.TLSv1_1,
                "tlsv1_2": ssl.TLSVersion.TLSv1_2, "tlsv1_3": ssl.TLSVersion.TLSv1_3}


class LdapError(Exception):
    """The directory could not be reached or answered an error (text safe to show)."""


@dataclass(frozen=True)
class DirectoryUser:
    dn: str
    name: str                              # the user_attr value
    attributes: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class DirectoryGroup:
    dn: str
    name: str
    member_dns: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Directory:
    users: tuple[DirectoryUser, ...] = ()
    groups: tuple[DirectoryGroup, ...] = ()


@dataclass(frozen=True)
class SyncOptions:
    scope: str                             # users | groups | both
    remove_vanished: frozenset[str] = frozenset()
    enable_new: bool = True
    dry_run: bool = False

    @classmethod
    def parse(cls, realm: Realm, params: dict[str, Any]) -> SyncOptions:
        """Each option from the request, else the realm's sync-defaults-options (PVE)."""
        defaults = _parse_defaults(realm.options.get("sync-defaults-options", ""))

        def pick(name: str, fallback: Any) -> Any:
            if params.get(name) is not None:
                return params[name]
            return defaults.get(name, fallback)

        scope = pick("scope", None)
        if scope not in ("users", "groups", "both"):
            raise ValidationError({"scope": "value must be one of users, groups, both"})
        raw = str(pick("remove-vanished", "none"))
        items = {v for v in raw.replace(",", ";").split(";") if v}
        # deprecated spellings: full = entry;properties, purge = acl
        if "full" in items:
            items |= {"entry", "properties"}
        if "purge" in items:
            items |= {"acl"}
        items -= {"full", "purge", "none"}
        bad = sorted(items - set(REMOVE_VANISHED))
        if bad:
            raise ValidationError({"remove-vanished": f"invalid value '{bad[0]}'"})
        return cls(scope, frozenset(items), bool(int(pick("enable-new", 1))),
                   bool(int(params.get("dry-run") or 0)))


def _parse_defaults(text: str) -> dict[str, str]:
    out = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out


def _attribute_map(realm: Realm) -> dict[str, str]:
    """PVE field -> LDAP attribute (sync_attributes; default: the same name)."""
    mapping = {f: f for f in USER_FIELDS}
    for part in str(realm.options.get("sync_attributes", "")).split(","):
        key, sep, value = part.partition("=")
        if sep and key.strip() in USER_FIELDS:
            mapping[key.strip()] = value.strip()
    return mapping


@dataclass(frozen=True)
class SyncPlan:
    config: AccessConfig
    added_users: tuple[str, ...] = ()
    updated_users: tuple[str, ...] = ()
    removed_users: tuple[str, ...] = ()
    added_groups: tuple[str, ...] = ()
    updated_groups: tuple[str, ...] = ()
    removed_groups: tuple[str, ...] = ()
    removed_acl: int = 0
    skipped: tuple[str, ...] = ()

    def summary(self) -> list[str]:
        """Task log lines, as pveum prints them."""
        lines = [f"{label}: {', '.join(items)}" for label, items in (
            ("added user", self.added_users), ("updated user", self.updated_users),
            ("removed user", self.removed_users), ("added group", self.added_groups),
            ("updated group", self.updated_groups), ("removed group", self.removed_groups),
            ("skipped invalid", self.skipped)) if items]
        if self.removed_acl:
            lines.append(f"removed {self.removed_acl} ACL entries of vanished users/groups")
        return lines


def _user_from_directory(realm: Realm, entry: DirectoryUser, old: User | None,
                         options: SyncOptions) -> User:
    mapping = _attribute_map(realm)
    synced: dict[str, Any] = {}
    for fld, attr in mapping.items():
        if attr in entry.attributes:
            value: Any = entry.attributes[attr]
            if fld == "enable":
                value = str(value).lower() not in ("0", "false", "no")
            elif fld == "expire":
                value = int(value) if str(value).isdigit() else 0
            synced[fld] = value
    userid = f"{entry.name}@{realm.realm}"
    if old is None:
        synced.setdefault("enable", options.enable_new)
        return User(userid, **synced)
    if "properties" in options.remove_vanished:
        # the entry is replaced, but enable, tokens, groups and password stay (PVE)
        keep: dict[str, Any] = {"enable": old.enable, "groups": old.groups,
                                "password_hash": old.password_hash}
        synced.pop("enable", None)
        return User(userid, **synced, **keep)
    return replace(old, **synced)


def plan_sync(cfg: AccessConfig, realm: Realm, directory: Directory,
              options: SyncOptions) -> SyncPlan:
    """What syncing `directory` into realm `realm` changes (pure)."""
    suffix_user, suffix_group = f"@{realm.realm}", f"-{realm.realm}"
    users = dict(cfg.users)
    groups = dict(cfg.groups)
    added_u: list[str] = []
    updated_u: list[str] = []
    added_g: list[str] = []
    updated_g: list[str] = []
    skipped: list[str] = []
    dn_to_userid: dict[str, str] = {}

    for entry in directory.users:
        try:
            old = users.get(f"{entry.name}@{realm.realm}")
            new = _user_from_directory(realm, entry, old, options)
        except ValidationError:
            skipped.append(entry.dn)
            continue
        dn_to_userid[entry.dn.lower()] = new.userid
        if options.scope == "groups":
            continue
        if old is None:
            added_u.append(new.userid)
        elif new != old:
            updated_u.append(new.userid)
        users[new.userid] = new
    if options.scope == "groups":
        # groups-only: members are drawn from existing users of this run only
        dn_to_userid = {dn: uid for dn, uid in dn_to_userid.items() if uid in users}

    synced_groups: dict[str, set[str]] = {}
    if options.scope in ("groups", "both"):
        for dgroup in directory.groups:
            groupid = f"{dgroup.name}{suffix_group}"
            try:
                verify_groupid(groupid)
            except ValidationError:
                skipped.append(dgroup.dn)
                continue
            synced_groups[groupid] = {dn_to_userid[dn.lower()] for dn in dgroup.member_dns
                                      if dn.lower() in dn_to_userid}
            if groupid not in groups:
                groups[groupid] = Group(groupid)
                added_g.append(groupid)
        for userid, user in list(users.items()):
            wanted = tuple(g for g in user.groups if g not in synced_groups) + tuple(
                sorted(g for g, members in synced_groups.items() if userid in members))
            if set(wanted) != set(user.groups):
                users[userid] = replace(user, groups=wanted)
                for g in set(wanted) ^ set(user.groups):
                    if g not in added_g and g not in updated_g:
                        updated_g.append(g)

    vanished_u = sorted(u for u in users if u.endswith(suffix_user)
                        and u not in {dn_to_userid[d] for d in dn_to_userid}) \
        if options.scope in ("users", "both") else []
    vanished_g = sorted(g for g in groups if g.endswith(suffix_group)
                        and g not in synced_groups) \
        if options.scope in ("groups", "both") else []
    acl = cfg.acl
    removed_acl = 0
    if "acl" in options.remove_vanished:
        gone = {("user", u) for u in vanished_u} | {("group", g) for g in vanished_g}
        gone |= {("token", t) for t, tok in cfg.tokens.items() if tok.userid in vanished_u}
        kept = tuple(e for e in acl if (e.ugid_type, e.ugid) not in gone)
        removed_acl, acl = len(acl) - len(kept), kept
    tokens = cfg.tokens
    tfa = cfg.tfa
    removed_u: list[str] = []
    removed_g: list[str] = []
    if "entry" in options.remove_vanished:
        for u in vanished_u:
            users.pop(u)
        removed_u = vanished_u
        tokens = {k: v for k, v in tokens.items() if v.userid not in vanished_u}
        tfa = {k: v for k, v in tfa.items() if k not in vanished_u}
        for gid in vanished_g:
            groups.pop(gid)
        removed_g = vanished_g
        users = {k: replace(u, groups=tuple(g for g in u.groups if g not in vanished_g))
                 if set(u.groups) & set(vanished_g) else u for k, u in users.items()}
    new_cfg = replace(cfg, users=users, groups=groups, acl=acl, tokens=tokens, tfa=tfa)
    # sorted: the task log and the tests must not depend on the directory's order
    return SyncPlan(new_cfg, tuple(sorted(added_u)), tuple(sorted(updated_u)),
                    tuple(removed_u), tuple(sorted(added_g)), tuple(sorted(set(updated_g))),
                    tuple(removed_g), removed_acl, tuple(skipped))


# -- the directory ----------------------------------------------------------------------

class _PinnedTls(ldap3.Tls):
    """ldap3's TLS settings with a context of our own: exactly one TLS version (as
    IO::Socket::SSL's SSL_version for PVE; ldap3 could only pin it with the deprecated
    OP_NO_* flags) and, when verifying, Python's own host-name check of the server's
    certificate (IP SANs included) instead of ldap3's deprecated match_hostname."""

    def __init__(self, version: ssl.TLSVersion, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pinned_version = version

    def wrap_socket(self, connection: Any, do_handshake: bool = False) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        if self.validate == ssl.CERT_NONE:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        else:
            context.load_verify_locations(self.ca_certs_file, self.ca_certs_path)
        context.minimum_version = context.maximum_version = self.pinned_version
        if self.certificate_file:
            context.load_cert_chain(self.certificate_file, keyfile=self.private_key_file)
        connection.socket = context.wrap_socket(
            connection.socket, server_side=False, do_handshake_on_connect=do_handshake,
            server_hostname=connection.server.host)


class LdapClient:
    """Reads one ldap/ad realm's directory. Blocking ldap3 calls run in a thread."""

    def __init__(self, realm: Realm, timeout: int = 10) -> None:
        if realm.type not in ("ldap", "ad"):
            raise ValueError(f"realm '{realm.realm}' is not an LDAP or AD realm")
        self.realm = realm
        self.timeout = timeout
        o = realm.options
        self.user_attr = o.get("user_attr") or ("sAMAccountName" if realm.type == "ad" else "uid")
        self.base_dn = o.get("base_dn", "")

    def _mode(self) -> str:
        """PVE's get_scheme_and_port (its deprecated `secure` flag is not in our schema)."""
        return str(self.realm.options.get("mode") or "ldap")

    def _tls(self) -> ldap3.Tls | None:
        """PVE's connect_and_bind TLS arguments: verify=1 requires a certificate signed by
        `capath` (a directory of hashed CA files or one CA file; default /etc/ssl/certs)
        for the server's name, and presents `cert`/`certkey` if set; verify=0 checks
        nothing. `sslversion` (default tlsv1_2) is the one TLS version spoken."""
        o = self.realm.options
        if self._mode() == "ldap":
            return None
        kwargs: dict[str, Any] = {}
        verify = bool(int(o.get("verify") or 0))
        if verify:
            capath = str(o.get("capath") or DEFAULT_CAPATH)
            kwargs["ca_certs_path" if os.path.isdir(capath) else "ca_certs_file"] = capath
            if o.get("cert"):
                kwargs["local_certificate_file"] = str(o["cert"])
            if o.get("certkey"):
                kwargs["local_private_key_file"] = str(o["certkey"])
        version = str(o.get("sslversion") or "tlsv1_2")
        if version not in SSL_VERSIONS:
            raise LdapError(f"LDAP TLS: unknown sslversion '{version}'")
        try:
            return _PinnedTls(SSL_VERSIONS[version],
                              validate=ssl.CERT_REQUIRED if verify else ssl.CERT_NONE,
                              **kwargs)
        except LDAPException as exc:
            raise LdapError(f"LDAP TLS configuration: {exc}") from None

    def _servers(self) -> list[ldap3.Server]:
        o = self.realm.options
        use_ssl = self._mode() == "ldaps"
        port = int(o.get("port") or (636 if use_ssl else 389))
        tls = self._tls()
        return [ldap3.Server(o[k], port=port, use_ssl=use_ssl, tls=tls,
                             connect_timeout=self.timeout,
                             # no schema read: PVE's default class list names both
                             # OpenLDAP and AD classes, which a schema check refuses
                             get_info=ldap3.NONE)
                for k in ("server1", "server2") if o.get(k)]

    def _connect(self, user: str | None, password: str | None) -> ldap3.Connection:
        """Open (TLS first where the mode says so) to server1, else server2, and bind.
        An error names the server and the reason (e.g. the certificate check), never
        the password."""
        failures: list[str] = []
        for server in self._servers():
            conn = ldap3.Connection(server, user=user, password=password,
                                    receive_timeout=self.timeout, raise_exceptions=True,
                                    check_names=False, auto_bind=ldap3.AUTO_BIND_NONE)
            try:
                conn.open()
                if self._mode() == "ldap+starttls":
                    conn.start_tls()
            except LDAPException as exc:
                _close(conn)
                failures.append(f"{server.host}:{server.port}: "
                                f"{_reason(exc, password)}")
                continue
            try:
                conn.bind()
            except LDAPException as exc:
                _close(conn)
                raise LdapError(f"LDAP bind failed: {_reason(exc, password)}") from None
            return conn
        raise LdapError("LDAP connection failed: " + ("; ".join(failures)
                                                      or "no server configured"))

    def _service_connection(self) -> ldap3.Connection:
        bind_dn = self.realm.options.get("bind_dn")
        return self._connect(bind_dn, self.realm.bind_password if bind_dn else None)

    def _user_filter(self, name: str | None = None) -> str:
        classes = _list(self.realm.options.get("user_classes")) or list(DEFAULT_USER_CLASSES)
        parts = ["(|" + "".join(f"(objectclass={escape_filter_chars(c)})" for c in classes)
                 + ")"]
        parts.append(f"({self.user_attr}={escape_filter_chars(name) if name else '*'})")
        if self.realm.options.get("filter"):
            f = str(self.realm.options["filter"])
            parts.append(f if f.startswith("(") else f"({f})")
        return "(&" + "".join(parts) + ")"

    def _check_password(self, name: str, password: str) -> bool:
        if not password:
            return False   # an empty password would be an anonymous bind: never a login
        if self.realm.type == "ad" and not self.base_dn:
            domain = self.realm.options.get("domain", "")
            try:
                self._connect(f"{name}@{domain}", password).unbind()
                return True
            except LdapError:
                return False
        conn = self._service_connection()
        try:
            conn.search(self.base_dn, self._user_filter(name), attributes=[])
            dns = [e.entry_dn for e in conn.entries]
        except LDAPException as exc:
            raise LdapError(f"LDAP search failed: {type(exc).__name__}") from None
        finally:
            conn.unbind()
        if len(dns) != 1:
            return False
        try:
            self._connect(dns[0], password).unbind()
            return True
        except LdapError:
            return False

    async def check_password(self, name: str, password: str) -> bool:
        """Whether `name` (without @realm) logs in with `password`."""
        return await asyncio.to_thread(self._check_password, name, password)

    def _read(self) -> Directory:
        mapping = _attribute_map(self.realm)
        attrs = sorted({self.user_attr, *mapping.values()})
        o = self.realm.options
        conn = self._service_connection()
        try:
            users = []
            for e in conn.extend.standard.paged_search(
                    self.base_dn, self._user_filter(), attributes=attrs, paged_size=500,
                    generator=True):
                if e.get("type") != "searchResEntry":
                    continue
                a = {k: _first(v) for k, v in e["attributes"].items() if _first(v) != ""}
                name = a.get(self.user_attr) or next(
                    (v for k, v in a.items() if k.lower() == self.user_attr.lower()), "")
                if name:
                    users.append(DirectoryUser(e["dn"], str(name),
                                               {k: str(v) for k, v in a.items()}))
            classes = _list(o.get("group_classes")) or list(DEFAULT_GROUP_CLASSES)
            gfilter = "(|" + "".join(f"(objectclass={escape_filter_chars(c)})"
                                     for c in classes) + ")"
            if o.get("group_filter"):
                f = str(o["group_filter"])
                gfilter = f"(&{gfilter}{f if f.startswith('(') else f'({f})'})"
            name_attr = o.get("group_name_attr")
            gattrs = ["member", "uniqueMember", "memberUid"] + ([name_attr] if name_attr else [])
            groups = []
            for e in conn.extend.standard.paged_search(
                    o.get("group_dn") or self.base_dn, gfilter, attributes=gattrs,
                    paged_size=500, generator=True):
                if e.get("type") != "searchResEntry":
                    continue
                a = e["attributes"]
                name = _first(a.get(name_attr)) if name_attr else ""
                if not name:
                    name = parse_dn(e["dn"])[0][1]
                members = set(_list(a.get("member"))) | set(_list(a.get("uniqueMember")))
                groups.append(DirectoryGroup(e["dn"], str(name), frozenset(members)))
            return Directory(tuple(users), tuple(groups))
        except LDAPException as exc:
            raise LdapError(f"LDAP search failed: {type(exc).__name__}: {exc}") from None
        finally:
            conn.unbind()

    async def read(self) -> Directory:
        return await asyncio.to_thread(self._read)

    async def check_connection(self) -> None:
        """The realm's `check-connection`: a test bind (raises LdapError)."""
        await asyncio.to_thread(lambda: self._service_connection().unbind())


def _reason(exc: LDAPException, secret: str | None) -> str:
    """An ldap3 error as one line a user can act on, with any secret blanked."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if secret:
        text = text.replace(secret, "********")
    return text


def _close(conn: ldap3.Connection) -> None:
    try:
        conn.unbind()
    except LDAPException:
        pass


def _first(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return value[0] if value else ""
    return "" if value is None else value


def _list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, Iterable):
        return [str(v) for v in value]
    return [str(value)]
