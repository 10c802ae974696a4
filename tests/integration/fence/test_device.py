"""The fence device factory, and IPMI failures that need no BMC (no root needed).

The factory: each config type builds its device, invalid configs name the key at
fault, ``password_file`` must be private, and no error or description ever carries
the secret. IPMI: a closed UDP port and a port that swallows every packet (a BMC
that lost power) both give ``ok=False`` with a reason, within the timeout, and never
an exception. The simulated BMC itself is exercised in ``tests/lab/fence``.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from binome.fence.agent import AgentFence
from binome.fence.device import FenceConfigError, FenceDevice, load_secret, make_device
from binome.fence.ipmi import AUTH_CAP_PROBE, IpmiFence
from tests.integration.fence.helpers import PASSWORD, FakeAgent


def _secret_file(path: Path, mode: int) -> Path:
    path.write_text(PASSWORD + "\n")
    path.chmod(mode)
    return path


def test_ipmi_config_builds_an_ipmi_device() -> None:
    dev = make_device({"type": "ipmi", "ip": "192.0.2.20", "port": 6230, "username": "admin",
                       "password": PASSWORD, "timeout": 3})
    assert isinstance(dev, IpmiFence) and isinstance(dev, FenceDevice)
    assert dev.describe() == {"type": "ipmi", "ip": "192.0.2.20", "port": 6230,
                              "username": "admin", "timeout": 3.0}
    assert PASSWORD not in repr(dev)


def test_agent_config_builds_an_agent_device(tmp_path: Path) -> None:
    pw = _secret_file(tmp_path / "pw", 0o600)
    dev = make_device({"type": "agent", "agent": "fence_ipmilan", "password_file": str(pw),
                       "options": {"ip": "192.0.2.21", "username": "admin", "lanplus": True},
                       "timeout": 20, "confirm": False})
    assert isinstance(dev, AgentFence) and isinstance(dev, FenceDevice)
    assert dev.describe() == {"type": "agent", "agent": "fence_ipmilan",
                              "options": {"ip": "192.0.2.21", "username": "admin",
                                          "lanplus": "1"},
                              "timeout": 20.0, "confirm": False}
    assert f"password={PASSWORD}" in dev._stdin("status", None).decode()


@pytest.mark.parametrize(("config", "message"), [
    ({"type": "smoke-signals"}, "type: 'smoke-signals'"),
    ({"type": "ipmi", "username": "a", "password": PASSWORD}, "ip: required"),
    ({"type": "ipmi", "ip": "192.0.2.1", "password": PASSWORD}, "username: required"),
    ({"type": "ipmi", "ip": "192.0.2.1", "username": "a"}, "password (or password_file)"),
    ({"type": "ipmi", "ip": "192.0.2.1", "username": "a", "password": PASSWORD,
      "port": 70000}, "port:"),
    ({"type": "ipmi", "ip": "192.0.2.1", "username": "a", "password": PASSWORD,
      "timeout": 0}, "timeout:"),
    ({"type": "ipmi", "ip": "192.0.2.1", "username": "a", "password": PASSWORD,
      "colour": "red"}, "colour: unknown key"),
    ({"type": "agent", "password": PASSWORD}, "agent: required"),
    ({"type": "agent", "agent": "fence_x", "password": PASSWORD,
      "options": {"ip": "1\n2"}}, "one line"),
    ({"type": "agent", "agent": "fence_x", "password": PASSWORD,
      "options": {"password": PASSWORD}}, "password field"),
    ({"type": "agent", "agent": "fence_x", "password": PASSWORD + "\n"}, "one line"),
    ({"type": "agent", "agent": "fence_x", "password": PASSWORD, "confirm": "yes"},
     "confirm:"),
])
def test_invalid_configs_name_the_key_and_hide_the_secret(config: dict, message: str) -> None:
    with pytest.raises(FenceConfigError) as excinfo:
        make_device(config)
    assert message in str(excinfo.value)
    assert PASSWORD not in str(excinfo.value)


def test_password_file_must_be_private(tmp_path: Path) -> None:
    loose = _secret_file(tmp_path / "loose", 0o644)
    with pytest.raises(FenceConfigError, match="chmod 600") as excinfo:
        make_device({"type": "ipmi", "ip": "192.0.2.1", "username": "a",
                     "password_file": str(loose)})
    assert PASSWORD not in str(excinfo.value)
    assert load_secret(_secret_file(tmp_path / "tight", 0o600)) == PASSWORD
    with pytest.raises(FenceConfigError, match="not both"):
        make_device({"type": "ipmi", "ip": "192.0.2.1", "username": "a",
                     "password": PASSWORD, "password_file": str(tmp_path / "tight")})
    with pytest.raises(FenceConfigError, match="password_file"):
        load_secret(tmp_path / "missing")


async def test_agent_device_from_config_fences(fake_agent: FakeAgent) -> None:
    dev = make_device({"type": "agent", "agent": str(fake_agent.path), "password": PASSWORD,
                       "options": {"state_file": str(fake_agent.state_file)}})
    result = await dev.fence("n1")
    assert result.ok and result.state == "off", result
    assert fake_agent.power() == "off"


# --- IPMI without a BMC ----------------------------------------------------------------


@pytest.fixture
def silent_udp() -> Iterator[tuple[socket.socket, int]]:
    """A UDP port that receives and never answers (a BMC without power)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    try:
        yield sock, sock.getsockname()[1]
    finally:
        sock.close()


async def test_ipmi_silent_bmc_fails_at_the_timeout(silent_udp) -> None:
    sock, port = silent_udp
    dev = IpmiFence("127.0.0.1", port=port, username="admin", password=PASSWORD, timeout=1.5)
    start = time.monotonic()
    result = await dev.power_off()
    elapsed = time.monotonic() - start
    assert not result.ok and result.state is None, result
    assert "no answer from the BMC" in result.detail
    assert 1.4 <= elapsed < 2.5
    assert PASSWORD not in repr(result)
    # What reached the "BMC" were IPMI probes (retransmitted), never the password.
    sock.setblocking(False)
    packets = []
    while True:
        try:
            packets.append(sock.recv(1024))
        except BlockingIOError:
            break
    assert len(packets) >= 2 and all(p == AUTH_CAP_PROBE for p in packets)
    # Nothing was left running that blocks the next attempt.
    again = await dev.status()
    assert not again.ok and "no answer from the BMC" in again.detail, again


async def test_ipmi_closed_port_fails_fast() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again once this block ends
    dev = IpmiFence("127.0.0.1", port=port, username="admin", password=PASSWORD, timeout=5)
    result = await dev.status()
    assert not result.ok, result
    assert "port is closed" in result.detail
    assert result.duration < 1.0
