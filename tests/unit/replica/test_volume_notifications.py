"""Which node notifies a volume's connection changes, and when (engine_events)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from binome.notify.events import make_event
from binome.storage.replica.node.engine_events import (
    notify_disk,
    notify_replication,
    notify_split_brain,
)


def _node(name: str = "n1") -> Any:
    notes: list[tuple[str, dict[str, Any]]] = []
    return SimpleNamespace(node=name, replication={}, disks={}, split_brains={}, notes=notes,
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
    assert primary.notes[0][1]["reason"] == "NetworkFailure: network failure"
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


IO_ERROR = {"time": 100.5, "op": "flush", "backing": "/dev/vg0/vm-100", "errno": "EIO",
            "error": "Input/output error"}


def _disk(node: Any, *states: tuple[str, dict[str, Any] | None], role: str = "Primary"
          ) -> list[str]:
    for disk, rec in states:
        notify_disk(node, "vm-100-disk-0", {"disk": disk, "backing": "/dev/vg0/vm-100",
                                            "io_error": rec, "peer_node": "n2",
                                            "role": role})
    return [k for k, _ in node.notes]


def test_a_failed_local_disk_is_said_once_by_its_node() -> None:
    node = _node()
    assert _disk(node, ("UpToDate", None), ("Failed", IO_ERROR), ("Diskless", IO_ERROR),
                 ("Diskless", IO_ERROR), ("Inconsistent", IO_ERROR),
                 ("UpToDate", IO_ERROR)) == ["disk-io-error"]
    ev = make_event("disk-io-error", "n1", **node.notes[0][1])
    assert ev.severity == "error" and ev.fields["device"] == "/dev/vg0/vm-100"
    assert ev.fields["type"] == "disk" and ev.fields["volume"] == "vm-100-disk-0"
    assert ev.title == "I/O error on /dev/vg0/vm-100 (vm-100-disk-0)"
    # what happened, why, what to do
    assert "failed: a flush (fdatasync) returned EIO (Input/output error)." in ev.message
    assert "through n2 (diskless), and n2 holds its only copy" in ev.message
    assert "'binome volume attach vm-100-disk-0' resyncs the whole volume from n2" \
        in ev.message
    assert "'binome volume secondary vm-100-disk-0'" in ev.message   # it is Primary
    # a second failure (a replaced disk failing again) is a new one
    assert _disk(node, ("Failed", {**IO_ERROR, "time": 200.0})) == ["disk-io-error"] * 2


def test_the_transient_failed_state_missed_still_says_it() -> None:
    """The event stream reconnected while the disk went Failed: the next status (already
    Diskless) carries the engine's record, and the failure is said."""
    node = _node()
    assert _disk(node, ("UpToDate", None), ("Diskless", IO_ERROR)) == ["disk-io-error"]


def test_a_secondary_is_not_told_to_demote() -> None:
    node = _node()
    _disk(node, ("UpToDate", None), ("Failed", IO_ERROR), role="Secondary")
    ev = make_event("disk-io-error", "n1", **node.notes[0][1])
    assert "volume secondary" not in ev.message and "volume attach" in ev.message


def test_a_clean_detach_or_the_record_found_at_start_is_no_io_error() -> None:
    node = _node()
    # daemon start: the record of a failure before it is a state, not news
    assert _disk(node, ("Diskless", IO_ERROR), ("UpToDate", IO_ERROR)) == []
    other = _node()
    assert _disk(other, ("UpToDate", None), ("Diskless", None), ("Attaching", None),
                 ("UpToDate", None)) == []


DETECTED = {"state": "detected", "policy": "after-sb-1pri disconnect", "time": 10.0,
            "primaries": ["n1"], "nodes": ["n1", "n2"], "reporter": "n1"}
RESOLVED = {**DETECTED, "state": "resolved", "policy": "discard-my-data",
            "resolved_time": 50.0, "survivor": "n1", "victim": "n2"}


def _sb(svc: Any, *states: tuple[str, dict[str, Any] | None]) -> list[str]:
    for cstate, rec in states:
        peer = "n2" if svc.node == "n1" else "n1"
        notify_split_brain(svc, "v1", {"cstate": cstate, "peer_node": peer,
                                       "split_brain": rec})
    for kind, fields in svc.notes:
        make_event(kind, svc.node, **fields)
    return [kind for kind, _ in svc.notes]


def test_a_split_brain_is_said_once_by_the_reporter_and_its_end_by_the_survivor() -> None:
    n1, n2 = _node("n1"), _node("n2")
    for svc in (n1, n2):
        _sb(svc, ("Connected", None), ("StandAlone", DETECTED),
            ("WFConnection", DETECTED), ("StandAlone", DETECTED),   # retried: same record
            ("WFBitMapS" if svc is n1 else "WFBitMapT", RESOLVED),
            ("SyncSource" if svc is n1 else "SyncTarget", RESOLVED),
            ("Connected", RESOLVED))
    assert [k for k, _ in n1.notes] == ["split-brain-detected", "split-brain-resolved"]
    assert n2.notes == []
    detected = make_event("split-brain-detected", "n1", **n1.notes[0][1])
    assert detected.fields["type"] == "split-brain" and detected.severity == "error"
    assert "after-sb-1pri disconnect (Primary at the reconnect: n1)" in detected.message
    assert "'binome volume connect v1 --discard-my-data 1'" in detected.message
    resolved = make_event("split-brain-resolved", "n1", **n1.notes[1][1])
    assert "resolved by hand ('connect --discard-my-data' on the victim)" in resolved.message
    assert "n1 keeps its data" in resolved.message and "changes made on n2" in resolved.message


def test_a_resolution_the_victim_refused_is_not_said() -> None:
    n1 = _node("n1")
    assert _sb(n1, ("Connected", None), ("WFBitMapS", RESOLVED),
               ("NetworkFailure", RESOLVED), ("WFConnection", RESOLVED)) == []
    # the victim's own record says it alone refused: it is the reporter
    n2 = _node("n2")
    alone = {**DETECTED, "reporter": "n2"}
    assert _sb(n2, ("Connected", None), ("StandAlone", alone)) == ["split-brain-detected"]


def test_a_split_brain_found_at_daemon_start_is_a_state_not_news() -> None:
    n1 = _node("n1")
    assert _sb(n1, ("StandAlone", DETECTED), ("StandAlone", DETECTED)) == []
    # ... but its resolution afterwards is news
    assert _sb(n1, ("SyncSource", RESOLVED)) == ["split-brain-resolved"]
