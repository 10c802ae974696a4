"""The web UI's storage pages' pure logic, run by Node.js as the browser runs it: the
parameters the add/edit form sends (only what changed, `delete` for emptied options, the
digest read; type and path never), the upload's field order and progress, and which
volumes the content view offers to delete."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
ROLLDOWN = ROOT / "ui" / "node_modules" / ".bin" / "rolldown"
SOURCE = ROOT / "ui" / "src" / "views" / "storage" / "storage.ts"
CHECKS = Path(__file__).with_name("storage_logic_checks.mjs")


@pytest.mark.skipif(shutil.which("node") is None or not ROLLDOWN.exists(),
                    reason="Node.js or the UI's node_modules (make ui) missing")
def test_storage_form_parameters_upload_fields_and_delete_rules(tmp_path: Path) -> None:
    subprocess.run([str(ROLLDOWN), str(SOURCE), "-d", str(tmp_path), "-f", "esm"],
                   check=True, capture_output=True, text=True, timeout=120)
    (tmp_path / "package.json").write_text('{"type": "module"}')
    shutil.copyfile(CHECKS, tmp_path / "checks.mjs")
    r = subprocess.run(["node", "checks.mjs"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stdout + r.stderr
