"""QEMU's side of a live migration (`binome.guest.qemu_migration`) against a scripted
QMP channel: what is sent, when polling ends, and that a failed migration leaves the
source running."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from binome.guest import qemu_migration
from binome.guest.errors import GuestError
from binome.guest.qmp import QmpChannel

pytestmark = pytest.mark.unit


class ScriptedQmp(QmpChannel):
    """Answers `query-migrate` and `query-status` from scripts (the last answer
    repeats); records every command sent."""

    def __init__(self, migrate: list[dict[str, Any]], runstates: list[str | None]) -> None:
        super().__init__(100, Path("/nonexistent/100.qmp"))
        self.migrate = migrate
        self.runstates = runstates
        self.sent: list[tuple[str, dict[str, Any] | None]] = []

    async def command(self, cmd: str, args: dict[str, Any] | None = None,
                      timeout: float = 10.0) -> Any:
        self.sent.append((cmd, args))
        if cmd == "query-migrate":
            return self.migrate.pop(0) if len(self.migrate) > 1 else self.migrate[0]
        return {}

    async def runstate(self) -> str | None:
        return self.runstates.pop(0) if len(self.runstates) > 1 else self.runstates[0]

    def names(self) -> list[str]:
        return [cmd for cmd, _ in self.sent]


@pytest.fixture(autouse=True)
def fast_poll(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(qemu_migration, "MIGRATE_POLL", 0.0)
    monkeypatch.setattr(qemu_migration, "MIGRATE_EVENT_POLL", 0.0)


async def test_migrate_out_polls_until_completed() -> None:
    qmp = ScriptedQmp([{"status": "active"}, {"status": "active"},
                       {"status": "completed", "downtime": 12}], ["postmigrate"])
    progress: list[dict[str, Any]] = []
    info = await qemu_migration.migrate_out(qmp, lambda: True, "tcp:10.0.0.2:4444",
                                            on_progress=progress.append)
    assert info["downtime"] == 12 and len(progress) == 2
    assert qmp.names()[:3] == ["migrate-set-capabilities", "migrate-set-parameters", "migrate"]
    assert ("migrate", {"uri": "tcp:10.0.0.2:4444"}) in qmp.sent
    assert "migrate_cancel" not in qmp.names()


async def test_a_failed_migration_is_cancelled_and_the_source_continues() -> None:
    qmp = ScriptedQmp([{"status": "failed", "error-desc": "link down"}], ["postmigrate"])
    with pytest.raises(GuestError, match="migration failed: link down"):
        await qemu_migration.migrate_out(qmp, lambda: True, "tcp:h:1")
    assert qmp.names()[-3:] == ["migrate_cancel", "query-migrate", "cont"]


async def test_wait_incoming_returns_paused_and_refuses_other_states() -> None:
    done = ScriptedQmp([{"status": "completed"}], ["inmigrate", "inmigrate", "paused"])
    assert await qemu_migration.wait_incoming(done, lambda: True) == "paused"
    bad = ScriptedQmp([{"status": "completed"}], ["running"])
    with pytest.raises(GuestError, match="ended in state running"):
        await qemu_migration.wait_incoming(bad, lambda: True)
    gone = ScriptedQmp([{}], ["inmigrate"])
    with pytest.raises(GuestError, match="QEMU exited"):
        await qemu_migration.wait_incoming(gone, lambda: False)


async def test_listen_incoming_reports_the_port_qemu_chose() -> None:
    qmp = ScriptedQmp([{"socket-address": [{"type": "inet", "port": "49152"}]}], [None])
    assert await qemu_migration.listen_incoming(qmp, "10.0.0.2") == "tcp:10.0.0.2:49152"
    assert ("migrate-incoming", {"uri": "tcp:10.0.0.2:0"}) in qmp.sent


async def test_the_migration_event_ends_the_wait_without_a_poll_period(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 16: the guest is paused on both sides from completion until the source
    notices it; QEMU's MIGRATION event, not the next poll, must end the wait."""
    monkeypatch.setattr(qemu_migration, "MIGRATE_EVENT_POLL", 30.0)
    monkeypatch.setattr(qemu_migration, "MIGRATE_POLL", 30.0)
    qmp = ScriptedQmp([{"status": "active"}, {"status": "completed", "downtime": 7}],
                      ["postmigrate"])
    answered = qmp.command

    async def command(cmd: str, args: dict[str, Any] | None = None,
                      timeout: float = 10.0) -> Any:
        result = await answered(cmd, args, timeout)
        if cmd == "query-migrate":   # QEMU emits MIGRATION when the state changes
            asyncio.get_running_loop().call_later(0.01, qmp.migration_changed.set)
        return result

    qmp.command = command   # type: ignore[method-assign]
    began = asyncio.get_running_loop().time()
    info = await qemu_migration.migrate_out(qmp, lambda: True, "tcp:10.0.0.2:4444")
    assert info["status"] == "completed"
    assert asyncio.get_running_loop().time() - began < 1.0   # not the 30 s poll
