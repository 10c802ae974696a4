"""The guest agent's pure parts and the edges of its wire protocol.

`agent` on the QEMU command line (qemu-server's config_to_command), PVE's
parse_guest_agent / should_fs_freeze, the DT_NEEDED walk that puts qemu-ga's
libraries in the lab image, and the QGA client's resync and no-answer rules. The
commands themselves are proven against Debian's real qemu-ga inside a guest
(tests/integration/guest/test_agent.py); the protocol edges below (a stale answer
left in the stream, a command the agent never answers) cannot be provoked there on
demand, hence the small socket server speaking the protocol.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

from binome.guest import config as vmconf
from binome.guest.agent import AgentError, QgaChannel
from binome.guest.argv import build_argv
from binome.guest.spec import LaunchSpec
from binome.lab.image import elf_needed

RUN = Path("/run/binome-test/qemu")


def argv_for(agent: str | None) -> list[str]:
    conf = {"agent": agent} if agent is not None else {}
    opts = vmconf.launch_options(conf)
    spec = LaunchSpec(vmid=100, name="t", memory_mb=256, **opts)
    return build_argv(spec, RUN, "tcg")


def test_agent_virtio_port_on_the_qga_socket():
    argv = argv_for("1")
    i = argv.index("socket,path=/run/binome-test/qemu/100.qga,server=on,wait=off,id=qga0")
    assert argv[i - 1] == "-chardev"
    assert argv[i + 1:i + 5] == ["-device", "virtio-serial,id=qga0", "-device",
                                 "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0"]


def test_agent_isa_and_disabled():
    assert "isa-serial,chardev=qga0" in argv_for("enabled=1,type=isa")
    for off in (None, "0", "enabled=0,type=isa"):
        assert not any("qga" in a for a in argv_for(off))


@pytest.mark.parametrize("value,enabled,freeze", [
    (None, False, False), ("0", False, False), ("1", True, True),
    ("1,freeze-fs-on-backup=0", True, False),      # PVE 8's name
    ("enabled=1,freeze-fs=0", True, False),        # PVE 9's
    ("enabled=0,freeze-fs=1", False, False),       # disabled: the options do not count
    ("garbage=1", False, False),                   # unparsable: as absent (PVE warns)
])
def test_agent_settings(value, enabled, freeze):
    conf = {} if value is None else {"agent": value}
    assert bool(vmconf.agent_settings(conf)) is enabled
    assert vmconf.agent_freeze_fs(conf) is freeze


def test_elf_needed_of_the_running_python():
    interp, needed = elf_needed(Path(sys.executable).resolve().read_bytes())
    assert interp is not None and interp.startswith("/lib")
    assert "libc.so.6" in needed or any(n.startswith("libpython") for n in needed)


# ---------------------------------------------------------------- protocol edges

async def _agent_server(path: Path, answers: dict[str, object]) -> asyncio.AbstractServer:
    """Speaks QGA: a stale line and a wrong sync id before the right one, then the
    scripted answer (absent: no answer at all, as qemu-ga for guest-shutdown)."""
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\xff")
            sync = json.loads(await reader.readline())
            assert sync["execute"] == "guest-sync-delimited"
            writer.write(b'{"return": {"late": "answer"}}\n\xff{"return": 1}\n')
            writer.write(b"\xff" + json.dumps({"return": sync["arguments"]["id"]}).encode()
                         + b"\n")
            command = json.loads(await reader.readline())
            answer = answers[command["execute"]]
            if answer is not None:
                writer.write(json.dumps(answer).encode() + b"\n")
                await writer.drain()
            await reader.read()   # until the client hangs up
        finally:
            writer.close()

    return await asyncio.start_unix_server(handle, str(path))


async def test_client_resyncs_and_reads_answers(tmp_path):
    sock = tmp_path / "100.qga"
    server = await _agent_server(sock, {
        "guest-ping": {"return": {}},
        "guest-file-open": {"error": {"class": "GenericError",
                                      "desc": "failed to open file '/x'"}},
        "guest-shutdown": None,
        "guest-info": None,
    })
    try:
        channel = QgaChannel(100, sock)
        assert await channel.command("guest-ping") == {}
        with pytest.raises(AgentError, match="failed to open file") as err:
            await channel.command("guest-file-open", {"path": "/x"})
        assert err.value.agent_error
        # no answer is success for a shutdown, a timeout for anything else
        assert await channel.command("guest-shutdown", timeout=0.3) is None
        with pytest.raises(AgentError, match="got timeout") as err:
            await channel.command("guest-info", timeout=0.3)
        assert err.value.timeout
    finally:
        server.close()
        await server.wait_closed()


async def test_client_without_socket(tmp_path):
    with pytest.raises(AgentError, match="unable to connect"):
        await QgaChannel(100, tmp_path / "absent.qga").command("guest-ping")
