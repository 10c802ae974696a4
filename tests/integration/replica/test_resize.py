"""Growing a replicated volume (resize) with two real engines: both copies and their
metadata grow while connected, the new area is in sync, new NBD clients see the new size,
the grown volume survives reconnects and restarts; shrinking and disconnected resizes are
refused; a resize interrupted after volume.json was written is finished at attach."""

from __future__ import annotations

import asyncio
import json
import os

import pytest

from binome.lab.nbd_client import NbdClient
from binome.storage.replica.engine import control
from tests.integration.replica.pairs import (
    MiB,
    connected,
    in_sync,
    nbd_writes,
    synced_pair,
    wait_for,
)


def backing(engine, name: str = "r0"):
    return engine.state_dir / "volumes" / name / "data.img"


def test_resize_grows_both_copies_while_connected(pair):
    synced_pair(pair, size="8M")
    sock = pair.a.call("status", name="r0")["socket"]
    tail = os.urandom(65536)
    asyncio.run(nbd_writes(sock, [(8 * MiB - 65536, tail)]))
    st = pair.a.call("resize", name="r0", size="12M")
    assert st["size"] == 12 * MiB and st["cstate"] == "Connected"
    stb = wait_for(pair.b, lambda s: s["size"] == 12 * MiB)
    assert stb["out_of_sync_kib"] == 0 and in_sync(stb)
    for e in (pair.a, pair.b):
        assert os.path.getsize(backing(e)) == 12 * MiB
        conf = json.loads((e.state_dir / "volumes" / "r0" / "volume.json").read_text())
        assert conf["size"] == 12 * MiB

    new = os.urandom(MiB)

    async def scenario() -> None:
        c = await NbdClient.connect(sock, "r0")
        try:
            assert c.size == 12 * MiB                 # a new client sees the new size
            await c.write(11 * MiB, new)             # in the new area: mirrored
            await c.flush()
            assert await c.read(8 * MiB - 65536, 65536) == tail
        finally:
            await c.close()

    asyncio.run(scenario())
    wait_for(pair.b, in_sync)
    assert pair.identical()
    assert pair.data(pair.b)[11 * MiB:12 * MiB] == new
    # the grown metadata is consistent: a reconnect and a restart of B's copy
    pair.b.call("disconnect", name="r0")
    pair.b.call("down", name="r0")
    pair.b.call("up", name="r0")
    st = wait_for(pair.b, in_sync)
    assert st["size"] == 12 * MiB and st["out_of_sync_kib"] == 0
    # refusals: shrinking, a disconnected resize without assume_peer_has_space
    with pytest.raises(control.ControlError, match="shrinking a volume is not supported"):
        pair.a.call("resize", name="r0", size="8M")
    pair.b.call("disconnect", name="r0")
    wait_for(pair.a, lambda s: s["cstate"] != "Connected")
    with pytest.raises(control.ControlError, match="resize needs a Connected peer"):
        pair.a.call("resize", name="r0", size="16M")
    assert pair.a.call("status", name="r0")["size"] == 12 * MiB
    # both grown alone (DRBD's --assume-peer-has-space), then they connect again
    pair.a.call("resize", name="r0", size="16M", assume_peer_has_space=True)
    pair.b.call("resize", name="r0", size="16M", assume_peer_has_space=True)
    pair.b.call("connect", name="r0")
    wait_for(pair.b, in_sync)
    assert pair.a.call("status", name="r0")["size"] == 16 * MiB
    assert pair.identical()


def test_an_interrupted_resize_is_finished_at_attach(pair):
    synced_pair(pair, size="8M")
    pair.b.call("down", name="r0")
    # B stopped after writing volume.json and growing its backing file, before its metadata
    conf_path = pair.b.state_dir / "volumes" / "r0" / "volume.json"
    conf = json.loads(conf_path.read_text())
    conf["size"] = 10 * MiB
    conf_path.write_text(json.dumps(conf))
    os.truncate(backing(pair.b), 10 * MiB)
    pair.a.call("resize", name="r0", size="10M", assume_peer_has_space=True)
    st = pair.b.call("up", name="r0")
    assert st["size"] == 10 * MiB and st["disk"] != "Diskless"
    wait_for(pair.b, in_sync)
    wait_for(pair.a, connected)
    assert pair.identical()
    assert "finishing an interrupted resize" in (pair.b.state_dir / "engine.log").read_text()
