"""Pure parts of the volume daemon side: status views, etcd keys, the fencing predicate,
acknowledgement completions, packet framing in place, and the replicated backend's naming
and pairing rule."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from binome.storage.base import StorageConfig, StorageError
from binome.storage.replica.core import format as vformat
from binome.storage.replica.core import wire
from binome.storage.replica.core.states import (
    ConnState,
    DiskState,
    Fencing,
    Role,
    State,
    needs_fencing,
)
from binome.storage.replica.core.views import effective_disk_states
from binome.storage.replica.engine.completion import Completion
from binome.storage.replica.engine.peer.transport import PeerProtocol
from binome.storage.replica.node import records as keys
from binome.storage.replica.node.errors import VolumeFailure
from binome.storage.replica.node.volumes import VolumeService
from binome.storage.replicated import ReplicatedStorage, ReplicaVolumes

BASE = {"name": "vm-100-disk-0", "role": "Primary", "peer_role": "Secondary",
        "cstate": "Connected", "disk": "UpToDate", "peer_disk": "UpToDate", "suspended": False,
        "protocol": "C", "peer_node": "n2", "has_net": True, "out_of_sync_kib": 0,
        "paused": {"user": False, "peer": False},
        "counters": {"ns": 5, "nr": 0, "dw": 9, "dr": 1, "al": 2, "bm": 1, "lo": 0, "pe": 0,
                     "ua": 0, "ap": 0, "ep": 1},
        "peer": {"node": "n2"}}


def test_proc_view_of_a_connected_volume():
    text = vformat.proc_drbd([BASE])
    assert text.splitlines() == [
        "version: binome-replica 0.1 (api:1/proto:1)",
        " 0: cs:Connected ro:Primary/Secondary ds:UpToDate/UpToDate C r-----",
        "    ns:5 nr:0 dw:9 dr:1 al:2 bm:1 lo:0 pe:0 ua:0 ap:0 ep:1 wo:f oos:0"]


def test_proc_view_during_a_paused_suspended_resync():
    st = {**BASE, "cstate": "PausedSyncS", "peer_disk": "Inconsistent", "suspended": True,
          "out_of_sync_kib": 11264, "paused": {"user": True, "peer": True},
          "peer": {"node": "n2", "sync": {"total_kib": 16384, "left_kib": 11264,
                                          "done": 31.25, "speed_kib": 48512, "avg_kib": 40000,
                                          "eta_s": 72, "want_kib": 0}}}
    lines = vformat.proc_volume(st, 3).splitlines()
    assert lines[0] == " 3: cs:PausedSyncS ro:Primary/Secondary ds:UpToDate/Inconsistent C s-pun-"
    assert lines[2] == "\t[=====>..............] sync'ed: 31.2% (11264/16384)K"
    assert lines[3] == "\tfinish: 0:01:12 speed: 48,512 (40,000) K/sec"
    big = vformat.sync_lines({"total_kib": 8 << 20, "left_kib": 2 << 20, "done": 75.0,
                              "speed_kib": 1, "eta_s": None, "want_kib": 250,
                              "stalled": True})
    assert big[0].endswith("sync'ed: 75.0% (2048/8192)M") and "[==============>.....]" in big[0]
    assert big[1] == "\tfinish: --:--:-- speed: 1 (1) want: 250 K/sec (stalled)"


def test_drbdadm_view():
    assert vformat.drbdadm_volume(BASE) == (
        "vm-100-disk-0 role:Primary\n  disk:UpToDate\n  n2 role:Secondary\n"
        "    peer-disk:UpToDate")
    syncing = {**BASE, "cstate": "SyncSource", "peer_disk": "Inconsistent",
               "peer": {"node": "n2", "sync": {"done": 45.2}}}
    assert vformat.drbdadm_volume(syncing).endswith(
        "    replication:SyncSource peer-disk:Inconsistent done:45.20")
    lost = {**BASE, "cstate": "WFConnection", "peer_role": "Unknown", "peer_disk": "DUnknown",
            "suspended": True}
    assert vformat.drbdadm_volume(lost) == ("vm-100-disk-0 role:Primary suspended:fencing\n"
                                            "  disk:UpToDate\n  n2 connection:Connecting")
    assert "n2 connection:StandAlone" in vformat.drbdadm_volume({**lost, "cstate": "StandAlone"})
    both = vformat.volume_status([BASE])
    assert both.startswith("version: binome-replica")
    assert "oos:0\n\nvm-100-disk-0 role:Primary" in both      # both views, a blank line apart
    assert vformat.volume_status([]) == "no replicated volumes on this node"


def test_keys_round_trip():
    assert keys.config("vm-1-disk-1") == "/binome/volumes/vm-1-disk-1/config"
    assert keys.parse(keys.config("v")) == ("v", "config", None)
    assert keys.parse(keys.fencing("v")) == ("v", "fencing", None)
    assert keys.parse(keys.state("v", "n2")) == ("v", "state", "n2")
    assert keys.parse("/binome/volumes/v/other") is None
    assert keys.parse(keys.secret("v")) is None          # never under the listed prefix
    assert not keys.state("vm-1-disk-10", "n1").startswith(keys.prefix("vm-1-disk-1"))


def test_needs_fencing_only_for_a_quorum_fenced_primary_with_an_unknown_peer():
    primary = State(role=Role.Primary, conn=ConnState.WFConnection, disk=DiskState.UpToDate,
                    pdsk=DiskState.DUnknown)
    assert needs_fencing(primary, Fencing.QUORUM)
    assert not needs_fencing(primary, Fencing.DONT_CARE)
    assert not needs_fencing(primary.with_(pdsk=DiskState.Outdated), Fencing.QUORUM)
    assert not needs_fencing(primary.with_(role=Role.Secondary), Fencing.QUORUM)
    assert not needs_fencing(primary.with_(disk=DiskState.Outdated), Fencing.QUORUM)


async def test_completion_runs_callbacks_at_once_and_can_be_awaited():
    c = Completion()
    seen: list[str] = []
    c.add_done_callback(lambda _: seen.append("a"))
    assert not c.done()
    c.set_result(None)
    assert seen == ["a"] and c.done() and c.exception() is None
    c.add_done_callback(lambda _: seen.append("late"))       # already done: runs now
    assert seen == ["a", "late"]
    await c
    failing = Completion()
    asyncio.get_running_loop().call_soon(failing.set_exception, OSError(5, "EIO"))
    with pytest.raises(OSError):
        await failing


async def test_packets_are_framed_in_place_across_reads():
    proto = PeerProtocol()
    got: list[tuple[wire.P, bytes]] = []
    proto.start(lambda cmd, payload: got.append((cmd, bytes(payload))))
    stream = (wire.packet(wire.P.PING) + wire.json_packet(wire.P.STATE, {"x": 1})
              + wire.packet(wire.P.RS_DATA_REPLY, b"z" * (5 << 20)))   # larger than the buffer
    pos = 0
    for size in (3, 20, 4096, 1 << 20, len(stream)):
        while pos < len(stream):
            buf = proto.get_buffer(-1)
            n = min(size, len(buf), len(stream) - pos)
            buf[:n] = stream[pos:pos + n]
            proto.buffer_updated(n)
            pos += n
            break
    while pos < len(stream):
        buf = proto.get_buffer(-1)
        n = min(len(buf), len(stream) - pos)
        buf[:n] = stream[pos:pos + n]
        proto.buffer_updated(n)
        pos += n
    assert [c for c, _ in got] == [wire.P.PING, wire.P.STATE, wire.P.RS_DATA_REPLY]
    assert got[1][1] == b'{"x": 1}' and len(got[2][1]) == 5 << 20
    bad = PeerProtocol()
    bad.start(lambda cmd, payload: None)
    buf = bad.get_buffer(-1)
    buf[:10] = b"\x00" * 10
    bad.buffer_updated(10)
    with pytest.raises(wire.WireError, match="magic"):
        bad.closed.result()


class _FakeService:
    node = "n1"

    def __init__(self, records=None, others=("n2",)):
        self._records = records or {}
        self.records = self._records     # the volume service's record cache
        self._others = others

    def default_peer(self, candidates=()):
        return VolumeService.default_peer(
            SimpleNamespace(node="n1", cluster=SimpleNamespace(node_records={
                n: {"role": "node"} for n in ("n1", *self._others)})), candidates)

    def exists_locally(self, name):
        return name in self._records

    def nbd_uri(self, name):
        return f"nbd+unix:///{name}?socket=/s/{name}.sock"


def _backend(service, nodes=()):
    return ReplicatedStorage(StorageConfig("repl", "replicated", nodes=nodes), "n1",
                             ReplicaVolumes(service) if service else None)


def test_replicated_backend_names_sources_and_pairing():
    st = _backend(_FakeService({"vm-100-disk-0": {}}))
    assert st.volname("repl:vm-100-disk-0") == "vm-100-disk-0"
    with pytest.raises(StorageError, match="not on storage"):
        st.volname("local:vm-100-disk-0")
    with pytest.raises(StorageError, match="unable to parse"):
        st.volname("repl:../x")
    src = st.source("repl:vm-100-disk-0")
    assert src.format is None and src.source.startswith("nbd+unix:///vm-100-disk-0?socket=")
    with pytest.raises(StorageError, match="does not exist"):
        st.source("repl:vm-101-disk-0")
    assert st._peer() == "n2"
    st = _backend(_FakeService(others=("n2", "n3")))
    with pytest.raises(StorageError, match="2 other nodes"):
        st._peer()
    paired = _backend(_FakeService(others=("n2", "n3")), nodes=("n1", "n3"))
    assert paired._peer() == "n3"
    with pytest.raises(VolumeFailure):
        VolumeService.default_peer(SimpleNamespace(node="n1"), ("n2", "n3"))
    st = _backend(None)
    with pytest.raises(StorageError, match="not available"):
        st.source("repl:vm-100-disk-0")


def test_effective_disk_states_fold_in_the_fencing_marks():
    view = {"config": {"nodes": {"n1": {}, "n2": {}, "n3": {}}},
            "outdated": {"n2": {"by": "n1"}},
            "states": {"n1": {"disk": "UpToDate", "up": True},
                       "n2": {"disk": "UpToDate", "up": True}}}
    assert effective_disk_states(view) == {"n1": "UpToDate", "n2": "Outdated",
                                           "n3": "DUnknown"}
    view["states"]["n1"] = {"up": False, "cstate": "Unconfigured"}
    assert effective_disk_states(view)["n1"] == "DUnknown"
