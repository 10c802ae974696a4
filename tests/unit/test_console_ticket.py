"""One-time console tickets: bound to user, VM and key; single use; 30 s lifetime."""

import re

import pytest

from binome.api.errors import ApiError
from binome.api.methods import console
from binome.api.methods.console import (
    TICKET_LIFETIME,
    check_console_ticket,
    make_console_ticket,
)

KEY = b"k" * 32
OTHER_KEY = b"o" * 32
USER = "alice@pve"


@pytest.fixture(autouse=True)
def fresh_used(monkeypatch):
    """Every test starts with an empty 'already used' table."""
    monkeypatch.setattr(console, "_used", {})


@pytest.fixture
def clock(monkeypatch):
    now = [1_700_000_000.25]
    monkeypatch.setattr(console.time, "time", lambda: now[0])
    return now


def rejected(ticket, *, key=KEY, user=USER, vmid=100):
    with pytest.raises(ApiError) as info:
        check_console_ticket(key, ticket, user, vmid)
    assert info.value.status == 401
    return info.value.message


def test_ticket_format():
    t = make_console_ticket(KEY, USER, 100, "vnc")
    assert re.fullmatch(r"PVEVNC:vnc:[0-9A-F]{8}:[0-9a-f]{16}::[0-9a-f]{64}", t), t
    assert make_console_ticket(KEY, USER, 100, "vnc") != t     # random nonce


@pytest.mark.parametrize("kind", ["vnc", "serial"])
def test_valid_ticket_returns_its_kind(kind):
    t = make_console_ticket(KEY, USER, 100, kind)
    assert check_console_ticket(KEY, t, USER, 100) == kind


def test_bound_to_user():
    t = make_console_ticket(KEY, USER, 100, "vnc")
    assert rejected(t, user="bob@pve") == "invalid console ticket"
    assert check_console_ticket(KEY, t, USER, 100) == "vnc"   # not consumed by the failure


def test_bound_to_vmid():
    t = make_console_ticket(KEY, USER, 100, "vnc")
    assert rejected(t, vmid=101) == "invalid console ticket"
    assert check_console_ticket(KEY, t, USER, 100) == "vnc"


def test_bound_to_key():
    t = make_console_ticket(KEY, USER, 100, "serial")
    assert rejected(t, key=OTHER_KEY) == "invalid console ticket"
    assert check_console_ticket(KEY, t, USER, 100) == "serial"


def test_single_use():
    t = make_console_ticket(KEY, USER, 100, "vnc")
    assert check_console_ticket(KEY, t, USER, 100) == "vnc"
    assert "already used" in rejected(t)
    # other tickets of the same user and VM are unaffected
    t2 = make_console_ticket(KEY, USER, 100, "vnc")
    assert check_console_ticket(KEY, t2, USER, 100) == "vnc"


def test_expired(clock):
    t = make_console_ticket(KEY, USER, 100, "vnc")
    clock[0] += TICKET_LIFETIME - 1
    t_ok = make_console_ticket(KEY, USER, 100, "vnc")
    clock[0] += 2                       # t is now past its 30 s, t_ok is not
    assert "expired" in rejected(t)
    assert check_console_ticket(KEY, t_ok, USER, 100) == "vnc"


def test_expired_long_after(clock):
    t = make_console_ticket(KEY, USER, 100, "serial")
    clock[0] += 3600
    assert "expired" in rejected(t)


def test_valid_just_within_lifetime(clock):
    t = make_console_ticket(KEY, USER, 100, "vnc")
    clock[0] += TICKET_LIFETIME - 0.5
    assert check_console_ticket(KEY, t, USER, 100) == "vnc"


def test_used_ticket_stays_rejected_after_purge(clock):
    t = make_console_ticket(KEY, USER, 100, "vnc")
    assert check_console_ticket(KEY, t, USER, 100) == "vnc"
    clock[0] += TICKET_LIFETIME + 5
    other = make_console_ticket(KEY, USER, 100, "vnc")
    assert check_console_ticket(KEY, other, USER, 100) == "vnc"   # purges old entries
    assert t not in console._used
    assert rejected(t) != ""            # still refused (now as expired)


def test_tampered_kind_rejected():
    t = make_console_ticket(KEY, USER, 100, "serial")
    assert rejected(t.replace("PVEVNC:serial:", "PVEVNC:vnc:")) == "invalid console ticket"


def test_tampered_stamp_rejected(clock):
    t = make_console_ticket(KEY, USER, 100, "vnc")
    stamp = t.split(":")[2]
    newer = f"{int(stamp, 16) + 3600:08X}"
    clock[0] += 3600
    assert rejected(t.replace(f":{stamp}:", f":{newer}:")) == "invalid console ticket"


@pytest.mark.parametrize("ticket", [
    "", "garbage", "PVEVNC:vnc", "PVE:vnc:00000000:00::" + "0" * 64,
    "PVEVNC:vnc:00000000:00:extra::" + "0" * 64, "PVEVNC:vnc:00000000:00::",
])
def test_malformed_tickets(ticket):
    assert rejected(ticket) == "invalid console ticket"
