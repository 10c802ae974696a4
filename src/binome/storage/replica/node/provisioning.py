"""Creating and deleting replicated volumes: the record, the port, both copies, the end.

`create_volume` writes the volume's record (secret, replication port) and
brings this node's copy up; the peer's daemon creates its own from the record
(`reconcile`). `delete_volume` marks the record deleted and removes this
node's copy once both sides acknowledged. Functions of the `VolumeService`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from binome.storage.replica.core.config import (
    ADJUSTABLE,
    NAME_RE,
    ConfigError,
    parse_size,
)
from binome.storage.replica.core.splitbrain import parse_policy
from binome.storage.replica.core.states import Fencing
from binome.storage.replica.core.views import CONNECTED_STATES
from binome.storage.replica.node.errors import VolumeFailure

if TYPE_CHECKING:
    from binome.storage.replica.node.volumes import VolumeService
    from binome.tasks.manager import Task

log = logging.getLogger("binome.volumes")

FIRST_PORT = 7789                 # DRBD's customary first port
LAST_PORT = 7999


async def create_volume(svc: VolumeService, name: str, size: int | str, *, peer: str | None = None,
                        protocol: str = "C", fencing: str = Fencing.QUORUM.value,
                        resync_rate: int = 0, after_sb: dict[int, str] | None = None,
                        storage: str | None = None, vmid: int | None = None,
                        backing_dir: str | None = None, primary: bool = True,
                        task: Task | None = None, wait_peer: float = 30.0,
                        allow_two_primaries: bool = False,
                        options: dict[str, Any] | None = None,
                        image: dict[str, Any] | None = None) -> dict[str, Any]:
    """Create a volume on this node and its peer; this node becomes its Primary.

    The record goes to etcd first (the name, the port and the secret are
    claimed there atomically); the peer's daemon creates its copy from it.
    This node waits (up to `wait_peer` s) for the peer to connect, then
    forces itself Primary, which starts the initial full sync. `options`: more
    adjustable engine settings (config.ADJUSTABLE: the c_* of the dynamic resync
    controller, verify_alg, csums_alg), recorded like the others. `image`: what the
    `replicated` storage keeps about the image it writes inside the device (its
    format and virtual size: `storage.replicated`), recorded as `image`, never read
    here.
    """
    say = task.log if task is not None else (lambda m: log.info("%s", m))
    if not NAME_RE.match(name):
        raise VolumeFailure(f"invalid volume name '{name}'")
    try:
        size = parse_size(size)
        for n, policy in (after_sb or {}).items():
            parse_policy(policy, n, my_name=svc.node, peer_name=peer or "")
    except (ConfigError, ValueError) as exc:
        raise VolumeFailure(str(exc)) from None
    if size <= 0 or size % 4096:
        raise VolumeFailure("size must be a positive multiple of 4 KiB")
    if protocol not in ("A", "B", "C"):
        raise VolumeFailure("protocol must be A, B or C")
    if allow_two_primaries and protocol != "C":
        raise VolumeFailure(f"allow-two-primaries requires protocol C (not {protocol})")
    Fencing(fencing)
    svc._store()                    # (not in a cluster: refused before anything else)
    peer = peer or svc.default_peer()
    if peer == svc.node:
        raise VolumeFailure("a volume's peer must be another node")
    mine_ip, peer_ip = svc._replication_ip(svc.node), svc._replication_ip(peer)
    secret = secrets.token_hex(32)
    rec: dict[str, Any] = {
        "name": name, "size": size, "protocol": protocol, "fencing": fencing,
        "resync_rate": int(resync_rate), "storage": storage, "vmid": vmid,
        "allow_two_primaries": bool(allow_two_primaries),
        "nodes": {svc.node: {"address": mine_ip}, peer: {"address": peer_ip}},
        "primary": svc.node if primary else None, "down": [], "creator": svc.node,
        "created": int(time.time()),
    }
    if image:
        rec["image"] = dict(image)
    if backing_dir:
        for n in rec["nodes"].values():
            n["backing_dir"] = backing_dir
    for n, policy in (after_sb or {}).items():
        rec[f"after_sb_{n}pri"] = policy
    for key, value in (options or {}).items():
        if key not in ADJUSTABLE:
            raise VolumeFailure(f"{key}: not a volume setting")
        rec[key] = value
    port = await svc.record_store.claim(rec, secret, FIRST_PORT, LAST_PORT)
    say(f"volume {name}: {size} bytes, replicated between {svc.node} and {peer} "
        f"(protocol {protocol}, fencing {fencing}, port {port})")
    try:
        async with svc.lock(name):
            await svc.call("create", **svc._engine_config(rec, secret))
            await svc.call("up", name=name)
        svc.records[name] = rec
        say(f"volume {name}: created and up on {svc.node}; waiting for {peer}")
        connected = await wait_status(svc,
            name, lambda st: st.get("cstate") in CONNECTED_STATES, wait_peer)
        if connected:
            say(f"volume {name}: connected to {peer}")
        else:
            say(f"volume {name}: {peer} did not connect within {wait_peer:.0f} s; it will "
                f"catch up (full sync) when it does")
        if primary:
            st = await svc.call("primary", name=name, force=True)
            say(f"volume {name}: Primary on {svc.node} (disk {st['disk']}, peer disk "
                f"{st['peer_disk']}): the initial sync to {peer} runs in the background")
    except BaseException as exc:
        say(f"volume {name}: creation failed ({exc}); removing it")
        with contextlib.suppress(Exception):
            await delete_volume(svc, name, wait_peer=0.0)
        raise
    await svc.clusterlog.write(f"replicated volume {name} created on {svc.node} and "
                                f"{peer}", tag="volume")
    return rec


async def wait_status(svc: VolumeService, name: str, pred: Callable[[dict[str, Any]], bool],
                       timeout: float) -> bool:
    """Wait (engine events, with a status poll as a fallback) until `pred` holds."""
    deadline = time.monotonic() + timeout
    while True:
        st = await svc.call("status", name=name)
        if pred(st):
            return True
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        await asyncio.sleep(min(0.1, left))


async def delete_volume(svc: VolumeService, name: str, *, task: Task | None = None,
                        wait_peer: float = 30.0) -> None:
    """Remove the volume and its data on both nodes (the peer's daemon deletes its copy)."""
    say = task.log if task is not None else (lambda m: log.info("%s", m))
    svc._store()                    # (not in a cluster: refused before anything else)
    if svc.exists_locally(name):
        # A guest that was just stopped may still be closing its NBD connection.
        if not await wait_status(svc, name, lambda st: not st.get("open_count"), 5.0):
            st = await svc.call("status", name=name)
            raise VolumeFailure(f"volume {name} is in use on {svc.node} "
                                f"({st['open_count']} NBD clients)")

    try:
        rec = await svc.record_store.update(name, lambda old: {**old, "deleting": True})
    except VolumeFailure:
        if svc.exists_locally(name):
            async with svc.lock(name):
                await remove_local(svc, name)
            return
        raise
    async with svc.lock(name):
        await remove_local(svc, name)
        done = await ack_deletion(svc, name)
    say(f"volume {name}: removed on {svc.node}")
    peer = svc.peer_of(rec)
    deadline = time.monotonic() + wait_peer
    while not done and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        done = not await svc.record_store.exists(name)
    if not done:
        say(f"volume {name}: {peer} will remove its copy when it is back")
    else:
        say(f"volume {name}: removed on {peer}")
    svc.records.pop(name, None)
    await svc.clusterlog.write(f"replicated volume {name} removed", tag="volume")


async def remove_local(svc: VolumeService, name: str) -> None:
    if not svc.exists_locally(name):
        return
    listing = {v["name"]: v for v in await svc.call("list")}
    if listing.get(name, {}).get("up"):
        await svc.call("down", name=name)
    await svc.call("delete", name=name, remove_data=True)
    svc.statuses.pop(name, None)


async def ack_deletion(svc: VolumeService, name: str) -> bool:
    """Note that this node's copy is gone; the last node removes every key. True if gone."""
    return await svc.record_store.ack_deletion(name, svc.node)


async def set_record(svc: VolumeService, name: str,
                     mutate: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    await svc.record_store.update(name, mutate)


async def set_image(svc: VolumeService, name: str, image: dict[str, Any]) -> None:
    """Replace the record's `image` entry (the `replicated` storage's, see
    `create_volume`), in etcd and in this node's cache."""
    await set_record(svc, name, lambda r: {**r, "image": dict(image)})
    if name in svc.records:
        svc.records[name] = {**svc.records[name], "image": dict(image)}
