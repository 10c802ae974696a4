"""Peer protocol codecs, HMAC authentication, settings compatibility, net config, bitmap merge."""

import pytest

from binome.storage.replica.core import auth, wire
from binome.storage.replica.core.bitmap import Bitmap
from binome.storage.replica.core.config import ConfigError, VolumeConfig, split_address
from binome.storage.replica.core.handshake import NetSettings, incompatible
from binome.storage.replica.core.splitbrain import AfterSb
from binome.storage.replica.core.wire import P


def test_authentication_succeeds_with_the_same_secret():
    a, b = auth.challenge(), auth.challenge()
    auth.verify("s3cret", a, auth.response("s3cret", a, b))
    auth.verify(b"s3cret", b, auth.response("s3cret", b, a))


def test_wrong_secret_is_refused():
    a, b = auth.challenge(), auth.challenge()
    with pytest.raises(auth.AuthError, match="Authentication of peer failed"):
        auth.verify("s3cret", a, auth.response("guess", a, b))


def test_reflected_challenge_is_refused():
    a = auth.challenge()
    with pytest.raises(auth.AuthError, match="our own challenge"):
        auth.response("s3cret", a, a)
    with pytest.raises(auth.AuthError):
        auth.response("s3cret", b"short", a)


def test_packet_framing():
    raw = wire.packet(P.PING)
    assert raw == b"\x86\x20\xec\x20\x00\x13\x00\x00\x00\x00"
    assert wire.parse_header(raw) == (P.PING, 0)
    with pytest.raises(wire.WireError, match="magic"):
        wire.parse_header(b"\0" * 10)
    with pytest.raises(wire.WireError, match="unknown packet type"):
        wire.parse_header(wire.HEADER.pack(wire.MAGIC, 0x7777, 0))
    with pytest.raises(wire.WireError, match="too large"):
        wire.parse_header(wire.HEADER.pack(wire.MAGIC, P.DATA, wire.MAX_PAYLOAD + 1))


def test_data_header_length_includes_data_unless_discard():
    hdr = wire.data_header(7, 4096, 512, wire.DP_FUA, 5)
    assert wire.parse_header(hdr[:10]) == (P.DATA, wire.DATA_HDR.size + 512)
    assert wire.DATA_HDR.unpack(hdr[10:]) == (7, 4096, 512, wire.DP_FUA, 5)
    trim = wire.data_header(8, 0, 1 << 20, wire.DP_DISCARD)
    assert wire.parse_header(trim[:10]) == (P.DATA, wire.DATA_HDR.size)


def test_json_packets():
    raw = wire.json_packet(P.STATE, {"role": "Primary", "disk": "UpToDate"})
    cmd, length = wire.parse_header(raw[:10])
    assert cmd == P.STATE and wire.parse_json(raw[10:10 + length])["role"] == "Primary"
    with pytest.raises(wire.WireError):
        wire.parse_json(b"[1]")


def settings(**kw):
    base = dict(protocol="C", after_sb_0pri=AfterSb.DISCONNECT,
                after_sb_1pri=AfterSb.DISCONNECT, after_sb_2pri=AfterSb.DISCONNECT,
                allow_two_primaries=False)
    return NetSettings(**{**base, **kw})


@pytest.mark.parametrize("theirs, error", [
    (settings(), None),
    (settings(protocol="A"), "incompatible protocol settings"),
    (settings(after_sb_1pri=AfterSb.CONSENSUS), "incompatible after-sb-1pri settings"),
    (settings(allow_two_primaries=True), "incompatible allow-two-primaries settings"),
    (settings(discard_my_data=True), None),
])
def test_settings_compatibility(theirs, error):
    assert incompatible(settings(), theirs) == error


def test_discard_node_is_compared_from_each_side():
    # Both name the same victim: it is "local" on one side and "remote" on the other.
    mine = settings(after_sb_0pri=AfterSb.DISCARD_REMOTE)
    assert incompatible(mine, settings(after_sb_0pri=AfterSb.DISCARD_LOCAL)) is None
    assert incompatible(mine, settings(after_sb_0pri=AfterSb.DISCARD_REMOTE)) is not None


def test_both_discard_my_data_is_refused():
    assert incompatible(settings(discard_my_data=True), settings(discard_my_data=True)) \
        == "incompatible discard-my-data settings"


def cfg(**kw):
    base = dict(name="v", size=1 << 20, backing="/b", meta="/m", socket="/s",
                address="10.0.0.1:7789", peer_address="10.0.0.2:7789", secret="x",
                node="a", peer_node="b")
    return VolumeConfig(**{**base, **kw})


@pytest.mark.parametrize("bad", [
    {"secret": ""}, {"protocol": "D"}, {"peer_address": "10.0.0.1:7789"},
    {"address": "nowhere"}, {"allow_two_primaries": True, "protocol": "B"},
    {"after_sb_1pri": "discard-zero-changes"}, {"after_sb_0pri": "discard-node-zed"},
    {"rr_conflict": "maybe"}, {"connect_int": 0},
])
def test_net_config_validation(bad):
    with pytest.raises(ConfigError):
        cfg(**bad).validate()


def test_net_config_ok():
    c = cfg(after_sb_0pri="discard-node-b", allow_two_primaries=True)
    c.validate()
    assert c.has_net and not cfg(address="").has_net
    assert split_address("[::1]:7789") == ("::1", 7789)


def test_bitmap_merge_is_an_or():
    mine = Bitmap(64)
    mine.set_range(0, 3)
    theirs = Bitmap(64)
    theirs.set_range(2, 9)
    assert mine.merge(0, theirs.to_bytes()) == 6
    assert list(mine.runs()) == [(0, 10)] and mine.weight == 10
    assert mine.merge(0, theirs.to_bytes()) == 0
