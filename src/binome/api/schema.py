"""Parameter schemas and their validation, with PVE's error texts.

Form-encoded values arrive as strings; validation coerces them to the declared
type (booleans accept 1/0, true/false, yes/no, on/off as PVE does) and reports
every bad parameter at once in `errors`, without running the handler.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from binome.api.errors import ParamError

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _check_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _check_node(value: str) -> bool:
    return re.fullmatch(r"[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?", value) is not None


def _check_userid(value: str) -> bool:
    return re.fullmatch(r"[^\s:/@]{1,64}@[A-Za-z][A-Za-z0-9.\-_]{1,31}", value) is not None


def _check_fingerprint(value: str) -> bool:
    return re.fullmatch(r"(?:[0-9A-Fa-f]{2}:){31}[0-9A-Fa-f]{2}|[0-9A-Fa-f]{64}", value) is not None


def _check_cluster_name(value: str) -> bool:
    return re.fullmatch(r"[A-Za-z0-9\-]{1,15}", value) is not None


FORMATS: dict[str, tuple[Callable[[str], bool], str]] = {
    "pve-node": (_check_node, "invalid node name"),
    "ip": (_check_ip, "invalid IP address"),
    "address": (lambda v: _check_ip(v) or _check_node(v), "invalid address"),
    "pve-userid": (_check_userid, "invalid user ID"),
    "fingerprint": (_check_fingerprint, "invalid SHA-256 fingerprint"),
    "pve-cluster-name": (_check_cluster_name,
                         "invalid cluster name (1-15 letters, digits or '-')"),
}


@dataclass(frozen=True)
class Param:
    """One parameter of an API method."""

    type: str = "string"                 # string | integer | number | boolean
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
        if self.optional:
            schema["optional"] = 1
        return schema


def _coerce(name: str, p: Param, raw: Any) -> Any:
    if p.type == "boolean":
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
    if p.type == "integer":
        if isinstance(raw, bool):
            raise ValueError(f"type check ('integer') failed - got '{raw}'")
        if isinstance(raw, int):
            value: Any = raw
        elif isinstance(raw, str) and re.fullmatch(r"[+-]?\d+", raw.strip()):
            value = int(raw)
        else:
            raise ValueError(f"type check ('integer') failed - got '{raw}'")
    elif p.type == "number":
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise ValueError(f"type check ('number') failed - got '{raw}'") from None
    else:
        if isinstance(raw, (dict, list)):
            raise ValueError("type check ('string') failed - got a structure")
        value = str(raw)
        if any(c in value for c in "\r\0") or ("\n" in value and not p.extra.get("multiline")):
            raise ValueError("value must not contain line breaks or NUL characters")
        if p.max_length is not None and len(value) > p.max_length:
            raise ValueError(f"value may only be {p.max_length} characters long")
        if p.enum and value not in p.enum:
            raise ValueError(f"value '{value}' does not have a value in the enumeration "
                             f"'{', '.join(p.enum)}'")
        if p.pattern and not re.fullmatch(p.pattern, value):
            raise ValueError("value does not match the regex pattern")
        if p.format:
            check, text = FORMATS[p.format]
            if not check(value):
                raise ValueError(f"{text} '{value}'")
    if p.minimum is not None and value < p.minimum:
        raise ValueError(f"value must have a minimum value of {_num(p.minimum)}")
    if p.maximum is not None and value > p.maximum:
        raise ValueError(f"value must have a maximum value of {_num(p.maximum)}")
    return value


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else str(v)


def validate(params: Mapping[str, Param], given: Mapping[str, Any]) -> dict[str, Any]:
    """Coerce and check `given` against `params`; raise ParamError listing every problem."""
    errors: dict[str, str] = {}
    result: dict[str, Any] = {}
    for name in given:
        if name not in params:
            errors[name] = "property is not defined in schema and the schema does not allow " \
                           "additional properties"
    for name, p in params.items():
        raw = given.get(name)
        if raw is None or (raw == "" and p.type != "string"):
            if not p.optional:
                errors[name] = "property is missing and it is not optional"
            elif p.default is not None:
                result[name] = p.default
            continue
        try:
            result[name] = _coerce(name, p, raw)
        except ValueError as exc:
            errors[name] = str(exc)
    if errors:
        raise ParamError(errors)
    return result
