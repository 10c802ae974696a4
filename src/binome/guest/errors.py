"""The guest layer's exception types: the runtime's (`GuestError`, re-exported by
``binome.guest.runtime``) and the service's refusals (`GuestFailure`)."""

from __future__ import annotations

from binome.errors import BinomeError

__all__ = ["GuestError", "GuestFailure", "HotplugProblems"]


class GuestError(BinomeError):
    """A guest operation failed; the message is what an admin reads.

    Messages follow Proxmox's wording where one exists ("VM 100 already
    running", "VM 100 not running"), so the API layer can pass them through.
    """


class GuestFailure(BinomeError):
    """A guest operation refused or failed; the message is PVE's text where one exists."""


class HotplugProblems(GuestFailure):
    """A config update was written, but some of its changes could not be applied to the
    running guest and stay pending: {key: "hotplug problem - <reason>"} (PVE's
    vmconfig_hotplug_pending errors, which its API returns as parameter errors)."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in sorted(errors.items())))
        self.errors = errors
