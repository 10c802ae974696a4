"""The events2 view of engine events (replica.events): objects, diffs, helpers, text lines."""

from __future__ import annotations

from binome.storage.replica.core.events import EventTranslator, format_line


def status(**kw):
    st = {"name": "r0", "role": "Primary", "peer_role": "Secondary", "cstate": "Connected",
          "disk": "UpToDate", "peer_disk": "UpToDate", "suspended": False, "has_net": True,
          "peer_node": "n2", "open_count": 1, "paused": {"user": False, "peer": False},
          "peer": {"node": "n2"}}
    st.update(kw)
    return st


def lines(events):
    return [format_line(e) for e in events]


def test_exists_snapshot_then_only_what_changed():
    tr = EventTranslator()
    assert lines(tr.snapshot([status()])) == [
        "exists resource name:r0 role:Primary suspended:no",
        "exists connection name:r0 conn-name:n2 connection:Connected role:Secondary",
        "exists device name:r0 volume:0 disk:UpToDate client:no open:yes",
        "exists peer-device name:r0 conn-name:n2 volume:0 replication:Established "
        "peer-disk:UpToDate resync-suspended:no",
        "exists -",
    ]
    assert tr.feed({"event": "change", "name": "r0", "status": status()}) == []
    sync = status(cstate="SyncSource", peer_disk="Inconsistent",
                  peer={"node": "n2", "sync": {"done": 12.5}})
    assert lines(tr.feed({"event": "change", "name": "r0", "status": sync})) == [
        "change peer-device name:r0 conn-name:n2 volume:0 replication:SyncSource "
        "peer-disk:Inconsistent resync-suspended:no done:12.50"]
    lost = status(cstate="WFConnection", peer_role="Unknown", peer_disk="DUnknown",
                  suspended=True)
    assert lines(tr.feed({"event": "change", "name": "r0", "status": lost})) == [
        "change resource name:r0 role:Primary suspended:fencing",
        "change connection name:r0 conn-name:n2 connection:Connecting role:Unknown",
        "change peer-device name:r0 conn-name:n2 volume:0 replication:Off "
        "peer-disk:DUnknown resync-suspended:no"]


def test_create_destroy_helpers_and_filter():
    tr = EventTranslator("r0")
    assert tr.feed({"event": "change", "name": "other", "status": status(name="other")}) == []
    created = lines(tr.feed({"event": "change", "name": "r0", "status": status()}))
    assert [ln.split()[:2] for ln in created] == [
        ["create", "resource"], ["create", "connection"], ["create", "device"],
        ["create", "peer-device"]]
    assert lines(tr.feed({"event": "call", "name": "r0", "helper": "split-brain"})) == [
        "call helper name:r0 volume:0 helper:split-brain"]
    assert lines(tr.feed({"event": "response", "name": "r0", "helper": "split-brain",
                          "status": 3})) == [
        "response helper name:r0 volume:0 helper:split-brain status:3"]
    assert lines(tr.feed({"event": "down", "name": "r0"})) == [
        "destroy peer-device name:r0 conn-name:n2 volume:0",
        "destroy device name:r0 volume:0",
        "destroy connection name:r0 conn-name:n2",
        "destroy resource name:r0"]
    ev = tr.feed({"event": "call", "name": "r0", "helper": "x"})[0]
    assert format_line(ev, timestamps=True).startswith(ev["time"] + " call helper")


def test_standalone_volume_has_no_connection_objects():
    tr = EventTranslator()
    out = lines(tr.snapshot([status(has_net=False), {"name": "gone",
                                                     "cstate": "Unconfigured"}]))
    assert out == ["exists resource name:r0 role:Primary suspended:no",
                   "exists device name:r0 volume:0 disk:UpToDate client:no open:yes",
                   "exists -"]
