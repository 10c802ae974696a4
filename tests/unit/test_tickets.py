"""The ticket format as a leaf (what node-to-node callers mint without the API)."""

from __future__ import annotations

import pytest

from binome import tickets
from binome.api import auth
from binome.api.errors import AuthError

pytestmark = pytest.mark.unit

KEY = b"k" * 32
T0 = 1_700_000_000


def test_a_minted_ticket_names_its_user() -> None:
    ticket = tickets.make_ticket(KEY, "root@pam", now=T0)
    assert tickets.ticket_user(KEY, ticket, now=T0 + 60) == "root@pam"


@pytest.mark.parametrize(("ticket", "message"), [
    ("junk", "invalid ticket"),
    (tickets.make_ticket(b"o" * 32, "root@pam", now=T0), "invalid ticket"),
    (tickets.make_ticket(KEY, "root@pam", now=T0 - 7201), "ticket expired"),
])
def test_a_bad_ticket_is_invalid_and_the_api_says_401(ticket: str, message: str) -> None:
    with pytest.raises(tickets.InvalidTicket, match=message):
        tickets.ticket_user(KEY, ticket, now=T0)
    with pytest.raises(AuthError, match=message) as exc:
        auth.verify_ticket(KEY, ticket, now=T0)
    assert exc.value.status == 401


def test_csrf_tokens_are_bound_to_the_user() -> None:
    token = tickets.make_csrf_token(KEY, "alice@pve", now=T0)
    assert tickets.verify_csrf_token(KEY, token, "alice@pve", now=T0)
    assert not tickets.verify_csrf_token(KEY, token, "root@pam", now=T0)
