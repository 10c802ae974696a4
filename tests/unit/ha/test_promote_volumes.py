"""The HA start's promotion of a guest's replicated volumes (`executor.promote_volumes`):
which refusals are transient (ETRY_AGAIN: `StartNotReady`, retried by the CRM without
counting a failed start) and which are not. The storage is a stand-in; the real path is
the lab's failover scenarios (tests/lab/ha)."""

from __future__ import annotations

import asyncio
import types
from typing import Any

import pytest

from binome.guest.errors import GuestFailure
from binome.ha.agent.executor import StartNotReady, promote_volumes
from binome.storage.base import PeerActive, StaleCopy, StorageError, VolumeState


class Storages:
    def __init__(self, refusal: Exception | None) -> None:
        self.refusal = refusal
        self.activated: list[str] = []

    async def guest_volumes(self, vmid: int) -> list[str]:
        return ["repl:vm-100-disk-0"]

    async def volume_state(self, volid: str) -> VolumeState:
        # disconnected from a peer that was Primary: the promotion decides
        return VolumeState(exists=True, active=False, disk="UpToDate", replicated=True,
                           peer="n1", peer_role="Unknown", connected=False)

    async def activate_volume(self, volid: str, task: Any = None) -> bool:
        if self.refusal is not None:
            raise self.refusal
        self.activated.append(volid)
        return True


def _promote(refusal: Exception | None) -> Storages:
    storages = Storages(refusal)
    hub = types.SimpleNamespace(storages=storages, node="n2", store=None)
    task = types.SimpleNamespace(log=lambda _m: None)
    asyncio.run(promote_volumes(hub, task, "vm:100", 100))  # type: ignore[arg-type]
    return storages


def test_a_peer_still_seen_online_is_retried_not_a_failed_start() -> None:
    # the CRM recovers 25 ms after revoking a fenced node's lease; this node's view of
    # the members drops that node a moment later (CI: "restart 1 of 1", then error)
    with pytest.raises(StartNotReady, match=r"n1 is Primary \(and online\).*not starting "
                                            r"vm:100 yet"):
        _promote(PeerActive("volume vm-100-disk-0: n1 is Primary (and online); demote it "
                            "first"))


def test_a_stale_copy_is_retried_and_other_refusals_fail_the_start() -> None:
    with pytest.raises(StartNotReady):
        _promote(StaleCopy("volume vm-100-disk-0: the copy on n2 was recorded Outdated"))
    with pytest.raises(GuestFailure) as failure:
        _promote(StorageError("volume vm-100-disk-0: no quorum"))
    assert not isinstance(failure.value, StartNotReady)
    assert _promote(None).activated == ["repl:vm-100-disk-0"]
