"""This node's service logs, read the way PVE's `/nodes/{node}/syslog` and `/journal` serve
the systemd journal.

Owns reading two files of the state directory:

- `<state>/log/binomed.log` (and its rotated `.1`, `.2`, ...): binomed's own log, the
  same logfmt lines it writes to stderr (so to the journal under systemd), written by
  `binome.daemon.logfmt` whatever the host runs, so the API serves the same thing with
  or without journald;
- `<state>/etcd.log` (and its rotated `.1`, `.2`, copy-truncated by
  `binome.store.member`): the local etcd member's output (zap JSON lines), which
  binomed redirects there when it starts the member.

Each line becomes an entry with a time, a service (`binomed`, `etcd`) and a text shown
like `journalctl -o short` shows it (`Dec 06 06:10:02 n1 binomed: level=info ...`).
The two logs are merged in time order. A journal cursor names one entry by its time
in microseconds, service and rank among the entries of that microsecond, so it stays
valid while the files grow and rotate. Only the newest `MAX_READ` bytes of each log
are read per request (the cost of a request is bounded; older lines stay in the
files). Reading runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import re
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

SERVICES = ("binomed", "etcd")
MAX_READ = 4 << 20                # newest bytes read from each service's log per request
SYSLOG_LIMIT = 50                 # PVE's dump_journal default
JOURNAL_LAST = 50                 # entries returned when no range start is given
CURSOR_RE = re.compile(r"^s=(binomed|etcd);t=(\d{1,20});i=(\d{1,9})$")
_LOGFMT_TS = re.compile(r"^ts=(\S+) ")
_LOGFMT_NODE = re.compile(r" node=\S+")


class CursorError(ValueError):
    """A journal cursor this node did not hand out."""


@dataclass(frozen=True)
class LogEntry:
    micros: int        # time of the line, microseconds since the epoch
    service: str
    rank: int          # among the entries of this service in this microsecond
    text: str          # the line as `journalctl -o short` would show it

    @property
    def key(self) -> tuple[int, str, int]:
        return (self.micros, self.service, self.rank)

    @property
    def cursor(self) -> str:
        return f"s={self.service};t={self.micros};i={self.rank}"


def parse_cursor(cursor: str) -> tuple[int, str, int]:
    m = CURSOR_RE.match(cursor)
    if m is None:
        raise CursorError(f"invalid cursor '{cursor}'")
    return (int(m.group(2)), m.group(1), int(m.group(3)))


def _tail_lines(paths: list[Path], budget: int) -> list[str]:
    """The last lines of the files (oldest file first in `paths`), at most `budget` bytes."""
    chunks: list[bytes] = []
    for path in reversed(paths):
        if budget <= 0:
            break
        try:
            with open(path, "rb") as f:
                size = f.seek(0, os.SEEK_END)
                start = max(0, size - budget)
                f.seek(start)
                data = f.read(size - start)
        except OSError:
            continue
        if start > 0:                        # drop the line cut in half
            data = data[data.find(b"\n") + 1:] if b"\n" in data else b""
        budget -= len(data)
        chunks.append(data)
    text = b"".join(reversed(chunks)).decode(errors="replace")
    return [line for line in text.splitlines() if line.strip()]


def _short_time(micros: int) -> str:
    return time.strftime("%b %d %H:%M:%S", time.localtime(micros / 1e6))


class NodeLogs:
    """binomed's and etcd's logs on this node."""

    def __init__(self, node: str, binomed_log: Path, etcd_log: Path) -> None:
        self.node = node
        self.binomed_log = binomed_log
        self.etcd_log = etcd_log

    @staticmethod
    def _files(current: Path) -> list[Path]:
        """The rotated files (`.N`, oldest first), then the current one."""
        rotated = sorted(current.parent.glob(current.name + ".*"),
                         key=lambda p: -int(p.suffix[1:]) if p.suffix[1:].isdigit() else 0)
        return [p for p in rotated if p.suffix[1:].isdigit()] + [current]

    def _read(self, service: str) -> list[LogEntry]:
        if service == "binomed":
            lines = _tail_lines(self._files(self.binomed_log), MAX_READ)
        else:
            lines = _tail_lines(self._files(self.etcd_log), MAX_READ)
        out: list[LogEntry] = []
        last, rank = 0, -1
        for line in lines:
            micros, body = (_binomed_line(line) if service == "binomed" else _etcd_line(line))
            # a line without a time (a Go stack trace, a torn line) belongs with the one
            # before it; time never goes back within one log
            micros = last if micros is None else max(micros, last)
            rank = rank + 1 if micros == last else 0
            last = micros
            out.append(LogEntry(micros, service, rank,
                                f"{_short_time(micros)} {self.node} {service}: {body}"))
        return out

    def entries(self, services: tuple[str, ...] = SERVICES) -> list[LogEntry]:
        merged = [e for s in services for e in self._read(s)]
        merged.sort(key=lambda e: e.key)
        return merged

    def syslog(self, *, start: int = 0, limit: int = 0, since: float | None = None,
               until: float | None = None, service: str | None = None
               ) -> tuple[int, list[dict[str, Any]]]:
        """PVE's dump_journal: (total, [{n, t}]) with n counted from 1 within the range."""
        if service is not None:
            name = service.removesuffix(".service")
            services: tuple[str, ...] = (name,) if name in SERVICES else ()
        else:
            services = SERVICES
        lines = [e.text for e in self.entries(services)
                 if (since is None or e.micros >= since * 1e6)
                 and (until is None or e.micros <= until * 1e6)]
        limit = limit or SYSLOG_LIMIT
        shown = [{"n": start + i + 1, "t": text}
                 for i, text in enumerate(lines[start:start + limit])]
        if not lines:            # PVE: an empty list upsets ExtJS, so one line says so
            return 1, [{"n": 1, "t": "no content"}]
        return len(lines), shown

    def journal(self, *, since: int | None = None, until: int | None = None,
                lastentries: int | None = None, startcursor: str | None = None,
                endcursor: str | None = None) -> list[str]:
        """PVE's journal: the cursor of the first entry, the entries, the last one's cursor.

        `startcursor`: entries after it; `endcursor`: entries before it; without a start
        (since or startcursor) the last `lastentries` (default 50) entries."""
        after = parse_cursor(startcursor) if startcursor else None
        before = parse_cursor(endcursor) if endcursor else None
        picked = [e for e in self.entries()
                  if (since is None or e.micros >= since * 1_000_000)
                  and (until is None or e.micros <= until * 1_000_000)
                  and (after is None or e.key > after)
                  and (before is None or e.key < before)]
        if lastentries or (since is None and after is None):
            picked = picked[-(lastentries or JOURNAL_LAST):]
        if not picked:
            # nothing new: hand the caller's cursor back so it can keep polling from it
            return [startcursor, startcursor] if startcursor else []
        return [picked[0].cursor, *(e.text for e in picked), picked[-1].cursor]

    async def read_syslog(self, *, start: int, limit: int, since: float | None,
                          until: float | None, service: str | None
                          ) -> tuple[int, list[dict[str, Any]]]:
        return await asyncio.to_thread(functools.partial(
            self.syslog, start=start, limit=limit, since=since, until=until, service=service))

    async def read_journal(self, *, since: int | None, until: int | None,
                           lastentries: int | None, startcursor: str | None,
                           endcursor: str | None) -> list[str]:
        return await asyncio.to_thread(functools.partial(
            self.journal, since=since, until=until, lastentries=lastentries,
            startcursor=startcursor, endcursor=endcursor))


def _binomed_line(line: str) -> tuple[int | None, str]:
    """`ts=2026-12-06T06:10:02.123 level=info node=n1 ...` (local time)."""
    m = _LOGFMT_TS.match(line)
    if m is None:
        return None, line
    try:
        stamp = datetime.fromisoformat(m.group(1)).timestamp()
    except ValueError:
        return None, line
    return int(stamp * 1e6), _LOGFMT_NODE.sub("", line[m.end():], count=1)


def _etcd_line(line: str) -> tuple[int | None, str]:
    """etcd's zap JSON: `{"level":"info","ts":"2026-12-06T06:10:02.123Z","msg":...}`."""
    try:
        record = json.loads(line)
        stamp = datetime.fromisoformat(record.pop("ts")).timestamp()
    except (ValueError, KeyError, TypeError, AttributeError):
        return None, line
    level, msg = record.pop("level", "info"), record.pop("msg", "")
    record.pop("caller", None)
    rest = " ".join(f"{k}={json.dumps(v) if not isinstance(v, str) else _quote(v)}"
                    for k, v in record.items())
    return int(stamp * 1e6), f"level={level} msg={_quote(str(msg))}" + (f" {rest}" if rest else "")


def _quote(text: str) -> str:
    if text == "" or any(c in text for c in ' "=\t\n'):
        return json.dumps(text)
    return text
