"""NBD wire codecs."""

import errno
import struct

import pytest

from binome.storage.replica.core import nbd_protocol as p


def test_option_reply_layout():
    raw = p.option_reply(p.OPT_GO, p.REP_ACK)
    assert raw == struct.pack(">QIII", 0x3E889045565A9, 7, 1, 0)


def test_simple_and_structured_replies():
    assert p.simple_reply(5, 22) == struct.pack(">IIQ", 0x67446698, 22, 5)
    hdr = p.read_chunk_header(9, 4096, 512)
    assert len(hdr) == p.READ_CHUNK_HEADER_SIZE == 28
    assert struct.unpack(">IHHQIQ", hdr) == (0x668E33EF, 1, 1, 9, 520, 4096)
    err = p.structured_error(3, p.NBD_EIO, "boom")
    assert struct.unpack(">IHHQIIH", err[:26]) == (0x668E33EF, 1, 0x8001, 3, 10, 5, 4)
    assert err[26:] == b"boom"


def test_block_status_reply():
    raw = p.block_status_reply(1, 1, [(4096, 3), (8192, 0)])
    assert struct.unpack(">IHHQII", raw[:24]) == (0x668E33EF, 1, 5, 1, 20, 1)
    assert struct.unpack(">IIII", raw[24:]) == (4096, 3, 8192, 0)


def test_parse_info_request():
    data = struct.pack(">I", 2) + b"v1" + struct.pack(">HHH", 2, 3, 0)
    assert p.parse_info_request(data) == ("v1", [3, 0])
    with pytest.raises(p.OptionParseError):
        p.parse_info_request(data + b"x")


def test_parse_meta_request():
    data = (struct.pack(">I", 2) + b"v1" + struct.pack(">I", 2) + struct.pack(">I", 15)
            + b"base:allocation" + struct.pack(">I", 5) + b"base:")
    assert p.parse_meta_request(data) == ("v1", ["base:allocation", "base:"])
    with pytest.raises(p.OptionParseError):
        p.parse_meta_request(data[:-1])


def test_errno_mapping():
    assert p.nbd_errno(errno.ENOSPC) == 28 and p.nbd_errno(errno.EROFS) == 1
    assert p.nbd_errno(errno.EBADF) == p.NBD_EIO and p.nbd_errno(None) == p.NBD_EIO
