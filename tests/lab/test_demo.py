"""`make demo`'s program: 2 nodes + witness in namespaces, quorate, an HA guest that survives
`binome lab power-off n1` (the demo prints the outage), then nothing left behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
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


def _lab_cli(lab_id: str, *args: str) -> subprocess.CompletedProcess:
    binome = Path(sys.executable).parent / "binome"
    return subprocess.run([str(binome), "lab", "--lab", lab_id, *args], capture_output=True,
                          text=True, timeout=120)


def test_demo_starts_quorate_survives_a_power_off_and_cleans_up() -> None:
    _requires_root()
    lab_id = f"dm{os.getpid() % 100000:x}"[:8]
    proc = subprocess.Popen([sys.executable, "-m", "binome.lab.demo", "--base", "198.19",
                             "--lab-id", lab_id], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    output: list[str] = []
    try:
        deadline = time.monotonic() + 240   # HA guest: booted and its volume in sync
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
        assert "VM 100 'web' on n1, HA-managed, disk replicated n1 <-> n2, serving " \
               "http://198.19.3.10/" in text
        assert "binome lab power-off n1" in text and "binome lab cut n2" in text
        assert "https://198.19.1.1:8006/api2/json" in text
        # the printed commands work as printed, typed into a shell with this PATH: the
        # demo prints `binome` if the PATH finds this install's, else its full path
        printed = re.search(r"^ +(\S*binome --state-dir \S+/n1 cluster status)$", text,
                            re.M).group(1)
        r = subprocess.run(printed, shell=True, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and "Quorate:          Yes" in r.stdout, (printed, r)

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

        # the rest of the demo's output, read as it comes (outage lines)
        def pump() -> None:
            for line in proc.stdout:   # type: ignore[union-attr]
                output.append(line)
        reader = threading.Thread(target=pump, daemon=True)
        reader.start()

        status = _lab_cli(lab_id, "status")
        assert status.returncode == 0, status.stderr
        assert "running on n1, answering" in status.stdout, status.stdout
        printed = re.search(r"^ +(\S*binome lab status) ", text, re.M).group(1)
        r = subprocess.run(printed, shell=True, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and "running on n1, answering" in r.stdout, (printed, r)
        assert re.search(r"n1 .*BMC 198\.19\.4\.\d+ power on", status.stdout), status.stdout

        # the other fault commands, on n2 (the guest runs on n1): each says what it did
        r = _lab_cli(lab_id, "cut", "n2", "--network", "vmlan")
        assert r.returncode == 0 and r.stdout.strip() == "n2: vmlan link cut", r
        assert re.search(r"n2 .*vmlan DOWN", _lab_cli(lab_id, "status").stdout)
        r = _lab_cli(lab_id, "restore", "n2")
        assert r.stdout.strip() == "n2: cluster, replication, vmlan links restored", r
        r = _lab_cli(lab_id, "pause", "n2")
        pid = int(re.search(r"n2: binomed pid (\d+) paused \(SIGSTOP\)", r.stdout).group(1))
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            assert state == "T"
        finally:
            r = _lab_cli(lab_id, "resume", "n2")
        assert r.stdout.strip() == f"n2: binomed pid {pid} resumed (SIGCONT)", r
        assert _lab_cli(lab_id, "cut", "n9").returncode == 1

        # an admin's fault: n1 powered off through its BMC; the guest comes back on n2
        began, seen = time.monotonic(), len(output)
        r = _lab_cli(lab_id, "power-off", "n1")
        assert r.returncode == 0, r.stderr
        assert "n1: chassis power off through its BMC" in r.stdout, r.stdout
        outage = None
        deadline = time.monotonic() + 120
        while outage is None and time.monotonic() < deadline:
            outage = re.search(r"binome demo: guest http://198\.19\.3\.10/ unreachable "
                               r"\S+ - \S+: outage ([\d.]+) s, now on (n2)",
                               "".join(output[seen:]))
            time.sleep(0.5)
        assert outage is not None, "".join(output)[-3000:]
        print(f"\n{outage.group(0)} (fault to line: {time.monotonic() - began:.1f} s)")
        assert 1.0 < float(outage.group(1)) < 120
        assert "web" in s.get("http://198.19.3.10/", timeout=5).text
        status = _lab_cli(lab_id, "status")
        assert "running on n2, answering" in status.stdout, status.stdout
        assert re.search(r"n1 .*binomed not running.*power off", status.stdout), status.stdout

        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
        reader.join(10)
        assert proc.returncode == 0, "".join(output)[-3000:]
        assert not (STATE_DIR / f"{lab_id}.demo").exists(), "control file left behind"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        cleanup_stale(lab_id)
        (STATE_DIR / f"{lab_id}.demo").unlink(missing_ok=True)   # the demo was killed

    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"bn-{lab_id}-" not in netns
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert f"bnb{lab_id}" not in links and f"bnv{lab_id}" not in links
    assert not (STATE_DIR / f"{lab_id}.json").exists()
    assert not workdir.exists()
    assert _processes_mentioning(str(workdir)) == []
