"""`binome lab ARGS` runs the lab's program `binome-lab ARGS` (the CLI never imports the
lab), and the demo prints the `binome` a shell would find."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from binome.cli import main as cli
from binome.lab import demo

pytestmark = pytest.mark.unit


def test_binome_lab_execs_binome_lab_beside_the_interpreter(
        monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, list[str]]] = []
    monkeypatch.setattr(cli.os, "execv", lambda prog, argv: calls.append((prog, argv)))
    assert cli.run(["lab", "--lab", "dm1", "cut", "n1"]) == 0
    beside = str(Path(sys.executable).parent / "binome-lab")
    assert calls == [(beside, [beside, "--lab", "dm1", "cut", "n1"])]


def test_demo_prints_the_full_path_unless_the_path_finds_this_binome(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    mine = Path(sys.executable).parent / "binome"
    monkeypatch.setattr(demo.shutil, "which", lambda name: None)
    assert demo.binome_command() == str(mine)
    other = tmp_path / "binome"
    other.write_text("")
    monkeypatch.setattr(demo.shutil, "which", lambda name: str(other))
    assert demo.binome_command() == str(mine)
    link = tmp_path / "linked"
    link.symlink_to(mine)
    monkeypatch.setattr(demo.shutil, "which", lambda name: str(link))
    assert demo.binome_command() == "binome"


def test_positionals_follow_the_command_spec_order() -> None:
    """`binome qmrestore ARCHIVE VMID`: the spec's order, not the method's parameters'."""
    from binome.cli.main import build_parser

    args = build_parser().parse_args(["qmrestore", "bk:backup/vzdump-qemu-1-x.binome", "311",
                                      "--storage", "repl"])
    assert (args.p_archive, args.p_vmid, args.p_storage) == (
        "bk:backup/vzdump-qemu-1-x.binome", "311", "repl")
