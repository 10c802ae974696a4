"""The node's health watch: periodic checks whose only output is a notification.

Owns no cluster state. Two checks, each said by one node only:

- the API TLS certificates of this node (`NodeCertificates`: the node's own, and the
  custom or ACME one if any): `certificate-expiry`
  when fewer than `CERT_WARN_DAYS` days are left (or it expired), once per day left
  crossing one of `CERT_STEPS` (30, 14, 7, 3, 1, 0 days), so a month's warning is not a
  daily mail until the last week. Each node says it of its own certificate.
- the etcd members, asked directly at their client URLs (a Status call: answered by
  the member itself, quorum or not), on the node whose HA agent is the CRM master (so
  one node says it): a member unreachable, or raising an alarm (NOSPACE, CORRUPT), on
  `ETCD_FAILS` checks in a row is `etcd-unhealthy`, said once until it is healthy again.
  A dead node's member is unhealthy too: its mail comes with the node's "offline" one.

The decisions (`CertWatch`, `MemberWatch`) are plain objects the tests drive with times
and results; `HealthWatch` runs them against the real certificate file and etcd.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509

from binome.loops import stop_tasks
from binome.store.client import Store, StoreUnavailable

log = logging.getLogger("binome.health")

CERT_WARN_DAYS = 30
CERT_STEPS = (30, 14, 7, 3, 1, 0)
CERT_CHECK = 3600.0
ETCD_CHECK = 5.0
ETCD_FAILS = 2
ETCD_TIMEOUT = 2.0

Notify = Callable[..., None]


class CertWatch:
    """When to warn of a certificate's expiry: once per step of days left."""

    def __init__(self) -> None:
        self._said: dict[str, int] = {}   # certificate (path) -> the step last said

    def check(self, name: str, not_after: float, now: float) -> int | None:
        """Days left to say now, or None (nothing new to say)."""
        days = int((not_after - now) // 86400)
        if days >= CERT_WARN_DAYS:
            self._said.pop(name, None)     # renewed: a new certificate starts afresh
            return None
        step = min((s for s in CERT_STEPS if s >= max(days, 0)), default=0)
        if self._said.get(name) == step:
            return None
        self._said[name] = step
        return days


class MemberWatch:
    """Which etcd members turned unhealthy: `ETCD_FAILS` failed checks in a row."""

    def __init__(self, fails: int = ETCD_FAILS) -> None:
        self.fails = fails
        self._failed: dict[str, int] = {}
        self._said: set[str] = set()

    def update(self, results: dict[str, str | None]) -> list[tuple[str, str]]:
        """`results`: member -> error (None: healthy). Returns the members to report."""
        out = []
        for member, error in sorted(results.items()):
            if error is None:
                self._failed.pop(member, None)
                if member in self._said:
                    self._said.discard(member)
                    log.info("etcd member %s is healthy again", member)
                continue
            self._failed[member] = self._failed.get(member, 0) + 1
            if self._failed[member] >= self.fails and member not in self._said:
                self._said.add(member)
                out.append((member, error))
        for member in set(self._failed) - set(results):   # removed from the cluster
            self._failed.pop(member, None)
            self._said.discard(member)
        return out

    def reset(self) -> None:
        self._failed.clear()
        self._said.clear()


def cert_not_after(path: Path) -> float:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    return cert.not_valid_after_utc.timestamp()


async def member_health(store: Store, timeout: float = ETCD_TIMEOUT) -> dict[str, str | None]:
    """Every voting member's health, asked of the member itself (None: healthy)."""
    out: dict[str, str | None] = {}
    for member in await store.members(timeout=timeout):
        name = member.name or f"{member.id:x}"
        if member.is_learner:
            continue
        if not member.client_urls:
            out[name] = "it never started (no client URL)"
            continue
        probe = store.clone(member.client_urls[0])
        try:
            status = await probe.member_status(timeout)
            alarms = status.get("errors") or []
            out[name] = f"alarm: {', '.join(alarms)}" if alarms else None
        except (StoreUnavailable, OSError) as exc:
            out[name] = f"not answering at {member.client_urls[0]} ({exc})"
        finally:
            await probe.close()
    return out


class HealthWatch:
    def __init__(self, node: str, notify: Notify,
                 cert_path: Callable[[], Path | list[Path]],
                 store_of: Callable[[], Store | None], is_master: Callable[[], bool]) -> None:
        self.node = node
        self._notify = notify
        self._cert_path = cert_path
        self._store_of = store_of
        self._is_master = is_master
        self.certs = CertWatch()
        self.members = MemberWatch()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._loop(self.check_cert, CERT_CHECK),
                                           name="health-cert"),
                       asyncio.create_task(self._loop(self.check_members, ETCD_CHECK),
                                           name="health-etcd")]

    async def stop(self) -> None:
        await stop_tasks(self._tasks)
        self._tasks = []

    async def _loop(self, check: Callable[[], Any], every: float) -> None:
        while True:
            try:
                await check()
            except Exception:   # a failed check is logged; the next one runs all the same
                log.exception("health check failed")
            await asyncio.sleep(every)

    async def check_cert(self, now: float | None = None) -> None:
        paths = self._cert_path()
        for path in [paths] if isinstance(paths, Path) else paths:
            if not path.is_file():
                continue
            not_after = cert_not_after(path)
            at = time.time() if now is None else now
            days = self.certs.check(str(path), not_after, at)
            if days is not None:
                when = dt.datetime.fromtimestamp(not_after, dt.UTC).strftime(
                    "%Y-%m-%d %H:%M UTC")
                self._notify("certificate-expiry", certificate=f"{path.name} (API)",
                             days_left=days, not_after=when)

    async def check_members(self) -> None:
        store = self._store_of()
        if store is None or not self._is_master():
            self.members.reset()   # a new master starts afresh (and may say it again)
            return
        try:
            results = await member_health(store)
        except StoreUnavailable as exc:    # no member list: this node's member is down
            log.debug("etcd member list unavailable: %s", exc)
            return
        for member, error in self.members.update(results):
            self._notify("etcd-unhealthy", member=member, error=error)
