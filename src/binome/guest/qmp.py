"""The QMP channel of one running guest: the runtime's own connection to its QEMU.

Owns the connection to a guest's QMP socket (opened on demand, opened afresh
after a timeout or a broken link: a late reply would otherwise answer the next
command), the commands sent over it (QMP errors and timeouts become
`GuestError`), the guest's runstate (``query-status``), and the events QEMU
sends on it: the reason of its last SHUTDOWN event, which refines how a guest
ended. Which guest runs, and when, is the runtime's business (`runtime`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any

from qemu.qmp import ExecuteError, QMPClient, QMPError, Runstate

from binome.guest.errors import GuestError

log = logging.getLogger("binome.guest.runtime")

QMP_CONNECT_TIMEOUT = 5.0
QMP_TIMEOUT = 10.0

# readiness polling connects before QEMU listens: those failures are expected
_SILENT = logging.getLogger("binome.guest.qmp-startup")
_SILENT.setLevel(logging.CRITICAL)
_SILENT.propagate = False


class QmpChannel:
    """The QMP connection to the QEMU of guest `vmid`, listening on `socket`."""

    def __init__(self, vmid: int, socket: Path) -> None:
        self.vmid = vmid
        self.socket = socket
        self.client: QMPClient | None = None
        self.shutdown_reason: str | None = None   # reason of the last SHUTDOWN event
        # set at every MIGRATION event: a migration's end is noticed when QEMU says so,
        # not at the next poll (the guest sits paused on both sides meanwhile)
        self.migration_changed = asyncio.Event()
        self._event_task: asyncio.Task[None] | None = None

    async def connect(self, *, quiet: bool = False) -> QMPClient:
        """The connected QMP client, (re)connecting when needed. `quiet`: a failed
        attempt is expected (QEMU still starting) and logs nothing."""
        if self.client is not None and self.client.runstate == Runstate.RUNNING:
            return self.client
        await self.disconnect()
        client = QMPClient(f"vm{self.vmid}")
        normal_logger = client.logger
        if quiet:
            client.logger = _SILENT
        try:
            await asyncio.wait_for(client.connect(str(self.socket)), QMP_CONNECT_TIMEOUT)
        except (QMPError, OSError, TimeoutError, EOFError) as exc:
            with contextlib.suppress(Exception):
                await client.disconnect()
            raise GuestError(f"VM {self.vmid} qmp socket unavailable: "
                             f"{exc or type(exc).__name__}") from exc
        client.logger = normal_logger
        self.client = client
        self._event_task = asyncio.get_running_loop().create_task(self._events(client))
        return client

    async def _events(self, client: QMPClient) -> None:
        async for event in client.events:
            name = event.get("event")
            data = event.get("data")
            if name == "SHUTDOWN":
                self.shutdown_reason = data.get("reason") if isinstance(data, dict) else None
            elif name == "MIGRATION":
                self.migration_changed.set()
            log.debug("VM %s: QMP event %s %s", self.vmid, name, data)

    async def disconnect(self) -> None:
        task, client = self._event_task, self.client
        self._event_task, self.client = None, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if client is not None:
            with contextlib.suppress(Exception):
                await client.disconnect()

    async def command(self, cmd: str, args: dict[str, Any] | None = None,
                      timeout: float = QMP_TIMEOUT) -> Any:
        """QEMU's answer to one command; GuestError on a QMP error or no answer."""
        client = await self.connect()
        try:
            return await asyncio.wait_for(client.execute(cmd, args), timeout)
        except ExecuteError as exc:
            raise GuestError(f"VM {self.vmid} qmp command '{cmd}' failed - {exc}") from exc
        except TimeoutError:
            # The reply may still come and confuse the next command: start afresh.
            await self.disconnect()
            raise GuestError(f"VM {self.vmid} qmp command '{cmd}' failed - got timeout") \
                from None
        except (QMPError, OSError, EOFError) as exc:
            await self.disconnect()
            raise GuestError(f"VM {self.vmid} qmp command '{cmd}' failed - {exc}") from exc

    async def runstate(self) -> str | None:
        """QEMU's runstate (``query-status``: running, paused, inmigrate, postmigrate
        ...); None if QMP does not answer."""
        try:
            return (await self.command("query-status", timeout=3.0))["status"]
        except GuestError:
            return None
