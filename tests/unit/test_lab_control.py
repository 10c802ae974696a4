"""`binome lab` without a lab: the CLI wiring, the control file, the outage watcher.

The watcher probes a real HTTP server on 127.0.0.1 that is stopped and started
again; the fault commands themselves are covered by tests/lab/test_demo.py.
"""

from __future__ import annotations

import http.server
import os
import threading
import time
from pathlib import Path

import pytest

from binome.lab import control
from binome.lab.control import build_parser

pytestmark = pytest.mark.unit


def test_lab_commands_parse_and_need_no_daemon() -> None:
    args = build_parser().parse_args(["lab", "--lab", "dm1", "cut", "n1", "--network",
                                      "vmlan"])
    assert (args.lab, args.lab_cmd, args.node, args.network) == ("dm1", "cut", "n1", "vmlan")
    args = build_parser().parse_args(["lab", "restore", "n2"])
    assert args.network == "all" and hasattr(args, "_lab")
    for verb in ("power-off", "power-on", "pause", "resume"):
        assert build_parser().parse_args(["lab", verb, "n1"]).node == "n1"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["lab", "cut", "n1", "--network", "mgmt"])


def test_control_file_found_only_while_its_demo_runs(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(control, "STATE_DIR", tmp_path)
    with pytest.raises(control.LabControlError, match="no running demo"):
        control.load_control()
    path = control.write_control("dm1", {"guest": {"url": "http://x/"}})
    assert path == tmp_path / "dm1.demo"
    doc = control.load_control()
    assert doc["lab_id"] == "dm1" and doc["owner"]["pid"] == os.getpid()
    assert control.load_control("dm1")["guest"]["url"] == "http://x/"
    control.write_control("dm2", {})
    with pytest.raises(control.LabControlError, match="several demos"):
        control.load_control()
    # a demo that was killed: its file is ignored and removed
    doc2 = (tmp_path / "dm2.demo").read_text().replace(f'"pid": {os.getpid()}', '"pid": 1')
    (tmp_path / "dm2.demo").write_text(doc2)
    assert control.load_control()["lab_id"] == "dm1"
    assert not (tmp_path / "dm2.demo").exists()
    control.remove_control("dm1")
    assert list(tmp_path.iterdir()) == []


class _Status(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b'{"uptime": "1.0"}')

    def log_message(self, *args: object) -> None:
        pass


def _serve(port: int) -> http.server.HTTPServer:
    http.server.HTTPServer.allow_reuse_address = True
    server = http.server.HTTPServer(("127.0.0.1", port), _Status)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_outage_watcher_reports_each_outage_with_its_duration(tmp_path: Path) -> None:
    server = _serve(0)
    port = server.server_address[1]
    server.shutdown()
    server.server_close()
    server = _serve(port)
    doc = {"guest": {"url": "http://127.0.0.1/", "ip": "127.0.0.1", "vmid": 100},
           "nodes": ["n1", "n2"], "state_dirs": {"n1": str(tmp_path), "n2": str(tmp_path)}}
    lines: list[str] = []
    watcher = control.OutageWatcher(doc, lines.append, interval=0.05, timeout=0.5, port=port)
    watcher.start()
    try:
        time.sleep(0.3)
        assert lines == []
        server.shutdown()
        server.server_close()
        deadline = time.monotonic() + 5
        while not lines and time.monotonic() < deadline:
            time.sleep(0.05)
        assert lines and "unreachable since" in lines[0]
        time.sleep(0.5)
        server = _serve(port)
        deadline = time.monotonic() + 5
        while len(lines) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        watcher.stop()
        server.shutdown()
        server.server_close()
    assert len(lines) == 2, lines
    assert lines[1].startswith("guest http://127.0.0.1/ unreachable ")
    assert lines[1].endswith("now on ?")   # no QEMU pidfile in the state dirs
    (start, end, where), = watcher.outages
    assert 0.4 < end - start < 5 and where == "?"
    assert f"outage {end - start:.1f} s" in lines[1]

