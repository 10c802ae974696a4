"""The replication protocol between two engines: packet framing and codecs (pure, no I/O).

Every packet is a 10-byte header, big-endian: DRBD's h80 magic 0x8620EC20 (so
lab tests can match and drop packets by magic and command, as DRBD's tests
do), a 16-bit command (DRBD's P_* numbers where the packet has a DRBD
counterpart) and a 32-bit payload length. Handshake packets (features,
protocol settings, UUIDs, sizes, state) carry JSON: they are rare and JSON
keeps them evolvable. Data-path packets are fixed binary structs.
"""

from __future__ import annotations

import enum
import json
import struct
from typing import Any

MAGIC = 0x8620EC20
HEADER = struct.Struct(">IHI")
MAX_PAYLOAD = 64 * 1024 * 1024
# 2: P_DATA carries `applied` (dual-primary); verify and checksum-resync packets.
# 3: P_DATA says which ack it wants (DP_SEND_*_ACK), so `adjust` can change the protocol
#    while connected; P_STATE `adjust` / `adjusted` / `adjust_failed`.
PROTOCOL_VERSION = 3


class P(enum.IntEnum):
    DATA = 0x00
    DATA_REPLY = 0x01        # a read served for a Diskless peer (on-io-error detach)
    RS_DATA_REPLY = 0x02
    BARRIER = 0x03
    BITMAP = 0x04
    DATA_REQUEST = 0x08      # a Diskless Primary reads from its peer
    RS_DATA_REQUEST = 0x09
    PROTOCOL = 0x0B
    UUIDS = 0x0C
    SIZES = 0x0D
    STATE = 0x0E
    SYNC_UUID = 0x0F
    AUTH_CHALLENGE = 0x10
    AUTH_RESPONSE = 0x11
    PING = 0x13
    PING_ACK = 0x14
    RECV_ACK = 0x15
    WRITE_ACK = 0x16
    RS_WRITE_ACK = 0x17
    NEG_ACK = 0x19
    BARRIER_ACK = 0x1C
    OV_REQUEST = 0x1E
    OV_REPLY = 0x1F
    CSUM_RS_REQUEST = 0x21
    OUT_OF_SYNC = 0x28
    RS_CSUM_REPLY = 0x40     # not DRBD's: the differing blocks of a checksum request
    CONNECTION_FEATURES = 0xFFFE


# P_DATA flags (DRBD's DP_* in spirit)
DP_FUA = 1 << 0
DP_DISCARD = 1 << 1         # punch a hole (TRIM, WRITE_ZEROES)
DP_ZERO_KEEP = 1 << 2       # zero in place (WRITE_ZEROES with NO_HOLE)
# The ack the sender waits for (DRBD's DP_SEND_RECEIVE_ACK / DP_SEND_WRITE_ACK): set per
# write from the sender's protocol at send time, so a protocol changed by `adjust` while
# writes are in flight never leaves one waiting for an ack the receiver will not send.
DP_SEND_RECEIVE_ACK = 1 << 3    # protocol B
DP_SEND_WRITE_ACK = 1 << 4      # protocol C

# seq, offset, length, flags, applied (+ data unless discard). `applied` is the seq of
# the last peer write the sender had applied when it wrote this one: with two primaries
# it tells the receiver which of its own writes were concurrent (see peer.PeerLink).
DATA_HDR = struct.Struct(">QQIIQ")
ACK = struct.Struct(">Q")               # seq
BARRIER = struct.Struct(">I")           # epoch
BARRIER_ACK = struct.Struct(">II")      # epoch, writes in it
RS_REQUEST = struct.Struct(">QI")       # offset, length
RS_REPLY_HDR = struct.Struct(">Q")      # offset (+ data)
RS_ACK = struct.Struct(">QI")           # offset, length
SYNC_UUID = struct.Struct(">Q")
DATA_REQUEST = struct.Struct(">QQI")    # read id, offset, length
DATA_REPLY_HDR = struct.Struct(">Qi")   # read id, errno (0: the data follows)
BITMAP_HDR = struct.Struct(">QB")       # byte offset in the bitmap, last chunk? (+ zlib data)
OV_REQUEST = struct.Struct(">QIQ")      # offset, length, applied (+ one digest per block)
OV_REPLY = struct.Struct(">QI")         # offset, length (+ mask of the differing blocks)
CSUM_REQUEST = struct.Struct(">QI")     # offset, length (+ one digest per block)
CSUM_REPLY = struct.Struct(">QI")       # offset, length (+ mask, + the differing blocks' data)


class WireError(Exception):
    """A malformed packet: the connection is dropped (DRBD's ProtocolError)."""


def header(cmd: P, length: int) -> bytes:
    return HEADER.pack(MAGIC, cmd, length)


def packet(cmd: P, payload: bytes = b"") -> bytes:
    return HEADER.pack(MAGIC, cmd, len(payload)) + payload


def parse_header(raw: bytes | bytearray | memoryview) -> tuple[P, int]:
    magic, cmd, length = HEADER.unpack(raw)
    if magic != MAGIC:
        raise WireError(f"bad packet magic {magic:#x}")
    if length > MAX_PAYLOAD:
        raise WireError(f"packet of {length} bytes is too large")
    try:
        return P(cmd), length
    except ValueError:
        raise WireError(f"unknown packet type {cmd:#x}") from None


def json_packet(cmd: P, obj: dict[str, Any]) -> bytes:
    return packet(cmd, json.dumps(obj, sort_keys=True).encode())


def parse_json(payload: bytes | memoryview) -> dict[str, Any]:
    try:
        obj = json.loads(bytes(payload) if isinstance(payload, memoryview) else payload)
    except (ValueError, UnicodeDecodeError) as e:
        raise WireError(f"bad handshake packet: {e}") from None
    if not isinstance(obj, dict):
        raise WireError("bad handshake packet: not an object")
    return obj


def data_header(seq: int, offset: int, length: int, flags: int, applied: int = 0) -> bytes:
    """The header of a P_DATA packet whose `length` data bytes follow (none if discard)."""
    body = DATA_HDR.size + (0 if flags & (DP_DISCARD | DP_ZERO_KEEP) else length)
    return header(P.DATA, body) + DATA_HDR.pack(seq, offset, length, flags, applied)
