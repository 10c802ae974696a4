"""POST /access/ticket's verification mode (PVE's verify_auth): its parameters."""

import pytest

from binome.api.errors import ParamError
from binome.api.methods.access import _path_privs


def test_path_and_privs_come_together_and_privs_are_known() -> None:
    assert _path_privs({"path": "/vms/100", "privs": "VM.Console, VM.Audit;Sys.Audit"}) == (
        "/vms/100", ["VM.Console", "VM.Audit", "Sys.Audit"])
    for params, name in (({"path": "/vms/100"}, "privs"), ({"privs": "VM.Audit"}, "path"),
                         ({"path": "/", "privs": "VM.Audit,VM.Fly"}, "privs"),
                         ({"path": "/", "privs": " , "}, "privs")):
        with pytest.raises(ParamError) as refused:
            _path_privs(params)
        assert list(refused.value.errors) == [name], params
