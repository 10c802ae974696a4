"""`make demo`'s program: 2 nodes + witness in namespaces, quorate, then nothing left behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from binome.lab.topology import STATE_DIR, cleanup_stale

pytestmark = pytest.mark.lab


def _requires_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("lab tests need root (network namespaces)")


def _processes_mentioning(text: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text.encode() in cmdline and state != "Z":
            pids.append(int(proc.name))
    return pids


def test_demo_starts_quorate_and_cleans_up() -> None:
    _requires_root()
    lab_id = f"dm{os.getpid() % 100000:x}"[:8]
    proc = subprocess.Popen([sys.executable, "-m", "binome.lab.demo", "--base", "198.19",
                             "--lab-id", lab_id], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    output: list[str] = []
    try:
        deadline = time.monotonic() + 120
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            output.append(line)
            if line.strip() == "DEMO READY":
                break
        text = "".join(output)
        assert "DEMO READY" in text, text
        assert "Quorate:          Yes" in text and "Expected votes:   3" in text
        password = re.search(r"Password:\s+(\S+)", text).group(1)
        workdir = Path(re.search(r"--state-dir (\S+)/n1 cluster status", text).group(1))
        assert "VM 100 'web' on n1, serving http://198.19.3.10/" in text
        assert "https://198.19.1.1:8006/api2/json" in text

        # the API is reachable from the root namespace at the printed URL, with the login
        s = requests.Session()
        s.verify, s.trust_env = False, False
        r = s.post("https://198.19.1.1:8006/api2/json/access/ticket",
                   data={"username": "admin@pve", "password": password}, timeout=10)
        assert r.status_code == 200
        s.cookies.set("PVEAuthCookie", r.json()["data"]["ticket"])
        status = s.get("https://198.19.1.2:8006/api2/json/cluster/status", timeout=10)
        entries = status.json()["data"]
        assert entries[0]["quorate"] == 1
        assert {e["name"] for e in entries[1:]} == {"n1", "n2", "w"}
        assert all(e["online"] == 1 for e in entries[1:])
        assert _processes_mentioning(str(workdir)), "daemons should be running"
        # the demo guest answers on the VM LAN from the root namespace
        body = None
        deadline = time.monotonic() + 60
        while body is None and time.monotonic() < deadline:
            try:
                body = s.get("http://198.19.3.10/", timeout=1).text
            except requests.RequestException:
                time.sleep(0.25)
        assert body is not None and "web" in body

        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        cleanup_stale(lab_id)

    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"bn-{lab_id}-" not in netns
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert f"bnb{lab_id}" not in links and f"bnv{lab_id}" not in links
    assert not (STATE_DIR / f"{lab_id}.json").exists()
    assert not workdir.exists()
    assert _processes_mentioning(str(workdir)) == []
