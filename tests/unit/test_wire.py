"""Malformed input at the API's door: strict decoding of the path, query and body,
digits of other scripts, and the reason phrase of an error that echoes a control
character. The live server's answers are in tests/integration/test_bad_input.py."""

from __future__ import annotations

import json

import pytest

from binome.api import wire
from binome.api.errors import ApiError, NotImplementedMethod, ParamError
from binome.api.methods.pools import _vmids
from binome.api.registry import Registry
from binome.api.schema import Param, validate
from binome.api.server import _reason, error_response
from binome.schema import check_format


def param_errors(query: str = "", ctype: str | None = None,
                 body: bytes | None = None) -> dict[str, str]:
    """The errors of the wire layer, else those of a schema of plain (non-array) string
    parameters: a repeated parameter passes the wire (an array's items) and is refused
    there as a duplicate."""
    try:
        params = wire.parameters(query, ctype, body)
    except ParamError as exc:
        return exc.errors
    with pytest.raises(ParamError) as info:
        validate({name: Param(optional=True) for name in params}, params)
    return info.value.errors


def api_error(query: str = "", ctype: str | None = None, body: bytes | None = None
              ) -> ApiError:
    with pytest.raises(ApiError) as info:
        wire.parameters(query, ctype, body)
    assert not isinstance(info.value, ParamError)
    return info.value


# ---------------------------------------------------------------- the path


@pytest.mark.parametrize("raw", [
    "/api2/json/cluster/ha/groups/g1", "/api2/json/nodes/n1/tasks/UPID%3An1%3A0001",
    "/api2/json/access/users/caf%C3%A9%40pve", "/api2/json/x?q=%00&r=%ff",  # query: apart
])
def test_clean_paths_pass(raw):
    wire.check_path(raw)


@pytest.mark.parametrize("raw, problem", [
    ("/api2/json/cluster/ha/groups/%12", "control characters are not allowed"),
    ("/api2/json/a%00b", "control characters are not allowed"),
    ("/api2/json/a%7F", "control characters are not allowed"),
    ("/api2/json/a%C2%85", "control characters are not allowed"),      # C1: NEL
    ("/api2/json/a%ff", "not valid UTF-8"),
    ("/api2/json/a%C3%28", "not valid UTF-8"),
    ("/api2/json/a%zz", "invalid percent-encoding"),
    ("/api2/json/a%4", "invalid percent-encoding"),
])
def test_bad_paths_are_400(raw, problem):
    with pytest.raises(wire.BadPath) as info:
        wire.check_path(raw)
    assert info.value.status == 400
    assert info.value.message.startswith("invalid request path - " + problem)
    assert not info.value.errors


def test_registry_decodes_segments_strictly():
    """The registry decodes the (already decoded) path once more: the result obeys the
    same rules, so '%2512' cannot smuggle a control character past the first check."""
    async def handler(ctx, params):
        return None

    reg = Registry()
    reg.register("GET", "/groups/{group}", name="g", description="g",
                 parameters={"group": Param()})(handler)
    assert reg.match("GET", "/groups/a%2Fb")[1] == {"group": "a/b"}
    for segment in ("%12", "%ff", "%zz"):
        with pytest.raises(wire.BadPath):
            reg.match("GET", f"/groups/{segment}")
    with pytest.raises(wire.BadPath):          # also where nothing would match: no 501
        reg.match("GET", "/nosuch/%12")
    with pytest.raises(NotImplementedMethod):
        reg.match("GET", "/nosuch/caf%C3%A9")


# ---------------------------------------------------------------- query and form


def test_query_and_form_decode_as_before():
    assert wire.parameters("a=1&b=x+y&c=%C3%A9&d&e=", None, None) == {
        "a": "1", "b": "x y", "c": "é", "d": "", "e": ""}
    assert wire.parameters("a=1", wire.FORM, b"b=caf\xc3\xa9&c=%2B") == {
        "a": "1", "b": "café", "c": "+"}
    assert wire.parameters("", None, b"b=2") == {"b": "2"}      # no Content-Type: a form


@pytest.mark.parametrize("query, body, errors", [
    ("max=%ff", None, {"max": wire.NOT_UTF8}),
    ("max=%zz", None, {"max": wire.BAD_PERCENT}),
    ("", b"group=g1&comment=caf%E9", {"comment": wire.NOT_UTF8}),      # latin-1
    ("", b"group=\xff\xfe", {"group": wire.NOT_UTF8}),                  # raw bytes
    ("", b"%ff=1", {"\ufffd": "parameter name: " + wire.NOT_UTF8}),
    ("max=1&max=2", None, {"max": wire.DUPLICATE}),
    ("", b"group=a&group=b", {"group": wire.DUPLICATE}),
    ("group=a", b"group=b", {"group": wire.DUPLICATE}),                 # query and body
    ("a=%ff&b=%ff&b=2", None, {"a": wire.NOT_UTF8, "b": wire.NOT_UTF8}),  # every problem
])
def test_bad_urlencoded_parameters_are_named(query, body, errors):
    assert param_errors(query, None if body is None else wire.FORM, body) == errors


def test_over_long_value_is_named():
    long = "x" * (wire.MAX_VALUE + 1)
    assert param_errors(f"comment={long}") == {
        "comment": f"value may only be {wire.MAX_VALUE} characters long"}
    assert wire.parameters("comment=" + long[1:], None, None)["comment"] == long[1:]


def test_nul_is_left_to_the_schema():
    """%00 decodes; the parameter's type refuses it, naming the parameter."""
    raw = wire.parameters("comment=a%00b&max=%00", None, None)
    with pytest.raises(ParamError) as info:
        validate({"comment": Param(optional=True),
                  "max": Param(type="integer", optional=True)}, raw)
    errors = info.value.errors
    assert errors["comment"] == "value must not contain line breaks or NUL characters"
    assert errors["max"].startswith("type check ('integer') failed")


# ---------------------------------------------------------------- JSON and content types


def test_json_body():
    body = json.dumps({"group": "g1", "nodes": "n1", "max": 5, "off": None}).encode()
    assert wire.parameters("a=1", wire.JSON, body) == {
        "a": "1", "group": "g1", "nodes": "n1", "max": 5}
    assert wire.parameters("", wire.JSON, b'\xef\xbb\xbf{"a": "1"}') == {"a": "1"}  # BOM


@pytest.mark.parametrize("body, message", [
    (b'{"group": ', "invalid JSON body - Expecting value at character 10"),
    (b"[1, 2]", "JSON body must be an object"),
    (b"3", "JSON body must be an object"),
    (b"null", "JSON body must be an object"),
    (b'{"max": NaN}', "invalid JSON body - NaN is not a JSON number"),
    (b'{"max": -Infinity}', "invalid JSON body - -Infinity is not a JSON number"),
    (b'{"max": ' + b"9" * 5000 + b"}", "invalid JSON body - number too long"),
    (b"[" * 100_000 + b"]" * 100_000, "invalid JSON body - nested too deeply"),
    ('{"a": "1"}'.encode("utf-16"), "invalid JSON body - Expecting value at character 0"),
])
def test_bad_json_is_400(body, message):
    exc = api_error("", wire.JSON, body)
    assert (exc.status, exc.message) == (400, message)


@pytest.mark.parametrize("body, errors", [
    (b'{"group": "\xff"}', {"group": wire.NOT_UTF8}),
    (b'{"group": "\\ud800"}', {"group": wire.NOT_UTF8}),        # unpaired surrogate
    (b'{"group": "a", "group": "b"}', {"group": wire.DUPLICATE}),
])
def test_bad_json_parameters_are_named(body, errors):
    assert param_errors("", wire.JSON, body) == errors


@pytest.mark.parametrize("ctype", ["text/plain", "application/xml", ""])
def test_other_content_types_are_415(ctype):
    exc = api_error("", ctype, b"group=g1")
    assert exc.status == 415 and f"unsupported content type '{ctype}'" in exc.message


def test_multipart_fields():
    assert wire.merge_fields({"a": "1"}, [("b", "2")]) == {"a": "1", "b": "2"}
    with pytest.raises(ParamError) as info:
        wire.merge_fields({"a": "1"}, [("a", "2"), ("f", b"bytes"), ("g", object())])
    assert info.value.errors == {"f": "only text fields are accepted (no files)",
                                 "g": "only text fields are accepted (no files)"}
    repeated = wire.merge_fields({"a": "1"}, [("a", "2")])
    with pytest.raises(ParamError) as info:
        validate({"a": Param()}, repeated)
    assert info.value.errors == {"a": wire.DUPLICATE}


def test_repeated_parameter_is_an_arrays_items():
    """PVE's array parameters (`target=a&target=b`, or a JSON list); one value is a list
    of one; each item is checked by the item's schema."""
    targets = Param(type="array", items=Param(pattern="[a-z]+"))
    params = {"target": targets}
    assert validate(params, wire.parameters("target=a&target=b", None, None)) == {
        "target": ["a", "b"]}
    assert validate(params, wire.parameters("target=a", None, None)) == {"target": ["a"]}
    assert validate(params, wire.parameters("", wire.JSON, b'{"target": ["a", "c"]}')) == {
        "target": ["a", "c"]}
    with pytest.raises(ParamError) as info:
        validate(params, wire.parameters("target=a&target=B", None, None))
    assert info.value.errors == {"target": "value does not match the regex pattern"}


# ---------------------------------------------------------------- other scripts' digits


FULLWIDTH_100 = "\uff11\uff10\uff10"


@pytest.mark.parametrize("p, raw", [
    (Param(type="integer"), FULLWIDTH_100),
    (Param(type="integer"), "\u0661\u0660\u0660"),         # Arabic-Indic
    (Param(type="integer"), "9" * 5000),
    (Param(type="number"), FULLWIDTH_100),
    (Param(type="number"), "nan"),
    (Param(type="number"), "inf"),
    (Param(type="number"), "1_000"),
    (Param(type="number"), "1e999"),
    (Param(pattern=r"\d+"), FULLWIDTH_100),
    (Param(pattern=r"[\w.]+"), "caf\u00e9"),
])
def test_only_ascii_digits_are_numbers(p, raw):
    with pytest.raises(ParamError) as info:
        validate({"v": p}, {"v": raw})
    text = info.value.errors["v"]
    assert text.startswith(("type check", "value does not match")), text   # not int()'s


@pytest.mark.parametrize("raw", [FULLWIDTH_100, "9" * 5000, "1e3"])
def test_pool_members_take_ascii_vmids_only(raw):
    with pytest.raises(ParamError) as info:
        _vmids(f"101,{raw}")
    assert info.value.errors == {"vms": f"value '{raw}' does not look like a valid VM ID"}
    assert _vmids("101, 0102") == [101, 102]


def test_ascii_numbers_still_pass():
    assert validate({"v": Param(type="number")}, {"v": " -1.5e3 "}) == {"v": -1500.0}
    assert validate({"v": Param(type="number")}, {"v": ".5"}) == {"v": 0.5}
    assert validate({"v": Param(pattern=r"\d+[KMGT]?")}, {"v": "10G"}) == {"v": "10G"}


@pytest.mark.parametrize("fmt, raw", [
    ("pve-ha-resource-or-vm-id", FULLWIDTH_100),
    ("pve-ha-resource-or-vm-id", "vm:" + FULLWIDTH_100),
    ("pve-ha-resource-or-vm-id", "\u00b2"),                 # isdigit(), but int() fails
    ("pve-ha-group-node-list", "n1:\uff11"),
    ("pve-ha-group-node-list", "n1:" + "9" * 5000),
])
def test_formats_take_ascii_digits_only(fmt, raw):
    with pytest.raises(ValueError) as info:
        check_format(fmt, raw)
    assert "int()" not in str(info.value) and "Exceeds" not in str(info.value)


def test_ha_formats_still_pass():
    assert check_format("pve-ha-resource-or-vm-id", "100") == "vm:100"
    assert check_format("pve-ha-resource-or-vm-id", "vm:0100") == "vm:100"
    assert check_format("pve-ha-group-node-list", "n1:2,n2") == "n1:2,n2"


# ---------------------------------------------------------------- the reason phrase


def test_reason_phrase_has_no_control_characters():
    """aiohttp refuses to write them and dropped the connection: the message may echo
    anything the client sent."""
    assert _reason("no such ha group '\x12\x7f\x9f'") == "no such ha group '???'"
    assert _reason("caf\u00e9 \u20ac") == "caf\u00e9 ?"       # latin-1 as before
    resp = error_response(ApiError(500, "no such ha group '\x12'"))
    assert resp.reason == "no such ha group '?'"
    assert json.loads(resp.text or "")["message"] == "no such ha group '\x12'\n"
