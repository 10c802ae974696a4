"""Roles, connection states, disk states and the rules between them (pure, no I/O).

Names and enum order follow DRBD 8.4 (`drbd_int.h`, `linux/drbd.h`): the code
compares states with `<` and `>` exactly as DRBD does (`conn < Connected`
means "not connected"), so the order of the members is part of the contract.

This module also holds the pure state rules the engine applies:
- the disk state on attach, derived from the metadata flags;
- the metadata flags derived from the state (DRBD's `__drbd_set_state` update);
- promotion and demotion checks, with DRBD's error strings;
- whether a write goes to the peer or is marked out of sync locally.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace


class Role(enum.IntEnum):
    Unknown = 0
    Primary = 1
    Secondary = 2

    def __str__(self) -> str:
        return self.name


class ConnState(enum.IntEnum):
    StandAlone = 0
    Disconnecting = 1
    Unconnected = 2
    Timeout = 3
    BrokenPipe = 4
    NetworkFailure = 5
    ProtocolError = 6
    TearDown = 7
    WFConnection = 8
    WFReportParams = 9
    Connected = 10
    StartingSyncS = 11
    StartingSyncT = 12
    WFBitMapS = 13
    WFBitMapT = 14
    WFSyncUUID = 15
    SyncSource = 16
    SyncTarget = 17
    VerifyS = 18
    VerifyT = 19
    PausedSyncS = 20
    PausedSyncT = 21
    Ahead = 22
    Behind = 23

    def __str__(self) -> str:
        return self.name


class DiskState(enum.IntEnum):
    Diskless = 0
    Attaching = 1
    Failed = 2
    Negotiating = 3
    Inconsistent = 4
    Outdated = 5
    DUnknown = 6
    Consistent = 7
    UpToDate = 8

    def __str__(self) -> str:
        return self.name


class MetaFlags(enum.IntFlag):
    """Metadata flags, with DRBD's `MDF_*` bit values (drbd_int.h)."""

    CONSISTENT = 1 << 0
    PRIMARY_IND = 1 << 1
    CONNECTED_IND = 1 << 2
    FULL_SYNC = 1 << 3
    WAS_UP_TO_DATE = 1 << 4
    PEER_OUT_DATED = 1 << 5
    CRASHED_PRIMARY = 1 << 6
    AL_CLEAN = 1 << 7


class Fencing(enum.StrEnum):
    """DRBD's `fencing` keywords plus `quorum`, binome's cluster-quorum fencing.

    `quorum` behaves like `resource-and-stonith` with the daemon as the
    fence-peer handler: a Primary whose peer's disk is unknown suspends its
    writes until the daemon, holding cluster quorum, has recorded the peer's
    copy as Outdated in etcd (`peer-outdated`), or until the peer is back.
    """

    DONT_CARE = "dont-care"
    RESOURCE_ONLY = "resource-only"
    RESOURCE_AND_STONITH = "resource-and-stonith"
    QUORUM = "quorum"


@dataclass(frozen=True)
class State:
    """One volume's state as DRBD shows it: `ro:role/peer ds:disk/pdisk cs:conn`."""

    role: Role = Role.Secondary
    peer: Role = Role.Unknown
    conn: ConnState = ConnState.StandAlone
    disk: DiskState = DiskState.Diskless
    pdsk: DiskState = DiskState.DUnknown
    susp: bool = False

    def with_(self, **changes: object) -> State:
        return replace(self, **changes)  # type: ignore[arg-type]


class StateError(Exception):
    """A refused state change, with DRBD's message ("State change failed: ...")."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(f"State change failed: ({code}) {text}")
        self.code = code
        self.text = text


# DRBD's enum drbd_state_rv values and strings (drbd_strings.c) for the refusals we use.
SS_TWO_PRIMARIES = -1
SS_NO_UP_TO_DATE_DISK = -2
SS_DEVICE_IN_USE = -12
SS_PRIMARY_NOP = -7
SS_CONNECTED_OUTDATES = -6
SS_IS_DISKLESS = -11
_SS_TEXT = {
    SS_TWO_PRIMARIES: "Multiple primaries not allowed by config",
    SS_NO_UP_TO_DATE_DISK: "Need access to UpToDate data",
    SS_DEVICE_IN_USE: "Device is held open by someone",
    SS_PRIMARY_NOP: "Refusing to be Primary while peer is not outdated",
    SS_CONNECTED_OUTDATES: "Refusing to be Outdated while Connected",
    SS_IS_DISKLESS: "Device is diskless, the requested operation requires a disk",
}


def refuse(code: int) -> StateError:
    return StateError(code, _SS_TEXT[code])


def disk_state_on_attach(flags: MetaFlags, fencing: Fencing) -> tuple[DiskState, DiskState]:
    """(disk, pdsk) right after attach, from the metadata flags (drbd_adm_attach)."""
    if flags & MetaFlags.CONSISTENT:
        disk = DiskState.Consistent if flags & MetaFlags.WAS_UP_TO_DATE else DiskState.Outdated
    else:
        disk = DiskState.Inconsistent
    pdsk = DiskState.Outdated if flags & MetaFlags.PEER_OUT_DATED else DiskState.DUnknown
    # Without fencing nobody will ever tell us the peer is fresher: DRBD trusts a
    # Consistent disk as UpToDate then, or when the peer is known to be outdated.
    if disk == DiskState.Consistent and (pdsk == DiskState.Outdated
                                         or fencing == Fencing.DONT_CARE):
        disk = DiskState.UpToDate
    return disk, pdsk


def flags_from_state(state: State, flags: MetaFlags, *, crashed_primary: bool) -> MetaFlags:
    """The metadata flags to persist for `state` (DRBD's md flag update on every state change).

    AL_CLEAN is cleared: any state change while attached means the activity log
    may be in use again; a clean detach sets it explicitly.
    """
    mdf = flags & ~(MetaFlags.CONSISTENT | MetaFlags.PRIMARY_IND | MetaFlags.CONNECTED_IND
                    | MetaFlags.WAS_UP_TO_DATE | MetaFlags.PEER_OUT_DATED
                    | MetaFlags.CRASHED_PRIMARY | MetaFlags.AL_CLEAN)
    if crashed_primary:
        mdf |= MetaFlags.CRASHED_PRIMARY
    if state.role == Role.Primary or (state.pdsk < DiskState.Inconsistent
                                      and state.peer == Role.Primary):
        mdf |= MetaFlags.PRIMARY_IND
    if state.conn > ConnState.WFReportParams:
        mdf |= MetaFlags.CONNECTED_IND
    if state.disk > DiskState.Inconsistent:
        mdf |= MetaFlags.CONSISTENT
    if state.disk > DiskState.Outdated:
        mdf |= MetaFlags.WAS_UP_TO_DATE
    if DiskState.Inconsistent <= state.pdsk <= DiskState.Outdated:
        mdf |= MetaFlags.PEER_OUT_DATED
    return mdf


@dataclass(frozen=True)
class Promotion:
    """The outcome of a permitted promotion."""

    state: State
    new_generation: bool     # rotate the current UUID into the bitmap UUID first


def promote(state: State, *, force: bool, allow_two_primaries: bool, fencing: Fencing,
            bitmap_uuid: int) -> Promotion:
    """Check and compute `primary [--force]` (drbd_set_role, is_valid_state).

    Raises StateError with DRBD's text when refused. When fencing is enabled and
    the peer's disk is unknown, the caller must fence the peer first (the
    refusal is SS_PRIMARY_NOP, as DRBD returns before running fence-peer).
    """
    if state.peer == Role.Primary and not allow_two_primaries:
        raise refuse(SS_TWO_PRIMARIES)
    if state.disk == DiskState.Diskless and state.pdsk != DiskState.UpToDate:
        raise refuse(SS_IS_DISKLESS)
    disk = state.disk
    if force and disk in (DiskState.Inconsistent, DiskState.Outdated, DiskState.Consistent):
        disk = DiskState.UpToDate
    connected = state.conn >= ConnState.Connected
    if not connected and disk != DiskState.UpToDate:
        raise refuse(SS_NO_UP_TO_DATE_DISK)
    if connected and disk != DiskState.UpToDate and state.pdsk != DiskState.UpToDate:
        raise refuse(SS_NO_UP_TO_DATE_DISK)
    if connected and DiskState.Inconsistent <= disk < DiskState.UpToDate:
        # DRBD lets an Inconsistent node be Primary with an UpToDate peer (reads go to
        # the peer); a Primary cannot be a SyncTarget here, so it needs its own data.
        raise refuse(SS_NO_UP_TO_DATE_DISK)
    if (not force and fencing != Fencing.DONT_CARE and not connected
            and state.pdsk == DiskState.DUnknown):
        raise refuse(SS_PRIMARY_NOP)
    new_generation = force or ((not connected or state.pdsk <= DiskState.Failed)
                               and bitmap_uuid == 0)
    return Promotion(state.with_(role=Role.Primary, disk=disk), new_generation)


def demote(state: State, *, open_count: int) -> State:
    """Check and compute `secondary`: refused while the device is open (NBD clients)."""
    if state.role != Role.Primary:
        return state
    if open_count > 0:
        raise refuse(SS_DEVICE_IN_USE)
    return state.with_(role=Role.Secondary)


def outdate(state: State) -> State:
    """`outdate`: mark a consistent local disk Outdated; refused while Connected."""
    if state.conn >= ConnState.Connected:
        raise refuse(SS_CONNECTED_OUTDATES)
    if state.disk in (DiskState.Consistent, DiskState.UpToDate):
        return state.with_(disk=DiskState.Outdated)
    return state


def needs_fencing(state: State, fencing: Fencing) -> bool:
    """Writes must wait: a Primary under quorum fencing (or DRBD's resource-and-stonith,
    whose fence-peer handler the engine runs) does not know its peer's disk.

    This is the condition for `susp` (DRBD's susp_fen): set when the peer is
    lost (or never seen), cleared when the peer's disk is known again, either
    because it reconnected or because the daemon recorded it Outdated.
    """
    return (fencing in (Fencing.QUORUM, Fencing.RESOURCE_AND_STONITH)
            and state.role == Role.Primary
            and state.disk == DiskState.UpToDate and state.pdsk == DiskState.DUnknown)


def should_do_remote(state: State) -> bool:
    """A write is mirrored to the peer (drbd_should_do_remote)."""
    return state.pdsk == DiskState.UpToDate or (
        state.pdsk >= DiskState.Inconsistent
        and ConnState.WFBitMapT <= state.conn < ConnState.Ahead)


def should_send_out_of_sync(state: State) -> bool:
    """Only an out-of-sync notice goes to the peer (drbd_should_send_out_of_sync)."""
    return state.conn in (ConnState.Ahead, ConnState.WFBitMapS)


def marks_out_of_sync(state: State) -> bool:
    """A local write must set its bitmap bits: it is not (fully) mirrored to the peer."""
    return not should_do_remote(state)
