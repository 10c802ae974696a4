"""A node's bulk actions: which guests, in which order (`binome.guest.bulk`, PVE's
get_start_stop_list / get_filtered_vmlist rules), the host power command, and the
arm-ha/disarm-ha paths declared once for two paths."""

from __future__ import annotations

import asyncio

import pytest

from binome.api import methods  # noqa: F401  (registers every method)
from binome.api.methods import node_bulk
from binome.api.registry import registry
from binome.guest import bulk
from binome.ha.agent.shutdown import ShutdownDetector, power_argv, run_power_command

pytestmark = pytest.mark.unit

CONFIGS = [
    (100, {"onboot": 1, "startup": "order=2,up=5,down=30"}),
    (101, {"onboot": 1}),                                  # no order: last
    (102, {"onboot": 0, "startup": "order=1"}),
    (103, {"onboot": 1, "startup": "1"}),                  # PVE's bare order
    (104, {"onboot": 1, "template": 1}),                   # never started or stopped
    (105, {"onboot": 1, "startup": "order=2"}),            # HA-managed
    (106, {"onboot": 1, "startup": "bogus"}),              # malformed: no order
]
HA = {105}


def vmids(plan: list[list[bulk.BulkGuest]]) -> list[list[int]]:
    return [[g.vmid for g in group] for group in plan]


def test_startall_takes_onboot_guests_by_order_without_ha_or_templates() -> None:
    plan = bulk.start_stop_plan(CONFIGS, HA, None, autostart=True)
    assert vmids(plan) == [[103], [100], [101, 106]]
    first = plan[1][0]
    assert (first.order, first.up, first.down, first.ha) == (2, 5, 30, False)


def test_force_takes_guests_without_onboot() -> None:
    plan = bulk.start_stop_plan(CONFIGS, HA, None, autostart=False)
    assert vmids(plan) == [[102, 103], [100], [101, 106]]


def test_stop_order_is_the_reverse() -> None:
    plan = bulk.start_stop_plan(CONFIGS, HA, None, autostart=False, reverse=True)
    assert vmids(plan) == [[106, 101], [100], [103, 102]]


def test_a_vms_list_restricts_and_brings_ha_guests_in() -> None:
    plan = bulk.start_stop_plan(CONFIGS, HA, [105, 100, 104, 999], autostart=True)
    assert vmids(plan) == [[100, 105]]
    assert [g.ha for g in plan[0]] == [False, True]


def test_migrateall_takes_everything_by_vmid() -> None:
    assert [g.vmid for g in bulk.migrate_plan(CONFIGS, HA, None)] == list(range(100, 107))
    assert [g.vmid for g in bulk.migrate_plan(CONFIGS, HA, [106, 104])] == [104, 106]
    assert [g.ha for g in bulk.migrate_plan(CONFIGS, HA, [105])] == [True]


@pytest.mark.parametrize(("cpus", "want"), [(1, 1), (2, 1), (4, 3), (64, 8)])
def test_default_max_workers(cpus: int, want: int) -> None:
    assert bulk.default_max_workers(cpus) == want


def test_vms_parameter_parsing() -> None:
    assert node_bulk._vms({"vms": "100,101 102;100"}) == [100, 101, 102]
    assert node_bulk._vms({"vms": " "}) is None and node_bulk._vms({}) is None
    with pytest.raises(Exception) as bad:
        node_bulk._vms({"vms": "100,99"})
    assert getattr(bad.value, "errors", None) == {
        "vms": "value '99' does not look like a valid VM ID"}


def test_power_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BINOME_HOST_POWER_COMMAND", raising=False)
    assert power_argv("reboot") == ["systemctl", "reboot"]
    monkeypatch.setenv("BINOME_HOST_POWER_COMMAND", "/usr/local/bin/hostctl --now")
    assert power_argv("poweroff") == ["/usr/local/bin/hostctl", "--now", "poweroff"]
    with pytest.raises(ValueError):
        power_argv("halt")
    rc, out = asyncio.run(run_power_command("reboot", "echo asked"))
    assert (rc, out) == (0, "asked reboot")
    rc, _ = asyncio.run(run_power_command("reboot", "false"))
    assert rc == 1


def test_announce_tells_the_lrm_before_the_sigterm() -> None:
    woken = []
    d = ShutdownDetector(on_request=lambda: woken.append(1), probe_command="echo running")
    d.announce("poweroff", "test")
    assert d.request == "poweroff" and woken == [1]
    # the SIGTERM that follows finds it known (the probe is not asked again)
    assert asyncio.run(d.probe()) == "poweroff"
    with pytest.raises(ValueError):
        d.announce("restart", "test")


def test_arm_and_disarm_are_served_at_both_paths() -> None:
    for path in ("/cluster/ha/crm-command/arm-ha", "/cluster/ha/status/arm-ha"):
        m, _ = registry.match("POST", path)
        assert m.name.startswith("ha_arm")
    ours, _ = registry.match("POST", "/cluster/ha/crm-command/disarm-ha")
    upstream, _ = registry.match("POST", "/cluster/ha/status/disarm-ha")
    assert set(ours.parameters) == {"mode"} and set(upstream.parameters) == {"resource-mode"}
    assert ours.permission == upstream.permission
    assert [s.command for s in upstream.cli] == []   # one CLI verb for both


@pytest.mark.parametrize(("kind", "wanted", "shown"), [
    ("bridge", "bridge", True), ("bridge", "any_bridge", True),
    ("bridge", "any_local_bridge", True), ("eth", "any_bridge", False),
    ("bond", "bond", True), ("vlan", "eth", False), ("unknown", "include_sdn", True),
])
def test_network_type_filter(kind: str, wanted: str, shown: bool) -> None:
    from binome.api.methods.node_system import _type_matches

    assert _type_matches({"type": kind}, wanted) is shown
