"""The engine process: control commands and their refusals, supervision and re-adoption."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import pytest

from binome.lab.nbd_client import NbdClient
from binome.storage.replica.engine import control
from binome.storage.replica.node import supervisor


def err(engine, cmd, **args):
    with pytest.raises(control.ControlError) as e:
        engine.call(cmd, **args)
    return e.value


def test_create_validates_and_refuses_duplicates(engine, volume):
    vol = volume("16M", primary=False)
    assert err(engine, "create", name=vol.name, size="16M").code == "EEXIST"
    assert err(engine, "create", name="../x", size="16M").code == "EINVAL"
    assert err(engine, "create", name="ok1", size=1000).code == "EINVAL"
    assert err(engine, "create", name="ok2", size="16M", bm_block_size=3000).code == "EINVAL"
    assert err(engine, "create", name="ok3", size="16M", colour="red").code == "EINVAL"
    assert err(engine, "status", name="missing").code == "ENOENT"
    assert err(engine, "up", name="missing").code == "ENOENT"
    assert err(engine, "frobnicate").code == "EINVAL"
    names = {v["name"]: v["up"] for v in engine.call("list")}
    assert names[vol.name] is True and "ok1" not in names


def test_first_promotion_needs_force_like_drbd(engine, volume):
    vol = volume("16M", primary=False)
    st = engine.call("status", name=vol.name)
    assert (st["role"], st["disk"], st["cstate"]) == ("Secondary", "Inconsistent", "StandAlone")
    e = err(engine, "primary", name=vol.name)
    assert e.code == "ESTATE"
    assert str(e) == "State change failed: (-2) Need access to UpToDate data"
    st = engine.call("primary", name=vol.name, force=True)
    assert (st["role"], st["disk"]) == ("Primary", "UpToDate")
    proc = engine.call("proc")
    assert "cs:StandAlone ro:Primary/Unknown ds:UpToDate/DUnknown C r-----" in proc


async def test_in_use_volume_cannot_be_demoted_or_taken_down(engine, volume):
    vol = volume("16M")
    c = await NbdClient.connect(vol.socket, vol.name)
    try:
        await c.write(0, b"q" * 4096)
        assert (await control.call(engine.control, "status", name=vol.name))["open_count"] == 1
        with pytest.raises(control.ControlError) as e:
            await control.call(engine.control, "secondary", name=vol.name)
        assert "(-12) Device is held open by someone" in str(e.value)
        with pytest.raises(control.ControlError) as e:
            await control.call(engine.control, "down", name=vol.name)
        assert e.value.code == "EBUSY"
        with pytest.raises(control.ControlError) as e:
            await control.call(engine.control, "delete", name=vol.name)
        assert e.value.code == "EBUSY"
    finally:
        await c.close()
    # Once the client is gone: demote, then a Secondary refuses I/O at negotiation.
    deadline = time.monotonic() + 10
    while (await control.call(engine.control, "status", name=vol.name))["open_count"]:
        assert time.monotonic() < deadline, "the NBD connection never went away"
        await asyncio.sleep(0.01)
    await control.call(engine.control, "secondary", name=vol.name)
    await control.call(engine.control, "down", name=vol.name)
    assert not os.path.exists(vol.socket)


def test_a_second_engine_on_the_same_state_dir_refuses(engine):
    out = subprocess.run([sys.executable, "-m", "binome.storage.replica", "--state-dir",
                          str(engine.state_dir)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 1
    assert f"another engine runs on {engine.state_dir} (pid {engine.handle.pid})" in out.stderr


def test_engine_outlives_its_starter_and_is_readopted(fresh_engine):
    """The daemon that started the engine may exit: the engine keeps serving, and the next
    daemon adopts it instead of starting another."""
    state = fresh_engine.state_dir
    fresh_engine.call("shutdown")
    fresh_engine.handle.process.wait(timeout=30)
    starter = (
        "import asyncio, pathlib, sys\n"
        "from binome.storage.replica.node import supervisor\n"
        "h = asyncio.run(supervisor.ensure_engine(pathlib.Path(sys.argv[1])))\n"
        "print(h.pid, h.adopted)\n")
    out = subprocess.run([sys.executable, "-c", starter, str(state)], capture_output=True,
                         text=True, timeout=60, check=True)
    pid, adopted = out.stdout.split()
    pid = int(pid)
    assert adopted == "False"
    try:
        # The starter is gone; the engine (another session, reparented) still answers.
        assert os.getsid(pid) == pid
        handle = asyncio.run(supervisor.ensure_engine(state))
        assert handle.adopted and handle.pid == pid
        fresh_engine.handle = handle
        fresh_engine.call("create", name="still", size="16M")
        assert fresh_engine.call("up", name="still")["disk"] == "Inconsistent"
    finally:
        asyncio.run(supervisor.stop_engine(fresh_engine.handle))
    assert not supervisor._alive(pid)


def test_sigterm_detaches_cleanly(fresh_engine):
    fresh_engine.call("create", name="t1", size="16M")
    fresh_engine.call("up", name="t1")
    fresh_engine.call("primary", name="t1", force=True)
    asyncio.run(supervisor.stop_engine(fresh_engine.handle))
    assert fresh_engine.handle.process.returncode == 0
    log = (fresh_engine.state_dir / "engine.log").read_text()
    assert "t1: detached" in log
    fresh_engine.handle = asyncio.run(supervisor.ensure_engine(fresh_engine.state_dir))
    st = fresh_engine.call("up", name="t1")
    # Stopped while Primary: DRBD calls that a crashed primary, but the log was clean.
    assert st["crashed_primary"] and st["bitmap_bits"] == 0
