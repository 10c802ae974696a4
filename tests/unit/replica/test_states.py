"""Disk state on attach, metadata flags, promotion/demotion rules, mirroring predicate."""

import pytest

from binome.storage.replica.core import states
from binome.storage.replica.core.states import (
    ConnState,
    DiskState,
    Fencing,
    MetaFlags,
    Role,
    State,
    StateError,
)

CONS, WAS, POUT = MetaFlags.CONSISTENT, MetaFlags.WAS_UP_TO_DATE, MetaFlags.PEER_OUT_DATED


def test_enum_order_is_drbds():
    assert ConnState.StandAlone < ConnState.WFConnection < ConnState.Connected
    assert ConnState.Connected < ConnState.SyncSource < ConnState.Ahead
    assert DiskState.Inconsistent < DiskState.Outdated < DiskState.DUnknown
    assert DiskState.DUnknown < DiskState.Consistent < DiskState.UpToDate
    assert str(ConnState.WFBitMapT) == "WFBitMapT"


@pytest.mark.parametrize("flags, fencing, expected", [
    (MetaFlags(0), Fencing.DONT_CARE, DiskState.Inconsistent),
    (CONS, Fencing.DONT_CARE, DiskState.Outdated),
    (CONS | WAS, Fencing.RESOURCE_ONLY, DiskState.Consistent),
    (CONS | WAS, Fencing.DONT_CARE, DiskState.UpToDate),
    (CONS | WAS | POUT, Fencing.RESOURCE_ONLY, DiskState.UpToDate),
])
def test_disk_state_on_attach(flags, fencing, expected):
    assert states.disk_state_on_attach(flags, fencing)[0] == expected


def test_peer_outdated_flag_gives_peer_disk_outdated():
    assert states.disk_state_on_attach(CONS | POUT, Fencing.DONT_CARE)[1] == DiskState.Outdated
    assert states.disk_state_on_attach(CONS, Fencing.DONT_CARE)[1] == DiskState.DUnknown


def test_flags_from_state():
    s = State(role=Role.Primary, conn=ConnState.Connected, disk=DiskState.UpToDate,
              pdsk=DiskState.UpToDate)
    f = states.flags_from_state(s, MetaFlags.AL_CLEAN | MetaFlags.FULL_SYNC, crashed_primary=True)
    assert f == (MetaFlags.PRIMARY_IND | MetaFlags.CONNECTED_IND | CONS | WAS
                 | MetaFlags.CRASHED_PRIMARY | MetaFlags.FULL_SYNC)
    outdated = State(disk=DiskState.Outdated, pdsk=DiskState.Outdated)
    assert states.flags_from_state(outdated, MetaFlags(0), crashed_primary=False) == CONS | POUT


def promote(state, *, force=False, fencing=Fencing.DONT_CARE, bitmap_uuid=0, two=False):
    return states.promote(state, force=force, allow_two_primaries=two, fencing=fencing,
                          bitmap_uuid=bitmap_uuid)


def test_standalone_uptodate_promotes_with_new_generation():
    p = promote(State(disk=DiskState.UpToDate))
    assert p.state.role == Role.Primary and p.new_generation


def test_no_new_generation_when_bitmap_uuid_already_set():
    assert not promote(State(disk=DiskState.UpToDate), bitmap_uuid=0x1234).new_generation


def test_connected_promotion_keeps_the_generation():
    s = State(conn=ConnState.Connected, disk=DiskState.UpToDate, pdsk=DiskState.UpToDate)
    assert not promote(s).new_generation


@pytest.mark.parametrize("disk", [DiskState.Inconsistent, DiskState.Outdated,
                                  DiskState.Consistent])
def test_stale_disk_needs_force(disk):
    with pytest.raises(StateError, match="Need access to UpToDate data"):
        promote(State(disk=disk))
    p = promote(State(disk=disk), force=True)
    assert p.state.disk == DiskState.UpToDate and p.new_generation


def test_peer_primary_refused_without_two_primaries():
    s = State(conn=ConnState.Connected, disk=DiskState.UpToDate, pdsk=DiskState.UpToDate,
              peer=Role.Primary)
    with pytest.raises(StateError, match=r"\(-1\) Multiple primaries not allowed by config"):
        promote(s)
    assert promote(s, two=True).state.role == Role.Primary


def test_fencing_refuses_while_peer_unknown():
    with pytest.raises(StateError, match="peer is not outdated"):
        promote(State(disk=DiskState.UpToDate), fencing=Fencing.RESOURCE_ONLY)
    s = State(disk=DiskState.UpToDate, pdsk=DiskState.Outdated)
    assert promote(s, fencing=Fencing.RESOURCE_ONLY).state.role == Role.Primary


def test_diskless_promotion_needs_an_uptodate_peer():
    with pytest.raises(StateError):
        promote(State(disk=DiskState.Diskless))


def test_demote_refused_while_open():
    s = State(role=Role.Primary, disk=DiskState.UpToDate)
    with pytest.raises(StateError, match=r"\(-12\) Device is held open by someone"):
        states.demote(s, open_count=1)
    assert states.demote(s, open_count=0).role == Role.Secondary


def test_outdate_refused_while_connected():
    with pytest.raises(StateError, match="Refusing to be Outdated while Connected"):
        states.outdate(State(conn=ConnState.Connected, disk=DiskState.UpToDate))
    assert states.outdate(State(disk=DiskState.UpToDate)).disk == DiskState.Outdated


@pytest.mark.parametrize("conn, pdsk, remote", [
    (ConnState.StandAlone, DiskState.DUnknown, False),
    (ConnState.WFConnection, DiskState.DUnknown, False),
    (ConnState.Connected, DiskState.UpToDate, True),
    (ConnState.SyncSource, DiskState.Inconsistent, True),
    (ConnState.WFBitMapT, DiskState.Inconsistent, True),
    (ConnState.Ahead, DiskState.Inconsistent, False),
    (ConnState.Connected, DiskState.Diskless, False),
])
def test_write_mirroring_predicate(conn, pdsk, remote):
    s = State(role=Role.Primary, conn=conn, disk=DiskState.UpToDate, pdsk=pdsk)
    assert states.should_do_remote(s) is remote
    assert states.marks_out_of_sync(s) is (not remote)
