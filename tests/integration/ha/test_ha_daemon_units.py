"""Pure parts of the HA daemon integration (no etcd): sid parsing, liveness facts, status text."""

from __future__ import annotations

import pytest

from binome.api.errors import ParamError
from binome.api.methods.ha import parse_sid
from binome.cli.format import ha_status as format_ha_status
from binome.ha.agent.etcd_env import LivenessTracker, Raw, vmid_of


def test_parse_sid() -> None:
    assert parse_sid("100") == "vm:100"
    assert parse_sid("vm:0100") == "vm:100"
    for bad in ("ct:100", "foo", "vm:x"):
        with pytest.raises(ParamError):
            parse_sid(bad)
    assert vmid_of("vm:7") == 7 and vmid_of("ct:7") is None


def _beat(node: str, rev: int, lease: int = 42) -> Raw:
    return Raw(f"/binome/ha/heartbeat/{node}", {"seq": rev}, rev, lease)


def test_liveness_renewal_is_first_observation_of_a_new_revision() -> None:
    t = LivenessTracker()
    t.observe(10.0, {"n1": _beat("n1", 5)}, {})
    t.observe(11.0, {"n1": _beat("n1", 5)}, {})
    beats = {"n1": _beat("n1", 5)}
    assert t.facts("n1", beats).last_renewal == 10.0
    t.observe(12.0, {"n1": _beat("n1", 9)}, {})
    assert t.facts("n1", {"n1": _beat("n1", 9)}).last_renewal == 12.0
    # never seen: no lease at all
    assert not t.facts("n2", beats).lease_alive and t.facts("n2", beats).lease_gone_at is None


def test_liveness_gone_expired_or_released() -> None:
    t = LivenessTracker()
    t.observe(1.0, {"n1": _beat("n1", 3, lease=7), "n2": _beat("n2", 4, lease=8)}, {})
    released = {"n2": Raw("/binome/ha/released/n2", {"lease": 8}, 5, 0),
                "n1": Raw("/binome/ha/released/n1", {"lease": 1}, 6, 0)}   # an older life's
    t.observe(2.0, {}, released)
    f1, f2 = t.facts("n1", {}), t.facts("n2", {})
    assert (f1.lease_alive, f1.lease_gone_at, f1.lease_expired) == (False, 2.0, True)
    assert (f2.lease_alive, f2.lease_gone_at, f2.lease_expired) == (False, 2.0, False)


def test_status_text_like_ha_manager() -> None:
    text = format_ha_status([
        {"type": "quorum", "status": "OK"},
        {"type": "master", "status": "n1 (active)"},
        {"type": "lrm", "status": "n1 (active)"},
        {"type": "service", "status": "vm:100 (n1, recovery)", "reason": "no node"},
    ])
    assert text.splitlines() == ["quorum OK", "master n1 (active)", "lrm n1 (active)",
                                 "service vm:100 (n1, recovery) - no node"]
