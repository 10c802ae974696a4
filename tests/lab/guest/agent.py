"""A stand-in for binomed's guest service: one QemuRuntime driven over stdin/stdout.

Run inside the node's network namespace (``ip netns exec NS python -m
tests.lab.guest.agent RUN_DIR``) so the taps it creates land there, the way
the daemon would create them on a node. Being a separate process, it can be
killed like a crashed daemon while its guests keep running, and a new agent
on the same run dir plays the restarted daemon.

Protocol, one JSON object per line. Requests ``{"id": N, "op": OP, ...}``;
answers ``{"id": N, "ok": true, "result": ..., "elapsed": S}`` or
``{"id": N, "ok": false, "error": TYPE, "message": TEXT}``. Unprompted
``{"event": "exit", "vmid": V, "reason": R}`` lines report guest exits
(the runtime's ``on_exit``); ``{"event": "ready", "pid": P}`` opens the stream.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from binome.guest.runtime import QemuRuntime
from binome.guest.spec import LaunchSpec


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def _handle(rt: QemuRuntime, req: dict[str, Any]) -> Any:
    op = req["op"]
    vmid = req.get("vmid")
    if op == "start":
        return await rt.start(LaunchSpec.from_dict(req["spec"]))
    if op == "argv":
        return rt.argv(LaunchSpec.from_dict(req["spec"]))
    if op == "adopt":
        return await rt.adopt()
    if op == "status":
        return dataclasses.asdict(await rt.status(vmid))
    if op == "is_running":
        return rt.is_running(vmid)
    if op == "shutdown":
        return await rt.shutdown(vmid, timeout=req.get("timeout", 60.0),
                                 force_stop=req.get("force_stop", False))
    if op == "stop":
        return await rt.stop(vmid, timeout=req.get("timeout", 10.0))
    if op in ("reset", "suspend", "resume"):
        return await getattr(rt, op)(vmid)
    if op == "command":
        return await rt.command(vmid, req["cmd"], req.get("args"))
    if op == "accel":
        return await rt.accel()
    raise ValueError(f"unknown op {op!r}")


async def main(run_dir: Path, accel: str | None) -> None:
    rt = QemuRuntime(run_dir, accel=accel,
                     on_exit=lambda vmid, reason: _emit({"event": "exit", "vmid": vmid,
                                                         "reason": reason}))
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    _emit({"event": "ready", "pid": os.getpid()})
    try:
        while line := await reader.readline():
            req = json.loads(line)
            if req["op"] == "exit":
                break
            started = time.monotonic()
            try:
                result = await _handle(rt, req)
                _emit({"id": req["id"], "ok": True, "result": result,
                       "elapsed": time.monotonic() - started})
            except Exception as exc:
                _emit({"id": req["id"], "ok": False, "error": type(exc).__name__,
                       "message": str(exc), "elapsed": time.monotonic() - started})
    finally:
        await rt.close()  # QMP connections only: the guests keep running


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--accel", choices=("kvm", "tcg"), default=None)
    args = parser.parse_args()
    asyncio.run(main(args.run_dir, args.accel))
