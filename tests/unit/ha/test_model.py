"""The HA documents survive their JSON form (they live in etcd as JSON)."""

from __future__ import annotations

import json

import pytest

from binome.ha.commands import parse_command
from binome.ha.model import (
    ExitCode,
    GroupConfig,
    LrmMode,
    LrmResult,
    LrmState,
    LrmStatus,
    ManagerStatus,
    NodeRecord,
    NodeState,
    ResourceConfig,
    ServiceState,
    ServiceStatus,
    parse_group_nodes,
)


def roundtrip(obj):
    return json.loads(json.dumps(obj.to_dict()))


def test_manager_status_roundtrip():
    ms = ManagerStatus(master_node="n1", next_uid=7,
                       node_status={"n1": NodeRecord(NodeState.FENCE, 3.0, "n1#2", 2.0, "x")},
                       node_request={"n2": {"maintenance": True}},
                       service_status={"vm:100": ServiceStatus(
                           ServiceState.RECOVERY, "n1", "u6", None, ["n2"], 1, "why", "n2", 4.5,
                           9.0)})
    assert ManagerStatus.from_dict(roundtrip(ms)) == ms
    assert ManagerStatus.from_dict(None) == ManagerStatus()


def test_lrm_status_roundtrip():
    st = LrmStatus("n2", LrmState.ACTIVE, LrmMode.MAINTENANCE, True,
                   {"u1": LrmResult("vm:100", "start", ExitCode.EWRONG_NODE, "m")},
                   {"u2": "vm:101"}, ["vm:101"], False)
    assert LrmStatus.from_dict(roundtrip(st)) == st


def test_resource_defaults_follow_proxmox():
    cfg = ResourceConfig.from_dict("vm:100", {})
    assert (cfg.state, cfg.max_restart, cfg.max_relocate) == ("started", 1, 1)


def test_group_nodes_proxmox_syntax():
    assert parse_group_nodes("n1:2, n2:1,n3") == {"n1": 2, "n2": 1, "n3": 0}
    assert GroupConfig.from_dict("g", {"nodes": "n1:2"}).nodes == {"n1": 2}


@pytest.mark.parametrize("line", ["migrate vm:100", "frobnicate", "disarm-ha sometimes", ""])
def test_bad_commands_are_rejected(line):
    with pytest.raises(ValueError):
        parse_command(line)


def test_commands_parse():
    assert parse_command("migrate vm:100 n2").node == "n2"
    assert parse_command("disarm-ha freeze").disarm == "freeze"
    assert str(parse_command("enable-node-maintenance n1")) == "enable-node-maintenance n1"
