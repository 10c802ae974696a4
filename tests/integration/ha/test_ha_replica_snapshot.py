"""`replica_snapshot`: how the CRM reads replicated volumes out of its etcd snapshot (no etcd)."""

from __future__ import annotations

from binome.ha.agent.etcd_env import Raw
from binome.storage.placement import replica_snapshot


def _e(key: str, value: object) -> Raw:
    return Raw(f"/binome/volumes/{key}", value, 1, 0)


def test_effective_states_per_guest() -> None:
    rec = {"name": "vm-100-disk-0", "vmid": 100, "nodes": {"n1": {}, "n2": {}}}
    entries = [
        _e("vm-100-disk-0/config", rec),
        _e("vm-100-disk-0/fencing", {"outdated": {}}),
        _e("vm-100-disk-0/state/n1", {"disk": "UpToDate", "role": "Primary"}),
        _e("vm-100-disk-0/state/n2", {"disk": "Inconsistent"}),
        # a second disk of the same guest, n2 recorded Outdated while it still says UpToDate
        _e("vm-100-disk-1/config", {**rec, "name": "vm-100-disk-1"}),
        _e("vm-100-disk-1/fencing", {"outdated": {"n2": {"by": "n1"}}}),
        _e("vm-100-disk-1/state/n1", {"disk": "UpToDate"}),
        _e("vm-100-disk-1/state/n2", {"disk": "UpToDate"}),
        # no vmid (a plain volume), and a volume being deleted: not a guest's
        _e("v1/config", {"name": "v1", "vmid": None, "nodes": {"n1": {}, "n2": {}}}),
        _e("vm-101-disk-0/config", {**rec, "vmid": 101, "deleting": True}),
    ]
    snap = replica_snapshot(entries)
    assert snap == {100: {"vm-100-disk-0": {"n1": "UpToDate", "n2": "Inconsistent"},
                          "vm-100-disk-1": {"n1": "UpToDate", "n2": "Outdated"}}}


def test_a_node_that_never_published_is_dunknown() -> None:
    rec = {"name": "vm-7-disk-0", "vmid": 7, "nodes": {"n1": {}, "n2": {}}}
    snap = replica_snapshot([_e("vm-7-disk-0/config", rec),
                             _e("vm-7-disk-0/state/n1", {"disk": "UpToDate", "up": True})])
    assert snap == {7: {"vm-7-disk-0": {"n1": "UpToDate", "n2": "DUnknown"}}}
