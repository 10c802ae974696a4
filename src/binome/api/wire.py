"""What arrives on the wire, decoded strictly before it is a parameter.

Owns the server's rules for a raw request: the size limits (URL, body, one value),
the request path (well-formed percent-encoding, UTF-8, no control characters) and
the parameters read from the query string and from a form-urlencoded or JSON body
(UTF-8 only, each parameter once, JSON an object without NaN). Pure functions: bad
input raises ApiError in PVE's shape (400 "Parameter verification failed." with
`errors` naming the parameter wherever one can be named), never a codec or parser
exception, so the server answers it and keeps the connection.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote_to_bytes

from binome import schema
from binome.api.errors import ApiError, ParamError
from binome.schema import Repeated

#: aiohttp's HTTP parser gives up on a longer request line (a bare 400, connection
#: closed); below it, a URL longer than MAX_URL gets our 414 and the connection lives.
MAX_LINE = 64 * 1024
MAX_URL = 16 * 1024
#: PVE takes 64 KiB of parameters; the longest declared value (8 KiB, percent-encoded
#: up to three times that) fits many times over. Longer bodies: 413.
MAX_BODY = 1024 * 1024
#: No single value may be longer (PVE's whole request may not), declared limit or not.
MAX_VALUE = 64 * 1024

FORM = "application/x-www-form-urlencoded"
JSON = "application/json"
MULTIPART = "multipart/form-data"

DUPLICATE = schema.DUPLICATE
NOT_UTF8 = "value is not valid UTF-8"
BAD_PERCENT = "invalid percent-encoding (% must be followed by two hex digits)"

_BAD_PERCENT = re.compile(rb"%(?![0-9A-Fa-f]{2})")


class BadPath(ApiError):
    """A request path that is no text we can route or echo: 400, no parameter named."""

    def __init__(self, problem: str) -> None:
        super().__init__(400, f"invalid request path - {problem}")


def url_too_long() -> ApiError:
    return ApiError(414, f"request URI too long (more than {MAX_URL} bytes)")


def body_too_large() -> ApiError:
    return ApiError(413, f"request body too large (more than {MAX_BODY} bytes)")


def unsupported_type(ctype: str) -> ApiError:
    return ApiError(415, f"unsupported content type '{ctype}' "
                         f"(use {FORM} or {JSON})")


def _has_control(text: str) -> bool:
    # C0, DEL and C1: none belongs in a path, and aiohttp refuses them in the reason
    # phrase that would echo the path (it dropped the connection instead of answering)
    return any(unicodedata.category(c) == "Cc" for c in text)


def _decode_path(raw: str) -> str:
    data = raw.encode("utf-8", "surrogateescape")
    if _BAD_PERCENT.search(data):
        raise BadPath(BAD_PERCENT)
    try:
        text = unquote_to_bytes(data).decode("utf-8")
    except UnicodeDecodeError:
        raise BadPath("not valid UTF-8") from None
    if _has_control(text):
        raise BadPath("control characters are not allowed")
    return text


def check_path(raw_path: str) -> None:
    """BadPath unless the path (as sent, percent-encoded) decodes to clean text."""
    _decode_path(raw_path.partition("?")[0])


def path_segment(segment: str) -> str:
    """One segment of the already-decoded path, decoded once more as the registry does
    (the CLI quotes path parameters twice, so that '/' in a value stays in its segment);
    the same rules apply to the result."""
    return _decode_path(segment)


# ---------------------------------------------------------------- parameters


def _decode_value(data: bytes) -> str:
    """A form-urlencoded name or value ('+' is a space); ValueError naming the problem."""
    if _BAD_PERCENT.search(data):
        raise ValueError(BAD_PERCENT)
    try:
        return unquote_to_bytes(data.replace(b"+", b" ")).decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(NOT_UTF8) from None


def _shown(data: bytes) -> str:
    """A name that could not be decoded, readable enough to key its error."""
    return unquote_to_bytes(data.replace(b"+", b" ")).decode("utf-8", "replace")


def _collect(pairs: Iterable[tuple[str, Any]], errors: dict[str, str],
             into: dict[str, Any]) -> None:
    for name, value in pairs:
        if name in errors:
            continue
        if isinstance(value, str) and len(value) > MAX_VALUE:
            errors[name] = f"value may only be {MAX_VALUE} characters long"
        elif name in into:
            # repeated: an array parameter's items; the schema refuses it for any other
            # parameter (DUPLICATE), a JSON value given twice included
            if not isinstance(into[name], Repeated):
                into[name] = Repeated([into[name]])
            into[name].append(value)
        else:
            into[name] = value


def _urlencoded(data: bytes, errors: dict[str, str]) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    for item in data.split(b"&"):
        if not item:
            continue
        raw_name, _, raw_value = item.partition(b"=")
        try:
            name = _decode_value(raw_name)
        except ValueError as exc:
            errors[_shown(raw_name)] = f"parameter name: {exc}"
            continue
        try:
            pairs.append((name, _decode_value(raw_value)))
        except ValueError as exc:
            errors[name] = str(exc)
    return pairs


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


class _NotJson(ValueError):
    """NaN and Infinity: Python's json reads them, JSON has no such numbers."""


def _no_constant(name: str) -> Any:
    raise _NotJson(f"{name} is not a JSON number")


def _valid_text(text: str) -> bool:
    """No lone surrogates: what invalid UTF-8 (decoded with surrogateescape) and JSON's
    unpaired \\ud800 escapes leave; such text cannot be stored or echoed later."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _json_params(data: bytes, errors: dict[str, str]) -> list[tuple[str, Any]]:
    # invalid UTF-8 is kept as lone surrogates, so that the parameter holding it is named
    text = data.decode("utf-8-sig", "surrogateescape")   # a BOM is allowed (RFC 8259)
    try:
        body = json.loads(text, object_pairs_hook=_json_object, parse_constant=_no_constant)
    except _DuplicateKey as exc:
        errors[exc.key] = DUPLICATE
        return []
    except RecursionError:
        raise ApiError(400, "invalid JSON body - nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise ApiError(400, f"invalid JSON body - {exc.msg} at character {exc.pos}") from None
    except _NotJson as exc:
        raise ApiError(400, f"invalid JSON body - {exc}") from None
    except ValueError:          # Python's int() refuses more than 4300 digits
        raise ApiError(400, "invalid JSON body - number too long") from None
    if not isinstance(body, dict):
        raise ApiError(400, "JSON body must be an object")
    pairs: list[tuple[str, Any]] = []
    for key, value in body.items():
        if not _valid_text(key):
            errors[key.encode("utf-8", "surrogatepass").decode("utf-8", "replace")] = \
                f"parameter name: {NOT_UTF8}"
        elif isinstance(value, str) and not _valid_text(value):
            errors[key] = NOT_UTF8
        elif value is not None:    # null: not given (as the server always read it)
            pairs.append((key, value))
    return pairs


def parameters(query: str, ctype: str | None, body: bytes | None) -> dict[str, Any]:
    """The parameters of a request: its query string and, for a body (`ctype` None: no
    Content-Type header, read as a form), the body's; a parameter given twice (also once
    in each) is an error. ParamError listing every bad parameter; ApiError 400 for a body
    that is no JSON object, 415 for a body of another type."""
    errors: dict[str, str] = {}
    params: dict[str, Any] = {}
    _collect(_urlencoded(query.encode("utf-8", "surrogateescape"), errors), errors, params)
    if body is not None:
        if ctype in (None, FORM):
            pairs: list[tuple[str, Any]] = _urlencoded(body, errors)
        elif ctype == JSON:
            pairs = _json_params(body, errors)
        else:
            raise unsupported_type(ctype)
        _collect(pairs, errors, params)
    if errors:
        raise ParamError(errors)
    return params


def merge_fields(params: dict[str, Any], fields: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    """Add the fields of a multipart/form-data body (parsed by aiohttp) to the query's
    `params`: text fields only, each parameter once."""
    errors: dict[str, str] = {}
    out = dict(params)
    texts: list[tuple[str, str]] = []
    for name, value in fields:
        if isinstance(value, str):
            texts.append((name, value))
        else:
            errors[name] = "only text fields are accepted (no files)"
    _collect(texts, errors, out)
    if errors:
        raise ParamError(errors)
    return out
