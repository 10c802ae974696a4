"""The node log reader: binomed's logfmt file (rotated) and etcd's zap JSON, merged,
served as PVE's syslog ({n, t}) and journal (cursors around lines)."""

from __future__ import annotations

import json
import logging
import logging.handlers
import re
import time
from datetime import UTC, datetime

import pytest

from binome.daemon import logs as node_logs
from binome.daemon.logfmt import LogfmtFormatter
from binome.daemon.logs import CursorError, NodeLogs, parse_cursor

pytestmark = pytest.mark.unit

T0 = 1_800_000_000.0       # 2027-01-15, a whole second


def _binomed(path, entries, max_bytes=0, backups=0):
    """Write lines with binomed's real formatter and file handler."""
    handler = logging.handlers.RotatingFileHandler(path, maxBytes=max_bytes,
                                                   backupCount=backups)
    handler.setFormatter(LogfmtFormatter("n1"))
    try:
        for t, msg in entries:
            record = logging.LogRecord("binome.daemon", logging.INFO, __file__, 1, msg,
                                       None, None)
            record.created, record.msecs = t, (t % 1) * 1000
            handler.emit(record)
    finally:
        handler.close()


def _msg(line):
    return re.search(r'msg="([^"]*)"', line).group(1)


def _etcd(path, entries):
    with open(path, "a") as f:
        for t, msg in entries:
            ts = datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds")
            f.write(json.dumps({"level": "info", "ts": ts.replace("+00:00", "Z"),
                                "caller": "etcdserver/server.go:1", "msg": msg,
                                "local-member-id": "8e9e05c52164694d"}) + "\n")


@pytest.fixture
def logs(tmp_path):
    (tmp_path / "log").mkdir()
    return NodeLogs("n1", tmp_path / "log" / "binomed.log", tmp_path / "etcd.log")


def test_both_logs_merged_in_time_order_as_journalctl_short(logs):
    _binomed(logs.binomed_log, [(T0 + 1, "binomed ready"), (T0 + 3, "API listening")])
    _etcd(logs.etcd_log, [(T0 + 2, "became leader"), (T0 + 4, "ready to serve")])
    texts = [e.text for e in logs.entries()]
    stamp = time.strftime("%b %d %H:%M:%S", time.localtime(T0 + 1))
    assert texts[0] == f'{stamp} n1 binomed: level=info component=daemon msg="binomed ready"'
    assert [t.split(" ", 4)[4] for t in texts] == [
        'binomed: level=info component=daemon msg="binomed ready"',
        'etcd: level=info msg="became leader" local-member-id=8e9e05c52164694d',
        'binomed: level=info component=daemon msg="API listening"',
        'etcd: level=info msg="ready to serve" local-member-id=8e9e05c52164694d']


def test_syslog_numbers_pages_and_filters(logs):
    _binomed(logs.binomed_log, [(T0 + i, f"line {i}") for i in range(10)])
    _etcd(logs.etcd_log, [(T0 + 0.5, "etcd line")])
    total, lines = logs.syslog(start=3, limit=2)
    assert total == 11
    assert [line["n"] for line in lines] == [4, 5]
    assert "line 2" in lines[0]["t"] and "line 3" in lines[1]["t"]
    total, lines = logs.syslog(service="etcd")
    assert total == 1 and "etcd line" in lines[0]["t"]
    assert logs.syslog(service="etcd.service")[0] == 1
    total, lines = logs.syslog(since=T0 + 8, until=T0 + 9)
    assert [_msg(line["t"]) for line in lines] == ["line 8", "line 9"]
    assert logs.syslog(service="pveproxy") == (1, [{"n": 1, "t": "no content"}])
    assert logs.syslog(since=T0 + 100) == (1, [{"n": 1, "t": "no content"}])
    assert len(logs.syslog()[1]) == 11 and len(logs.syslog(limit=0)[1]) == 11


def test_journal_cursors_let_a_reader_follow(logs):
    _binomed(logs.binomed_log, [(T0 + i, f"line {i}") for i in range(5)])
    first = logs.journal()
    assert len(first) == 7 and parse_cursor(first[0]) and parse_cursor(first[-1])
    assert logs.journal(startcursor=first[-1]) == [first[-1], first[-1]]   # nothing new
    _binomed(logs.binomed_log, [(T0 + 5, "line 5"), (T0 + 5, "line 5 again")])
    _etcd(logs.etcd_log, [(T0 + 4.5, "etcd late")])
    new = logs.journal(startcursor=first[-1])
    assert [_msg(line) for line in new[1:-1]] == [
        "etcd late", "line 5", "line 5 again"]     # same second: both, in order
    assert logs.journal(startcursor=new[-1]) == [new[-1], new[-1]]
    # endcursor: strictly before; lastentries: the newest N
    line5 = next(e for e in logs.entries() if e.text.endswith('"line 5"'))
    before = logs.journal(since=0, endcursor=line5.cursor)
    assert _msg(before[-2]) == "etcd late"
    assert [_msg(line) for line in logs.journal(lastentries=2)[1:-1]] == [
        "line 5", "line 5 again"]
    assert len(logs.journal(since=int(T0) + 3, until=int(T0) + 4)) == 2 + 2   # 3 s, 4 s


def test_rotated_files_are_read_oldest_first(logs):
    # 300-byte files: each line rotates the file; 3 kept
    _binomed(logs.binomed_log, [(T0 + i, f"rotated line {i:02d} " + "x" * 150)
                                for i in range(8)], max_bytes=300, backups=3)
    assert sorted(p.name for p in logs.binomed_log.parent.iterdir()) == [
        "binomed.log", "binomed.log.1", "binomed.log.2", "binomed.log.3"]
    seen = [e.text.split("rotated line ")[1][:2] for e in logs.entries()]
    assert seen == ["04", "05", "06", "07"]


def test_only_the_newest_bytes_are_read(logs, monkeypatch):
    monkeypatch.setattr(node_logs, "MAX_READ", 1000)
    _binomed(logs.binomed_log, [(T0 + i, f"line {i:03d}") for i in range(100)])
    entries = logs.entries()
    assert 0 < len(entries) < 20
    assert entries[-1].text.endswith('"line 099"')
    assert all("ts=" not in e.text for e in entries)    # no half line at the cut


def test_lines_without_a_time_stay_with_the_line_before(logs):
    _etcd(logs.etcd_log, [(T0, "about to panic")])
    with open(logs.etcd_log, "a") as f:
        f.write("panic: runtime error\ngoroutine 1 [running]:\n")
    entries = logs.entries()
    assert [e.micros for e in entries] == [int(T0 * 1e6)] * 3
    assert [e.rank for e in entries] == [0, 1, 2]
    assert entries[1].text.endswith("etcd: panic: runtime error")


def test_missing_files_give_no_content(logs):
    assert logs.entries() == []
    assert logs.journal() == []
    assert logs.syslog() == (1, [{"n": 1, "t": "no content"}])


@pytest.mark.parametrize("bad", ["", "s=binomed;t=1", "s=foo;t=1;i=0", "x" * 200])
def test_foreign_cursors_are_refused(bad):
    with pytest.raises(CursorError):
        parse_cursor(bad)


def test_etcd_log_copy_truncated_while_its_writer_appends(logs):
    """etcd 3.4 cannot rotate its log: binomed copy-truncates it (store/member.py
    rotate_log). A real writer process holding the file in append mode (as etcd's
    stderr is) goes on at the new start of the file, without a hole; the reader
    serves the rotated lines first."""
    import subprocess

    from binome.store.member import rotate_log

    _etcd(logs.etcd_log, [(T0 + i, f"old line {i}") for i in range(3)])
    assert not rotate_log(logs.etcd_log, max_bytes=1 << 20)        # small: left alone
    with open(logs.etcd_log, "ab") as out:                           # etcd's redirection
        writer = subprocess.Popen(["sh", "-c", "read go; cat"], stdin=subprocess.PIPE,
                                  stdout=out)
    try:
        assert rotate_log(logs.etcd_log, max_bytes=100, kept=2)
        assert logs.etcd_log.stat().st_size == 0
        line = json.dumps({"level": "info", "ts": "2027-01-15T08:00:09.000Z",
                           "msg": "after rotation"}) + "\n"
        writer.communicate(("go\n" + line).encode(), timeout=10)
    finally:
        if writer.poll() is None:
            writer.kill()
    assert logs.etcd_log.read_bytes() == line.encode()               # no hole before it
    _etcd(logs.etcd_log, [(T0 + 20, "x" * 200)])
    assert rotate_log(logs.etcd_log, max_bytes=100, kept=2)          # .1 -> .2
    assert sorted(p.name for p in logs.etcd_log.parent.glob("etcd.log*")) == [
        "etcd.log", "etcd.log.1", "etcd.log.2"]
    texts = [e.text for e in logs.entries() if " etcd: " in e.text]
    assert [t for t in texts if "old line" in t or "after rotation" in t] == texts[:4]
    assert "old line 0" in texts[0] and "after rotation" in texts[3]
