"""The leadership preference (pure): when the etcd leader hands leadership to the witness."""

from __future__ import annotations

from binome.store.member import LeadershipPreference, PeerHealth, witness_transfer_target

N1, N2, W = 0x11, 0x22, 0x33


def status(member_id: int, leader: int = N1, index: int = 500, **kw) -> dict:
    return {"member_id": member_id, "leader": leader, "raft_term": 2, "raft_index": index,
            "raft_applied_index": index, "is_learner": False, "errors": [], **kw}


def peers(**over) -> list[PeerHealth]:
    base = {
        N1: PeerHealth(N1, "n1", "node", "member", False, status(N1)),
        N2: PeerHealth(N2, "n2", "node", "member", False, status(N2)),
        W: PeerHealth(W, "w", "witness", "member", False, status(W)),
    }
    for key, value in over.items():
        mid = {"n1": N1, "n2": N2, "w": W}[key]
        base[mid] = value
    return list(base.values())


def test_healthy_cluster_moves_leadership_to_the_witness() -> None:
    assert witness_transfer_target(status(N1), peers()) == (W, "")


def test_only_the_leader_acts_and_a_leading_witness_is_left_alone() -> None:
    assert witness_transfer_target(status(N2), peers()) == (None, "not-leader")
    assert witness_transfer_target(status(W, leader=W), peers()) == (None, "witness-leads")


def test_never_while_a_member_is_unhealthy_a_learner_or_joining() -> None:
    cases = {
        "unreachable:w": peers(w=PeerHealth(W, "w", "witness", "member", False, None)),
        "unreachable:n2": peers(n2=PeerHealth(N2, "n2", "node", "member", False, None)),
        "learner:w": peers(w=PeerHealth(W, "w", "witness", "member", True, status(W))),
        "not-joined:w": peers(w=PeerHealth(W, "w", "witness", "joining", False, status(W))),
        "member-not-started:33": peers(w=PeerHealth(W, "", "witness", "member", False, None)),
        "errors:w": peers(w=PeerHealth(W, "w", "witness", "member", False,
                                       status(W, errors=["alarm:NOSPACE"]))),
        "leader-disagreement:w": peers(w=PeerHealth(W, "w", "witness", "member", False,
                                                    status(W, leader=0))),
        "witness-behind": peers(w=PeerHealth(W, "w", "witness", "member", False,
                                             status(W, index=100))),
    }
    for why, members in cases.items():
        assert witness_transfer_target(status(N1), members) == (None, why), why
    no_witness = [p for p in peers() if p.role != "witness"]
    assert witness_transfer_target(status(N1), no_witness) == (None, "no-witness")


def test_preference_settles_then_moves_once() -> None:
    p = LeadershipPreference(settle=2.0, retry=3.0, stable=60.0)
    p.healthy(100.0, True)
    assert not p.may_move(101.0)
    assert p.may_move(102.0)
    p.moved(102.1, ok=True)
    p.observe(103.0, witness_leads=True)
    assert p.quick_losses == 0


def test_a_witness_that_keeps_losing_leadership_is_left_alone_longer() -> None:
    p = LeadershipPreference(settle=0.0, retry=3.0, cap=300.0, stable=60.0)
    now = 0.0
    delays = []
    for _ in range(5):
        p.healthy(now, True)
        assert p.may_move(now)
        p.moved(now, ok=True)
        now += 5.0                          # the witness loses it after 5 s
        p.observe(now, witness_leads=False)
        assert not p.may_move(now)
        delays.append(p.not_before - now)
        now = p.not_before
    assert delays == [3.0, 6.0, 12.0, 24.0, 48.0]
    # held long enough: forgiven, the next loss waits the base delay again
    p.moved(now, ok=True)
    p.observe(now + 61.0, witness_leads=True)
    p.observe(now + 62.0, witness_leads=False)
    assert p.not_before - (now + 62.0) == 3.0


def test_failed_moves_back_off() -> None:
    p = LeadershipPreference(settle=0.0, retry=2.0, cap=10.0)
    p.healthy(0.0, True)
    for expected in (2.0, 4.0, 8.0, 10.0):
        p.moved(0.0, ok=False)
        assert p.not_before == expected
    p.moved(20.0, ok=True)
    assert p.failures == 0


def test_unhealthy_resets_settling() -> None:
    p = LeadershipPreference(settle=2.0)
    p.healthy(0.0, True)
    p.healthy(1.5, False)
    p.healthy(1.6, True)
    assert not p.may_move(3.0)
    assert p.may_move(3.6)
