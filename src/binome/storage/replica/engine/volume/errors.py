"""The error a volume operation refuses with (a DRBD-style code and a message)."""

from __future__ import annotations


class VolumeError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
