"""The handshake when a self-fenced node's copy meets the survivor's again (issue 5, HA).

After an HA recovery the survivor promoted its copy with the old node's copy
recorded Outdated (quorum), which started a new generation: survivor
`current = B, bitmap = A` where `A` is the generation both shared. The old
node's copy kept `current = A` (its new generation is deferred while it is
suspended, and dropped when it learns it was outdated), possibly with bits for
writes that were in flight at the split. Both sides reconnect by themselves
now (`ha.agent.executor`: the survivor after its promotion, the old node once
it demoted its copy), so the handshake alone must keep the stale copy from
ever winning, and a real split brain must still stop in StandAlone.
"""

from binome.storage.replica.core.handshake import HandshakeInput, Policies, sync_handshake
from binome.storage.replica.core.states import ConnState, DiskState
from binome.storage.replica.core.uuids import GenerationIds, Side

A, B, D = 0xA000, 0xB000, 0xD000
UP, OUT = DiskState.UpToDate, DiskState.Outdated

SURVIVOR = GenerationIds(B | 1, A | 1, (0, 0))   # promoted while the peer was fenced
OLD = GenerationIds(A, 0, (0, 0))                 # the fenced node's copy, demoted


def hs(me, peer, *, me_pri, peer_pri, my_disk, peer_disk, mine=0, theirs=0):
    return sync_handshake(HandshakeInput(
        me=Side(me, me_pri), peer=Side(peer, peer_pri), my_disk=my_disk, peer_disk=peer_disk,
        my_changes=mine, peer_changes=theirs, resolve_conflicts=False, policies=Policies()))


def test_the_demoted_old_copy_becomes_sync_target_of_the_survivor():
    # in-flight writes at the split left bits on the old node: they are overwritten too
    # (the bitmaps are merged before the resync)
    for bits in (0, 7):
        old = hs(OLD, SURVIVOR, me_pri=False, peer_pri=True, my_disk=OUT, peer_disk=UP,
                 mine=bits, theirs=40)
        surv = hs(SURVIVOR, OLD, me_pri=True, peer_pri=False, my_disk=UP, peer_disk=OUT,
                  mine=40, theirs=bits)
        assert old.conn == ConnState.WFBitMapT and not old.full_sync, old.log
        assert surv.conn == ConnState.WFBitMapS and not surv.full_sync, surv.log
        assert "uuid_compare()=-1 by rule 50" in old.log


def test_the_old_copy_still_primary_refuses_and_gives_nothing():
    """Before its daemon demoted it (frozen, or not yet quorate): it refuses to become
    target, and the survivor never takes anything from it."""
    old = hs(OLD, SURVIVOR, me_pri=True, peer_pri=True, my_disk=UP, peer_disk=UP, mine=3)
    assert old.conn is None
    assert "I shall become SyncTarget, but I am primary!" in old.log
    surv = hs(SURVIVOR, OLD, me_pri=True, peer_pri=True, my_disk=UP, peer_disk=UP, theirs=3)
    assert surv.conn == ConnState.WFBitMapS   # source, never target


def test_both_wrote_is_a_split_brain_left_standalone_with_the_reason():
    """The old node wrote on its own (standalone mode): its own new generation D from A.
    Default policies (disconnect): no automatic winner, nothing is overwritten."""
    wrote = GenerationIds(D, A, (0, 0))
    for me_pri in (False, True):
        old = hs(wrote, SURVIVOR, me_pri=me_pri, peer_pri=True, my_disk=OUT, peer_disk=UP,
                 mine=5, theirs=40)
        surv = hs(SURVIVOR, wrote, me_pri=True, peer_pri=me_pri, my_disk=UP, peer_disk=OUT,
                  mine=40, theirs=5)
        for out in (old, surv):
            assert out.conn is None, out.log
            assert "Split-Brain detected but unresolved, dropping connection!" in out.log
            assert "split-brain" in out.handlers
