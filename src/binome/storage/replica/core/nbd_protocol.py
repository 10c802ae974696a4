"""NBD protocol constants and wire codecs (pure, no I/O).

Fixed-newstyle negotiation and the transmission phase with simple and
structured replies, as in the NBD protocol document (NetworkBlockDevice/nbd
`doc/proto.md`), with the values QEMU and libnbd use. Extended headers
(NBD_OPT_EXTENDED_HEADERS, 64-bit lengths) are not implemented: the option is
answered NBD_REP_ERR_UNSUP and clients fall back to compact headers.
"""

from __future__ import annotations

import errno
import struct

# --- handshake ------------------------------------------------------------------------
NBDMAGIC = 0x4E42444D41474943          # "NBDMAGIC"
IHAVEOPT = 0x49484156454F5054          # "IHAVEOPT"
OPT_REPLY_MAGIC = 0x3E889045565A9

FLAG_FIXED_NEWSTYLE = 1 << 0           # handshake flags (server)
FLAG_NO_ZEROES = 1 << 1
FLAG_C_FIXED_NEWSTYLE = 1 << 0         # client flags
FLAG_C_NO_ZEROES = 1 << 1

OPT_EXPORT_NAME = 1
OPT_ABORT = 2
OPT_LIST = 3
OPT_STARTTLS = 5
OPT_INFO = 6
OPT_GO = 7
OPT_STRUCTURED_REPLY = 8
OPT_LIST_META_CONTEXT = 9
OPT_SET_META_CONTEXT = 10
OPT_EXTENDED_HEADERS = 11

REP_ACK = 1
REP_SERVER = 2
REP_INFO = 3
REP_META_CONTEXT = 4
_REP_ERR = 1 << 31
REP_ERR_UNSUP = _REP_ERR | 1
REP_ERR_POLICY = _REP_ERR | 2
REP_ERR_INVALID = _REP_ERR | 3
REP_ERR_PLATFORM = _REP_ERR | 4
REP_ERR_TLS_REQD = _REP_ERR | 5
REP_ERR_UNKNOWN = _REP_ERR | 6
REP_ERR_SHUTDOWN = _REP_ERR | 7
REP_ERR_BLOCK_SIZE_REQD = _REP_ERR | 8
REP_ERR_TOO_BIG = _REP_ERR | 9

INFO_EXPORT = 0
INFO_NAME = 1
INFO_DESCRIPTION = 2
INFO_BLOCK_SIZE = 3

# --- transmission flags (per export) --------------------------------------------------
TF_HAS_FLAGS = 1 << 0
TF_READ_ONLY = 1 << 1
TF_SEND_FLUSH = 1 << 2
TF_SEND_FUA = 1 << 3
TF_ROTATIONAL = 1 << 4
TF_SEND_TRIM = 1 << 5
TF_SEND_WRITE_ZEROES = 1 << 6
TF_SEND_DF = 1 << 7
TF_CAN_MULTI_CONN = 1 << 8
TF_SEND_RESIZE = 1 << 9
TF_SEND_CACHE = 1 << 10
TF_SEND_FAST_ZERO = 1 << 11

# --- requests and replies -------------------------------------------------------------
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
STRUCTURED_REPLY_MAGIC = 0x668E33EF

CMD_READ = 0
CMD_WRITE = 1
CMD_DISC = 2
CMD_FLUSH = 3
CMD_TRIM = 4
CMD_CACHE = 5
CMD_WRITE_ZEROES = 6
CMD_BLOCK_STATUS = 7
CMD_RESIZE = 8

CMD_FLAG_FUA = 1 << 0
CMD_FLAG_NO_HOLE = 1 << 1
CMD_FLAG_DF = 1 << 2
CMD_FLAG_REQ_ONE = 1 << 3
CMD_FLAG_FAST_ZERO = 1 << 4

REPLY_FLAG_DONE = 1 << 0
REPLY_TYPE_NONE = 0
REPLY_TYPE_OFFSET_DATA = 1
REPLY_TYPE_OFFSET_HOLE = 2
REPLY_TYPE_BLOCK_STATUS = 5
REPLY_TYPE_ERROR = (1 << 15) | 1
REPLY_TYPE_ERROR_OFFSET = (1 << 15) | 2

STATE_HOLE = 1 << 0                    # base:allocation flags
STATE_ZERO = 1 << 1
BASE_ALLOCATION = "base:allocation"

# Error values on the wire (the protocol fixes them; they equal Linux errnos).
NBD_EPERM = 1
NBD_EIO = 5
NBD_ENOMEM = 12
NBD_EINVAL = 22
NBD_ENOSPC = 28
NBD_EOVERFLOW = 75
NBD_ENOTSUP = 95
NBD_ESHUTDOWN = 108
_ERRNO_TO_NBD = {
    errno.EPERM: NBD_EPERM, errno.EACCES: NBD_EPERM, errno.EROFS: NBD_EPERM,
    errno.EIO: NBD_EIO, errno.ENOMEM: NBD_ENOMEM, errno.EINVAL: NBD_EINVAL,
    errno.ENOSPC: NBD_ENOSPC, errno.EDQUOT: NBD_ENOSPC, errno.EFBIG: NBD_ENOSPC,
    errno.EOVERFLOW: NBD_EOVERFLOW, errno.ENOTSUP: NBD_ENOTSUP,
    errno.EOPNOTSUPP: NBD_ENOTSUP, errno.ESHUTDOWN: NBD_ESHUTDOWN,
}

MAX_STRING = 4096
MAX_REQUEST = 32 * 1024 * 1024         # advertised maximum block size (QEMU's limit)
PREFERRED_BLOCK = 4096

REQUEST = struct.Struct(">IHHQQI")     # magic, flags, type, cookie, offset, length
SIMPLE_REPLY = struct.Struct(">IIQ")   # magic, error, cookie
STRUCTURED_HDR = struct.Struct(">IHHQI")  # magic, flags, type, cookie, length
OPTION_HDR = struct.Struct(">QII")     # IHAVEOPT, option, length
OPTION_REPLY_HDR = struct.Struct(">QIII")  # magic, option, reply type, length


def nbd_errno(err: int | None) -> int:
    """Map a local errno to the NBD wire value (EIO for anything unlisted)."""
    return _ERRNO_TO_NBD.get(err or errno.EIO, NBD_EIO)


def option_reply(option: int, reply: int, data: bytes = b"") -> bytes:
    return OPTION_REPLY_HDR.pack(OPT_REPLY_MAGIC, option, reply, len(data)) + data


def info_export(size: int, flags: int) -> bytes:
    return struct.pack(">HQH", INFO_EXPORT, size, flags)


def info_block_size(minimum: int, preferred: int, maximum: int) -> bytes:
    return struct.pack(">HIII", INFO_BLOCK_SIZE, minimum, preferred, maximum)


def simple_reply(cookie: int, error: int = 0) -> bytes:
    return SIMPLE_REPLY.pack(SIMPLE_REPLY_MAGIC, error, cookie)


def structured_error(cookie: int, error: int, message: str = "") -> bytes:
    msg = message.encode()[:MAX_STRING]
    return (STRUCTURED_HDR.pack(STRUCTURED_REPLY_MAGIC, REPLY_FLAG_DONE, REPLY_TYPE_ERROR,
                                cookie, 6 + len(msg))
            + struct.pack(">IH", error, len(msg)) + msg)


def structured_none(cookie: int) -> bytes:
    return STRUCTURED_HDR.pack(STRUCTURED_REPLY_MAGIC, REPLY_FLAG_DONE, REPLY_TYPE_NONE,
                               cookie, 0)


def read_chunk_header(cookie: int, offset: int, length: int) -> bytes:
    """Header of a single, final NBD_REPLY_TYPE_OFFSET_DATA chunk (28 bytes)."""
    return (STRUCTURED_HDR.pack(STRUCTURED_REPLY_MAGIC, REPLY_FLAG_DONE,
                                REPLY_TYPE_OFFSET_DATA, cookie, 8 + length)
            + struct.pack(">Q", offset))


READ_CHUNK_HEADER_SIZE = STRUCTURED_HDR.size + 8


def block_status_reply(cookie: int, context_id: int, extents: list[tuple[int, int]]) -> bytes:
    body = struct.pack(">I", context_id) + b"".join(
        struct.pack(">II", length, flags) for length, flags in extents)
    return STRUCTURED_HDR.pack(STRUCTURED_REPLY_MAGIC, REPLY_FLAG_DONE, REPLY_TYPE_BLOCK_STATUS,
                               cookie, len(body)) + body


class OptionParseError(ValueError):
    """A malformed option payload (answered NBD_REP_ERR_INVALID)."""


def parse_info_request(data: bytes) -> tuple[str, list[int]]:
    """NBD_OPT_INFO/GO payload: export name and requested info types."""
    if len(data) < 6:
        raise OptionParseError("short NBD_OPT_GO/INFO payload")
    (name_len,) = struct.unpack_from(">I", data, 0)
    if name_len > MAX_STRING or 4 + name_len + 2 > len(data):
        raise OptionParseError("bad export name length")
    name = data[4:4 + name_len].decode("utf-8", "replace")
    (count,) = struct.unpack_from(">H", data, 4 + name_len)
    if len(data) != 4 + name_len + 2 + 2 * count:
        raise OptionParseError("bad information request count")
    infos = list(struct.unpack_from(f">{count}H", data, 6 + name_len))
    return name, infos


def parse_meta_request(data: bytes) -> tuple[str, list[str]]:
    """NBD_OPT_LIST/SET_META_CONTEXT payload: export name and queries."""
    try:
        (name_len,) = struct.unpack_from(">I", data, 0)
        if name_len > MAX_STRING:
            raise OptionParseError("export name too long")
        name = data[4:4 + name_len].decode()
        pos = 4 + name_len
        (count,) = struct.unpack_from(">I", data, pos)
        pos += 4
        queries = []
        for _ in range(count):
            (qlen,) = struct.unpack_from(">I", data, pos)
            pos += 4
            if qlen > MAX_STRING or pos + qlen > len(data):
                raise OptionParseError("bad query length")
            queries.append(data[pos:pos + qlen].decode())
            pos += qlen
    except (struct.error, UnicodeDecodeError) as e:
        raise OptionParseError(str(e)) from None
    if pos != len(data):
        raise OptionParseError("trailing bytes in meta context request")
    return name, queries
