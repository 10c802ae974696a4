"""Parameter validation: coercion of form strings, PVE error texts, all errors at once."""

import pytest

from binome.api.errors import ParamError
from binome.api.schema import Param, validate

MISSING = "property is missing and it is not optional"
UNDEFINED = ("property is not defined in schema and the schema does not allow "
             "additional properties")


def errors_of(params, given):
    with pytest.raises(ParamError) as info:
        validate(params, given)
    assert info.value.status == 400
    assert info.value.message == "Parameter verification failed."
    return info.value.errors


@pytest.mark.parametrize("raw, expected", [
    ("5", 5), ("-3", -3), ("+7", 7), ("0", 0), (" 12 ", 12), (42, 42),
])
def test_integer_coercion(raw, expected):
    out = validate({"n": Param(type="integer")}, {"n": raw})
    assert out == {"n": expected}
    assert type(out["n"]) is int


@pytest.mark.parametrize("raw", ["x", "1.5", "1e3", "0x10", "five", 1.5, [1]])
def test_integer_type_check_error(raw):
    errs = errors_of({"n": Param(type="integer")}, {"n": raw})
    assert errs == {"n": f"type check ('integer') failed - got '{raw}'"}


def test_integer_error_text_exact():
    assert errors_of({"n": Param(type="integer")}, {"n": "x"}) == {
        "n": "type check ('integer') failed - got 'x'"}


@pytest.mark.parametrize("raw", [True, False])
def test_python_bool_rejected_for_integer(raw):
    errs = errors_of({"n": Param(type="integer")}, {"n": raw})
    assert errs["n"].startswith("type check ('integer') failed")


@pytest.mark.parametrize("raw, expected", [
    ("1", True), ("0", False), ("true", True), ("false", False),
    ("yes", True), ("no", False), ("on", True), ("off", False),
    ("TRUE", True), ("Off", False), (True, True), (False, False), (1, True), (0, False),
])
def test_boolean_coercion(raw, expected):
    out = validate({"b": Param(type="boolean")}, {"b": raw})
    assert out["b"] is expected


@pytest.mark.parametrize("raw", ["2", "maybe", "y", 2, "-1"])
def test_boolean_rejects(raw):
    errs = errors_of({"b": Param(type="boolean")}, {"b": raw})
    assert errs == {"b": f"type check ('boolean') failed - got '{raw}'"}


@pytest.mark.parametrize("raw, expected", [("1.5", 1.5), ("3", 3.0), ("-0.25", -0.25), (2, 2.0)])
def test_number_coercion(raw, expected):
    out = validate({"x": Param(type="number")}, {"x": raw})
    assert out["x"] == expected
    assert isinstance(out["x"], float)


def test_number_rejects_text():
    assert errors_of({"x": Param(type="number")}, {"x": "abc"}) == {
        "x": "type check ('number') failed - got 'abc'"}


def test_string_kept_as_string():
    assert validate({"s": Param()}, {"s": "hello"}) == {"s": "hello"}


def test_string_rejects_structure():
    errs = errors_of({"s": Param()}, {"s": {"a": 1}})
    assert "type check ('string') failed" in errs["s"]


def test_missing_required():
    assert errors_of({"a": Param(), "b": Param(optional=True)}, {}) == {"a": MISSING}


def test_empty_string_counts_as_missing_for_non_strings():
    assert errors_of({"n": Param(type="integer")}, {"n": ""}) == {"n": MISSING}


def test_unknown_parameter():
    assert errors_of({"a": Param(optional=True)}, {"zzz": "1"}) == {"zzz": UNDEFINED}


def test_minimum_and_maximum():
    p = {"n": Param(type="integer", minimum=1, maximum=10)}
    assert errors_of(p, {"n": "0"}) == {"n": "value must have a minimum value of 1"}
    assert errors_of(p, {"n": "11"}) == {"n": "value must have a maximum value of 10"}
    assert validate(p, {"n": "1"}) == {"n": 1}
    assert validate(p, {"n": "10"}) == {"n": 10}


def test_minimum_fractional_text():
    p = {"x": Param(type="number", minimum=0.5)}
    assert errors_of(p, {"x": "0.1"}) == {"x": "value must have a minimum value of 0.5"}


def test_enum_text():
    p = {"mode": Param(enum=("fast", "slow"))}
    assert errors_of(p, {"mode": "medium"}) == {
        "mode": "value 'medium' does not have a value in the enumeration 'fast, slow'"}
    assert validate(p, {"mode": "slow"}) == {"mode": "slow"}


def test_max_length():
    p = {"s": Param(max_length=3)}
    assert errors_of(p, {"s": "abcd"}) == {"s": "value may only be 3 characters long"}
    assert validate(p, {"s": "abc"}) == {"s": "abc"}


def test_pattern():
    p = {"s": Param(pattern=r"[a-z]+")}
    assert errors_of(p, {"s": "abc1"}) == {"s": "value does not match the regex pattern"}
    assert validate(p, {"s": "abc"}) == {"s": "abc"}


def test_all_errors_reported_at_once():
    params = {
        "name": Param(),
        "count": Param(type="integer", minimum=1),
        "flag": Param(type="boolean"),
        "mode": Param(enum=("a", "b"), optional=True),
    }
    errs = errors_of(params, {"count": "0", "flag": "perhaps", "mode": "c", "extra": "1"})
    assert set(errs) == {"name", "count", "flag", "mode", "extra"}
    assert errs["name"] == MISSING
    assert errs["count"] == "value must have a minimum value of 1"
    assert errs["flag"] == "type check ('boolean') failed - got 'perhaps'"
    assert errs["extra"] == UNDEFINED


def test_defaults_applied_for_optional():
    params = {
        "limit": Param(type="integer", optional=True, default=50),
        "verbose": Param(type="boolean", optional=True, default=False),
        "note": Param(optional=True),
    }
    assert validate(params, {}) == {"limit": 50, "verbose": False}
    assert validate(params, {"limit": "7"}) == {"limit": 7, "verbose": False}
    assert validate(params, {"limit": ""}) == {"limit": 50, "verbose": False}


@pytest.mark.parametrize("fmt, good, bad", [
    ("pve-node", ["node1", "a", "pve-2", "A" * 63],
     ["-node", "node-", "no_de", "node.example", "a" * 64, "nöde", "a b"]),
    ("ip", ["10.0.0.1", "::1", "fe80::1", "192.168.1.254"],
     ["10.0.0.256", "host", "10.0.0", "1.2.3.4/24"]),
    ("fingerprint", ["AB:" * 31 + "CD", "ab:" * 31 + "cd", "0123456789abcdef" * 4],
     ["AB:" * 30 + "CD", "0123456789abcdef" * 4 + "0", "AB:" * 31 + "CDX",
      "GG:" * 31 + "GG", "AB-" * 31 + "CD"]),
    ("pve-userid", ["root@pam", "alice@pve", "bob.smith@my-realm"],
     ["root", "@pam", "root@", "ro ot@pam", "a:b@pam", "root@p", "root@1realm"]),
    ("pve-userid-or-token", ["root@pam", "alice@pve", "alice@pve!tf", "bob@my-realm!ci.2"],
     ["root", "alice@pve!", "alice@pve!1x", "alice@pve!t", "alice@pve!a b", "!tf",
      "alice@pve!tf!x"]),
    ("pve-cluster-name", ["c1", "my-cluster", "A" * 15],
     ["", "A" * 16, "my_cluster", "my.cluster", "my cluster"]),
])
def test_formats(fmt, good, bad):
    params = {"v": Param(format=fmt)}
    for value in good:
        assert validate(params, {"v": value}) == {"v": value}, value
    for value in bad:
        with pytest.raises(ParamError) as info:
            validate(params, {"v": value})
        assert "v" in info.value.errors, value


def test_format_error_text_names_value():
    errs = errors_of({"node": Param(format="pve-node")}, {"node": "bad_name"})
    assert errs == {"node": "invalid node name 'bad_name'"}
    errs = errors_of({"ip": Param(format="ip")}, {"ip": "nope"})
    assert errs == {"ip": "invalid IP address 'nope'"}


def test_json_schema():
    p = Param(type="integer", description="d", optional=True, default=3, minimum=1,
              enum=None, max_length=None)
    assert p.json_schema() == {"type": "integer", "description": "d", "default": 3,
                               "minimum": 1, "optional": 1}
    assert Param(enum=("a", "b")).json_schema() == {"type": "string", "enum": ["a", "b"]}
