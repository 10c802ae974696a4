"""uuid_compare: one test per rule of DRBD's `drbd_uuid_compare`, plus GI transitions."""

import pytest

from binome.storage.replica.core.uuids import (
    UUID_JUST_CREATED,
    UUID_NEW_BM_OFFSET,
    GenerationIds,
    Side,
    Sync,
    uuid_compare,
)

A, B, C, D, E, F = (0xA000, 0xB000, 0xC000, 0xD000, 0xE000, 0xF000)


def G(cur, bm=0, h0=0, h1=0):
    return GenerationIds(cur, bm, (h0, h1))


def cmp(me, peer, *, me_pri=False, peer_pri=False, me_crashed=False, peer_crashed=False,
        tie=False):
    return uuid_compare(Side(me, me_pri, me_crashed), Side(peer, peer_pri, peer_crashed),
                        resolve_conflicts=tie)


def test_rule_10_both_just_created_no_sync():
    r = cmp(G(UUID_JUST_CREATED), G(UUID_JUST_CREATED))
    assert (r.result, r.rule) == (Sync.NONE, 10)


@pytest.mark.parametrize("mine", [UUID_JUST_CREATED, 0])
def test_rule_20_only_self_just_created_full_sync_target(mine):
    r = cmp(G(mine), G(A, B))
    assert (r.result, r.rule) == (Sync.TARGET_FULL, 20)


@pytest.mark.parametrize("theirs", [UUID_JUST_CREATED, 0])
def test_rule_30_only_peer_just_created_full_sync_source(theirs):
    r = cmp(G(A, B), G(theirs))
    assert (r.result, r.rule) == (Sync.SOURCE_FULL, 30)


def test_rule_34_was_source_missed_resync_finished_corrects_myself():
    # I still hold bitmap B; the peer already rotated B into its history.
    me, peer = G(A, B, C, D), G(A, 0, B, C)
    r = cmp(me, peer)
    assert (r.result, r.rule) == (Sync.SOURCE_BITMAP, 34)
    assert r.self_gi == G(A, 0, B, C)
    assert r.peer_gi == peer


def test_rule_36_was_source_peer_failed_to_write_sync_uuid():
    r = cmp(G(A, B, C), G(A, 0, D, E))
    assert (r.result, r.rule) == (Sync.SOURCE_BITMAP, 36)
    assert r.self_gi == G(A, B, C)


def test_rule_35_was_target_peer_missed_resync_finished_corrects_peer():
    me, peer = G(A, 0, B, C), G(A, B, C, D)
    r = cmp(me, peer)
    assert (r.result, r.rule) == (Sync.TARGET_BITMAP, 35)
    assert r.peer_gi == G(A, 0, B, C)
    assert r.self_gi == me


def test_rule_37_was_target_failed_to_write_sync_uuid():
    r = cmp(G(A, 0, D, E), G(A, B, C))
    assert (r.result, r.rule) == (Sync.TARGET_BITMAP, 37)


def test_rule_40_equal_no_crash_no_sync():
    r = cmp(G(A, 0, B), G(A, 0, B))
    assert (r.result, r.rule) == (Sync.NONE, 40)


def test_rule_40_role_bit_is_masked_out():
    r = cmp(G(A | 1, 0, B), G(A, 0, B | 1))
    assert (r.result, r.rule) == (Sync.NONE, 40)


@pytest.mark.parametrize("me_crashed, peer_crashed, tie, expected", [
    (True, False, False, Sync.SOURCE_BITMAP),     # I crashed as Primary: my hot extents win
    (False, True, False, Sync.TARGET_BITMAP),
    (True, True, False, Sync.SOURCE_BITMAP),      # both: the fixed tie flag decides
    (True, True, True, Sync.TARGET_BITMAP),
])
def test_rule_40_crashed_primary_both_secondary(me_crashed, peer_crashed, tie, expected):
    r = cmp(G(A), G(A), me_crashed=me_crashed, peer_crashed=peer_crashed, tie=tie)
    assert (r.result, r.rule) == (expected, 40)


def test_rule_41_crashed_primary_with_a_current_primary_is_the_source():
    r = cmp(G(A), G(A), me_pri=True, peer_crashed=True)
    assert (r.result, r.rule) == (Sync.SOURCE_BITMAP, 41)
    r = cmp(G(A), G(A), peer_pri=True, me_crashed=True)
    assert (r.result, r.rule) == (Sync.TARGET_BITMAP, 41)


def test_rule_41_crashed_primary_both_primary_is_split_brain():
    r = cmp(G(A), G(A), me_pri=True, peer_pri=True, me_crashed=True)
    assert (r.result, r.rule) == (Sync.SPLIT_BRAIN, 41)


def test_rule_50_self_current_is_peer_bitmap():
    r = cmp(G(A, 0, C), G(B, A, C))
    assert (r.result, r.rule) == (Sync.TARGET_BITMAP, 50)


def test_rule_51_lost_sync_uuid_corrects_peer():
    # The peer started a resync as source (bitmap = A + 2^48, A pushed to history),
    # but P_SYNC_UUID never reached me: I still have current A.
    peer = G(B, A + UUID_NEW_BM_OFFSET, A, D)
    r = cmp(G(A, 0, D), peer)
    assert (r.result, r.rule) == (Sync.TARGET_BITMAP, 51)
    assert r.peer_gi == G(B, A, D, D)


def test_rule_51_without_the_offset_falls_through_to_rule_60():
    r = cmp(G(A, 0, D), G(B, E, A, D))
    assert (r.result, r.rule) == (Sync.TARGET_FULL, 60)


def test_rule_60_self_current_in_peer_history():
    r = cmp(G(A), G(B, C, D, A))
    assert (r.result, r.rule) == (Sync.TARGET_FULL, 60)


def test_rule_70_self_bitmap_is_peer_current():
    r = cmp(G(B, A, C), G(A, 0, C))
    assert (r.result, r.rule) == (Sync.SOURCE_BITMAP, 70)


def test_rule_71_lost_sync_uuid_corrects_myself():
    me = G(B, A + UUID_NEW_BM_OFFSET, A, D)
    r = cmp(me, G(A, 0, D))
    assert (r.result, r.rule) == (Sync.SOURCE_BITMAP, 71)
    assert r.self_gi == G(B, A, D, D)


def test_rule_80_peer_current_in_my_history():
    r = cmp(G(B, C, D, A), G(A))
    assert (r.result, r.rule) == (Sync.SOURCE_FULL, 80)


def test_rule_90_equal_bitmap_uuids_is_auto_recoverable_split_brain():
    # Both promoted while disconnected from generation A; one was Primary at the split.
    r = cmp(G(B, A | 1, C), G(D, A, C))
    assert (r.result, r.rule) == (Sync.SPLIT_BRAIN_AUTO, 90)


def test_rule_100_common_history_is_split_brain_disconnect():
    r = cmp(G(B, C, A), G(D, E, F, A))
    assert (r.result, r.rule) == (Sync.SPLIT_BRAIN, 100)


def test_no_common_ancestor_is_unrelated_data():
    r = cmp(G(A, B, C, D), G(E, F, 0x1000, 0x2000))
    assert r.result == Sync.UNRELATED


def test_empty_histories_count_as_common_like_drbd():
    # DRBD compares the zero history slots too: two unrelated but history-less
    # tuples are reported as split brain (-100), not as unrelated data.
    r = cmp(G(A, B), G(C, D))
    assert (r.result, r.rule) == (Sync.SPLIT_BRAIN, 100)


def _seq(*values):
    it = iter(values)
    return lambda: next(it)


def test_disconnect_then_bitmap_resync_round_trip():
    """A Primary loses its peer, writes, reconnects: bitmap resync, then equal tuples."""
    primary = secondary = G(A | 1, 0, C)
    secondary = secondary.with_role(False)
    # The Primary starts a new generation when it loses the peer.
    primary = primary.new_current(_seq(B), primary=True)
    assert primary == G(B | 1, A | 1, C)
    assert cmp(primary, secondary, me_pri=True).rule == 70
    assert cmp(secondary, primary, peer_pri=True).rule == 50
    # Resync start: the source's bitmap UUID moves to history; the target adopts the sync UUID.
    primary, sync_uuid = primary.start_resync_as_source(_seq())
    assert sync_uuid == (A | 1) + UUID_NEW_BM_OFFSET
    assert primary.history == (A | 1, C)
    secondary = secondary.adopt_sync_uuid(sync_uuid, primary=False)
    assert secondary == G(sync_uuid & ~1, 0, C)
    # Resync end: the target copies the source's tuple; both rotate the bitmap UUID out.
    secondary = secondary.finish_resync_as_target(primary, primary=False)
    primary = primary.finish_resync_as_source()
    assert primary.current & ~1 == secondary.current
    assert primary.bitmap == secondary.bitmap == 0
    assert primary.history == secondary.history
    assert cmp(primary, secondary, me_pri=True).result == Sync.NONE


def test_new_current_records_the_role_in_the_bitmap_uuid():
    was_primary = G(A | 1).new_current(_seq(B), primary=True)
    promoted_later = G(A).new_current(_seq(C), primary=True)
    assert was_primary.bitmap & 1 and not promoted_later.bitmap & 1
    assert was_primary.current & 1 and promoted_later.current & 1


def test_set_bitmap_zero_rotates_into_history():
    assert G(A, B, C, D).set_bitmap(0) == G(A, 0, B, C)
    assert G(A, 0, C, D).set_bitmap(0) == G(A, 0, C, D)
    assert G(A, 0, C).set_bitmap(B | 1) == G(A, B, C)


def test_resync_start_without_bitmap_uuid_uses_a_random_one():
    gi, uuid = G(A).start_resync_as_source(_seq(0x1234))
    assert uuid == 0x1234 and gi == G(A, 0x1234)


def test_str_is_drbd_show_gi_format():
    assert str(G(A, B, C, D)) == ("000000000000A000:000000000000B000:"
                                  "000000000000C000:000000000000D000")
