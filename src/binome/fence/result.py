"""What every fence operation returns, and the scrubbing that keeps secrets out of it.

Owns :class:`FenceResult` (one fence device operation's outcome: never an exception
for an unreachable or misbehaving device, so the CRM can record *why* fencing failed
and decide) and :func:`scrub`, applied to every text that may echo a password
(agent output, library error messages) before it is logged or returned.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["REDACTED", "FenceResult", "scrub"]

REDACTED = "***"


@dataclass(frozen=True)
class FenceResult:
    """One operation on a fence device.

    ``ok``: the operation did what it was asked (for ``off`` with confirmation: the
    device *confirmed* the power is off). ``action``: ``off``, ``on``, ``status``,
    ``reboot``, ``monitor``. ``state``: the power state last seen (``"on"``,
    ``"off"``), None if unknown. ``detail``: one line for the task and cluster log
    (never contains a secret). ``duration``: seconds the operation took.
    """

    ok: bool
    action: str
    state: str | None
    detail: str
    duration: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def scrub(text: str, secrets: Iterable[str | None]) -> str:
    """``text`` with every occurrence of each non-empty secret replaced by ``***``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    return text
