"""Authentication: PVE tickets and CSRF tokens, PAM (password hashes: access.secrets).

The ticket and CSRF token format is `binome.tickets` (a leaf that node-to-node callers
use too); this module adds what the API needs on top: AuthError on a bad ticket.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from binome.api.errors import AuthError
from binome.tickets import InvalidTicket, ticket_user

# re-exported: the API signs and checks tokens through this module
from binome.tickets import make_csrf_token as make_csrf_token
from binome.tickets import make_ticket as make_ticket
from binome.tickets import verify_csrf_token as verify_csrf_token

PAM_SERVICE_FILE = Path("/etc/pam.d/binome")

def verify_ticket(key: bytes, ticket: str, now: float | None = None) -> str:
    """Return the user id of a valid ticket; raise AuthError otherwise."""
    try:
        return ticket_user(key, ticket, now)
    except InvalidTicket as exc:
        raise AuthError(str(exc)) from None


def _pam_check(username: str, password: str) -> bool:
    import pam  # python-pam; imported lazily: only the pam realm needs libpam

    service = "binome" if PAM_SERVICE_FILE.exists() else "login"
    return bool(pam.pam().authenticate(username, password, service=service))


async def pam_authenticate(username: str, password: str) -> bool:
    return await asyncio.get_running_loop().run_in_executor(None, _pam_check, username, password)


def split_userid(userid: str) -> tuple[str, str]:
    name, _, realm = userid.rpartition("@")
    return name, realm
