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
- the restore of that backup to a raw file (fsynced), vs `qemu-img convert -O raw -t
  writeback` to a file (flushed at the end: convert's default cache mode, unsafe, never
  flushes);
- an incremental backup after changing `--change` percent of the disk (random 4 MiB
  blocks, chunk-aligned: what a guest's clustered writes look like to 4 MiB chunks)
  while a QEMU dirty bitmap recorded the writes (`qemu-img bitmap --add`, `qemu-io`);
  `qemu-nbd --bitmap` exports it and the backup reads only the chunks its block status
  (`qemu:dirty-bitmap:`) says dirty, the rest coming from the full backup's index.
- the durable write of as many bytes as the full backup stored in its chunk store (4 MiB
  O_DIRECT writes, one fsync: what the store's disk costs at best), so the backup can be judged
  against max(raw read, that write) too when the datastore shares the disk.
- the CPU the full backup costs (binome's process and qemu-nbd's) and what SHA-256 alone
  of the data read costs: on a machine with few cores that CPU, spread over all of
  them, is the bound the backup meets before the disk.
Printed: MiB/s of each and the ratios (issue 13's targets: backup >= 70 % of the raw
read, restore >= 50 % of the raw write, incremental reads <= 2 % of the disk and is
>= 20x faster than the full backup, the datastore after the full and the incremental
backup <= 1.1x the full one's chunks). Nothing is asserted. Every process started is
stopped by pid and the temporary directory removed, also on failure or Ctrl-C.

    .venv/bin/python bench/backup.py [--size 1G] [--fill 50] [--repeat 3] [--change 1]
                                     [--dir /var/tmp]
"""

from __future__ import annotations

import argparse
import hashlib
import mmap
import os
import random
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


def write_durably(path: Path, count: int) -> None:
    """What storing `count` bytes of chunks costs the disk at best: 4 MiB writes of
    incompressible data with O_DIRECT (as the chunk store writes them; through the page
    cache where the filesystem refuses it) and one fsync."""
    block = mmap.mmap(-1, 4 * MIB)   # page-aligned, as O_DIRECT wants
    block[:] = os.urandom(4 * MIB)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o600)
    except OSError:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(block)
        for offset in range(0, count - count % len(block), len(block)):
            os.pwrite(fd, view, offset)
        view.release()
        os.fsync(fd)
    finally:
        os.close(fd)
        block.close()
    path.unlink()


def chunk_bytes(store: Datastore) -> int:
    return sum(p.stat().st_size for p in store.chunks.base.rglob("*") if p.is_file())


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of a running process (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sha256_seconds(count: int) -> float:
    """CPU seconds SHA-256 takes over `count` bytes (4 MiB buffers, one thread)."""
    block = os.urandom(4 * MIB)
    started = time.process_time()
    for _ in range(max(1, count // len(block))):
        hashlib.sha256(block).digest()
    return time.process_time() - started


def timed(action) -> float:
    started = time.monotonic()
    action()
    return time.monotonic() - started


class QemuNbd:
    def __init__(self, image: Path, socket: Path, bitmap: str | None = None) -> None:
        self.socket = socket
        socket.unlink(missing_ok=True)
        self.process = subprocess.Popen(
            ["qemu-nbd", "--read-only", "--format=qcow2", "--export-name=drive",
             f"--socket={socket}", "--cache=none", "--aio=threads", "--persistent",
             *([f"--bitmap={bitmap}"] if bitmap else []), str(image)])
        deadline = time.monotonic() + 10
        while not socket.exists():
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.stop()
                raise RuntimeError("qemu-nbd did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


BITMAP = "binome-backup-bench"
CHUNK = 4 * MIB


def change_disk(disk: Path, size: int, percent: float, rng: random.Random) -> int:
    """Write random data over `percent` of the disk in random chunk-aligned 4 MiB blocks
    while a dirty bitmap records it; the bytes written."""
    blocks = max(1, round(size // CHUNK * percent / 100))
    positions = rng.sample(range(size // CHUNK), blocks)
    subprocess.run(["qemu-img", "bitmap", "--add", str(disk), BITMAP], check=True)
    commands = []
    for position in positions:
        commands += ["-c", f"write -P {rng.randrange(1, 255)} {position * CHUNK} {CHUNK}"]
    subprocess.run(["qemu-io", "-f", "qcow2", *commands, str(disk)], check=True,
                   capture_output=True)
    subprocess.run(["qemu-img", "bitmap", "--disable", str(disk), BITMAP], check=True)
    return blocks * CHUNK


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1G")
    parser.add_argument("--fill", type=int, default=50, help="percent of incompressible "
                        "data (the rest unallocated)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--change", type=float, default=1.0,
                        help="percent of the disk changed before the incremental backup")
    parser.add_argument("--dir", default="/var/tmp")
    args = parser.parse_args()
    size = parse_size(args.size)
    work = Path(tempfile.mkdtemp(prefix="binome-bench-backup-", dir=args.dir))
    server: QemuNbd | None = None
    try:
        disk = work / "disk.qcow2"
        make_disk(disk, size, args.fill)
        socket_path = work / "nbd.sock"
        server = QemuNbd(disk, socket_path)
        rows: dict[str, list[float]] = {"read": [], "backup": [], "write": [],
                                        "restore": [], "incremental": [], "store": []}
        read_full: list[int] = []
        stored_full: list[int] = []
        read_incremental: list[int] = []
        cpu_binome: list[float] = []
        cpu_nbd: list[float] = []
        dedup: list[float] = []
        rng = random.Random(13)
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
                with NbdExport(str(socket_path), "drive") as export:
                    stats = backup_image(writer, "drive-scsi0.img.fidx", export)
                read_full.append(stats.bytes_read)
                stored_full.append(stats.bytes_stored)
                writer.commit()

            own, nbd = os.times(), process_cpu(server.process.pid)
            rows["backup"].append(timed(backup))
            cpu_nbd.append(process_cpu(server.process.pid) - nbd)
            cpu_binome.append(os.times().user - own.user + os.times().system - own.system)
            full_chunks = chunk_bytes(store)
            rows["store"].append(timed(lambda: write_durably(work / "store-write.raw",
                                                             stored_full[-1])))
            # qemu-io needs the write lock: the read-only server steps aside meanwhile
            server.stop()
            change_disk(disk, size, args.change, rng)
            server = QemuNbd(disk, work / "nbd.sock", bitmap=BITMAP)
            full_ref = store.snapshots()[0]

            def incremental(store: Datastore = store, full_ref=full_ref) -> None:
                writer = store.begin("vm", "100", 1_700_000_100)
                context = f"qemu:dirty-bitmap:{BITMAP}"
                with NbdExport(str(socket_path), "drive",
                               meta_contexts=[context]) as export:
                    stats = backup_image(writer, "drive-scsi0.img.fidx", export,
                                         previous=store.read_index(full_ref,
                                                                   "drive-scsi0.img.fidx"),
                                         dirty=export.dirty_extents(context))
                assert stats.incremental, stats.full_reason
                read_incremental.append(stats.bytes_read)
                writer.commit()

            rows["incremental"].append(timed(incremental))
            dedup.append(chunk_bytes(store) / full_chunks)
            server.stop()
            subprocess.run(["qemu-img", "bitmap", "--remove", str(disk), BITMAP], check=True)
            server = QemuNbd(disk, work / "nbd.sock")
            target = work / "restored.raw"
            rows["write"].append(timed(lambda: subprocess.run(
                # -t writeback: flushed at the end like binome's restore (fsync); convert's
                # default, unsafe, never flushes and measures the page cache
                ["qemu-img", "convert", "-q", "-U", "-T", "none", "-t", "writeback",
                 "-f", "qcow2", "-O", "raw", str(disk), str(work / "restored.raw")],
                check=True)))
            target.unlink()
            ref = store.snapshots()[-1]
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
        ratios = sorted(read / backup * 100
                        for read, backup in zip(rows["read"], rows["backup"], strict=True))
        print(f"FULL BACKUP / RAW READ: {rate['backup'] / rate['read'] * 100:5.1f} % "
              f"(target >= 70 %; each round: "
              f"{', '.join(f'{r:.1f}' for r in ratios)} %)")
        stored_mib = statistics.median(stored_full) / MIB
        floor = max(medians["read"], medians["store"])
        print(f"the backup stores {stored_mib:.0f} MiB of chunks; writing as much with "
              f"O_DIRECT and one fsync takes {medians['store']:.2f} s, so no backup into "
              f"this disk beats {floor:.2f} s ({size / MIB / floor:.0f} MiB/s): backup / "
              f"that bound {floor / medians['backup'] * 100:.1f} %")
        cores = os.cpu_count() or 1
        data_read = statistics.median(stored_full)   # non-zero data: what is hashed
        cpu = statistics.median(cpu_binome) + statistics.median(cpu_nbd)
        sha = sha256_seconds(data_read)
        print(f"CPU of the full backup: {cpu:.2f} s (binome {statistics.median(cpu_binome):.2f}"
              f" s, qemu-nbd {statistics.median(cpu_nbd):.2f} s), on {cores} cores at best "
              f"{cpu / cores:.2f} s: backup / raw read <= "
              f"{medians['read'] / (cpu / cores) * 100:.0f} % from CPU alone; SHA-256 of "
              f"the {data_read / MIB:.0f} MiB of data alone is {sha:.2f} s of CPU "
              f"({data_read / MIB / sha:.0f} MiB/s a core)")
        print(f"restore / raw write: {rate['restore'] / rate['write'] * 100:5.1f} % "
              f"(target >= 50 %)")
        full_mib = statistics.median(read_full) / MIB
        incr_mib = statistics.median(read_incremental) / MIB
        print(f"incremental after changing {args.change:g} % (4 MiB blocks): "
              f"{medians['incremental']:.2f} s, read {incr_mib:.1f} MiB "
              f"({incr_mib * MIB / size * 100:.2f} % of the disk; target <= 2 %)")
        print(f"full backup: {medians['backup']:.2f} s, read {full_mib:.1f} MiB")
        print(f"dedup: the datastore after the full and the incremental backup holds "
              f"{statistics.median(dedup):.3f}x the full backup's chunks (target <= 1.1x)")
        print(f"incremental speed-up: {medians['backup'] / medians['incremental']:.1f}x "
              f"(target >= 20x)")
        return 0
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
