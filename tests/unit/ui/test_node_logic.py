"""The web UI's pure logic of a node's Network and System tabs and bulk actions, run by
Node.js as the browser runs it: interface rows in PVE's order, what holds them together,
the parameters of startall/stopall/migrateall checked before anything is sent (as the
server checks them), PVE's `localtime` shown as a wall clock."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
ROLLDOWN = ROOT / "ui" / "node_modules" / ".bin" / "rolldown"
SOURCE = ROOT / "ui" / "src" / "views" / "node" / "network.ts"
CHECKS = Path(__file__).with_name("node_logic_checks.mjs")


@pytest.mark.skipif(shutil.which("node") is None or not ROLLDOWN.exists(),
                    reason="Node.js or the UI's node_modules (make ui) missing")
def test_network_rows_bulk_parameters_and_clock(tmp_path: Path) -> None:
    subprocess.run([str(ROLLDOWN), str(SOURCE), "-d", str(tmp_path), "-f", "esm"],
                   check=True, capture_output=True, text=True, timeout=120)
    (tmp_path / "package.json").write_text('{"type": "module"}')
    shutil.copyfile(CHECKS, tmp_path / "checks.mjs")
    r = subprocess.run(["node", "checks.mjs"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stdout + r.stderr
