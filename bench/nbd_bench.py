#!/usr/bin/env python3
"""NBD export benchmark: `qemu-nbd` (baseline) vs the binome volume engine, same fio jobs.

Both servers export a raw file of the same size (pre-written so every block
is allocated) over a unix socket; each fio job (`--ioengine=nbd`, one
connection, libnbd pipelining up to the job's iodepth) runs against the
baseline first, then against the engine. Printed: IOPS, throughput, mean and
p99 completion latency, the engine/baseline ratio, and the engine's CPU use.

    .venv/bin/python bench/nbd_bench.py [--runtime 10] [--size 1G] [--dir /tmp]
                                         [--jobs seq,rand32,rand1] [--uvloop] [--json]

The targets in the issue are for the *replicated* engine (next increment):
sequential write >= 70 % of the baseline, 4 KiB qd32 >= 40 %, qd1 latency <= 3x.
This is not a test: nothing is asserted. Every process started is stopped by
pid and the temporary directory removed, also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from binome.storage.replica import control, supervisor  # noqa: E402

JOBS = {
    "seq": {"title": "1 MiB seq write qd8", "rw": "write", "bs": "1M", "iodepth": 8},
    "rand32": {"title": "4 KiB rand write qd32", "rw": "randwrite", "bs": "4k", "iodepth": 32},
    "rand1": {"title": "4 KiB rand write qd1", "rw": "randwrite", "bs": "4k", "iodepth": 1},
    "read32": {"title": "4 KiB rand read qd32", "rw": "randread", "bs": "4k", "iodepth": 32},
}
TARGETS = {"seq": ("throughput", 0.70), "rand32": ("iops", 0.40), "rand1": ("latency", 3.0)}


def parse_size(text: str) -> int:
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper()
    if text[-1] in mult:
        return int(text[:-1]) * mult[text[-1]]
    return int(text)


def prefill(path: Path, size: int) -> None:
    """Write every block once, so neither server pays for block allocation during a job."""
    chunk = os.urandom(1 << 20) * 4
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for off in range(0, size, len(chunk)):
            os.pwrite(fd, chunk[:min(len(chunk), size - off)], off)
        os.fsync(fd)
    finally:
        os.close(fd)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_fio(uri: str, job: dict, runtime: int, size: int) -> dict:
    cmd = ["fio", "--name=bench", "--ioengine=nbd", f"--uri={uri}", f"--rw={job['rw']}",
           f"--bs={job['bs']}", f"--iodepth={job['iodepth']}", f"--size={size}",
           "--time_based", f"--runtime={runtime}", "--ramp_time=1", "--randrepeat=0",
           "--norandommap", "--group_reporting", "--output-format=json"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=runtime + 60)
    data = json.loads(out.stdout[out.stdout.index("{"):])
    side = data["jobs"][0]["read" if "read" in job["rw"] else "write"]
    clat = side["clat_ns"]
    p99 = clat.get("percentile", {}).get("99.000000", 0)
    return {"iops": side["iops"], "bw": side["bw_bytes"], "lat_us": clat["mean"] / 1000,
            "p99_us": p99 / 1000}


class Baseline:
    def __init__(self, image: Path, sock: Path) -> None:
        self.sock = sock
        self.proc = subprocess.Popen(
            ["qemu-nbd", "-f", "raw", "--cache=writeback", "--aio=threads", "-t", "-e", "4",
             "-k", str(sock), str(image)], stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not sock.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("qemu-nbd did not start")
            time.sleep(0.01)

    @property
    def uri(self) -> str:
        return f"nbd+unix:///?socket={self.sock}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Engine:
    def __init__(self, workdir: Path, image: Path, size: int, uvloop: bool) -> None:
        env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
        if uvloop:
            env["BINOME_UVLOOP"] = "1"
        self.state = workdir / "engine"
        self.handle = asyncio.run(supervisor.ensure_engine(self.state, env=env))
        ctl = self.handle.control

        async def setup() -> dict:
            await control.call(ctl, "create", name="bench", size=size, backing=str(image))
            await control.call(ctl, "up", name="bench")
            return await control.call(ctl, "primary", name="bench", force=True)

        self.sock = asyncio.run(setup())["socket"]

    @property
    def uri(self) -> str:
        return f"nbd+unix:///bench?socket={self.sock}"

    @property
    def pid(self) -> int:
        return self.handle.pid

    def stop(self) -> None:
        asyncio.run(supervisor.stop_engine(self.handle))


def fmt(job: str, r: dict) -> str:
    if job == "seq":
        return f"{r['bw'] / 2**20:8.0f} MiB/s  lat {r['lat_us']:7.0f} us"
    return f"{r['iops']:8.0f} IOPS   lat {r['lat_us']:5.0f} us p99 {r['p99_us']:5.0f} us"


def ratio(job: str, base: dict, ours: dict) -> str:
    if job == "rand1":
        x = ours["lat_us"] / base["lat_us"]
        text = f"latency x{x:.2f}"
    else:
        key = "bw" if job == "seq" else "iops"
        x = ours[key] / base[key]
        text = f"{x * 100:5.1f} %"
    if job in TARGETS:
        kind, target = TARGETS[job]
        ok = x <= target if kind == "latency" else x >= target
        text += f"  (replicated target {'<=' if kind == 'latency' else '>='} "
        text += f"{target if kind == 'latency' else f'{target:.0%}'}"
        text += f": {'met' if ok else 'not met'} unreplicated)"
    return text


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runtime", type=int, default=10, help="seconds per job (default 10)")
    ap.add_argument("--size", default="1G", help="export size (default 1G)")
    ap.add_argument("--dir", default=None, help="where the temporary files go (default $TMPDIR)")
    ap.add_argument("--jobs", default="seq,rand32,rand1", help=f"among {','.join(JOBS)}")
    ap.add_argument("--uvloop", action="store_true", help="run the engine on uvloop")
    ap.add_argument("--json", action="store_true", help="print the results as JSON too")
    args = ap.parse_args()
    for tool in ("fio", "qemu-nbd"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed")
    size = parse_size(args.size)
    jobs = [j.strip() for j in args.jobs.split(",") if j.strip()]
    work = Path(tempfile.mkdtemp(prefix="nbdbench-", dir=args.dir))
    servers: list = []
    results: dict[str, dict[str, dict]] = {}
    try:
        base_img, our_img = work / "baseline.raw", work / "engine.raw"
        print(f"pre-writing two {size >> 20} MiB files in {work} ...", flush=True)
        prefill(base_img, size)
        prefill(our_img, size)
        baseline = Baseline(base_img, work / "qemu-nbd.sock")
        servers.append(baseline)
        engine = Engine(work, our_img, size, args.uvloop)
        servers.append(engine)
        print(f"qemu-nbd pid {baseline.pid}, engine pid {engine.pid}"
              f"{' (uvloop)' if args.uvloop else ''}; {args.runtime} s per job\n", flush=True)
        for job in jobs:
            spec = JOBS[job]
            results[job] = {}
            for label, srv in (("qemu-nbd", baseline), ("engine", engine)):
                cpu0 = cpu_seconds(srv.pid)
                t0 = time.monotonic()
                r = run_fio(srv.uri, spec, args.runtime, size)
                r["cpu"] = (cpu_seconds(srv.pid) - cpu0) / (time.monotonic() - t0)
                results[job][label] = r
                print(f"{spec['title']:24s} {label:9s} {fmt(job, r)}  cpu {r['cpu'] * 100:3.0f} %",
                      flush=True)
            verdict = ratio(job, results[job]["qemu-nbd"], results[job]["engine"])
            print(f"{'':24s} {'ratio':9s} {verdict}\n", flush=True)
    finally:
        for srv in reversed(servers):
            with contextlib.suppress(Exception):
                srv.stop()
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
