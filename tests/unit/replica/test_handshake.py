"""drbd_sync_handshake post-processing: overrides, policies, manual resolution, refusals."""

from binome.storage.replica.core.handshake import (
    HandshakeInput,
    Policies,
    RrConflict,
    SplitBrain,
    split_brain_record,
    sync_handshake,
)
from binome.storage.replica.core.splitbrain import AfterSb
from binome.storage.replica.core.states import ConnState, DiskState
from binome.storage.replica.core.uuids import UUID_JUST_CREATED, GenerationIds, Side, Sync

A, B, C, D, E, F = (0xA000, 0xB000, 0xC000, 0xD000, 0xE000, 0xF000)
UP = DiskState.UpToDate


def hs(me, peer, *, my_disk=UP, peer_disk=UP, me_pri=False, peer_pri=False, mine=0, theirs=0,
       **kw):
    return sync_handshake(HandshakeInput(
        me=Side(me, me_pri), peer=Side(peer, peer_pri), my_disk=my_disk, peer_disk=peer_disk,
        my_changes=mine, peer_changes=theirs, resolve_conflicts=kw.pop("tie", False), **kw))


def G(cur, bm=0, h0=0, h1=0):
    return GenerationIds(cur, bm, (h0, h1))


SPLIT = (G(B, A | 1, C), G(D, A, C))          # rule 90: auto-recoverable split brain
SPLIT_HISTORY = (G(B, C, A), G(D, E, F, A))   # rule 100: split brain, disconnect


def test_in_sync_becomes_connected():
    out = hs(G(A), G(A))
    assert out.conn == ConnState.Connected and out.result == Sync.NONE
    assert "uuid_compare()=0 by rule 40" in out.log


def test_bitmap_resync_directions():
    assert hs(G(B, A), G(A)).conn == ConnState.WFBitMapS
    out = hs(G(A), G(B, A))
    assert out.conn == ConnState.WFBitMapT and not out.full_sync


def test_full_sync_sets_the_whole_bitmap():
    out = hs(G(UUID_JUST_CREATED), G(A, B))
    assert out.conn == ConnState.WFBitMapT and out.full_sync
    assert "Writing the whole bitmap, full sync required after drbd_sync_handshake." in out.log


def test_unrelated_data_aborts():
    out = hs(G(A, B, C, D), G(E, F, 0x1000, 0x2000))
    assert out.conn is None and out.result == Sync.UNRELATED
    assert "Unrelated data, aborting!" in out.log


def test_inconsistent_side_becomes_target_whatever_the_uuids_say():
    out = hs(G(B, A), G(A), my_disk=DiskState.Inconsistent)
    assert out.conn == ConnState.WFBitMapT and not out.full_sync
    assert "Becoming sync target due to disk states." in out.log


def test_disk_override_keeps_full_sync_for_split_brain():
    out = hs(*SPLIT_HISTORY, peer_disk=DiskState.Inconsistent)
    assert out.conn == ConnState.WFBitMapS and out.full_sync


def test_split_brain_auto_recovered_by_0pri_policy():
    out = hs(*SPLIT, mine=3, theirs=10,
             policies=Policies(after_sb_0pri=AfterSb.DISCARD_LEAST_CHANGES))
    assert out.conn == ConnState.WFBitMapT and not out.full_sync
    assert out.handlers == ("initial-split-brain",)
    assert ("Split-Brain detected, 0 primaries, automatically solved. Sync from peer node"
            in out.log)


def test_split_brain_with_1_primary_uses_1pri_policy():
    out = hs(*SPLIT, me_pri=True, policies=Policies(after_sb_1pri=AfterSb.DISCARD_SECONDARY))
    assert out.conn == ConnState.WFBitMapS


def test_split_brain_with_2_primaries_uses_2pri_policy_and_demotes_the_loser():
    out = hs(*SPLIT, me_pri=True, peer_pri=True, mine=1, theirs=9,
             policies=Policies(after_sb_0pri=AfterSb.DISCARD_LEAST_CHANGES,
                               after_sb_2pri=AfterSb.CALL_HELPER))
    assert out.conn == ConnState.WFBitMapT and out.demote


def test_unresolved_split_brain_disconnects_and_runs_the_handler():
    out = hs(*SPLIT)
    assert out.conn is None and out.result == Sync.SPLIT_BRAIN
    assert out.handlers == ("initial-split-brain", "split-brain")
    assert "Split-Brain detected but unresolved, dropping connection!" in out.log


def test_split_brain_100_is_not_auto_recovered_without_always_asbp():
    out = hs(*SPLIT_HISTORY, policies=Policies(after_sb_0pri=AfterSb.DISCARD_LEAST_CHANGES))
    assert out.conn is None


def test_always_asbp_recovers_rule_100_with_a_full_sync():
    out = hs(*SPLIT_HISTORY, mine=5, theirs=2,
             policies=Policies(after_sb_0pri=AfterSb.DISCARD_LEAST_CHANGES, always_asbp=True))
    assert out.conn == ConnState.WFBitMapS and out.full_sync
    assert "Doing a full sync, since UUIDs where ambiguous." in out.log


def test_manual_resolution_discard_my_data_on_the_victim():
    victim = hs(*SPLIT, discard_my_data=True)
    assert victim.conn == ConnState.WFBitMapT
    assert "Split-Brain detected, manually solved. Sync from peer node" in victim.log
    survivor = hs(SPLIT[1], SPLIT[0], peer_discard_my_data=True)
    assert survivor.conn == ConnState.WFBitMapS


def test_discard_my_data_on_both_sides_stays_unresolved():
    out = hs(*SPLIT, discard_my_data=True, peer_discard_my_data=True)
    assert out.conn is None


def test_inconsistent_node_refuses_to_become_source():
    out = hs(G(B, A), G(A), my_disk=DiskState.Inconsistent, peer_disk=DiskState.Inconsistent)
    assert out.conn is None
    assert "I shall become SyncSource, but I am inconsistent!" in out.log


def test_rr_conflict_primary_refuses_to_become_target():
    out = hs(G(A), G(B, A), me_pri=True)
    assert out.conn is None and "I shall become SyncTarget, but I am primary!" in out.log
    out = hs(G(A), G(B, A), me_pri=True, policies=Policies(rr_conflict=RrConflict.CALL_PRI_LOST))
    assert out.conn is None and out.handlers == ("pri-lost",)
    out = hs(G(A), G(B, A), me_pri=True, policies=Policies(rr_conflict=RrConflict.VIOLENTLY))
    assert out.conn == ConnState.WFBitMapT


def test_dry_run_only_reports():
    out = hs(G(A), G(B, A), dry_run=True)
    assert out.conn is None and out.result == Sync.TARGET_BITMAP
    assert "dry-run connect: Would become SyncTarget, doing a bit-map based resync." in out.log


def test_stray_bits_with_equal_generations_are_resynced():
    """A fenced Primary's peer came back before fencing decided: the bits are resynced."""
    out = hs(G(A), G(A), mine=12)
    assert out.conn == ConnState.WFBitMapS and out.result == Sync.SOURCE_BITMAP
    assert "No resync, but 12 bits in bitmap!" in out.log
    # mirrored on the other side; the Primary wins over the bit count, then the tie flag
    assert hs(G(A), G(A), theirs=12).conn == ConnState.WFBitMapT
    assert hs(G(A), G(A), mine=12, peer_pri=True).conn == ConnState.WFBitMapT
    assert hs(G(A), G(A), mine=3, theirs=3, tie=True).conn == ConnState.WFBitMapS
    assert hs(G(A), G(A), mine=3, theirs=3, tie=False).conn == ConnState.WFBitMapT
    # never from an Inconsistent side
    out = hs(G(A), G(A), mine=12, my_disk=DiskState.Inconsistent,
             peer_disk=DiskState.Inconsistent)
    assert out.conn == ConnState.Connected


# -- the split-brain status (what the daemon's notifications follow) --------------------

def test_outcome_says_which_policy_resolved_the_split_brain_and_who_survives():
    out = hs(*SPLIT, mine=3, theirs=10,
             policies=Policies(after_sb_0pri=AfterSb.DISCARD_LEAST_CHANGES))
    assert out.split_brain == SplitBrain(True, "after-sb-0pri discard-least-changes", 0,
                                         "peer")
    out = hs(*SPLIT, me_pri=True, policies=Policies(after_sb_1pri=AfterSb.DISCARD_SECONDARY))
    assert out.split_brain is not None and out.split_brain.survivor == "self"
    assert out.split_brain.policy == "after-sb-1pri discard-secondary"
    victim = hs(*SPLIT, discard_my_data=True)
    assert victim.split_brain == SplitBrain(True, "discard-my-data", 0, "peer")
    assert hs(G(B, A), G(A)).split_brain is None


def test_outcome_of_an_unresolved_split_brain_says_why():
    assert hs(*SPLIT).split_brain == SplitBrain(False, "after-sb-0pri disconnect", 0)
    out = hs(*SPLIT_HISTORY, policies=Policies(after_sb_0pri=AfterSb.DISCARD_LEAST_CHANGES))
    assert out.split_brain is not None and not out.split_brain.resolved
    assert out.split_brain.policy.startswith("none (the histories diverged")
    # the policy made this Primary the victim but rr-conflict refuses: unresolved here only
    out = hs(*SPLIT, me_pri=True, mine=1, theirs=3,
             policies=Policies(after_sb_0pri=AfterSb.DISCARD_LEAST_CHANGES,
                               after_sb_1pri=AfterSb.VIOLENTLY))
    assert out.conn is None and out.split_brain is not None
    assert not out.split_brain.resolved and out.split_brain.alone
    # a losing Primary that cannot demote (clients open): the handler, unresolved here only
    out = hs(*SPLIT, me_pri=True, peer_pri=True, mine=1, theirs=9, can_demote=False,
             policies=Policies(after_sb_0pri=AfterSb.DISCARD_LEAST_CHANGES,
                               after_sb_2pri=AfterSb.CALL_HELPER))
    assert out.conn is None and out.split_brain is not None and out.split_brain.alone


def _record(previous, out, me="n1", peer="n2", now=100.0, **kw):
    return split_brain_record(previous, out, me=me, peer=peer, me_primary=kw.get("mp", False),
                              peer_primary=kw.get("pp", False), now=now)


def test_record_detected_once_then_resolved_by_the_next_handshake():
    unresolved = hs(*SPLIT)
    first = _record(None, unresolved, mp=True)
    assert first == {"state": "detected", "policy": "after-sb-0pri disconnect", "time": 100.0,
                     "primaries": ["n1"], "nodes": ["n1", "n2"], "reporter": "n1"}
    # the other side computes the same reporter (the first name)
    assert _record(None, hs(SPLIT[1], SPLIT[0]), me="n2", peer="n1")["reporter"] == "n1"
    # the retried connection finds it again: the same split brain, the same record
    assert _record(first, unresolved, now=130.0) is first
    # the admin discards n2's data: resolved, survivor n1, the detection time kept
    survivor = hs(SPLIT[1], SPLIT[0], peer_discard_my_data=True)
    done = _record(first, survivor, now=160.0)
    assert done is not None and done["state"] == "resolved"
    assert (done["policy"], done["survivor"], done["victim"]) == ("discard-my-data", "n1", "n2")
    assert (done["time"], done["resolved_time"]) == (100.0, 160.0)
    # later ordinary handshakes keep the last record
    assert _record(done, hs(G(A), G(A)), now=200.0) is done


def test_record_of_a_refusing_side_names_itself_reporter():
    out = hs(*SPLIT, me_pri=True, peer_pri=True, mine=1, theirs=9, can_demote=False,
             policies=Policies(after_sb_0pri=AfterSb.DISCARD_LEAST_CHANGES,
                               after_sb_2pri=AfterSb.CALL_HELPER))
    rec = _record(None, out, me="n2", peer="n1", mp=True, pp=True)
    assert rec is not None and rec["reporter"] == "n2" and rec["primaries"] == ["n2", "n1"]


def test_record_resolved_by_hand_another_way():
    detected = _record(None, hs(*SPLIT))
    # n1 invalidated (Inconsistent): the next handshake makes it the target, no split brain
    out = hs(*SPLIT_HISTORY, my_disk=DiskState.Inconsistent)
    rec = _record(detected, out, now=300.0)
    assert rec is not None and rec["state"] == "resolved" and rec["policy"] == "manual"
    assert (rec["survivor"], rec["victim"]) == ("n2", "n1")
