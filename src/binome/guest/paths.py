"""Where a guest's runtime files live: ``<run_dir>/<vmid>.<suffix>``.

One place for the layout so the command line, the runtime, adoption and
cleanup agree:

* ``.pid``       QEMU's ``-pidfile`` (QEMU writes and locks it);
* ``.qmp``       QMP monitor socket (server; the runtime is its client);
* ``.qga``       the guest agent's socket (``agent: 1``; server, PVE's name);
* ``.serial``    serial console socket (server; one client at a time reads
                 and writes ttyS0); ``.serial1``-``.serial3`` the sockets of
                 ``serialN: socket`` ports;
* ``.efivars.fd`` OVMF's writable vars (``bios: ovmf``; reset at each start);
* ``.tpm``, ``.tpm.pid``, ``.tpm.log`` swtpm's control socket, pid and log
                 (``tpmstate0``);
* ``.vnc``       VNC server socket (only with a display device);
* ``.json``      the runtime's record of the running guest (spec, pids,
                 taps, requested action): what a restarted daemon adopts;
* ``.log``       QEMU's stdout/stderr (kept after exit for diagnosis);
* ``.exitcode``  written by the exit wrapper when QEMU exits;
* ``.exit.json`` the last exit's reason, kept until the next start.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["SUN_PATH_MAX", "GuestPaths"]

SUN_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) - 1


@dataclass(frozen=True)
class GuestPaths:
    run_dir: Path
    vmid: int

    def _p(self, suffix: str) -> Path:
        return self.run_dir / f"{self.vmid}{suffix}"

    @property
    def pidfile(self) -> Path:
        return self._p(".pid")

    @property
    def qmp(self) -> Path:
        return self._p(".qmp")

    @property
    def qga(self) -> Path:
        return self._p(".qga")

    @property
    def serial(self) -> Path:
        return self._p(".serial")

    def serial_port(self, index: int) -> Path:
        """The socket of serial port `index` (0 is the console, ``.serial``)."""
        return self.serial if index == 0 else self._p(f".serial{index}")

    @property
    def vnc(self) -> Path:
        return self._p(".vnc")

    @property
    def efivars(self) -> Path:
        """The OVMF vars copy of a guest without an efidisk (PVE's temporary efivars)."""
        return self._p(".efivars.fd")

    @property
    def tpm_socket(self) -> Path:
        return self._p(".tpm")

    @property
    def tpm_pid(self) -> Path:
        return self._p(".tpm.pid")

    @property
    def tpm_log(self) -> Path:
        return self._p(".tpm.log")

    @property
    def state(self) -> Path:
        return self._p(".json")

    @property
    def log(self) -> Path:
        return self._p(".log")

    @property
    def exitcode(self) -> Path:
        return self._p(".exitcode")

    @property
    def last_exit(self) -> Path:
        return self._p(".exit.json")

    def transient(self) -> list[Path]:
        """Files that only make sense while QEMU runs (removed once it has exited)."""
        return [self.pidfile, self.qmp, self.qga, self.serial,
                *(self.serial_port(i) for i in (1, 2, 3)), self.vnc, self.state,
                self.exitcode, self.efivars]
