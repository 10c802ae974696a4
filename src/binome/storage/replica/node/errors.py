"""The errors of binomed's volume operations (raised by `volumes` and `records`)."""

from __future__ import annotations

from binome.errors import BinomeError


class VolumeFailure(BinomeError):
    """A volume operation was refused or failed; the message is for the administrator."""


class SettingRefused(VolumeFailure):
    """An `adjust` refused by an engine; `setting` names the refused one (config key)."""

    def __init__(self, message: str, setting: str | None) -> None:
        super().__init__(message)
        self.setting = setting


class FenceFailed(VolumeFailure):
    """The peer's copy could not be recorded Outdated (no quorum, store unavailable)."""


class PeerPrimary(VolumeFailure):
    """A promotion refused because the peer's copy is Primary and the cluster view shows
    its node online. Transient when that node was just fenced: its lease is revoked
    first, and this node's view of the members follows a moment later."""
