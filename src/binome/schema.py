"""Parameter schemas: typed parameters, PVE formats and property strings (pure: no I/O).

Owns the declaration of a parameter (:class:`Param`), the named formats
(``pve-node``, ``ip``, ``pve-ha-resource-or-vm-id``...), PVE's property-string
format (:class:`PropertyString`: ``key=value,key=value`` with a default key,
e.g. ``virtio,bridge=vmbr0``) and the validation of given values against
them with PVE's error texts, every bad parameter at once (:func:`check`).

It is neutral ground: the API (validation, OpenAPI, the CLI's ``--help``) and
the config models (``guest/config.py``) both import it, and it imports
neither. Form-encoded values arrive as strings; validation coerces them to the
declared type (booleans accept 1/0, true/false, yes/no, on/off as PVE does).
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
MISSING = "property is missing and it is not optional"
UNDEFINED = "property is not defined in schema and the schema does not allow additional properties"
DUPLICATE = "duplicate parameter (not allowed)"


class Repeated(list):
    """A request parameter given more than once: only an `array` parameter takes it
    (PVE's repeated `key=a&key=b`); any other parameter refuses it as a duplicate."""
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]{1,3})?")


class SchemaError(ValueError):
    """Values that do not match their schema; `errors` maps each parameter to its problem."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


# ---------------------------------------------------------------- formats
#
# A format checks a string and returns it normalised (most return it as is);
# it raises ValueError with PVE's text. A name ending in "-list" is a list of
# the named format, separated by ',' ';' or white space (PVE's split_list).

Format = Callable[[str], str]


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _is_node(value: str) -> bool:
    return re.fullmatch(r"[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?", value) is not None


_HOST_RE = re.compile(r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,62}[A-Za-z0-9])?"
                      r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}[A-Za-z0-9])?)*")


def is_host_address(value: str) -> bool:
    """An IP address or a DNS name (not a bare number that is no IP)."""
    if _is_ip(value):
        return True
    return bool(_HOST_RE.fullmatch(value)) and not value.replace(".", "").isdigit()


def _digits(text: str, most: int = 18) -> bool:
    """ASCII digits only, at most `most` of them: str.isdigit() and int() also take
    other scripts' digits (fullwidth '100' would be 100) and int() refuses 4300 digits."""
    return 0 < len(text) <= most and text.isascii() and text.isdigit()


def _checked(test: Callable[[str], bool], text: str) -> Format:
    def check(value: str) -> str:
        if not test(value):
            raise ValueError(f"{text} '{value}'")
        return value
    return check


def _ha_sid(value: str) -> str:
    """PVE's `pve-ha-resource-or-vm-id`: `vm:100` or a bare `100`, normalised to `vm:100`."""
    text = value.strip()
    if _digits(text):
        return f"vm:{int(text)}"
    kind, _, vmid = text.partition(":")
    if kind == "vm" and _digits(vmid):
        return f"vm:{int(vmid)}"
    if kind == "ct":
        raise ValueError("containers are not supported")
    raise ValueError(f"unable to parse service id '{text}'")


def _ha_group_node(value: str) -> str:
    """PVE's `pve-ha-group-node`: `node[:priority]`, priority a non-negative integer."""
    name, sep, prio = value.partition(":")
    if not _is_node(name) or (sep and not _digits(prio, 9)):
        raise ValueError(f"value '{value}' does not look like a valid ha group node "
                         "(node[:priority])")
    return value


FORMATS: dict[str, Format] = {
    "pve-node": _checked(_is_node, "invalid node name"),
    "ip": _checked(_is_ip, "invalid IP address"),
    "address": _checked(lambda v: _is_ip(v) or _is_node(v), "invalid address"),
    "host-address": _checked(is_host_address, "invalid address"),
    "pve-userid": _checked(lambda v: re.fullmatch(
        r"[^\s:/@]{1,64}@[A-Za-z][A-Za-z0-9.\-_]{1,31}", v) is not None, "invalid user ID"),
    # PVE's userid_or_token_regex (GET /access/permissions): `user@realm` or
    # `user@realm!tokenid`
    "pve-userid-or-token": _checked(lambda v: re.fullmatch(
        r"[^\s:/@]{1,64}@[A-Za-z][A-Za-z0-9.\-_]{1,31}(?:![A-Za-z][A-Za-z0-9.\-_]+)?", v)
        is not None, "invalid user or API token ID"),
    "fingerprint": _checked(lambda v: re.fullmatch(
        r"(?:[0-9A-Fa-f]{2}:){31}[0-9A-Fa-f]{2}|[0-9A-Fa-f]{64}", v) is not None,
        "invalid SHA-256 fingerprint"),
    "pve-cluster-name": _checked(lambda v: re.fullmatch(r"[A-Za-z0-9\-]{1,15}", v) is not None,
                                 "invalid cluster name (1-15 letters, digits or '-')"),
    "pve-ha-resource-or-vm-id": _ha_sid,
    "pve-ha-group-node": _ha_group_node,
}


def register_format(name: str, check: Format) -> None:
    """Declare a named format; its owner (the module that knows the values) calls this."""
    if FORMATS.get(name, check) is not check:
        raise ValueError(f"format '{name}' declared twice")
    FORMATS[name] = check


def split_list(text: str) -> list[str]:
    """PVE's split_list: items separated by ',', ';' or white space."""
    return [item for item in re.split(r"[,;\s]+", text) if item]


def check_format(name: str, value: str) -> str:
    """`value` checked against format `name` (a "-list" name checks each item)."""
    if name.endswith("-list") and name not in FORMATS:
        item_format = FORMATS[name[:-len("-list")]]
        return ",".join(item_format(item) for item in split_list(value))
    return FORMATS[name](value)


# ---------------------------------------------------------------- parameters


@dataclass(frozen=True)
class Param:
    """One parameter of an API method, or one key of a config or property string."""

    type: str = "string"                 # string | integer | number | boolean | array
    description: str = ""
    optional: bool = False
    default: Any = None
    enum: tuple[str, ...] | None = None
    pattern: str | None = None
    format: str | None = None
    minimum: float | None = None
    maximum: float | None = None
    max_length: int | None = None
    secret: bool = False                 # never logged; CLI reads it from a file or prompt
    cli_positional: bool = False
    props: PropertyString | None = None  # a property string with these typed keys
    items: Param | None = None           # an array's item (a string when not given)
    extra: dict[str, Any] = field(default_factory=dict)

    def json_schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": self.type}
        for key, value in (("description", self.description), ("default", self.default),
                           ("pattern", self.pattern), ("format", self.format),
                           ("minimum", self.minimum), ("maximum", self.maximum),
                           ("maxLength", self.max_length)):
            if value not in (None, ""):
                schema[key] = value
        if self.enum:
            schema["enum"] = list(self.enum)
        if self.props is not None:
            schema["format"] = self.props.json_schema()
            schema["typetext"] = self.props.typetext()
        if self.type == "array":
            schema["items"] = (self.items or Param()).json_schema()
        if self.optional:
            schema["optional"] = 1
        return schema

    def coerce(self, raw: Any) -> Any:
        """`raw` as this parameter's type, checked; ValueError with PVE's text."""
        if self.type == "array":
            item = self.items or Param()
            values = list(raw) if isinstance(raw, list | tuple) else [raw]
            if self.max_length is not None and len(values) > self.max_length:
                raise ValueError(f"array may only have {self.max_length} items")
            return [item.coerce(v) for v in values]
        if self.type == "boolean":
            if isinstance(raw, bool):
                return raw
            if isinstance(raw, int) and raw in (0, 1):
                return bool(raw)
            text = str(raw).strip().lower()
            if text in _TRUE:
                return True
            if text in _FALSE:
                return False
            raise ValueError(f"type check ('boolean') failed - got '{raw}'")
        if self.type == "integer":
            if isinstance(raw, bool):
                raise ValueError(f"type check ('integer') failed - got '{raw}'")
            if isinstance(raw, int):
                value: Any = raw
            elif isinstance(raw, str) and re.fullmatch(r"[+-]?[0-9]{1,30}", raw.strip()):
                value = int(raw)
            else:
                raise ValueError(f"type check ('integer') failed - got '{raw}'")
        elif self.type == "number":
            # float() also reads 'nan', 'inf', '1_0' and other scripts' digits
            if isinstance(raw, str) and not _NUMBER.fullmatch(raw.strip()):
                raise ValueError(f"type check ('number') failed - got '{raw}'")
            try:
                value = float(raw)
            except (TypeError, ValueError):
                raise ValueError(f"type check ('number') failed - got '{raw}'") from None
            if not math.isfinite(value):
                raise ValueError(f"type check ('number') failed - got '{raw}'")
        else:
            value = self._string(raw)
        if self.minimum is not None and value < self.minimum:
            raise ValueError(f"value must have a minimum value of {_num(self.minimum)}")
        if self.maximum is not None and value > self.maximum:
            raise ValueError(f"value must have a maximum value of {_num(self.maximum)}")
        return value

    def _string(self, raw: Any) -> str:
        if isinstance(raw, (dict, list)):
            raise ValueError("type check ('string') failed - got a structure")
        value = str(raw)
        if any(c in value for c in "\r\0") or ("\n" in value and not self.extra.get("multiline")):
            raise ValueError("value must not contain line breaks or NUL characters")
        if self.max_length is not None and len(value) > self.max_length:
            raise ValueError(f"value may only be {self.max_length} characters long")
        if self.enum and value not in self.enum:
            raise ValueError(f"value '{value}' does not have a value in the enumeration "
                             f"'{', '.join(self.enum)}'")
        # ASCII: \d and \w would take other scripts' digits and letters (fullwidth '100')
        if self.pattern and not re.fullmatch(self.pattern, value, re.ASCII):
            raise ValueError("value does not match the regex pattern")
        if self.format:
            value = check_format(self.format, value)
        if self.props is not None:
            self.props.check(value)   # checked here; the handler parses it again
        return value


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else str(v)


# ---------------------------------------------------------------- property strings


@dataclass(frozen=True)
class PropertyString:
    """PVE's property-string format: ``key=value,key=value`` with typed keys.

    A first item without ``=`` is the value of `default_key` (``virtio,bridge=vmbr0``
    is ``model=virtio,bridge=vmbr0``). `additional` types any key not in `keys`
    (keys matching `key_pattern`); without it an unknown key is an error.
    """

    keys: Mapping[str, Param]
    default_key: str | None = None
    additional: Param | None = None
    key_pattern: str = r"[A-Za-z0-9_][A-Za-z0-9_.-]*"
    # the owner's parser, for a format with rules beyond its typed keys (a NIC's
    # MODEL=MAC head): validation calls it instead, its ValueError text is the error
    verify: Callable[[str], Any] | None = field(default=None, compare=False)

    def split(self, text: str) -> list[tuple[str, str]]:
        """The (key, raw value) pairs of `text`, in order; ValueError on a malformed one."""
        pairs: list[tuple[str, str]] = []
        seen: set[str] = set()
        for i, item in enumerate(part.strip() for part in text.split(",")):
            if not item:
                continue
            key, sep, value = item.partition("=")
            key = key.strip()
            if not sep:
                if i == 0 and self.default_key is not None:
                    key, value = self.default_key, item
                else:
                    # the item is not echoed: it may be a secret given in the wrong place
                    raise ValueError("invalid format - missing key in comma-separated "
                                     "list property")
            if key in seen:
                raise ValueError("invalid format - duplicate key in comma-separated list "
                                 f"property: {key}")
            seen.add(key)
            pairs.append((key, value.strip()))
        return pairs

    def parse(self, text: str) -> dict[str, Any]:
        """The typed values of `text`; ValueError (PVE's text) naming the first bad key."""
        out: dict[str, Any] = {}
        for key, raw in self.split(text):
            p = self.keys.get(key)
            if p is None:
                if self.additional is None or not re.fullmatch(self.key_pattern, key):
                    raise ValueError(f"invalid format - unknown key '{key}'")
                p = self.additional
            try:
                out[key] = p.coerce(raw)
            except ValueError as exc:
                raise ValueError(f"invalid format - {key}: {exc}") from None
        for key, p in self.keys.items():
            if key in out:
                continue
            if not p.optional:
                raise ValueError(f"invalid format - {key}: {MISSING}")
            if p.default is not None:
                out[key] = p.default
        return out

    def check(self, text: str) -> None:
        """ValueError (PVE's text, or the owner's parser's) if `text` is not valid."""
        if self.verify is not None:
            self.verify(text)
        else:
            self.parse(text)

    def format(self, values: Mapping[str, Any]) -> str:
        """`values` as a property string (the default key first, bare)."""
        parts: list[str] = []
        for key, value in values.items():
            text = ("1" if value else "0") if isinstance(value, bool) else str(value)
            parts.append(text if key == self.default_key and not parts else f"{key}={text}")
        return ",".join(parts)

    def json_schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, p in self.keys.items():
            sub = p.json_schema()
            if key == self.default_key:
                sub["default_key"] = 1
            out[key] = sub
        return out

    def typetext(self) -> str:
        """The `--help` text, PVE's style: ``[model=]<virtio|e1000> [,bridge=<string>]``."""
        parts: list[str] = []
        for key, p in self.keys.items():
            kind = f"<{'|'.join(p.enum)}>" if p.enum else f"<{p.type}>"
            text = f"[{key}=]{kind}" if key == self.default_key else f"{key}={kind}"
            if not parts:
                parts.append(f"[{text}]" if p.optional and key != self.default_key else text)
            else:
                parts.append(f"[,{text}]" if p.optional else f",{text}")
        if self.additional is not None:
            parts.append("[,<key>=<value>...]" if parts else "<key>=<value>[,<key>=<value>...]")
        return " ".join(parts)


# ---------------------------------------------------------------- validation


def check(params: Mapping[str, Param], given: Mapping[str, Any]) -> dict[str, Any]:
    """Coerce and check `given` against `params`; SchemaError listing every problem."""
    errors: dict[str, str] = {}
    result: dict[str, Any] = {}
    for name, raw in given.items():
        if name not in params:
            # given twice is said first, as the wire said it before arrays existed
            errors[name] = DUPLICATE if isinstance(raw, Repeated) else UNDEFINED
    for name, p in params.items():
        raw = given.get(name)
        if isinstance(raw, Repeated) and p.type != "array":
            errors[name] = DUPLICATE
            continue
        if raw is None or (raw == "" and p.type != "string"):
            if not p.optional:
                errors[name] = MISSING
            elif p.default is not None:
                result[name] = p.default
            continue
        try:
            result[name] = p.coerce(raw)
        except ValueError as exc:
            errors[name] = str(exc)
    if errors:
        raise SchemaError(errors)
    return result


def check_value(name: str, p: Param, raw: Any) -> Any:
    """One value checked against its parameter; SchemaError naming it."""
    try:
        return p.coerce(raw)
    except ValueError as exc:
        raise SchemaError({name: str(exc)}) from None
