"""After-split-brain policies: one test per policy and outcome (drbd_asb_recover_*)."""

import pytest

from binome.storage.replica.core.splitbrain import (
    AfterSb,
    SplitBrainView,
    parse_policy,
    recover_0p,
    recover_1p,
    recover_2p,
)
from binome.storage.replica.core.uuids import Sync

SOURCE, TARGET, DISCONNECT = Sync.SOURCE_BITMAP, Sync.TARGET_BITMAP, Sync.SPLIT_BRAIN


def view(*, me_was=False, peer_was=False, mine=1, theirs=1, tie=False, primary=False):
    return SplitBrainView(self_was_primary=me_was, peer_was_primary=peer_was, self_changes=mine,
                          peer_changes=theirs, resolve_conflicts=tie, self_primary=primary)


# --- after-sb-0pri --------------------------------------------------------------------------

def test_0pri_disconnect():
    assert recover_0p(AfterSb.DISCONNECT, view()).result == DISCONNECT


@pytest.mark.parametrize("me_was, peer_was, expected", [
    (False, True, TARGET),    # I was Secondary at the split: I am the younger primary, I lose
    (True, False, SOURCE),
])
def test_0pri_discard_younger_primary(me_was, peer_was, expected):
    assert recover_0p(AfterSb.DISCARD_YOUNGER_PRIMARY,
                      view(me_was=me_was, peer_was=peer_was)).result == expected


@pytest.mark.parametrize("me_was, peer_was, expected", [
    (True, False, TARGET),    # I was Primary when the split happened: I lose
    (False, True, SOURCE),
])
def test_0pri_discard_older_primary(me_was, peer_was, expected):
    assert recover_0p(AfterSb.DISCARD_OLDER_PRIMARY,
                      view(me_was=me_was, peer_was=peer_was)).result == expected


@pytest.mark.parametrize("policy", [AfterSb.DISCARD_YOUNGER_PRIMARY,
                                    AfterSb.DISCARD_OLDER_PRIMARY])
def test_0pri_younger_older_undecided_fall_back_to_zero_then_least_changes(policy):
    r = recover_0p(policy, view(mine=0, theirs=7))
    assert r.result == TARGET and "did not find a decision" in r.message
    assert recover_0p(policy, view(mine=3, theirs=7)).result == TARGET
    assert recover_0p(policy, view(mine=9, theirs=7)).result == SOURCE


@pytest.mark.parametrize("mine, theirs, tie, expected", [
    (0, 5, False, TARGET),
    (5, 0, False, SOURCE),
    (0, 0, False, SOURCE),    # both unchanged: the tie flag decides
    (0, 0, True, TARGET),
    (3, 5, False, DISCONNECT),
])
def test_0pri_discard_zero_changes(mine, theirs, tie, expected):
    assert recover_0p(AfterSb.DISCARD_ZERO_CHANGES,
                      view(mine=mine, theirs=theirs, tie=tie)).result == expected


@pytest.mark.parametrize("mine, theirs, tie, expected", [
    (3, 5, False, TARGET),    # fewer changes loses
    (5, 3, False, SOURCE),
    (4, 4, False, SOURCE),
    (4, 4, True, TARGET),
])
def test_0pri_discard_least_changes(mine, theirs, tie, expected):
    assert recover_0p(AfterSb.DISCARD_LEAST_CHANGES,
                      view(mine=mine, theirs=theirs, tie=tie)).result == expected


def test_0pri_discard_node_name():
    local = parse_policy("discard-node-alpha", 0, my_name="alpha", peer_name="beta")
    remote = parse_policy("discard-node-beta", 0, my_name="alpha", peer_name="beta")
    assert recover_0p(local, view()).result == TARGET
    assert recover_0p(remote, view()).result == SOURCE


def test_0pri_one_primary_keyword_is_a_configuration_error():
    r = recover_0p(AfterSb.CONSENSUS, view())
    assert r.result == DISCONNECT and r.message == "Configuration error."


# --- after-sb-1pri --------------------------------------------------------------------------

def test_1pri_disconnect():
    assert recover_1p(AfterSb.DISCONNECT, AfterSb.DISCARD_LEAST_CHANGES, view(),
                      can_demote=True).result == DISCONNECT


@pytest.mark.parametrize("primary, mine, theirs, expected", [
    (False, 1, 5, TARGET),        # 0pri makes the Secondary (me) the victim: accepted
    (True, 5, 1, SOURCE),         # 0pri makes the Secondary (peer) the victim: accepted
    (True, 1, 5, DISCONNECT),     # 0pri would make the Primary the victim: refused
    (False, 5, 1, DISCONNECT),
])
def test_1pri_consensus(primary, mine, theirs, expected):
    r = recover_1p(AfterSb.CONSENSUS, AfterSb.DISCARD_LEAST_CHANGES,
                   view(primary=primary, mine=mine, theirs=theirs), can_demote=True)
    assert r.result == expected


@pytest.mark.parametrize("primary, expected", [(True, SOURCE), (False, TARGET)])
def test_1pri_discard_secondary(primary, expected):
    assert recover_1p(AfterSb.DISCARD_SECONDARY, AfterSb.DISCONNECT, view(primary=primary),
                      can_demote=True).result == expected


def test_1pri_violently_as0p_may_discard_the_primary():
    r = recover_1p(AfterSb.VIOLENTLY, AfterSb.DISCARD_LEAST_CHANGES,
                   view(primary=True, mine=1, theirs=5), can_demote=False)
    assert r.result == TARGET and not r.demote


def test_1pri_call_pri_lost_after_sb_demotes_the_losing_primary():
    r = recover_1p(AfterSb.CALL_HELPER, AfterSb.DISCARD_LEAST_CHANGES,
                   view(primary=True, mine=1, theirs=5), can_demote=True)
    assert (r.result, r.demote, r.handler) == (TARGET, True, None)


def test_1pri_call_pri_lost_after_sb_runs_the_handler_when_demotion_fails():
    r = recover_1p(AfterSb.CALL_HELPER, AfterSb.DISCARD_LEAST_CHANGES,
                   view(primary=True, mine=1, theirs=5), can_demote=False)
    assert (r.result, r.demote, r.handler) == (DISCONNECT, False, "pri-lost-after-sb")


def test_1pri_call_pri_lost_after_sb_secondary_loser_just_syncs():
    r = recover_1p(AfterSb.CALL_HELPER, AfterSb.DISCARD_LEAST_CHANGES,
                   view(primary=False, mine=1, theirs=5), can_demote=False)
    assert (r.result, r.demote) == (TARGET, False)


def test_1pri_zero_pri_keyword_is_a_configuration_error():
    r = recover_1p(AfterSb.DISCARD_ZERO_CHANGES, AfterSb.DISCONNECT, view(), can_demote=True)
    assert r.result == DISCONNECT and r.message == "Configuration error."


# --- after-sb-2pri --------------------------------------------------------------------------

def test_2pri_disconnect():
    assert recover_2p(AfterSb.DISCONNECT, AfterSb.DISCARD_LEAST_CHANGES,
                      view(primary=True), can_demote=True).result == DISCONNECT


def test_2pri_violently_as0p():
    r = recover_2p(AfterSb.VIOLENTLY, AfterSb.DISCARD_LEAST_CHANGES,
                   view(primary=True, mine=1, theirs=5), can_demote=False)
    assert r.result == TARGET


@pytest.mark.parametrize("can_demote, expected", [
    (True, (TARGET, True, None)),
    (False, (DISCONNECT, False, "pri-lost-after-sb")),
])
def test_2pri_call_pri_lost_after_sb(can_demote, expected):
    r = recover_2p(AfterSb.CALL_HELPER, AfterSb.DISCARD_LEAST_CHANGES,
                   view(primary=True, mine=1, theirs=5), can_demote=can_demote)
    assert (r.result, r.demote, r.handler) == expected


def test_2pri_winner_keeps_running():
    r = recover_2p(AfterSb.CALL_HELPER, AfterSb.DISCARD_LEAST_CHANGES,
                   view(primary=True, mine=5, theirs=1), can_demote=True)
    assert (r.result, r.demote) == (SOURCE, False)


def test_2pri_consensus_is_a_configuration_error():
    r = recover_2p(AfterSb.CONSENSUS, AfterSb.DISCONNECT, view(), can_demote=True)
    assert r.result == DISCONNECT and r.message == "Configuration error."


# --- configuration ---------------------------------------------------------------------------

@pytest.mark.parametrize("text, n", [("consensus", 0), ("discard-zero-changes", 1),
                                     ("discard-secondary", 2), ("bogus", 0),
                                     ("discard-local", 0), ("discard-node-gamma", 0)])
def test_parse_policy_rejects_invalid_keywords(text, n):
    with pytest.raises(ValueError):
        parse_policy(text, n, my_name="alpha", peer_name="beta")


@pytest.mark.parametrize("text, n, expected", [
    ("disconnect", 0, AfterSb.DISCONNECT), ("discard-least-changes", 0,
                                            AfterSb.DISCARD_LEAST_CHANGES),
    ("consensus", 1, AfterSb.CONSENSUS), ("violently-as0p", 2, AfterSb.VIOLENTLY),
    ("call-pri-lost-after-sb", 2, AfterSb.CALL_HELPER),
])
def test_parse_policy_accepts_valid_keywords(text, n, expected):
    assert parse_policy(text, n, my_name="alpha", peer_name="beta") == expected
