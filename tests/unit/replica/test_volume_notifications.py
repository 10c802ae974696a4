"""Which node notifies a volume's connection changes, and when (engine_events)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from binome.notify.events import make_event
from binome.storage.replica.node.engine_events import notify_replication


def _node() -> Any:
    notes: list[tuple[str, dict[str, Any]]] = []
    return SimpleNamespace(replication={}, notes=notes,
                           notify=lambda kind, **f: notes.append((kind, f)))


def _feed(svc: Any, *states: tuple[str, str]) -> list[str]:
    for cstate, role in states:
        notify_replication(svc, "vm-100-disk-0", {"cstate": cstate, "role": role,
                                                   "peer_node": "n2", "out_of_sync_kib": 8})
    for kind, fields in svc.notes:      # each renders as a catalogue event
        make_event(kind, "n1", **fields)
    return [kind for kind, _ in svc.notes]


def test_the_primary_says_the_link_dropped_and_the_sync_source_says_resync() -> None:
    primary = _node()
    assert _feed(primary, ("Connected", "Primary"), ("NetworkFailure", "Primary"),
                 ("WFConnection", "Primary"), ("SyncSource", "Primary"),
                 ("PausedSyncS", "Primary"), ("SyncSource", "Primary"),
                 ("Connected", "Primary")) == [
        "replication-disconnected", "resync-started", "resync-done"]
    assert primary.notes[0][1]["reason"] == "NetworkFailure"
    assert primary.notes[1][1]["out_of_sync_bytes"] == 8192


def test_the_secondary_receiving_the_resync_says_nothing() -> None:
    secondary = _node()
    assert _feed(secondary, ("Connected", "Secondary"), ("NetworkFailure", "Secondary"),
                 ("SyncTarget", "Secondary"), ("Connected", "Secondary")) == []


def test_a_resync_cut_short_is_not_reported_done() -> None:
    primary = _node()
    assert _feed(primary, ("Connected", "Primary"), ("SyncSource", "Primary"),
                 ("BrokenPipe", "Primary")) == ["resync-started", "replication-disconnected"]


def test_the_state_found_at_start_is_no_change() -> None:
    """binomed restarted during a resync: no second 'started', but its end is said."""
    primary = _node()
    assert _feed(primary, ("SyncSource", "Primary"), ("Connected", "Primary")) == [
        "resync-done"]
