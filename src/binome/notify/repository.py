"""The one owner of the notification configuration in etcd (PVE's notifications.cfg and
priv/notifications.cfg).

Layout (one key per entry, secrets apart so that a read of the entries never carries
one):

    /binome/notify/entries/<name>   {type, name, options{}}   targets and matchers
    /binome/notify/secrets/<name>   {password | token | secret[]}  write-only values
    /binome/notify/generation       int, bumped by every change

The built-in entries (`mail-to-root`, `default-matcher`) are not stored until changed.
A change is read-modify-write: one range read of the prefix (a consistent snapshot),
a pure operation on `NotificationConfig`, then one transaction that compares every key
read and the generation and bumps the cluster config version. Bad input raises
`ConfigError` before anything is written. Secrets leave this module only inside
`Entry.secrets`, for the senders; `config.public_view` is what anyone else sees.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from binome.notify.config import ConfigError, Entry, NotificationConfig

log = logging.getLogger(__name__)

ROOT = "/binome/notify/"
ENTRIES = f"{ROOT}entries/"
SECRETS = f"{ROOT}secrets/"
GENERATION = f"{ROOT}generation"


class StoreLike(Protocol):
    """The part of binome.store.client.Store used here."""

    async def get_prefix(self, prefix: str, *, serializable: bool = False) -> list[Any]: ...
    async def commit(self, expect: dict[str, int], puts: dict[str, Any] | None = None,
                     deletes: Any = (), *, bump_config: bool = False) -> bool: ...


class NotifyConflict(RuntimeError):
    """Too many concurrent changes; nothing of this change was written."""


class DigestMismatch(RuntimeError):
    """The caller's `digest` is not the configuration's current one (PVE's check)."""


@dataclass(frozen=True)
class Snapshot:
    config: NotificationConfig
    revisions: dict[str, int]
    generation: int             # mod revision of the generation key (0: absent)
    generation_value: int

    @property
    def digest(self) -> str:
        """PVE's config digest: changes with every stored change, secrets included."""
        text = json.dumps(sorted(self.revisions.items()))
        return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Change:
    """What a change did, for the cluster log line naming the actor."""

    actor: str
    action: str
    written: tuple[str, ...] = ()
    deleted: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        return bool(self.written or self.deleted)


def encode(config: NotificationConfig) -> dict[str, Any]:
    """Every key and value of the stored entries (built-ins only once modified)."""
    out: dict[str, Any] = {}
    for name in sorted(config.stored):
        entry = config.entries[name]
        out[ENTRIES + name] = {"type": entry.type, "name": name, "options": entry.options}
        if entry.secrets:
            out[SECRETS + name] = dict(entry.secrets)
    return out


def decode(values: dict[str, Any]) -> NotificationConfig:
    """The configuration from stored keys; an unreadable record is skipped and logged."""
    entries = []
    for key, doc in sorted(values.items()):
        if not key.startswith(ENTRIES):
            continue
        name = key[len(ENTRIES):]
        try:
            secrets = values.get(SECRETS + name) or {}
            entries.append(Entry(doc["type"], name, dict(doc.get("options") or {}),
                                 dict(secrets)))
        except (KeyError, TypeError, AttributeError):
            log.warning("notification entry %s is unreadable; skipped", name)
    return NotificationConfig(entries)


class NotifyRepository:
    def __init__(self, store: StoreLike) -> None:
        self.store = store

    async def load(self, *, local: bool = False) -> Snapshot:
        """One range read; `local`: this member's copy (answers without quorum)."""
        raw = await self.store.get_prefix(ROOT, serializable=local)
        values = {e.key: e.value for e in raw}
        revisions = {e.key: e.mod_revision for e in raw if e.key != GENERATION}
        gen = next((e for e in raw if e.key == GENERATION), None)
        return Snapshot(decode(values), revisions, gen.mod_revision if gen else 0,
                        int(gen.value) if gen and isinstance(gen.value, int) else 0)

    async def change(self, actor: str, action: str,
                     operation: Callable[[NotificationConfig], None], *,
                     digest: str | None = None, attempts: int = 5) -> Change:
        """Apply `operation` (it mutates the config or raises ConfigError/KeyError) and
        store the keys that differ, in one compared transaction with a config bump."""
        for _ in range(attempts):
            snap = await self.load()
            if digest and digest != snap.digest:
                raise DigestMismatch("detected modified configuration - file changed by "
                                     "other user? Try again.")
            before = encode(snap.config)
            operation(snap.config)
            after = encode(snap.config)
            puts = {k: v for k, v in after.items() if before.get(k) != v}
            deletes = tuple(k for k in before if k not in after)
            if not puts and not deletes:
                return Change(actor, action)
            expect = dict(snap.revisions)
            expect[GENERATION] = snap.generation
            puts[GENERATION] = snap.generation_value + 1
            if await self.store.commit(expect, puts, deletes, bump_config=True):
                written = tuple(k for k in puts if k != GENERATION)
                return Change(actor, action, written, deletes)
        raise NotifyConflict("notification configuration changed concurrently; try again")


__all__ = [
    "Change",
    "ConfigError",
    "DigestMismatch",
    "NotifyConflict",
    "NotifyRepository",
    "Snapshot",
]
