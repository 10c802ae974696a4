"""node.records: the volume records' key layout and the pure views built from a range."""

from types import SimpleNamespace

from binome.storage.replica.core.views import effective_disk_states
from binome.storage.replica.node import records


def _e(key, value):
    return SimpleNamespace(key=key, value=value)


def test_keys_parse_back():
    assert records.parse(records.config("v1")) == ("v1", "config", None)
    assert records.parse(records.fencing("v1")) == ("v1", "fencing", None)
    assert records.parse(records.state("v1", "n2")) == ("v1", "state", "n2")
    assert records.parse(records.secret("v1")) is None          # outside /binome/volumes/
    assert records.prefix("vm-1-disk-1") != records.prefix("vm-1-disk-10")[:-1]


def test_views_of_folds_a_range_and_ignores_malformed_values():
    views = records.views_of([
        _e(records.config("v1"), {"name": "v1", "nodes": {"n1": {}, "n2": {}}}),
        _e(records.fencing("v1"), {"outdated": {"n2": {"by": "n1"}}}),
        _e(records.state("v1", "n1"), {"disk": "UpToDate", "up": True}),
        _e(records.state("v1", "n2"), "garbage"),
        _e(records.config("v2"), ["not", "a", "record"]),
        _e("/binome/volumes/v3/unknown", {}),
    ])
    assert set(views) == {"v1", "v2"}
    assert views["v2"]["config"] is None
    assert views["v1"]["states"]["n2"] == {}
    assert effective_disk_states(views["v1"]) == {"n1": "UpToDate", "n2": "Outdated"}
