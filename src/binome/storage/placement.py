"""Where each guest's volumes may run, as HA recovery placement reads it.

HA's CRM decides where a lost guest is recovered from one consistent etcd snapshot
(one range per prefix, in the same round as the HA keys). What it needs of storage
is a fact per volume and node, "this node holds an up-to-date copy", not a backend's
key layout or state names. This module is that seam: the prefixes a round reads and
watches, and the interpretation of what it read. The replicated backend's records
(`storage.replica.node.records`) are today the only volumes whose placement is
constrained; a backend added later (shared storage reachable from every node, a
snapshot or backup target) adds its prefix and its reading here, and HA stays as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from binome.storage.replica.core.views import effective_disk_states
from binome.storage.replica.node import records

# The etcd prefixes a placement snapshot ranges over and a round's watch follows.
PREFIXES: tuple[str, ...] = (records.VOLUMES,)

# The fields of a replica's published state that placement depends on; the others
# (out-of-sync counters during a resync, open counts) change often and decide nothing.
STATE_FIELDS = ("up", "disk")


class Entry(Protocol):
    """One key-value read from the store (`store.client.Raw` satisfies it)."""

    @property
    def key(self) -> str: ...

    @property
    def value(self) -> Any: ...


def replica_snapshot(entries: Sequence[Entry]) -> dict[int, dict[str, dict[str, str]]]:
    """vmid -> volume -> node -> effective disk state, from a range over `PREFIXES`.

    A volume belongs to a guest when its record names the guest's vmid (the
    `replicated` storage writes it at allocation); volumes being deleted are
    left out. States are the replica's (`UpToDate`, `Outdated`, `Inconsistent`,
    `DUnknown`, ...), folded with the fencing record: a copy recorded outdated by
    its peer is `Outdated` whatever it last published.
    """
    views: dict[str, dict[str, Any]] = {}
    for e in entries:
        parsed = records.parse(e.key)
        if parsed is None:
            continue
        vol, kind, node = parsed
        view = views.setdefault(vol, {"config": None, "outdated": {}, "states": {}})
        if kind == "config":
            view["config"] = e.value if isinstance(e.value, dict) else None
        elif kind == "fencing":
            view["outdated"] = dict(((e.value or {}) if isinstance(e.value, dict) else {})
                                    .get("outdated", {}))
        elif node is not None:
            view["states"][node] = e.value if isinstance(e.value, dict) else {}
    out: dict[int, dict[str, dict[str, str]]] = {}
    for vol, view in views.items():
        rec = view["config"]
        if not rec or rec.get("deleting") or not isinstance(rec.get("vmid"), int):
            continue
        out.setdefault(rec["vmid"], {})[vol] = effective_disk_states(view)
    return out


def is_placement_key(key: str) -> bool:
    return key.startswith(PREFIXES)


def change_matters(key: str, kind: str, value: object, prev_value: object | None,
                   had_prev: bool) -> bool:
    """Whether a change under `PREFIXES` may change a placement decision.

    A replica republishes its state often (resync progress); only a put that changes
    one of `STATE_FIELDS` of an existing state key matters. Any other change (a
    config, a fencing record, a state appearing or vanishing) does.
    """
    parsed = records.parse(key)
    if parsed is not None and parsed[1] == "state" and kind == "put" and had_prev:
        return _fields(value) != _fields(prev_value)
    return True


def _fields(value: object) -> tuple[object, ...]:
    d = value if isinstance(value, dict) else {}
    return tuple(d.get(f) for f in STATE_FIELDS)
