"""`Fencer`: the master CRM's fence requests, carried out through the nodes' fence devices.

Owns acting on a fence decision outside etcd (the device's power off, and the power
on that completes a `reboot`), the in-memory status the CRM reads back
(`CrmEnv.fence_status`), and the power-on debts recorded in
`/binome/ha/fence_requests/<node>`.

A fencer acts only on a decision it still owns. The CRM decides on a snapshot;
between that snapshot and the device call the daemon may have been paused, the
manager lock may have expired and another master may have taken over, or the
target may have renewed its lease. So before touching a device the fencer runs
one etcd transaction (`Guard`) comparing:

- the manager lock's revision read with the decision (still ours, same lease);
- the target's heartbeat key: unchanged since the decision, or gone (its lease
  expired meanwhile, which only confirms it is lost), never renewed;

and writing the request record. If the comparison fails nothing is done and the
request fails with the reason; the CRM decides again on fresh facts. A node never
fences itself through its device: self-fencing is its watchdog's job.

Fence actions (the device record's `action`, as `fence_ipmilan`'s and
Pacemaker's `stonith-action`): `reboot` (default) powers the node off, confirms
it is off (the proof the CRM needs), then powers it on; `off` leaves it off.
A reboot is off + on, not the BMC's one-shot cycle, because the CRM needs the
confirmed off as its proof; so that the death of this fencer half-way cannot
leave the node off, the confirmed off is recorded with `power_on: owed` before
the on is tried, and whichever node is master retries the on every
`fence_retry` until it succeeds (`settle_power_debts`), with an alert while the
node stays off. `binome fence NODE --power-on` does it by hand.

Power probes (`ha.probe`): a *status* read of a silent node's device, no action.
The read is bracketed by two transactions that each see the node's heartbeat key
unchanged since the CRM's snapshot (and, from a master, the lock still ours); an
"off" between them means the node has run nothing since its last renewal, so its
lease is revoked (its heartbeat, and the manager lock if it held it, go with it)
and the CRM recovers its services at once. Any other answer changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from binome.fence.device import make_device
from binome.fence.devices import FenceDevices, fence_action
from binome.ha.agent.stats import HaStats
from binome.ha.model import FenceState, FenceStatus
from binome.store import keys

if TYPE_CHECKING:
    from binome.store.client import Store

log = logging.getLogger("binome.ha")

#: retries of an owed power-on between two alerts
ALERT_EVERY = 10


@dataclass(frozen=True)
class Guard:
    """What a fence decision was taken on: the manager lock's revision and the target's
    heartbeat revision (None: it had no heartbeat key)."""

    lock_revision: int
    heartbeat_revision: int | None


class Fencer:
    """Fence requests through the node's fence device, run as tasks; recorded in etcd."""

    def __init__(self, hub: Any, stats: HaStats | None = None) -> None:
        self.hub = hub
        self.stats = stats if stats is not None else HaStats()   # exported as metrics
        self._status: dict[str, FenceStatus] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._power_tasks: dict[str, asyncio.Task[bool]] = {}
        self._power_failures: dict[str, int] = {}
        self._power_next: dict[str, float] = {}
        self._probes: dict[str, FenceStatus] = {}
        self._probe_tasks: dict[str, asyncio.Task[None]] = {}

    def request(self, node: str, guard: Guard) -> str:
        request_id = uuid.uuid4().hex[:12]
        self._status[node] = FenceStatus(request_id, FenceState.PENDING)
        self._tasks[node] = asyncio.get_running_loop().create_task(
            self._run(node, request_id, guard), name=f"fence-{node}")
        return request_id

    def status(self, node: str) -> FenceStatus | None:
        return self._status.get(node)

    # ------------------------------------------------------------ power probes

    def probe(self, node: str, lock_revision: int | None, heartbeat_revision: int | None,
              lease: int | None) -> str:
        """Start a power probe of `node` (see the module docstring); returns its id.
        `lock_revision` is None when this CRM is not master (it then probes the master's
        node); `heartbeat_revision` and `lease` are the node's heartbeat key as the
        decision saw it."""
        request_id = uuid.uuid4().hex[:12]
        self._probes[node] = FenceStatus(request_id, FenceState.PENDING)
        self._probe_tasks[node] = asyncio.get_running_loop().create_task(
            self._probe(node, request_id, lock_revision, heartbeat_revision, lease),
            name=f"power-probe-{node}")
        return request_id

    def probe_status(self, node: str) -> FenceStatus | None:
        return self._probes.get(node)

    async def _probe(self, node: str, request_id: str, lock_revision: int | None,
                     heartbeat_revision: int | None, lease: int | None) -> None:
        hub = self.hub
        state, detail = FenceState.FAILED, ""
        began, ran = time.monotonic(), False
        try:
            store = hub.store
            assert store is not None
            cfg = await FenceDevices(store).find(node)
            if node == hub.node:
                detail = "not probed: its own node"
            elif heartbeat_revision is None or not lease:
                detail = "not probed: it holds no lease"
            elif not cfg:
                detail = "no fence device configured"
            else:
                refusal = await self._still_silent(store, node, lock_revision,
                                                   heartbeat_revision)
                if refusal is not None:
                    detail = f"not probed: {refusal}"
                else:
                    ran = True
                    result = await make_device(cfg).status()
                    if not result.ok:
                        detail = f"power state unreadable: {result.detail}"
                    elif result.state != "off":
                        detail = f"chassis power {result.state or 'unknown'}"
                    else:
                        refusal = await self._still_silent(store, node, lock_revision,
                                                           heartbeat_revision)
                        if refusal is not None:
                            detail = f"read off, but {refusal}"
                        else:
                            await store.revoke_lease(lease)
                            state, detail = FenceState.CONFIRMED, "chassis power off"
        except asyncio.CancelledError:
            raise
        except Exception as exc:   # never a secret: make_device/status scrub their messages
            detail = f"{type(exc).__name__}: {exc}"
        self._probes[node] = FenceStatus(request_id, state, detail)
        if ran:
            self.stats.device_run(node, "status", str(state), time.monotonic() - began)
        if state == FenceState.CONFIRMED:
            hub.log("warn", f"{hub.node}/crm",
                    f"node {node}: its fence device reads its chassis powered off after its "
                    f"last renewal; lease revoked, its guests are recovered now")
            hub.wake()
        else:
            log.debug("%s: power probe of %s: %s", hub.node, node, detail)

    async def _still_silent(self, store: Store, node: str, lock_revision: int | None,
                            heartbeat_revision: int) -> str | None:
        """None if `node`'s heartbeat is unchanged (and the lock, when given, still
        ours), else why not. One transaction, nothing written."""
        beat = (keys.ha_heartbeat(node), "mod", heartbeat_revision)
        lock = [(keys.HA_MANAGER_LOCK, "mod", lock_revision)] if lock_revision else []
        if await store.txn([beat, *lock], {}) is not None:
            return None
        if lock and await store.txn(lock, {}) is None:
            return "the manager lock is no longer ours"
        return f"{node} renewed its lease (or lost it) since the decision"

    # ------------------------------------------------------------ one request

    async def _run(self, node: str, request_id: str, guard: Guard) -> None:
        hub = self.hub
        state, detail, action = FenceState.FAILED, "", "off"
        began, ran = time.monotonic(), False
        try:
            store = hub.store
            assert store is not None
            cfg = await FenceDevices(store).find(node)
            if node == hub.node:
                detail = "not fenced: a node never fences itself through its device"
            elif not cfg:
                detail = "no fence device configured"
            else:
                refusal = await self._claim(store, node, request_id, guard)
                if refusal is not None:
                    detail = f"not fenced: {refusal}"
                    hub.log("warn", f"{hub.node}/crm", f"fence {node}: request dropped "
                                                       f"({refusal})")
                else:
                    action = fence_action(cfg)
                    ran = True
                    result = await make_device(cfg).fence(node)
                    state = FenceState.CONFIRMED if result.ok else FenceState.FAILED
                    detail = result.detail
        except asyncio.CancelledError:
            raise
        except Exception as exc:   # never a secret: make_device/fence scrub their messages
            detail = f"{type(exc).__name__}: {exc}"
        # the proof first: the CRM may recover as soon as it reads this
        self._status[node] = FenceStatus(request_id, state, detail)
        if ran:    # a request dropped before the device (lock lost, no device) is no run
            self.stats.device_run(node, action, str(state), time.monotonic() - began)
        owed = state == FenceState.CONFIRMED and action == "reboot"
        await self._record(node, {"request": request_id, "state": str(state),
                                  "detail": detail, "action": action,
                                  **({"power_on": "owed"} if owed else {})})
        hub.log("info" if state == FenceState.CONFIRMED else "err", f"{hub.node}/crm",
                f"fence {node}: {state} ({detail})")
        hub.wake()
        if owed:
            await self._power_on(node, request_id, guard.lock_revision)

    async def _claim(self, store: Store, node: str, request_id: str,
                     guard: Guard) -> str | None:
        """The guard transaction; None if the decision still holds (the request is then
        recorded as pending), else why not."""
        lock = (keys.HA_MANAGER_LOCK, "mod", guard.lock_revision)
        beat = keys.ha_heartbeat(node)
        record = {keys.ha_fence_request(node): (
            {"request": request_id, "state": "pending", "by": self.hub.node,
             "at": time.time()}, 0)}
        attempts: list[tuple[str, str, int]] = [(beat, "create", 0)]   # gone: expired
        if guard.heartbeat_revision is not None:
            attempts.insert(0, (beat, "mod", guard.heartbeat_revision))   # unchanged
        for cmp in attempts:
            if await store.txn([lock, cmp], record) is not None:
                return None
        if await store.txn([lock], {}) is None:
            return "the manager lock is no longer ours"
        return f"{node} renewed its lease since the decision"

    async def _record(self, node: str, fields: dict[str, Any]) -> None:
        with contextlib.suppress(Exception):
            store = self.hub.store
            assert store is not None
            await store.put(keys.ha_fence_request(node),
                            {**fields, "by": self.hub.node, "at": time.time()})

    # ------------------------------------------------------------ power-on debts

    async def _power_on(self, node: str, request_id: str, lock_revision: int) -> bool:
        """Power `node` on after its fence (a reboot's second half); True when it is on.
        The record keeps `power_on: owed` until then, so a later master retries. Like the
        off, done only while the manager lock read at `lock_revision` is still ours."""
        hub = self.hub
        try:
            store = hub.store
            assert store is not None
            cfg = await FenceDevices(store).find(node)
            if await store.txn([(keys.HA_MANAGER_LOCK, "mod", lock_revision)], {}) is None:
                return False   # no longer master: the next one settles the debt
            if not cfg:
                detail = "no fence device configured"
            else:
                result = await make_device(cfg).power_on(confirm=True)
                if result.ok:
                    self._power_failures.pop(node, None)
                    await self._record(node, {"request": request_id, "state": "confirmed",
                                              "action": "reboot", "power_on": "done",
                                              "detail": result.detail})
                    hub.log("info", f"{hub.node}/crm", f"fence {node}: powered on again "
                                                       f"(reboot: {result.detail})")
                    return True
                detail = result.detail
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            detail = f"{type(exc).__name__}: {exc}"
        failures = self._power_failures.get(node, 0) + 1
        self._power_failures[node] = failures
        self._power_next[node] = time.monotonic() + hub.timers.fence_retry
        if failures % ALERT_EVERY == 1:
            hub.log("alert", f"{hub.node}/crm",
                    f"node {node} stays powered off after its fence: power on failed "
                    f"({detail}); retrying every {hub.timers.fence_retry:g} s "
                    f"(by hand: binome fence {node} --power-on)")
        return False

    def settle_power_debts(self, records: dict[str, Any], lock_revision: int | None) -> None:
        """Called after each master round with `/binome/ha/fence_requests/` (node ->
        record) and the manager lock's revision (None: not master, nothing done): start a
        power-on for every debt whose retry is due. Only the master does, so two nodes
        never drive one BMC at once."""
        if lock_revision is None:
            return
        now = time.monotonic()
        for node, rec in records.items():
            if not (isinstance(rec, dict) and rec.get("power_on") == "owed"):
                continue
            if node == self.hub.node or self._busy(node):
                continue
            if now < self._power_next.get(node, 0.0):
                continue
            self._power_next[node] = now + self.hub.timers.fence_retry
            self._power_tasks[node] = asyncio.get_running_loop().create_task(
                self._power_on(node, str(rec.get("request", "")), lock_revision),
                name=f"power-on-{node}")

    def _busy(self, node: str) -> bool:
        task = self._tasks.get(node)
        power = self._power_tasks.get(node)
        return bool((task and not task.done()) or (power and not power.done()))

    async def stop(self) -> None:
        for t in [*self._tasks.values(), *self._power_tasks.values(),
                  *self._probe_tasks.values()]:
            t.cancel()
