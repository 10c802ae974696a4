"""QuorumView: votes, quorum size, flags and warnings as `pvecm status` shows them."""

import pytest

from binome.cluster.quorum import MemberView, QuorumTransitions, QuorumView


def member(name, nodeid, *, role="node", online=True, learner=False, votes=1):
    return MemberView(name=name, member_id=1000 + nodeid, role=role, nodeid=nodeid, votes=votes,
                      online=online, is_learner=learner, address=f"10.0.0.{nodeid}")


def two_nodes_and_witness(**online):
    return [member("n1", 1, online=online.get("n1", True)),
            member("n2", 2, online=online.get("n2", True)),
            member("w", 3, role="witness", online=online.get("w", True))]


@pytest.mark.parametrize("expected, quorum", [(1, 1), (2, 2), (3, 2), (4, 3), (5, 3), (6, 4)])
def test_quorum_is_floor_half_plus_one(expected, quorum):
    view = QuorumView(quorate=True, members=[member(f"n{i}", i) for i in range(1, expected + 1)])
    assert view.expected_votes == expected
    assert view.quorum == quorum


def test_full_cluster():
    view = QuorumView(quorate=True, members=two_nodes_and_witness())
    assert view.expected_votes == 3
    assert view.total_votes == 3
    assert view.quorum == 2
    assert view.has_witness
    assert view.node_count == 2
    assert view.flags == ["Quorate", "Witness"]
    assert view.warnings == []


def test_one_node_offline_with_witness_still_two_of_three():
    view = QuorumView(quorate=True, members=two_nodes_and_witness(n2=False))
    assert view.total_votes == 2
    assert view.expected_votes == 3
    assert view.quorum == 2
    assert view.flags == ["Quorate", "Witness"]
    assert view.warnings == []


def test_learners_do_not_vote():
    members = [*two_nodes_and_witness(), member("n3", 4, learner=True)]
    view = QuorumView(quorate=True, members=members)
    assert view.expected_votes == 3
    assert view.total_votes == 3
    assert view.quorum == 2
    assert view.node_count == 2


def test_learner_witness_is_not_a_witness():
    view = QuorumView(quorate=True,
                      members=[member("n1", 1), member("n2", 2),
                               member("w", 3, role="witness", learner=True)])
    assert not view.has_witness
    assert "Witness" not in view.flags
    assert any("two nodes without a witness" in w for w in view.warnings)


def test_offline_members_count_as_expected_but_not_total():
    view = QuorumView(quorate=False, members=two_nodes_and_witness(n2=False, w=False))
    assert view.expected_votes == 3
    assert view.total_votes == 1


def test_two_nodes_without_witness_warns():
    view = QuorumView(quorate=True, members=[member("n1", 1), member("n2", 2)])
    assert view.flags == ["Quorate"]
    assert view.quorum == 2
    assert len(view.warnings) == 1
    assert "two nodes without a witness" in view.warnings[0]


def test_single_node_does_not_warn_about_witness():
    view = QuorumView(quorate=True, members=[member("n1", 1)])
    assert view.warnings == []


def test_no_quorum_warning():
    view = QuorumView(quorate=False, members=two_nodes_and_witness(n2=False, w=False))
    assert "Quorate" not in view.flags
    assert view.flags == ["Witness"]
    [warning] = view.warnings
    assert warning.startswith("no quorum: 1 of 3 votes, 2 needed")


def test_no_quorum_warning_needs_members():
    view = QuorumView(quorate=False, members=[])
    assert view.warnings == []
    assert view.flags == []


def test_expected_override():
    view = QuorumView(quorate=True, members=two_nodes_and_witness(n2=False, w=False),
                      override={"votes": 1, "user": "root@pam"})
    assert view.flags == ["Quorate", "Witness", "ExpectedOverride"]
    assert any("overridden to 1 by root@pam" in w for w in view.warnings)
    assert "ExpectedOverride" not in QuorumView(quorate=True, override={}).flags


# --- which quorum checks are announced (cluster log, quorum-lost/-regained mails) -------

def test_a_daemon_starting_before_its_peers_announces_nothing():
    """First checks fail (the peers still booting), then succeed: no loss, no regain."""
    t = QuorumTransitions(grace=60)
    t.start(100.0)
    assert [t.observe(False, 100.0 + i) for i in range(10)] == [None] * 10
    assert t.observe(True, 111.0) is None
    assert t.observe(True, 112.0) is None


def test_a_real_loss_then_regain_is_announced_once_each():
    t = QuorumTransitions(grace=60)
    t.start(0.0)
    assert t.observe(True, 1.0) is None
    assert t.observe(False, 2.0) == "lost"
    assert t.observe(False, 3.0) is None          # still lost: said once
    assert t.observe(True, 4.0) == "regained"
    assert t.observe(True, 5.0) is None
    assert t.observe(False, 6.0) == "lost"        # a second loss is a new one
    assert t.observe(True, 7.0) == "regained"


def test_no_quorum_past_the_startup_grace_is_a_loss_and_its_end_a_regain():
    t = QuorumTransitions(grace=60)
    t.start(0.0)
    assert t.observe(False, 59.0) is None
    assert t.never_quorate()
    assert t.observe(False, 60.0) == "lost"
    assert t.observe(False, 61.0) is None
    assert t.observe(True, 62.0) == "regained"
    assert not t.never_quorate()


def test_restarting_the_loops_keeps_the_first_start_and_leaving_resets():
    t = QuorumTransitions(grace=60)
    t.start(0.0)
    t.start(50.0)                                 # loops restarted around a join
    assert t.observe(False, 60.0) == "lost"       # the grace ran from the first start
    t.reset()                                     # left the cluster: a new story
    t.start(100.0)
    assert t.observe(True, 101.0) is None         # no regain for the old cluster's loss
