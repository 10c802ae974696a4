"""External fence agents over the ``fence_*`` stdin protocol, with a real fake agent process.

Each test runs the fake agent (``fake_fence_agent.py``, installed as ``fence_fake``) as
a real subprocess: success and confirmation, failures, a hung agent killed at the
timeout (its child too), status exit-code mapping, and the password: read from stdin,
never in the agent's argv or environment, scrubbed from output, logs and details.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time

import pytest

from binome.fence.agent import AgentFence
from tests.integration.fence.helpers import (
    PASSWORD,
    FakeAgent,
    kill_quietly,
    pid_alive,
    proc_text,
    wait_until,
)


async def test_off_is_confirmed_by_status(fake_agent: FakeAgent) -> None:
    dev = fake_agent.device()
    result = await dev.power_off()
    assert result.ok, result
    assert (result.action, result.state) == ("off", "off")
    assert "status confirms off" in result.detail
    assert fake_agent.power() == "off"
    assert fake_agent.actions() == ["off", "status"]
    assert result.duration > 0


async def test_fence_node_powers_off(fake_agent: FakeAgent) -> None:
    result = await fake_agent.device().fence("n1")
    assert result.ok and result.state == "off", result
    assert fake_agent.power() == "off"


async def test_status_exit_codes_map_to_power_states(fake_agent: FakeAgent) -> None:
    dev = fake_agent.device()
    on = await dev.status()
    assert (on.ok, on.state) == (True, "on"), on  # exit 0
    fake_agent.state_file.write_text("off")
    off = await dev.status()
    assert (off.ok, off.state) == (True, "off"), off  # exit 2
    broken = await fake_agent.device(fail="status").status()
    assert (broken.ok, broken.state) == (False, None), broken  # exit 1
    assert "exit 1" in broken.detail and "action status failed" in broken.detail


async def test_on_reboot_monitor(fake_agent: FakeAgent) -> None:
    dev = fake_agent.device()
    fake_agent.state_file.write_text("off")
    on = await dev.power_on()
    assert on.ok and on.state == "on" and fake_agent.power() == "on", on
    reboot = await dev.reboot()
    assert reboot.ok and reboot.action == "reboot", reboot
    monitor = await dev.monitor()
    assert monitor.ok and monitor.action == "monitor", monitor
    assert fake_agent.actions() == ["on", "reboot", "monitor"]


async def test_failed_off_is_not_ok_and_says_why(fake_agent: FakeAgent) -> None:
    result = await fake_agent.device(fail="off").power_off()
    assert not result.ok and result.state is None, result
    assert "fence_fake action=off failed (exit 1)" in result.detail
    assert "action off failed on 192.0.2.10" in result.detail  # the agent's stderr line
    assert fake_agent.power() == "on"
    assert fake_agent.actions() == ["off"]  # no confirmation after a failure


async def test_off_that_does_not_happen_is_not_confirmed(fake_agent: FakeAgent) -> None:
    # The agent exits 0 for "off" but the power stays on: confirmation must not pass.
    result = await fake_agent.device(lie="1", timeout=1.5).power_off()
    assert not result.ok, result
    assert result.state == "on"
    assert "still reports on" in result.detail
    assert fake_agent.actions()[0] == "off" and set(fake_agent.actions()[1:]) == {"status"}


async def test_confirm_false_trusts_the_exit_code(fake_agent: FakeAgent) -> None:
    result = await fake_agent.device(lie="1", confirm=False).power_off()
    assert result.ok and result.state == "off", result
    assert fake_agent.actions() == ["off"]


async def test_hung_agent_is_killed_at_the_timeout_with_its_children(
    fake_agent: FakeAgent,
) -> None:
    dev = fake_agent.device(hang="off", hang_child="1", timeout=1.0)
    start = time.monotonic()
    try:
        result = await dev.power_off()
        elapsed = time.monotonic() - start
        assert not result.ok and result.state is None, result
        assert "no result within its timeout (killed after" in result.detail
        assert 1.0 <= elapsed < 5.0
        [record] = fake_agent.records()
        # The agent and the child it spawned (its process group) are both gone.
        await wait_until(lambda: not pid_alive(record["pid"]), "agent gone", timeout=5)
        await wait_until(lambda: not pid_alive(record["child_pid"]), "agent's child gone",
                         timeout=5)
    finally:
        for rec in fake_agent.records():
            kill_quietly(rec.get("child_pid"))
            kill_quietly(rec.get("pid"))


async def test_cancelled_run_leaves_no_agent_behind(fake_agent: FakeAgent) -> None:
    dev = fake_agent.device(hang="status", timeout=30)
    task = asyncio.create_task(dev.status())
    try:
        await wait_until(lambda: bool(fake_agent.records()), "agent started")
        pid = fake_agent.records()[0]["pid"]
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await wait_until(lambda: not pid_alive(pid), "cancelled agent killed", timeout=5)
    finally:
        task.cancel()
        for rec in fake_agent.records():
            kill_quietly(rec.get("pid"))


async def test_password_travels_on_stdin_only(fake_agent: FakeAgent) -> None:
    # A hung status keeps the agent alive so its /proc can be inspected from outside.
    dev = fake_agent.device(hang="status", timeout=30, plug="n1")
    task = asyncio.create_task(dev.status())
    try:
        await wait_until(lambda: bool(fake_agent.records()), "agent started")
        rec = fake_agent.records()[0]
        pid = rec["pid"]
        assert PASSWORD.encode() not in proc_text(pid, "cmdline")
        assert proc_text(pid, "cmdline")  # really read (the process is alive)
        assert PASSWORD.encode() not in proc_text(pid, "environ")
        # ... and it did arrive, on stdin, with the other options.
        assert rec["password_sha256"] == hashlib.sha256(PASSWORD.encode()).hexdigest()
        assert not rec["password_in_argv"] and not rec["password_in_environ"]
        assert rec["argv"] == [str(fake_agent.path)]
        assert rec["options"]["ip"] == "192.0.2.10"
        assert rec["options"]["username"] == "admin"
        assert rec["options"]["plug"] == "n1"
        assert rec["options"]["action"] == "status"
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for rec in fake_agent.records():
            kill_quietly(rec.get("pid"))


async def test_password_is_scrubbed_from_output_logs_and_details(
    fake_agent: FakeAgent, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="binome.fence")
    dev = fake_agent.device(leak_password="1")
    run = await dev.run("status")
    assert run.returncode == 0
    assert PASSWORD not in run.stdout and PASSWORD not in run.stderr
    assert "password ***" in run.stdout and "password=***" in run.stderr
    failing = fake_agent.device(leak_password="1", fail="off")
    results = [await dev.power_off(), await dev.status(), await failing.power_off()]
    for result in results:
        assert PASSWORD not in repr(result)
    assert "(password ***)" in results[2].detail  # the last stderr line, scrubbed
    assert PASSWORD not in caplog.text
    assert "password ***" in caplog.text  # debug logging of the output did happen
    assert PASSWORD not in repr(dev) and PASSWORD not in str(dev.describe())


async def test_missing_agent_is_a_failed_result(tmp_path) -> None:
    dev = AgentFence("fence_does_not_exist", options={"ip": "192.0.2.1"}, password=PASSWORD,
                     search_path=str(tmp_path))
    for result in (await dev.power_off(), await dev.status()):
        assert not result.ok and result.state is None
        assert "fence_does_not_exist" in result.detail and "not found" in result.detail


def test_options_are_rendered_and_checked(tmp_path) -> None:
    dev = AgentFence("fence_x", options={"ip": "192.0.2.1", "lanplus": True, "verbose": False,
                                         "ipport": 623}, password=PASSWORD)
    stdin = dev._stdin("off", None).decode()
    assert stdin.splitlines() == ["action=off", "ip=192.0.2.1", "lanplus=1", "ipport=623",
                                  f"password={PASSWORD}"]
    with pytest.raises(ValueError, match="one line"):
        AgentFence("fence_x", options={"ip": "192.0.2.1\naction=on"})
    with pytest.raises(ValueError, match="password field"):
        AgentFence("fence_x", options={"passwd": PASSWORD})
    with pytest.raises(ValueError, match="set by binome"):
        AgentFence("fence_x", options={"action": "on"})
    with pytest.raises(ValueError) as excinfo:
        AgentFence("fence_x", password=PASSWORD + "\nx")
    assert PASSWORD not in str(excinfo.value)
