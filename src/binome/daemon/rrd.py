"""Usage history of this node, its guests and its storages, kept on disk (`.../rrddata`).

Owns `<state>/rrd.sqlite`: one SQLite database per node holding every series the node
samples (`node`, `qemu/<vmid>`, `storage/<id>`), at PVE's resolutions. PVE's
pmxcfs/rrdcached define each series with `--step 60` and, for both AVERAGE and MAX,
the RRAs `1:70` (hour), `30:70` (day), `180:70` (week), `720:70` (month), `10080:70`
(year): a 60-second primary data point (PDP) is the average of the samples that fell
in its minute, and a row of a coarser archive consolidates the PDPs of its interval
(their average, their maximum). This module does the same:

- the `hour` rows are the PDPs themselves (so, as in PVE, their MAX is their AVERAGE);
- once a minute is over, its PDP is folded into the current `day`, `week`, `month` and
  `year` rows by one `INSERT ... SELECT ... ON CONFLICT DO UPDATE` (sum, count, max):
  the consolidation is done by SQLite, not by Python loops;
- rows older than an archive's 70 slots are deleted on each write, so the database
  stays bounded (a few thousand rows per series; SQLite reuses the freed pages).
- Counters (network and disk bytes) are stored as rates per second, like PVE's
  DERIVE/COUNTER data sources; a counter that went backwards (guest or node restarted)
  gives no rate for that sample.

Deliberate differences from rrdtool: no xff (a row shows whatever PDPs it got, rather
than "unknown" until half of them are in), and time stamps are slot starts.

Why SQLite rather than rrdtool: `rrdtool`'s Python binding is either Debian's
`python3-rrdtool` (outside our PyPI virtualenv) or PyPI's `rrdtool`, which compiles
against `librrd-dev` on every install; it also fixes the data sources of a file at
creation, so adding a field (or a storage) means rebuilding files. SQLite is in the
standard library, keeps every series of the node in one crash-safe file, and its WAL
journal with `synchronous=NORMAL` makes each sampling step one commit without an fsync
(the WAL is synced at checkpoints): a power cut loses at most the last seconds of
history, never the file. All database work runs in a worker thread (`record`, `fetch_*`
are coroutines), so the event loop never waits on the disk.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from binome.store.client import StoreUnavailable

if TYPE_CHECKING:
    from binome.storage.manager import StorageManager

log = logging.getLogger("binome.rrd")

PDP_STEP = 60          # seconds per primary data point (PVE: --step 60)
ROWS = 70              # rows per archive (PVE: RRA:...:70)
# timeframe -> (seconds per row, rows kept), as PVE's RRA definitions
TIMEFRAMES: dict[str, tuple[int, int]] = {
    "hour": (PDP_STEP, ROWS), "day": (30 * PDP_STEP, ROWS), "week": (180 * PDP_STEP, ROWS),
    "month": (720 * PDP_STEP, ROWS), "year": (10080 * PDP_STEP, ROWS),
}
CONSOLIDATED = ("day", "week", "month", "year")
COUNTERS = ("netin", "netout", "diskread", "diskwrite")
# PVE's data-source names per kind of series (pve2-node, pve2-vm, pve2-storage)
NODE_FIELDS = ("loadavg", "maxcpu", "cpu", "iowait", "memtotal", "memused", "swaptotal",
               "swapused", "roottotal", "rootused", "netin", "netout")
GUEST_FIELDS = ("maxcpu", "cpu", "maxmem", "mem", "maxdisk", "disk", "netin", "netout",
                "diskread", "diskwrite")
STORAGE_FIELDS = ("total", "used")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS rra (
    series TEXT NOT NULL, timeframe TEXT NOT NULL, slot INTEGER NOT NULL, field TEXT NOT NULL,
    total REAL NOT NULL, count INTEGER NOT NULL, peak REAL NOT NULL,
    PRIMARY KEY (series, timeframe, slot, field)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pdp_cursor (
    series TEXT PRIMARY KEY, slot INTEGER NOT NULL) WITHOUT ROWID;
"""
# a sample into the current PDP (the hour row of its minute)
_ADD_SAMPLE = """
INSERT INTO rra (series, timeframe, slot, field, total, count, peak)
VALUES (?, 'hour', ?, ?, ?, 1, ?)
ON CONFLICT DO UPDATE SET total = total + excluded.total, count = count + 1,
    peak = max(peak, excluded.peak)
"""
# a finished PDP (average of its samples) into the row of a coarser archive
_FOLD_PDP = """
INSERT INTO rra (series, timeframe, slot, field, total, count, peak)
SELECT series, :timeframe, (slot / :step) * :step, field, total / count, 1, total / count
FROM rra WHERE series = :series AND timeframe = 'hour' AND slot = :pdp
ON CONFLICT DO UPDATE SET total = total + excluded.total, count = count + 1,
    peak = max(peak, excluded.peak)
"""
_FETCH = """
SELECT slot, field, CASE WHEN :cf = 'MAX' AND timeframe != 'hour' THEN peak
                         ELSE total / count END
FROM rra WHERE series = :series AND timeframe = :timeframe AND slot >= :first
ORDER BY slot
"""


def node_series() -> str:
    return "node"


def guest_series(vmid: int) -> str:
    return f"qemu/{vmid}"


def storage_series(storage: str) -> str:
    return f"storage/{storage}"


class RrdStore:
    """Every usage series of this node, in one SQLite file (`None`: in memory, for tests).

    The synchronous methods (`add`, `fetch`) do the database work and may be called
    from any thread (one connection, one lock); the daemon uses the coroutines.
    """

    def __init__(self, path: Path | None, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self._clock = clock
        self._lock = threading.Lock()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(":memory:" if path is None else str(path),
                                   check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        # checkpoint (the only fsync) every 256 WAL pages, and keep the WAL file small
        self._db.execute("PRAGMA wal_autocheckpoint=256")
        self._db.execute(f"PRAGMA journal_size_limit={1 << 20}")
        self._db.executescript(_SCHEMA)
        # series -> (time, counter values) of the previous sample, for rates. In memory:
        # after a restart the first sample of each counter gives no rate (as after a reset).
        self._last_counters: dict[str, tuple[float, dict[str, float]]] = {}
        self._trimmed_pdp: int | None = None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- writing ---------------------------------------------------------------------

    def add(self, samples: dict[str, dict[str, float]], now: float | None = None) -> None:
        """Record one sample per series (series name -> field -> value), one transaction."""
        now = self._clock() if now is None else now
        pdp = int(now // PDP_STEP) * PDP_STEP
        with self._lock, self._db:     # BEGIN ... COMMIT (ROLLBACK on error)
            self._db.execute("BEGIN")
            for series, values in samples.items():
                gauges = self._rates(series, values, now)
                self._close_pdp(series, pdp)
                self._db.executemany(_ADD_SAMPLE, [(series, pdp, k, v, v)
                                                   for k, v in gauges.items()])
            if pdp != self._trimmed_pdp:     # once a minute: a full scan of the table
                self._trim(now)
                self._trimmed_pdp = pdp

    def _rates(self, series: str, values: dict[str, float], now: float) -> dict[str, float]:
        """The sample with counters turned into rates per second since the previous one."""
        sample = {k: float(v) for k, v in values.items() if k not in COUNTERS}
        counters = {k: float(values[k]) for k in COUNTERS if k in values}
        if counters:
            previous = self._last_counters.get(series)
            if previous is not None:
                then, old = previous
                if now > then:
                    for k, v in counters.items():
                        if k in old and v >= old[k]:
                            sample[k] = (v - old[k]) / (now - then)
            self._last_counters[series] = (now, counters)
        return sample

    def _close_pdp(self, series: str, pdp: int) -> None:
        """A sample in a new minute: fold the series' previous PDP into the coarse rows."""
        row = self._db.execute("SELECT slot FROM pdp_cursor WHERE series = ?",
                               (series,)).fetchone()
        if row is not None and row[0] == pdp:
            return
        if row is not None:
            for timeframe in CONSOLIDATED:
                self._db.execute(_FOLD_PDP, {"timeframe": timeframe,
                                             "step": TIMEFRAMES[timeframe][0],
                                             "series": series, "pdp": row[0]})
        self._db.execute("INSERT INTO pdp_cursor (series, slot) VALUES (?, ?) "
                         "ON CONFLICT DO UPDATE SET slot = excluded.slot", (series, pdp))

    def _trim(self, now: float) -> None:
        for timeframe, (step, rows) in TIMEFRAMES.items():
            first = _first_slot(now, step, rows)
            # rows out of the window: too old, or ahead of a clock that stepped back
            self._db.execute("DELETE FROM rra WHERE timeframe = ? AND (slot < ? OR slot > ?)",
                             (timeframe, first, first + step * rows))

    # -- reading ---------------------------------------------------------------------

    def fetch(self, series: str, timeframe: str, cf: str = "AVERAGE",
              now: float | None = None) -> list[dict[str, Any]]:
        """PVE's rrddata rows: the archive's 70 slots up to now, oldest first.

        A slot without data is `{"time": t}` alone (PVE's unknown row)."""
        step, rows = TIMEFRAMES[timeframe]
        now = self._clock() if now is None else now
        first = _first_slot(now, step, rows)
        out = {first + i * step: {"time": first + i * step} for i in range(rows)}
        with self._lock:
            found = self._db.execute(_FETCH, {"cf": cf, "series": series,
                                              "timeframe": timeframe, "first": first}).fetchall()
        for slot, field, value in found:
            if slot in out:
                out[slot][field] = value
        return list(out.values())

    def size(self) -> dict[str, int]:
        """Rows per timeframe (all series), for bounds checks and the operator."""
        with self._lock:
            return dict(self._db.execute(
                "SELECT timeframe, count(*) FROM rra GROUP BY timeframe").fetchall())

    # -- the daemon's coroutines -----------------------------------------------------

    async def record(self, samples: dict[str, dict[str, float]]) -> None:
        await asyncio.to_thread(self.add, samples)

    async def fetch_node(self, timeframe: str, cf: str) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self.fetch, node_series(), timeframe, cf)

    async def fetch_guest(self, vmid: int, timeframe: str, cf: str) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self.fetch, guest_series(vmid), timeframe, cf)

    async def fetch_storage(self, storage: str, timeframe: str,
                            cf: str) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self.fetch, storage_series(storage), timeframe, cf)


def _first_slot(now: float, step: int, rows: int) -> int:
    return int(now // step) * step - (rows - 1) * step


def _numbers(values: dict[str, Any], fields: tuple[str, ...]) -> dict[str, float]:
    return {k: float(v) for k, v in values.items()
            if k in fields and isinstance(v, (int, float)) and not isinstance(v, bool)}


async def storage_usage(storages: StorageManager, node: str) -> dict[str, dict[str, Any]]:
    """`total` and `used` of every enabled storage this node can use."""
    out: dict[str, dict[str, Any]] = {}
    try:
        configs = await storages.configs()
    except StoreUnavailable:   # etcd starting or cut off: the node's own sample still counts
        return out
    for cfg in configs:
        if cfg.disable or not cfg.available_on(node):
            continue
        try:
            status = await (await storages.get(cfg.storage)).status()
        except Exception:      # a storage that does not answer has no sample this step
            continue
        out[cfg.storage] = {"total": status.get("total"), "used": status.get("used")}
    return out


async def sample_forever(store: RrdStore, node_sample: Callable[[], dict[str, float]],
                         guest_samples: Callable[[], dict[int, dict[str, Any]]],
                         storage_samples: Callable[[], Awaitable[dict[str, dict[str, Any]]]],
                         interval: float = 10.0) -> None:
    """Sample the node, its running guests and its storages every `interval` seconds."""
    while True:
        try:
            samples = {node_series(): _numbers(node_sample(), NODE_FIELDS)}
            for vmid, status in guest_samples().items():
                # a guest's status says `cpus` (as PVE's qemu status); PVE's RRD `maxcpu`
                renamed = {"maxcpu": status["cpus"], **status} if "cpus" in status else status
                samples[guest_series(vmid)] = _numbers(renamed, GUEST_FIELDS)
            for storage, status in (await storage_samples()).items():
                samples[storage_series(storage)] = _numbers(status, STORAGE_FIELDS)
            await store.record(samples)
        except Exception:
            log.exception("usage sample not recorded")
        await asyncio.sleep(interval)
