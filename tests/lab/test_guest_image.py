"""Boot the tiny lab guest under QEMU/TCG inside a private network namespace.

Checks that the image built by :mod:`binome.lab.image` boots to HTTP, serves
its status and disk CGIs, writes through to its virtio disk, and powers off
gracefully on an ACPI power-button press sent over QMP. Nothing touches the
root network namespace: the bridge and tap live in a namespace of their own,
which is deleted afterwards together with any QEMU left running.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from binome.lab.image import READY_MARKER, GuestImage, build_image, qemu_command

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="lab tests need root (netns, tap)"),
    pytest.mark.skipif(
        shutil.which("qemu-system-x86_64") is None, reason="qemu-system-x86_64 not installed"
    ),
    pytest.mark.skipif(
        shutil.which("ip") is None or shutil.which("curl") is None,
        reason="iproute2 and curl are needed",
    ),
]

HOST_ADDR = "198.18.3.1/24"
GUEST_IP = "198.18.3.10"
GUEST_MAC = "52:54:00:18:03:0a"
BOOT_DEADLINE = 60.0
POWERDOWN_DEADLINE = 20.0

_ns_counter = itertools.count()


@pytest.fixture(scope="session")
def guest_image() -> GuestImage:
    return build_image()


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def lab_ns() -> Iterator[str]:
    """A fresh namespace holding bridge br0 (198.18.3.1/24) and tap0 on it."""
    ns = f"bnt-img-{os.getpid()}-{next(_ns_counter)}"
    _ip("netns", "add", ns)
    try:
        _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", ns, "link", "add", "br0", "type", "bridge")
        _ip("-n", ns, "addr", "add", HOST_ADDR, "dev", "br0")
        _ip("-n", ns, "link", "set", "br0", "up")
        _ip("-n", ns, "tuntap", "add", "dev", "tap0", "mode", "tap")
        _ip("-n", ns, "link", "set", "tap0", "master", "br0", "up")
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)


@dataclass
class Guest:
    ns: str
    proc: subprocess.Popen[bytes]
    qmp_socket: Path
    serial_log: Path
    started: float
    ready_after: float | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def serial(self) -> str:
        try:
            return self.serial_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def http(self, path: str, timeout: float = 2.0) -> tuple[int, str]:
        """(status, body) of GET http://GUEST_IP<path>, from inside the namespace."""
        out = subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                self.ns,
                "curl",
                "-s",
                "--max-time",
                str(timeout),
                "-w",
                "\n%{http_code}",
                f"http://{GUEST_IP}{path}",
            ],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        body, _, code = out.rpartition("\n")
        return int(code or 0), body

    def wait_http(self, expect: str, deadline: float = BOOT_DEADLINE) -> float:
        """Poll / until its body contains ``expect``; seconds since QEMU start."""
        end = self.started + deadline
        while time.monotonic() < end:
            assert self.proc.poll() is None, f"QEMU exited early:\n{self.serial()[-3000:]}"
            if self.ready_after is None and READY_MARKER in self.serial():
                self.ready_after = time.monotonic() - self.started
            status, body = self.http("/", timeout=0.5)
            if status == 200 and expect in body:
                return time.monotonic() - self.started
            time.sleep(0.05)
        pytest.fail(f"guest HTTP not up within {deadline}s:\n{self.serial()[-3000:]}")

    def powerdown(self) -> float:
        """ACPI power button via QMP; seconds until QEMU exits."""
        asyncio.run(_qmp_command(self.qmp_socket, "system_powerdown"))
        start = time.monotonic()
        try:
            self.proc.wait(timeout=POWERDOWN_DEADLINE)
        except subprocess.TimeoutExpired:
            pytest.fail(
                f"QEMU still running {POWERDOWN_DEADLINE}s after system_powerdown:\n"
                f"{self.serial()[-3000:]}"
            )
        return time.monotonic() - start


async def _qmp_command(socket_path: Path, command: str) -> None:
    from qemu.qmp import QMPClient

    client = QMPClient("binome-test")
    await client.connect(str(socket_path))
    try:
        await client.execute(command)
    finally:
        with contextlib.suppress(Exception):
            await client.disconnect()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@contextlib.contextmanager
def run_guest(
    image: GuestImage, ns: str, hostname: str, disk: Path | None = None
) -> Iterator[Guest]:
    tmp = Path(tempfile.mkdtemp(prefix="bnt-img-"))
    proc = None
    try:
        qmp_socket = tmp / "qmp.sock"
        serial_log = tmp / "serial.log"
        extra = ["-qmp", f"unix:{qmp_socket},server=on,wait=off"]
        if disk is not None:
            extra += ["-drive", f"file={disk},if=virtio,format=raw,cache=writeback"]
        argv = qemu_command(
            image,
            tap="tap0",
            mac=GUEST_MAC,
            cmdline=image.cmdline(ip=f"{GUEST_IP}/24", gateway="198.18.3.1", hostname=hostname),
            serial=f"file:{serial_log}",
            extra=extra,
        )
        started = time.monotonic()
        # `ip netns exec` execs QEMU, so proc.pid is QEMU's pid.
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, *argv],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        yield Guest(ns, proc, qmp_socket, serial_log, started)
    finally:
        if proc is not None:
            _stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)


def _wait_serial(guest: Guest, text: str, deadline: float = 10.0) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if text in guest.serial():
            return
        time.sleep(0.05)
    pytest.fail(f"{text!r} not on the serial console:\n{guest.serial()[-3000:]}")


def test_boot_http_status_and_powerdown(guest_image: GuestImage, lab_ns: str) -> None:
    with run_guest(guest_image, lab_ns, hostname="imgtest") as guest:
        boot = guest.wait_http("imgtest")
        marker = f"{guest.ready_after:.2f}s" if guest.ready_after else "not before HTTP"
        print(
            f"\nboot-to-HTTP: {boot:.2f}s (serial ready marker: {marker}; "
            f"kernel {guest_image.kernel_version})"
        )
        _wait_serial(guest, f"{READY_MARKER} {GUEST_IP}")
        assert "binome-init:" not in guest.serial(), guest.serial()[-3000:]

        status, body = guest.http("/cgi-bin/status")
        assert status == 200, body
        info = json.loads(body)
        assert info["hostname"] == "imgtest"
        assert info["ip"] == GUEST_IP
        assert 0 < float(info["uptime"]) < BOOT_DEADLINE + 10

        status, body = guest.http("/cgi-bin/disk")
        assert (status, body.strip()) == (200, "absent")

        took = guest.powerdown()
        print(f"system_powerdown to QEMU exit: {took:.2f}s")
        assert guest.proc.returncode == 0, guest.serial()[-3000:]
        assert "power button, powering off" in guest.serial()


def test_disk_write_read_and_host_view(guest_image: GuestImage, lab_ns: str) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bnt-img-disk-"))
    try:
        disk = tmp / "disk.raw"
        subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(disk), "64M"], check=True)
        with run_guest(guest_image, lab_ns, hostname="disktest", disk=disk) as guest:
            guest.wait_http("disktest")

            status, body = guest.http("/cgi-bin/disk")
            assert (status, body.strip()) == (200, f"present {64 * 1024 * 1024}")

            status, body = guest.http("/cgi-bin/disk?write=4096&data=hello")
            assert (status, body.strip()) == (200, "ok 5")
            status, body = guest.http("/cgi-bin/disk?read=4096")
            assert (status, body) == (200, "hello")

            status, _ = guest.http("/cgi-bin/disk?write=100&data=x")
            assert status == 400
            status, body = guest.http("/cgi-bin/disk?read=8192")
            assert (status, body) == (200, "")

            guest.powerdown()
        with disk.open("rb") as f:
            f.seek(4096)
            sector = f.read(512)
        assert sector == b"hello" + b"\0" * 507
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
