"""UPID codec: exact PVE text format, proxmoxer compatibility, field validation."""

import pytest

from binome.tasks.upid import InvalidUpid, Upid

PVE_EXAMPLE = "UPID:pve1:000FF1FD:10F9374C:630D702C:qmstart:100:root@pam:"


def proxmoxer_decode(text):
    """proxmoxer.tools.Tasks.decode_upid's rule, restated so the test needs no proxmoxer."""
    segments = text.split(":")
    assert segments[0] == "UPID"
    assert len(segments) == 9
    return {
        "node": segments[1],
        "pid": int(segments[2], 16),
        "pstart": int(segments[3], 16),
        "starttime": int(segments[4], 16),
        "type": segments[5],
        "id": segments[6],
        "user": segments[7].split("!")[0],
        "comment": segments[8],
    }


def make(**kw):
    fields = dict(node="node1", pid=0x1A, pstart=0xBEEF, starttime=0x65000000,
                  type="vzdump", id="100", user="root@pam")
    fields.update(kw)
    return Upid(**fields)


def test_pve_example_parses_to_ints():
    u = Upid.parse(PVE_EXAMPLE)
    assert u.node == "pve1"
    assert u.pid == 0x000FF1FD == 1044989
    assert u.pstart == 0x10F9374C == 284768076
    assert u.starttime == 0x630D702C == 1661825068
    assert u.type == "qmstart"
    assert u.id == "100"
    assert u.user == "root@pam"
    assert str(u) == PVE_EXAMPLE


def test_exact_format_uppercase_zero_padded_trailing_colon():
    u = make(pid=0xAB, pstart=0xCDEF, starttime=0x1F)
    assert str(u) == "UPID:node1:000000AB:0000CDEF:0000001F:vzdump:100:root@pam:"


def test_round_trip_object_and_text():
    u = make()
    assert Upid.parse(str(u)) == u
    assert str(Upid.parse(PVE_EXAMPLE)) == PVE_EXAMPLE


@pytest.mark.parametrize("upid", [
    make(),
    make(id=""),
    make(user="root@pam!mytoken"),
    make(pstart=0x123456789),
    make(node="a"),
    make(node="node-2.example"),
])
def test_proxmoxer_decode_rule(upid):
    text = str(upid)
    decoded = proxmoxer_decode(text)
    assert decoded["node"] == upid.node
    assert decoded["pid"] == upid.pid
    assert decoded["pstart"] == upid.pstart
    assert decoded["starttime"] == upid.starttime
    assert decoded["type"] == upid.type
    assert decoded["id"] == upid.id
    assert decoded["user"] == upid.user.split("!")[0]
    assert decoded["comment"] == ""


def test_real_proxmoxer_decodes_our_upid():
    tools = pytest.importorskip("proxmoxer.tools")
    u = make(user="root@pam!tok")
    d = tools.Tasks.decode_upid(str(u))
    assert (d["node"], d["pid"], d["pstart"], d["starttime"]) == (
        u.node, u.pid, u.pstart, u.starttime)
    assert (d["type"], d["id"], d["user"]) == (u.type, u.id, "root@pam")


def test_nine_digit_pstart_accepted():
    text = "UPID:n1:00000001:123456789:630D702C:qmstart:100:root@pam:"
    u = Upid.parse(text)
    assert u.pstart == 0x123456789
    assert str(u) == text
    assert str(make(pstart=0x123456789)).split(":")[3] == "123456789"


def test_empty_id_allowed():
    u = make(id="")
    assert str(u) == "UPID:node1:0000001A:0000BEEF:65000000:vzdump::root@pam:"
    assert Upid.parse(str(u)).id == ""


def test_token_user_allowed():
    u = make(user="root@pam!mytoken")
    assert Upid.parse(str(u)).user == "root@pam!mytoken"


@pytest.mark.parametrize("bad_id", ["a:b", "a/b", "a b", "a\tb", "a\n"])
def test_bad_id_rejected(bad_id):
    with pytest.raises(InvalidUpid):
        make(id=bad_id)


@pytest.mark.parametrize("field", ["type", "user"])
@pytest.mark.parametrize("bad", ["", "a:b", "a b"])
def test_bad_type_or_user_rejected(field, bad):
    with pytest.raises(InvalidUpid):
        make(**{field: bad})


def test_invalid_upid_is_a_value_error():
    assert issubclass(InvalidUpid, ValueError)


@pytest.mark.parametrize("text", [
    "UPID:pve1:000ff1fd:10F9374C:630D702C:qmstart:100:root@pam:",      # lowercase pid
    "UPID:pve1:000FF1FD:10f9374c:630D702C:qmstart:100:root@pam:",      # lowercase pstart
    "UPID:pve1:000FF1FD:10F9374C:630d702c:qmstart:100:root@pam:",      # lowercase starttime
    "UPID:pve1:000FF1FD:10F9374C:630D702C:qmstart:100:root@pam",       # no trailing colon
    "upid:pve1:000FF1FD:10F9374C:630D702C:qmstart:100:root@pam:",      # wrong prefix
    "XPID:pve1:000FF1FD:10F9374C:630D702C:qmstart:100:root@pam:",      # wrong prefix
    "UPID:pve1:FF1FD:10F9374C:630D702C:qmstart:100:root@pam:",         # short pid
    "UPID:pve1:000FF1FD:10F9374C:630D702C:qmstart:100:root@pam::",     # ten segments
    "UPID:pve1:000FF1FD:10F9374C:630D702C:qmstart:a/b:root@pam:",      # '/' in id
    "UPID:pve1:000FF1FD:10F9374C:630D702C:qmstart:100::",              # empty user
    " UPID:pve1:000FF1FD:10F9374C:630D702C:qmstart:100:root@pam:",     # leading space
    "",
])
def test_parse_errors(text):
    with pytest.raises(InvalidUpid, match="unable to parse worker upid"):
        Upid.parse(text)


def test_to_dict():
    u = Upid.parse(PVE_EXAMPLE)
    assert u.to_dict() == {
        "upid": PVE_EXAMPLE, "node": "pve1", "pid": 0x000FF1FD, "pstart": 0x10F9374C,
        "starttime": 0x630D702C, "type": "qmstart", "id": "100", "user": "root@pam",
    }


def test_trailing_newline_rejected():
    with pytest.raises(InvalidUpid):
        Upid.parse(PVE_EXAMPLE + "\n")


def test_node_with_colon_rejected_at_construction():
    with pytest.raises(InvalidUpid):
        make(node="a:b")
