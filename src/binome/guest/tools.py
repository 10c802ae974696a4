"""Runs the command-line tools a guest operation needs (`qemu-img` ...): a failure is a
GuestFailure carrying the tool's own message. Owns nothing."""

from __future__ import annotations

import asyncio

from binome.guest.errors import GuestFailure


async def run_tool(*argv: str) -> None:
    process = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                                   stderr=asyncio.subprocess.PIPE)
    _out, err = await process.communicate()
    if process.returncode != 0:
        raise GuestFailure(f"{argv[0]} failed: {err.decode().strip() or process.returncode}")
