"""Notification targets and matchers: their options, validation and the built-in entries.

Pure: parses and checks option dicts the way PVE 8's /cluster/notifications API does,
keeps secrets (smtp password, gotify token, webhook secret values) apart so that
`public_view` never returns them.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from typing import Any

TARGET_TYPES = ("sendmail", "smtp", "gotify", "webhook")
SEVERITIES = ("info", "notice", "warning", "error", "unknown")
SMTP_MODES = {"insecure": 25, "starttls": 587, "tls": 465}
NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_\-.]{1,31}$")
BUILTIN_TARGET = "mail-to-root"
BUILTIN_MATCHER = "default-matcher"

COMMON = {"comment", "disable"}
OPTIONS: dict[str, set[str]] = {
    "sendmail": COMMON | {"mailto", "mailto-user", "from-address", "author"},
    "smtp": COMMON | {"server", "port", "mode", "username", "password", "mailto", "mailto-user",
                      "from-address", "author"},
    "gotify": COMMON | {"server", "token"},
    "webhook": COMMON | {"method", "url", "header", "body", "secret"},
    "matcher": COMMON | {"match-severity", "match-field", "match-calendar", "mode",
                         "invert-match", "target"},
}
SECRET_OPTIONS = {"smtp": {"password"}, "gotify": {"token"}, "webhook": {"secret"}}
LIST_OPTIONS = {"mailto", "mailto-user", "header", "secret", "match-severity", "match-field",
                "match-calendar", "target"}


class ConfigError(ValueError):
    """A bad option; `errors` maps option name to message as PVE's parameter errors do."""

    def __init__(self, errors: dict[str, str]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))


@dataclass
class Entry:
    """One section: a target (type sendmail/smtp/gotify/webhook) or a matcher."""

    type: str
    name: str
    options: dict[str, Any] = field(default_factory=dict)
    secrets: dict[str, Any] = field(default_factory=dict)

    @property
    def disabled(self) -> bool:
        return bool(self.options.get("disable"))


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


def _bool(value: Any, key: str, errors: dict[str, str]) -> bool:
    if isinstance(value, bool):
        return value
    if str(value) in ("0", "1"):
        return value in (1, "1")
    errors[key] = f"type check ('boolean') failed - got '{value}'"
    return False


def parse_property_string(text: str) -> dict[str, str]:
    """`name=foo,value=YmFy` -> {"name": "foo", "value": "YmFy"}."""
    out: dict[str, str] = {}
    for part in text.split(","):
        if not part:
            continue
        key, sep, val = part.partition("=")
        if not sep:
            raise ValueError(f"missing '=' in '{part}'")
        out[key.strip()] = val
    return out


def _b64(text: str) -> str:
    return base64.b64decode(text.encode(), validate=True).decode()


def validate_entry(type_: str, name: str, options: dict[str, Any]) -> Entry:
    """Check a create request; return the entry with secrets split out. Raises ConfigError."""
    from binome.notify.matching import parse_calendar, parse_field_rule

    errors: dict[str, str] = {}
    if type_ not in OPTIONS:
        raise ConfigError({"type": f"unknown type '{type_}'"})
    if not NAME_RE.match(name):
        errors["name"] = "invalid format - value does not look like a valid safe id (2-32 chars)"
    unknown = sorted(set(options) - OPTIONS[type_])
    for key in unknown:
        errors[key] = "property is not defined in schema and the schema does not allow " \
                      "additional properties"
    opts: dict[str, Any] = {}
    for key, value in options.items():
        if key in unknown or value is None:
            continue
        opts[key] = _as_list(value) if key in LIST_OPTIONS else value
    if "disable" in opts:
        opts["disable"] = _bool(opts["disable"], "disable", errors)

    if type_ == "smtp":
        for req in ("server", "from-address"):
            if not opts.get(req):
                errors[req] = "property is missing and it is not optional"
        mode = opts.setdefault("mode", "tls")
        if mode not in SMTP_MODES:
            errors["mode"] = f"value '{mode}' does not have a value in the enumeration " \
                             "'insecure, starttls, tls'"
        if "port" in opts:
            try:
                port = int(opts["port"])
                if not 1 <= port <= 65535:
                    raise ValueError
                opts["port"] = port
            except (TypeError, ValueError):
                errors["port"] = f"invalid port '{opts['port']}'"
        if opts.get("username") and not opts.get("password"):
            errors["password"] = "username is set but no password was provided"
    if type_ in ("sendmail", "smtp") and not (opts.get("mailto") or opts.get("mailto-user")):
        errors["mailto"] = "neither mailto nor mailto-user are set"
    if type_ == "gotify":
        for req in ("server", "token"):
            if not opts.get(req):
                errors[req] = "property is missing and it is not optional"
        if opts.get("server") and not re.match(r"^https?://", str(opts["server"])):
            errors["server"] = "must be an http:// or https:// URL"
    if type_ == "webhook":
        if not opts.get("url"):
            errors["url"] = "property is missing and it is not optional"
        method = str(opts.setdefault("method", "post")).lower()
        opts["method"] = method
        if method not in ("post", "put", "get"):
            errors["method"] = f"value '{method}' does not have a value in the enumeration " \
                               "'post, put, get'"
        for key in ("header", "secret"):
            for item in opts.get(key, []):
                try:
                    prop = parse_property_string(item)
                    if "name" not in prop:
                        raise ValueError("missing 'name'")
                    if "value" in prop:
                        _b64(prop["value"])
                except ValueError as exc:
                    errors[key] = f"invalid {key} '{_mask(key, item)}': {exc}"
        if "body" in opts:
            try:
                _b64(str(opts["body"]))
            except ValueError:
                errors["body"] = "body is not valid base64"
    if type_ == "matcher":
        mode = opts.setdefault("mode", "all")
        if mode not in ("all", "any"):
            errors["mode"] = f"value '{mode}' does not have a value in the enumeration 'all, any'"
        if "invert-match" in opts:
            opts["invert-match"] = _bool(opts["invert-match"], "invert-match", errors)
        for item in opts.get("match-severity", []):
            bad = [s for s in item.split(",") if s.strip() not in SEVERITIES]
            if bad:
                errors["match-severity"] = f"invalid severity '{bad[0]}'"
        for item in opts.get("match-field", []):
            try:
                parse_field_rule(item)
            except ValueError as exc:
                errors["match-field"] = str(exc)
        for item in opts.get("match-calendar", []):
            try:
                parse_calendar(item)
            except ValueError as exc:
                errors["match-calendar"] = str(exc)
    if errors:
        raise ConfigError(errors)
    secret_keys = SECRET_OPTIONS.get(type_, set())
    secrets = {k: opts.pop(k) for k in list(opts) if k in secret_keys}
    return Entry(type_, name, opts, secrets)


def _mask(key: str, item: str) -> str:
    if key != "secret":
        return item
    try:
        return "name=" + parse_property_string(item).get("name", "?")
    except ValueError:
        return "<secret>"


def update_entry(entry: Entry, updates: dict[str, Any], delete: list[str]) -> Entry:
    """PVE's update: `updates` replace options, `delete` removes them; the result is checked
    as a whole (a required option cannot be deleted). A webhook secret given by name only
    keeps its stored value; secrets not named stay as they are unless `secret` is deleted."""
    allowed = OPTIONS[entry.type]
    errors = {key: "property is not defined in schema and the schema does not allow "
                   "additional properties" for key in sorted(set(updates) - allowed)}
    for key in delete:
        if key not in allowed:
            errors["delete"] = f"invalid option '{key}'"
    clash = sorted(set(delete) & set(updates))
    if clash:
        errors["delete"] = f"cannot set and delete '{clash[0]}' at the same time"
    if errors:
        raise ConfigError(errors)
    merged: dict[str, Any] = {**entry.options, **entry.secrets}
    for key in delete:
        merged.pop(key, None)
    for key, value in updates.items():
        if key == "secret" and entry.type == "webhook":
            value = _keep_secret_values(entry, _as_list(value))
        merged[key] = value
    return validate_entry(entry.type, entry.name, merged)


def _keep_secret_values(entry: Entry, items: list[str]) -> list[str]:
    stored = {}
    for item in entry.secrets.get("secret", []):
        prop = parse_property_string(item)
        stored[prop.get("name")] = item
    out = []
    for item in items:
        try:
            prop = parse_property_string(item)
        except ValueError:
            out.append(item)     # validate_entry names the error (masked)
            continue
        if "value" not in prop and prop.get("name") in stored:
            out.append(stored[prop["name"]])
        else:
            out.append(item)
    return out


def public_view(entry: Entry) -> dict[str, Any]:
    """What a GET returns: options without secret values (webhook secrets keep their name)."""
    out: dict[str, Any] = {"name": entry.name, "type": entry.type, **entry.options}
    if entry.type == "webhook" and entry.secrets.get("secret"):
        out["secret"] = ["name=" + parse_property_string(s)["name"]
                         for s in entry.secrets["secret"]]
    return out


def webhook_secrets(entry: Entry) -> dict[str, str]:
    """The decoded secret values of a webhook target, for template rendering only."""
    out: dict[str, str] = {}
    for item in entry.secrets.get("secret", []):
        prop = parse_property_string(item)
        out[prop["name"]] = _b64(prop.get("value", ""))
    return out


def builtin_entries() -> list[Entry]:
    return [
        Entry("sendmail", BUILTIN_TARGET, {"mailto-user": ["root@pam"],
                                           "comment": "Send mails to root@pam's email address"}),
        Entry("matcher", BUILTIN_MATCHER, {"mode": "all", "target": [BUILTIN_TARGET],
                                           "comment": "Route all notifications to mail-to-root"}),
    ]


BUILTIN_NAMES = frozenset(e.name for e in builtin_entries())


class NotificationConfig:
    """Targets and matchers in one namespace, with PVE's name-clash and reference checks.

    The built-in entries exist unless stored ones of the same name replace them
    (PVE's `origin`: builtin, modified-builtin, user-created)."""

    def __init__(self, entries: list[Entry] | None = None) -> None:
        self.entries: dict[str, Entry] = {e.name: e for e in builtin_entries()}
        self.stored: set[str] = set()
        for entry in entries or []:
            self.entries[entry.name] = entry
            self.stored.add(entry.name)

    def origin(self, name: str) -> str:
        if name not in BUILTIN_NAMES:
            return "user-created"
        return "modified-builtin" if name in self.stored else "builtin"

    def replace(self, entry: Entry) -> None:
        """Store an updated entry (same name and type); a matcher's targets must exist."""
        if entry.type == "matcher":
            self._check_targets(entry)
        self.entries[entry.name] = entry
        self.stored.add(entry.name)

    def targets(self) -> list[Entry]:
        return [e for e in self.entries.values() if e.type in TARGET_TYPES]

    def matchers(self) -> list[Entry]:
        return [e for e in self.entries.values() if e.type == "matcher"]

    def add(self, entry: Entry) -> None:
        if entry.name in self.entries:
            raise ConfigError({"name": f"Cannot create '{entry.name}', an entity with the same "
                                       "name already exists"})
        if entry.type == "matcher":
            self._check_targets(entry)
        self.entries[entry.name] = entry
        self.stored.add(entry.name)

    def _check_targets(self, matcher: Entry) -> None:
        for target in matcher.options.get("target", []):
            found = self.entries.get(target)
            if found is None or found.type not in TARGET_TYPES:
                raise ConfigError({"target": f"target '{target}' does not exist"})

    def delete(self, name: str) -> None:
        """Remove an entry; a modified built-in goes back to its built-in form, an
        untouched built-in cannot be deleted."""
        if name not in self.entries:
            raise KeyError(name)
        if name in BUILTIN_NAMES:
            if name not in self.stored:
                raise ConfigError({"name": f"cannot delete built-in entry '{name}'"})
            self.stored.discard(name)
            self.entries[name] = next(e for e in builtin_entries() if e.name == name)
            return
        users = [m.name for m in self.matchers() if name in m.options.get("target", [])]
        if users and self.entries[name].type != "matcher":
            raise ConfigError({"name": f"cannot delete '{name}', referenced by: "
                                       + ", ".join(users)})
        del self.entries[name]
        self.stored.discard(name)
