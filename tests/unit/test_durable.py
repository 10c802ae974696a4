"""binome.durable: atomic, durable file replacement."""

from __future__ import annotations

import os
import stat

import pytest

from binome import durable

pytestmark = pytest.mark.unit


def test_write_json_replaces_whole_file_with_mode(tmp_path):
    path = tmp_path / "state.json"
    path.write_text("old and much longer content than the new one\n")
    durable.write_json(path, {"a": 1}, mode=0o600)
    assert path.read_text() == '{\n  "a": 1\n}\n'
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]   # no temp file left


def test_failed_write_keeps_old_content_and_leaves_no_temp(tmp_path):
    path = tmp_path / "state.json"
    path.write_text("old\n")

    class Unserializable:
        pass

    with pytest.raises(TypeError):
        durable.write_json(path, {"x": Unserializable()})
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_write_fsyncs_file_and_directory(tmp_path, monkeypatch):
    synced: list[bool] = []
    real = os.fsync

    def spy(fd: int) -> None:
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        real(fd)

    monkeypatch.setattr(durable.os, "fsync", spy)
    durable.write_text(tmp_path / "f", "x")
    assert synced == [False, True]      # the file, then its directory
    synced.clear()
    durable.write_text(tmp_path / "g", "x", sync=False)
    assert synced == []
