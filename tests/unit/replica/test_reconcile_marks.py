"""Reconciliation and the fence-peer loop act on the fencing marks and the engine as they
are now, not as a snapshot or an event read seconds before showed them.

`reconcile()` reads every record and fencing mark at the start of its round (one
serializable range), then takes each volume's lock in turn. The lock may be held
for seconds meanwhile (a fence-peer or a promotion right after a partition heals),
and the peer may, in that time, resync this copy, clear its Outdated mark, and die.
Issue 16 (bench/failover.py, scenario 2 after scenario 1): the round then told the
engine "outdated-by-peer" on the stale mark, turning the only surviving copy, in sync
and cleared by the peer itself, Outdated; the HA manager then refused, rightly by
what it read, to recover the guest onto it, for as long as the dead peer stayed dead.

The engine and the record store are fakes that keep the states the calls set: what
is checked is which calls reconciliation makes. The real path is bench/failover.py
(scenarios 1,2) on the HA lab.
"""

from __future__ import annotations

import asyncio
from typing import Any

from binome.storage.replica.node import fencing
from binome.storage.replica.node.reconcile import reconcile_volume
from binome.storage.replicated import ReplicaVolumes

NAME = "vm-100-disk-0"
REC = {"name": NAME, "nodes": {"n1": {"address": "198.20.2.1"},
                                "n2": {"address": "198.20.2.2"}},
       "fencing": "quorum", "protocol": "C", "primary": "n2", "vmid": 100}
MARK = {"by": "n2", "time": 1, "reason": "promotion of n2"}


class FakeRecords:
    def __init__(self, marks: dict[str, Any]) -> None:
        self.marks = marks
        self.reads = 0

    async def fencing_marks(self, name: str) -> tuple[dict[str, Any], int | None]:
        self.reads += 1
        return dict(self.marks), 7

    async def swap_fencing_marks(self, name: str, marks: dict[str, Any],
                                 revision: int | None) -> bool:
        self.marks = dict(marks)
        return True


class FakeVolumes:
    """What `reconcile_volume` uses of a `VolumeService`: n1, its engine, its records."""

    def __init__(self, status: dict[str, Any], marks: dict[str, Any]) -> None:
        self.node = "n1"
        self.status = dict(status)
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.record_store = FakeRecords(marks)
        self._handlers_applied: dict[str, Any] = {NAME: {}}

    def node_handlers(self) -> dict[str, Any]:
        return {}

    def peer_of(self, rec: dict[str, Any]) -> str:
        return next(n for n in rec["nodes"] if n != self.node)

    async def call(self, op: str, **kw: Any) -> dict[str, Any]:
        self.calls.append((op, kw))
        if op == "outdated-by-peer":
            self.status["disk"] = "Outdated"
        return dict(self.status)

    def ops(self) -> list[str]:
        return [op for op, _ in self.calls if op != "status"]


# the peer died right after the resync: this copy is UpToDate, no longer connected
DISCONNECTED_IN_SYNC = {"name": NAME, "cstate": "WFConnection", "role": "Secondary",
                        "disk": "UpToDate", "peer_disk": "DUnknown", "settings": {}}


async def test_a_mark_cleared_since_the_round_read_it_is_not_applied() -> None:
    svc = FakeVolumes(DISCONNECTED_IN_SYNC, marks={})   # n2 cleared it after the resync
    await reconcile_volume(svc, NAME, REC, {"n1": MARK}, {"name": NAME, "up": True})
    assert "outdated-by-peer" not in svc.ops(), svc.calls
    assert svc.status["disk"] == "UpToDate"
    assert svc.record_store.reads >= 1   # confirmed with a read of its own


async def test_a_mark_still_there_makes_the_engine_agree() -> None:
    svc = FakeVolumes(DISCONNECTED_IN_SYNC, marks={"n1": MARK})
    await reconcile_volume(svc, NAME, REC, {"n1": MARK}, {"name": NAME, "up": True})
    assert ("outdated-by-peer", {"name": NAME, "by": "n2"}) in svc.calls
    assert svc.status["disk"] == "Outdated"


async def test_a_mark_written_since_the_round_read_none_waits_for_the_next_round() -> None:
    """No mark in the snapshot: nothing to confirm, nothing done on it now (the next
    round reads the new mark; a promotion reads the marks itself, linearizably)."""
    svc = FakeVolumes(DISCONNECTED_IN_SYNC, marks={"n1": MARK})
    await reconcile_volume(svc, NAME, REC, {}, {"name": NAME, "up": True})
    assert "outdated-by-peer" not in svc.ops()
    assert "primary" not in svc.ops()   # n2 is the desired Primary, not n1


# ---------------------------------------------------------------- the fence-peer loop

class FencingVolumes:
    """What `fence_loop` uses: the engine's last events (`statuses`), the engine now
    (`call("status")`) and the volume's lock."""

    def __init__(self) -> None:
        self.node = "n1"
        self.engine = {"name": NAME, "fence": "needed"}
        self.statuses = {NAME: dict(self.engine)}
        self.fenced = 0

    def lock(self, name: str) -> asyncio.Lock:
        return asyncio.Lock()

    async def call(self, op: str, **kw: Any) -> dict[str, Any]:
        assert op == "status"
        return dict(self.engine)

    def _warn(self, key: str, msg: str) -> None:
        raise AssertionError(msg)


async def test_a_peer_lost_again_during_a_slow_fence_peer_is_fenced_too(monkeypatch) -> None:
    """Right after a partition heals, a fence-peer can take seconds (its cluster-log write
    flushes the backlog). If the peer is lost again meanwhile, the engine asks again;
    `start_fencing` sees this loop running and starts none: the loop must look again
    (issue 16's trace: the second loss would have left the copy suspended)."""
    svc = FencingVolumes()

    async def fence_peer(svc_: Any, name: str, *, reason: str) -> str:
        svc.fenced += 1
        if svc.fenced == 1:
            # resolved by this call, then lost again before it returned
            svc.engine["fence"] = "needed"
            svc.statuses[NAME] = dict(svc.engine)
            return "outdated-self"
        svc.engine["fence"] = None
        svc.statuses[NAME] = dict(svc.engine)
        return "outdated-peer"

    monkeypatch.setattr(fencing, "fence_peer", fence_peer)
    monkeypatch.setattr(fencing, "FENCE_RETRY", 0.01)
    await asyncio.wait_for(fencing.fence_loop(svc, NAME), 5)
    assert svc.fenced == 2


async def test_no_second_fence_peer_when_the_engine_no_longer_asks(monkeypatch) -> None:
    """The engine's event saying it resumed may come after the call returns: the loop
    asks the engine itself before fencing again."""
    svc = FencingVolumes()

    async def fence_peer(svc_: Any, name: str, *, reason: str) -> str:
        svc.fenced += 1
        svc.engine["fence"] = None   # resumed; the event (statuses) not seen yet
        return "outdated-peer"

    monkeypatch.setattr(fencing, "fence_peer", fence_peer)
    monkeypatch.setattr(fencing, "FENCE_RETRY", 0.01)
    await asyncio.wait_for(fencing.fence_loop(svc, NAME), 5)
    assert svc.fenced == 1


class SlowStore:
    """An etcd whose puts wait (a backlog being flushed just after a partition heals)."""

    def __init__(self) -> None:
        self.go = asyncio.Event()
        self.puts: list[str] = []

    async def put(self, key: str, value: Any) -> None:
        await self.go.wait()
        self.puts.append(key)


async def test_the_engine_resumes_without_waiting_for_the_cluster_log(tmp_path) -> None:
    """fence_peer: once the mark is swapped in, the engine is told at once; the cluster
    log line is queued (on disk) and sent behind. It used to be awaited first, with the
    volume's lock held: 2-4 s of suspended writes after a partition healed."""
    from binome.tasks.clusterlog import ClusterLog

    clog = ClusterLog("n1", tmp_path / "pending.jsonl")
    clog.store = SlowStore()    # type: ignore[assignment]
    svc = FakeVolumes({"name": NAME}, marks={})
    svc.clusterlog = clog       # type: ignore[attr-defined]
    svc._store = lambda: None   # type: ignore[attr-defined]
    svc.cluster = type("Cluster", (), {})()   # type: ignore[attr-defined]

    async def quorate_now() -> bool:
        return True

    async def record(name: str, serializable: bool = True) -> dict[str, Any]:
        return REC

    svc.cluster.quorate_now = quorate_now     # type: ignore[attr-defined]
    svc.record = record                       # type: ignore[attr-defined]
    outcome = await asyncio.wait_for(fencing.fence_peer(svc, NAME, reason="peer lost"), 5)
    assert outcome == "outdated-peer"
    assert "peer-outdated" in svc.ops()
    assert svc.record_store.marks["n2"]["by"] == "n1"
    assert clog.store.puts == []                               # still waiting ...
    assert "recorded Outdated by n1" in (tmp_path / "pending.jsonl").read_text()
    clog.store.go.set()                                        # ... and sent after
    await asyncio.wait_for(asyncio.gather(*clog._background), 5)
    assert len(clog.store.puts) == 1 and not clog.pending


# ---------------------------------------------------------------- the HA agent's release

class Entry:
    def __init__(self, value: Any) -> None:
        self.value = value


class MarkStore:
    def __init__(self, marks: dict[str, Any]) -> None:
        self.marks = marks

    async def get(self, key: str, timeout: float | None = None) -> Entry:
        assert key == f"/binome/volumes/{NAME}/fencing"
        return Entry({"outdated": dict(self.marks)})


class ReleasingVolumes:
    """What `ReplicaVolumes.release_fenced` uses of a `VolumeService`: n1's engine, its
    lock, the cluster store (the fencing key)."""

    def __init__(self, engine: dict[str, Any], marks: dict[str, Any]) -> None:
        self.node = "n1"
        self.engine = dict(engine)
        self.calls: list[str] = []
        self.records = {NAME: REC}
        self.cluster = type("Cluster", (), {})()
        self.cluster.store = MarkStore(marks)
        self._lock = asyncio.Lock()

    def lock(self, name: str) -> asyncio.Lock:
        return self._lock

    def peer_of(self, rec: dict[str, Any]) -> str:
        return "n2"

    async def call(self, op: str, **kw: Any) -> dict[str, Any]:
        self.calls.append(op)
        if op == "outdated-by-peer":
            self.engine["disk"] = "Outdated"
        return dict(self.engine)

    async def demote(self, name: str, *, locked: bool = False) -> None:
        # the real one takes the volume's lock unless told its caller holds it: an
        # asyncio.Lock taken twice hangs, as the no-mark release did before
        if not locked:
            await self._lock.acquire()
        elif not self._lock.locked():
            raise AssertionError("demote(locked=True) without the volume's lock")
        try:
            self.calls.append("secondary")
            self.engine["role"] = "Secondary"
        finally:
            if not locked:
                self._lock.release()


# n1's copy, Primary and idle since its guest was killed; resynced from n2, in sync
PRIMARY_IN_SYNC = {"name": NAME, "role": "Primary", "cstate": "Connected", "disk": "UpToDate",
                   "peer_disk": "UpToDate", "peer_role": "Primary", "open_count": 0}


async def test_release_does_not_outdate_a_copy_whose_mark_was_cleared_while_it_waited() -> None:
    """Run 8 of the bench (after the reconcile fix): the release read n1's mark, waited
    for the volume's lock (a slow fence-peer held it), and meanwhile n2 cleared the mark
    after the resync and died: the copy, disconnected and UpToDate, must stay UpToDate
    (its demotion, a role change, still happens: its guest was recovered on n2)."""
    svc = ReleasingVolumes(PRIMARY_IN_SYNC, marks={"n1": MARK})
    rv = ReplicaVolumes(svc)    # type: ignore[arg-type]
    await svc._lock.acquire()   # the fence-peer holds it
    release = asyncio.create_task(rv.release_fenced(NAME, still_idle=lambda: True,
                                                    timeout=1.0, owner="n2"))
    await asyncio.sleep(0.05)
    assert not release.done()
    svc.cluster.store.marks = {}                     # n2: "in sync again: mark cleared"
    svc.engine.update(cstate="WFConnection", peer_disk="DUnknown", peer_role="Unknown")
    svc._lock.release()                              # n2 died; the fence-peer returns
    assert await asyncio.wait_for(release, 5) == "n2"   # released for n2 ...
    assert "outdated-by-peer" not in svc.calls, svc.calls
    assert svc.engine["disk"] == "UpToDate"              # ... never outdated
    assert svc.engine["role"] == "Secondary"


async def test_release_of_a_copy_still_marked_outdates_demotes_and_reconnects() -> None:
    svc = ReleasingVolumes({**PRIMARY_IN_SYNC, "cstate": "WFConnection",
                            "peer_disk": "DUnknown", "peer_role": "Unknown"},
                           marks={"n1": MARK})
    rv = ReplicaVolumes(svc)    # type: ignore[arg-type]
    assert await rv.release_fenced(NAME, still_idle=lambda: True, timeout=1.0,
                                   owner="n2") == "n2"
    assert [c for c in svc.calls if c != "status"] == ["outdated-by-peer", "secondary",
                                                       "connect"]


async def test_an_idle_primary_next_to_the_primary_running_its_guest_is_demoted() -> None:
    """No mark, the config n2's, both copies Primary and connected (n1 was the source
    of a migration whose demotion never came): n1's idle copy goes Secondary, a role
    change only, so that a later cut of the replication link has one Primary to fence
    for. Before the fix it stayed Primary."""
    svc = ReleasingVolumes(PRIMARY_IN_SYNC, marks={})
    rv = ReplicaVolumes(svc)    # type: ignore[arg-type]
    assert await asyncio.wait_for(rv.release_fenced(NAME, still_idle=lambda: True,
                                                    timeout=1.0, owner="n2"), 5) == "n2"
    assert [c for c in svc.calls if c != "status"] == ["secondary"]
    assert svc.engine["disk"] == "UpToDate"


async def test_an_incoming_migrations_copy_is_never_demoted() -> None:
    """The same engine state is an incoming live migration's copy, promoted before its
    QEMU opens it (the config still the source's): the guest operation holding the VM
    here makes it not idle, and a storage operation's hold keeps it too."""
    svc = ReleasingVolumes(PRIMARY_IN_SYNC, marks={})
    rv = ReplicaVolumes(svc)    # type: ignore[arg-type]
    assert await rv.release_fenced(NAME, still_idle=lambda: False, timeout=1.0,
                                   owner="n2") is None
    async with rv.held(NAME):
        assert await rv.release_fenced(NAME, still_idle=lambda: True, timeout=1.0,
                                       owner="n2") is None
    assert "secondary" not in svc.calls and svc.engine["role"] == "Primary"
    # the config here (this node runs or will run it): never demoted without a mark
    assert await rv.release_fenced(NAME, still_idle=lambda: True, timeout=1.0,
                                   owner="n1") is None
    assert svc.engine["role"] == "Primary"


async def test_the_release_without_a_mark_demotes_under_the_lock_it_checked_with() -> None:
    """The watchdog-stall case (peer Secondary, config n2's): the demotion follows the
    check under the volume's lock. It used to take that lock a second time and hang,
    holding the volume's lock for ever."""
    svc = ReleasingVolumes({**PRIMARY_IN_SYNC, "peer_role": "Secondary"}, marks={})
    rv = ReplicaVolumes(svc)    # type: ignore[arg-type]
    assert await asyncio.wait_for(rv.release_fenced(NAME, still_idle=lambda: True,
                                                    timeout=1.0, owner="n2"), 5) == "n2"
    assert svc.engine["role"] == "Secondary" and not svc._lock.locked()
