"""Runs a UI module's pure logic under Node.js as the browser runs it: the TypeScript
bundled by the UI's own bundler (rolldown, Vite's; `make ui` type-checks it with tsc)
with a `*_checks.mjs` script beside the test, which prints `ok` when every check holds.
Tests skip where Node.js or the UI's node_modules are missing (`make ui` installs them)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
ROLLDOWN = ROOT / "ui" / "node_modules" / ".bin" / "rolldown"

needs_node = pytest.mark.skipif(shutil.which("node") is None or not ROLLDOWN.exists(),
                                reason="Node.js or the UI's node_modules (make ui) missing")


def run_checks(sources: list[Path], checks: Path, workdir: Path) -> None:
    """Bundle `sources` into `workdir` as ES modules, run `checks` there, assert `ok`."""
    subprocess.run([str(ROLLDOWN), *map(str, sources), "-d", str(workdir), "-f", "esm"],
                   check=True, capture_output=True, text=True, timeout=120)
    (workdir / "package.json").write_text('{"type": "module"}')
    shutil.copyfile(checks, workdir / "checks.mjs")
    r = subprocess.run(["node", "checks.mjs"], cwd=workdir, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stdout + r.stderr
