"""SPICE proxy tickets (PVE's assemble_spice_ticket / verify_spice_connect_url format)."""

from __future__ import annotations

import re

import pytest

from binome import tickets

pytestmark = pytest.mark.unit

KEY = tickets.spice_key(b"k" * 32)
T0 = 1_700_000_000


def test_the_ticket_is_pves_format_and_the_password_one_time_hex() -> None:
    password, ticket = tickets.make_spice_ticket(KEY, 100, "Node-A", 61000, now=T0)
    assert re.fullmatch(r"[0-9a-f]{40}", password)
    assert re.fullmatch(rf"pvespiceproxy:{T0:08x}:100:node-a:61000::[0-9a-f]{{40}}", ticket)
    assert tickets.make_spice_ticket(KEY, 100, "node-a", 61000, now=T0)[0] != password
    assert tickets.verify_spice_connect(KEY, f"{ticket}:61000", now=T0 + 10) == (
        100, "node-a", 61000)


def test_the_key_is_derived_not_the_auth_key() -> None:
    assert KEY != b"k" * 32 and len(KEY) == 32
    assert tickets.spice_key(b"o" * 32) != KEY


@pytest.mark.parametrize(("age", "valid"), [
    (-21, False), (-20, False), (-19, True), (0, True), (39, True), (40, False), (600, False)])
def test_validity_is_pves_window(age: int, valid: bool) -> None:
    _, ticket = tickets.make_spice_ticket(KEY, 100, "n1", 61000, now=T0)
    got = tickets.verify_spice_connect(KEY, f"{ticket}:61000", now=T0 + age)
    assert (got is not None) == valid


def test_forged_or_altered_tickets_are_refused() -> None:
    _, ticket = tickets.make_spice_ticket(KEY, 100, "n1", 61000, now=T0)
    plain, _, sig = ticket.partition("::")
    other = tickets.spice_key(b"o" * 32)
    for connect in (
        f"{ticket}:61001",                                      # another port than signed
        f"{plain.replace(':100:', ':101:')}::{sig}:61000",      # another VM
        f"{plain.replace(':n1:', ':n2:')}::{sig}:61000",        # another node
        f"{plain}::{'0' * 40}:61000",                           # forged signature
        f"{tickets.make_spice_ticket(other, 100, 'n1', 61000, now=T0)[1]}:61000",
        ticket,                                                 # no port
        "", "junk", f"{ticket}:61000 ", f"{ticket.upper()}:61000",
    ):
        assert tickets.verify_spice_connect(KEY, connect, now=T0) is None, connect
