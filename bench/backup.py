#!/usr/bin/env python3
"""Full-backup throughput vs a raw sequential read of the same disk, side by side.

A qcow2 disk of `--size` is filled with `--fill` percent of incompressible data (the
rest stays unallocated: zeros, as a fresh guest disk is mostly) and then, in turn and
`--repeat` times:
- the baseline: `qemu-img convert` of DISK to QEMU's null-co driver (what reading the
  disk costs: `-O raw /dev/null` itself is refused, "Cannot grow device files");
- binome's full backup of the same disk, read through `qemu-nbd` as a stopped guest's
  qcow2 disk is (`binome.backup.nbd`, 4 MiB chunks, SHA-256, zstd, chunk store), each
  time into a fresh datastore (no dedup against the previous run);
- the restore of that backup to a raw file, vs `qemu-img convert -O raw` to a file.
Printed: MiB/s of each and the ratio (issue 13's targets: backup >= 70 % of the raw
read, restore >= 50 % of the raw write). Nothing is asserted. Every process started is
stopped by pid and the temporary directory removed, also on failure or Ctrl-C.

    .venv/bin/python bench/backup.py [--size 1G] [--fill 50] [--repeat 3] [--dir /var/tmp]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from binome.backup.datastore import Datastore
from binome.backup.nbd import NbdExport
from binome.backup.reader import restore_image
from binome.backup.writer import backup_image

MIB = 1 << 20


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(float(text[:-1]) * units[text[-1].upper()]) if text[-1].upper() in units \
        else int(text)


def make_disk(path: Path, size: int, fill_percent: int) -> None:
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), str(size)],
                   check=True)
    raw = path.with_suffix(".fill.raw")
    with open(raw, "wb") as handle:
        handle.truncate(size)
        step = 16 * MIB
        for offset in range(0, size, step):
            # every other 4 MiB written in the first fill_percent of each 16 MiB stretch
            written = step * fill_percent // 100
            handle.seek(offset)
            handle.write(os.urandom(min(written, size - offset)))
    subprocess.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", "-S", "4k",
                    str(raw), str(path)], check=True)
    raw.unlink()


def timed(action) -> float:
    started = time.monotonic()
    action()
    return time.monotonic() - started


class QemuNbd:
    def __init__(self, image: Path, socket: Path) -> None:
        self.socket = socket
        self.process = subprocess.Popen(
            ["qemu-nbd", "--read-only", "--format=qcow2", "--export-name=drive",
             f"--socket={socket}", "--cache=none", "--aio=threads", "--persistent",
             str(image)])
        deadline = time.monotonic() + 10
        while not socket.exists():
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.stop()
                raise RuntimeError("qemu-nbd did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1G")
    parser.add_argument("--fill", type=int, default=50, help="percent of incompressible "
                        "data (the rest unallocated)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", default="/var/tmp")
    args = parser.parse_args()
    size = parse_size(args.size)
    work = Path(tempfile.mkdtemp(prefix="binome-bench-backup-", dir=args.dir))
    server: QemuNbd | None = None
    try:
        disk = work / "disk.qcow2"
        make_disk(disk, size, args.fill)
        server = QemuNbd(disk, work / "nbd.sock")
        rows: dict[str, list[float]] = {"read": [], "backup": [], "write": [],
                                        "restore": []}
        for round_ in range(args.repeat):
            # qemu-img cannot write a raw image to /dev/null ("Cannot grow device
            # files"): its null-co driver discards the same way
            rows["read"].append(timed(lambda: subprocess.run(
                ["qemu-img", "convert", "-q", "-n", "-U", "-T", "none", "-f", "qcow2",
                 "--target-image-opts", str(disk), f"driver=null-co,size={size}"],
                check=True)))
            store = Datastore(work / f"ds{round_}")
            store.create()

            def backup(store: Datastore = store) -> None:
                writer = store.begin("vm", "100", 1_700_000_000)
                with NbdExport(str(server.socket), "drive") as export:
                    backup_image(writer, "drive-scsi0.img.fidx", export)
                writer.commit()

            rows["backup"].append(timed(backup))
            target = work / "restored.raw"
            rows["write"].append(timed(lambda: subprocess.run(
                ["qemu-img", "convert", "-q", "-U", "-T", "none", "-f", "qcow2", "-O", "raw",
                 str(disk), str(work / "restored.raw")], check=True)))
            target.unlink()
            ref = store.snapshots()[0]
            rows["restore"].append(timed(
                lambda store=store, ref=ref, target=target: restore_image(store, ref,
                                                           "drive-scsi0.img.fidx", target)))
            target.unlink()
            shutil.rmtree(work / f"ds{round_}")
        medians = {name: statistics.median(values) for name, values in rows.items()}
        rate = {name: size / MIB / seconds for name, seconds in medians.items()}
        print(f"disk {size // MIB} MiB qcow2, {args.fill}% incompressible data, "
              f"median of {args.repeat}")
        print(f"{'':28}{'MiB/s':>10}{'seconds':>10}")
        for name, label in (("read", "qemu-img convert -> null-co"),
                            ("backup", "binome full backup (NBD)"),
                            ("write", "qemu-img convert -> raw"),
                            ("restore", "binome restore -> raw")):
            print(f"{label:28}{rate[name]:10.1f}{medians[name]:10.2f}")
        print(f"backup / raw read:  {rate['backup'] / rate['read'] * 100:5.1f} % "
              f"(target >= 70 %)")
        print(f"restore / raw write: {rate['restore'] / rate['write'] * 100:5.1f} % "
              f"(target >= 50 %)")
        return 0
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
