"""The TFA-pending (partial) ticket: bound to its user, short-lived, never a full ticket."""

from __future__ import annotations

import pytest

from binome.api.errors import AuthError
from binome.api.methods.access import (
    TFA_TICKET_LIFETIME,
    _partial_ticket,
    _partial_ticket_valid,
)
from binome.tickets import InvalidTicket, make_ticket, ticket_user

KEY = b"k" * 32
NOW = 1_800_000_000.0


def test_partial_ticket_is_bound_to_user_key_and_time() -> None:
    t = _partial_ticket(KEY, "alice@pve", {"totp": True, "recovery": [0, 1]}, NOW)
    assert t.startswith("PVE:!tfa!%7B")          # PVE's shape: the challenge is readable
    assert _partial_ticket_valid(KEY, t, "alice@pve", NOW + 10)
    assert not _partial_ticket_valid(KEY, t, "bob@pve", NOW + 10)
    assert not _partial_ticket_valid(b"x" * 32, t, "alice@pve", NOW + 10)
    assert not _partial_ticket_valid(KEY, t, "alice@pve", NOW + TFA_TICKET_LIFETIME + 1)
    assert not _partial_ticket_valid(KEY, t.replace("%7B", "%7C", 1), "alice@pve", NOW)


def test_partial_ticket_is_no_full_ticket_and_the_reverse() -> None:
    t = _partial_ticket(KEY, "alice@pve", {"totp": True}, NOW)
    with pytest.raises((InvalidTicket, AuthError)):
        ticket_user(KEY, t, NOW)
    full = make_ticket(KEY, "alice@pve", NOW)
    assert not _partial_ticket_valid(KEY, full, "alice@pve", NOW)
