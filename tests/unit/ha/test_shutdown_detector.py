"""`ShutdownDetector`: the seam that tells a host shutdown from a daemon restart.

This machine has no systemd (no logind to send PrepareForShutdown, no PID 1
to ask `is-system-running`), so the probe is a real command configured the
way the lab configures it (`BINOME_SHUTDOWN_PROBE`), and the systemd job
parsing is checked on `systemctl list-jobs` output as systemd prints it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from binome.ha.agent.shutdown import ShutdownDetector, classify_jobs


def test_classify_systemd_jobs() -> None:
    reboot = textwrap.dedent("""\
        1 reboot.target                 start waiting
        2 systemd-reboot.service        start waiting
        1036 binomed.service            stop  running
        """)
    poweroff = "  7 poweroff.target start waiting\n 99 shutdown.target start waiting\n"
    assert classify_jobs(reboot) == "reboot"
    assert classify_jobs(poweroff) == "poweroff"
    assert classify_jobs("12 kexec.target start waiting\n") == "reboot"
    assert classify_jobs("1036 binomed.service stop running\n") is None   # a restart
    assert classify_jobs("") is None


def test_probe_command(tmp_path: Path) -> None:
    answer = tmp_path / "answer"

    async def probe() -> str | None:
        return await ShutdownDetector(probe_command=f"cat {answer}").probe()

    answer.write_text("")
    assert asyncio.run(probe()) is None
    answer.write_text("running\n")
    assert asyncio.run(probe()) is None
    answer.write_text("reboot\n")
    assert asyncio.run(probe()) == "reboot"
    answer.write_text("poweroff now\n")
    assert asyncio.run(probe()) == "poweroff"
    answer.unlink()   # cat fails: no answer is no shutdown
    assert asyncio.run(probe()) is None
    missing = ShutdownDetector(probe_command=str(tmp_path / "no-such-probe"))
    assert asyncio.run(missing.probe()) is None


def test_sigterm_asks_the_probe(tmp_path: Path) -> None:
    """A real process, stopped with SIGTERM as systemd stops binomed, asks the probe
    then and only then; a request once seen sticks (the LRM reads it every round)."""
    answer = tmp_path / "answer"
    answer.write_text("")
    script = textwrap.dedent("""
        import asyncio, signal, sys
        from binome.ha.agent.shutdown import ShutdownDetector

        async def main():
            seen = []
            det = ShutdownDetector(on_request=lambda: seen.append(det.request))
            await det.start()   # no systemd here: nothing to watch
            stop = asyncio.Event()
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
            print("ready", flush=True)
            await stop.wait()
            kind = await det.probe()
            again = await det.probe()
            await det.stop()
            print(f"kind={kind} again={again} callbacks={seen}", flush=True)

        asyncio.run(main())
    """)
    env = dict(os.environ, BINOME_SHUTDOWN_PROBE=f"cat {answer}")
    for written, expect in (("", "kind=None again=None callbacks=[]"),
                            ("reboot", "kind=reboot again=reboot callbacks=['reboot']"),
                            ("poweroff", "kind=poweroff again=poweroff "
                                         "callbacks=['poweroff']")):
        answer.write_text(written)
        proc = subprocess.Popen([sys.executable, "-c", script], env=env, text=True,
                                stdout=subprocess.PIPE)
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 0
        assert out.strip() == expect, out
