"""The fence device API's boundary: what `_build` stores, what it refuses, and that
no answer or error ever carries the password."""

from __future__ import annotations

import pytest

from binome.api.errors import ParamError
from binome.api.methods.fence import _build
from binome.fence.device import make_device
from binome.fence.devices import parse_agent_options as _parse_options
from binome.fence.devices import public_record as public_config

SECRET = "s3cret-Passw0rd"


def errors(params: dict, old: dict | None = None, delete: list[str] | None = None) -> dict:
    with pytest.raises(ParamError) as info:
        _build("n2", old, params, delete or [])
    assert SECRET not in str(info.value.errors) and SECRET not in info.value.message
    return info.value.errors


def test_ipmi_config_is_make_device_format() -> None:
    cfg = _build("n2", None, {"type": "ipmi", "ip": "10.0.0.12", "username": "admin",
                              "password": SECRET, "port": 6230, "timeout": 3}, [])
    assert cfg == {"type": "ipmi", "ip": "10.0.0.12", "username": "admin",
                   "password": SECRET, "port": 6230, "timeout": 3.0}
    make_device(cfg)   # what the CRM's Fencer does with it
    shown = public_config("n2", cfg)
    assert "password" not in shown and shown["has_password"] == 1
    assert SECRET not in str(shown)
    # a host name is an address too
    _build("n2", None, {"type": "ipmi", "ip": "bmc-n2.example.org", "username": "a",
                        "password": SECRET}, [])


def test_invalid_input_names_each_parameter() -> None:
    assert set(errors({"type": "ipmi"})) == {"ip", "username", "password"}
    for bad in ("10.0.0.256", "bmc_2", "-x.example", "a..b"):
        assert "ip" in errors({"type": "ipmi", "ip": bad, "username": "a",
                               "password": SECRET})
    assert "agent" in errors({"type": "ipmi", "ip": "10.0.0.1", "username": "a",
                              "password": SECRET, "agent": "fence_ipmilan"})
    assert "agent" in errors({"type": "agent", "agent": "fence_surely_not_installed"})
    assert "options" in errors({"type": "agent", "agent": "/bin/true",
                                "options": "password=" + SECRET})
    assert "options" in errors({"type": "agent", "agent": "/bin/true", "options": "noequals"})
    assert "type" in errors({"ip": "10.0.0.1"})
    old = {"type": "ipmi", "ip": "10.0.0.1", "username": "a", "password": SECRET}
    assert "delete" in errors({}, old, ["ip"])


def test_update_keeps_the_password_and_resets_deleted_keys() -> None:
    old = {"type": "ipmi", "ip": "10.0.0.1", "username": "a", "password": SECRET,
           "port": 6230}
    cfg = _build("n2", old, {"ip": "10.0.0.2"}, ["port"])
    assert cfg == {"type": "ipmi", "ip": "10.0.0.2", "username": "a", "password": SECRET}


def test_agent_options() -> None:
    assert _parse_options("ip=10.0.0.1, username=admin,lanplus=1") == {
        "ip": "10.0.0.1", "username": "admin", "lanplus": "1"}
    cfg = _build("n2", None, {"type": "agent", "agent": "/bin/true",
                              "options": "ip=10.0.0.1,lanplus=1"}, [])
    assert public_config("n2", cfg)["options"] == "ip=10.0.0.1,lanplus=1"
    assert public_config("n2", cfg)["has_password"] == 0


def test_confirm_off_cli_form_and_warning(capsys) -> None:
    from binome.cli.main import _aliases, _confirm, build_parser

    assert _aliases(["fence", "n1", "--confirm-off", "--yes"]) == [
        "fence", "confirm-off", "n1", "--yes"]
    assert _aliases(["fence", "--confirm-off", "n1"]) == ["fence", "confirm-off", "n1"]
    assert _aliases(["fence", "n1"]) == ["fence", "node", "n1"]   # unchanged
    args = build_parser().parse_args(_aliases(["fence", "n1", "--confirm-off", "--yes"]))
    assert args._spec.path == "/cluster/ha/fence/{node}/confirm" and args.p_node == "n1"
    _confirm(args._spec, args)   # --yes: no question, but the warning is always shown
    err = capsys.readouterr().err
    assert "node n1 is POWERED OFF" in err and "run TWICE" in err
