"""The CLI's command table and its cache: the cached table is the registry's, a cache
of other code is not used, and a cache that cannot be written only costs time."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from binome.cli import commands

pytestmark = pytest.mark.unit


def test_the_cached_table_is_the_registrys(monkeypatch: pytest.MonkeyPatch,
                                           tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    first = commands.load()                      # built from the registry, then written
    assert commands.cache_path().exists()
    monkeypatch.setattr(commands, "from_registry", lambda: pytest.fail("cache not used"))
    assert commands.load() == first              # read back: the same commands
    fence = next(c for c in first if c.words == ("fence", "confirm-off"))
    assert fence.http_method == "POST" and fence.path == "/cluster/ha/fence/{node}/confirm"
    assert fence.confirm and fence.path_params == ["node"]
    secrets = {o.name for c in first for o in c.options if o.secret}
    assert "password" in secrets


def test_a_cache_of_other_code_is_ignored_and_replaced(monkeypatch: pytest.MonkeyPatch,
                                                       tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    old = tmp_path / "binome" / "cli-commands-0000.json"
    recent = tmp_path / "binome" / "cli-commands-1111.json"
    old.parent.mkdir(parents=True)
    old.write_text("[]")                          # an older installation's table
    os.utime(old, (time.time() - 2 * commands.STALE_AFTER,) * 2)
    recent.write_text("[]")                       # another installation's, in use
    table = commands.load()
    assert table and commands.cache_path().exists()
    assert not old.exists() and recent.exists()
    commands.cache_path().write_text("not json")  # damaged: rebuilt, not trusted
    assert commands.load() == table


def test_an_unwritable_cache_only_costs_time(monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))   # not a directory
    assert any(c.words == ("ha", "add") for c in commands.load())


def test_a_command_does_not_import_the_api_methods(tmp_path: Path) -> None:
    """The point of the table: `binome` answers without loading the server's code."""
    env = {"XDG_CACHE_HOME": str(tmp_path), "PATH": "/usr/bin:/bin",
           "BINOME_SOCKET": str(tmp_path / "absent.sock")}
    probe = ("import sys; from binome.cli.main import run; rc = run(['version']); "
             "print(sorted(m for m in sys.modules if m.startswith('binome.api.methods')))")
    subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, check=False)
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True,
                         text=True, check=False).stdout
    assert out.strip().splitlines()[-1] == "[]", out
