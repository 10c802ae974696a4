"""The runtime layer's one exception type (re-exported by ``binome.guest.runtime``)."""

from __future__ import annotations

from binome.errors import BinomeError

__all__ = ["GuestError"]


class GuestError(BinomeError):
    """A guest operation failed; the message is what an admin reads.

    Messages follow Proxmox's wording where one exists ("VM 100 already
    running", "VM 100 not running"), so the API layer can pass them through.
    """
