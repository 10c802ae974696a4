"""Copies of a stopped guest's volumes to another node: the disks of an offline
migration of a VM on local (`dir`) storage, and of a clone to another node.

What it owns: the NBD exports of the copies under way on this node (target side,
`VolumeImports`, in memory) and the source side's transfer (`send_volumes`). It
works, as PVE's storage_migrate does for the storages it cannot share, by pushing
the data over the cluster network:
1. the source asks the target (`POST /nodes/T/qemu/V/migrate/import phase=start`)
   to allocate a volume of the same size on the target storage (through the storage
   interface: any type, its volume activated there) and to export it, writable,
   with `qemu-nbd` on its cluster address (one client; the server ends when that
   client disconnects);
2. the source runs `qemu-img convert -n --target-is-zero` from its volume (its
   storage's `source()`: a path or an NBD URI) to that export, its progress in the
   task log (the new volume is zero: holes are skipped);
3. `phase=finish`: the target waits for `qemu-nbd` to end (the data flushed, the
   image closed) and releases the volume.
Any failure, or the source task's end, calls `phase=abort`: the target stops the
export by its pid and frees every volume it made for that copy, so a failed copy
leaves nothing on the target. The caller commits the config (to name the new
volumes) only once every copy is whole.

Transport: plain NBD on the cluster network, as the live migration's state (PVE's
`migration_type=insecure`); the export accepts one client and lives only for the
copy.

Pure helpers: `parse_storage_map` / `map_storage` (PVE's `pve-storage-id-map`, as
pve-common's parse_idmap / map_id). The moved config names the copies through
`configs.rename_volumes`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import secrets
import signal
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from binome.errors import BinomeError
from binome.guest.cloudinit import is_cloudinit_volid
from binome.guest.context import volume_name
from binome.guest.errors import GuestFailure
from binome.storage.base import StorageError

if TYPE_CHECKING:
    from binome.guest.context import GuestContext
    from binome.storage.base import Storage
    from binome.tasks.manager import Task

log = logging.getLogger("binome.guest")

# how long qemu-nbd may take to end once its client is done
EXPORT_END_TIMEOUT = 60.0
_STORAGE_ID = re.compile(r"^[a-z][a-z0-9\-_.]*[a-z0-9]$", re.I)   # PVE's pve-storage-id


# ---------------------------------------------------------------- storage map (pure)

@dataclass(frozen=True)
class StorageMap:
    """PVE's parsed `pve-storage-id-map`: `identity` (value `1`), a `default` target
    (a single id), per-source `entries` (`source:target` pairs)."""

    entries: dict[str, str] = field(default_factory=dict)
    default: str | None = None
    identity: bool = False


def parse_storage_map(text: str) -> StorageMap:
    """pve-common's parse_idmap for storage ids (its texts); ValueError if invalid."""
    entries: dict[str, str] = {}
    default: str | None = None
    identity = False
    for entry in (e for e in text.replace(";", ",").replace(" ", ",").split(",") if e):
        if entry == "1":
            identity = True
            continue
        source, sep, target = entry.partition(":")
        if sep:
            if ":" in target or not _STORAGE_ID.match(source) \
                    or not _STORAGE_ID.match(target):
                raise ValueError(f"entry '{entry}' contains invalid ID - value does not "
                                 f"look like a valid storage identifier")
            if source in entries:
                raise ValueError(f"duplicate mapping for source '{source}'")
            entries[source] = target
        else:
            if not _STORAGE_ID.match(entry):
                raise ValueError(f"entry '{entry}' contains invalid ID - value does not "
                                 f"look like a valid storage identifier")
            if default is not None:
                raise ValueError("default target ID can only be provided once")
            default = entry
    if identity and (default or entries):
        raise ValueError("identity mapping cannot be combined with other mappings")
    return StorageMap(entries, default, identity)


def map_storage(storage_map: StorageMap | None, source: str) -> str:
    """pve-common's map_id: the target storage of a volume on `source`."""
    if storage_map is None or storage_map.identity:
        return source
    if source in storage_map.entries:
        return storage_map.entries[source]
    return storage_map.default or source


# ---------------------------------------------------------------- target side


@dataclass
class _Export:
    vmid: int
    volid: str
    activated: bool
    pid: int | None = None
    pidfile: Path | None = None
    export: str = ""


class VolumeImports:
    """The target's side: volumes allocated for copies under way, and their exports."""

    def __init__(self, ctx: GuestContext) -> None:
        self.ctx = ctx
        self._exports: dict[str, _Export] = {}      # volid -> export under way
        self._finished: dict[str, int] = {}         # volid -> vmid: copied, not yet named

    def _pidfile_dir(self) -> Path:
        return self.ctx.runtime.run_dir

    async def _alloc(self, vmid: int, storage_id: str, size: int, fmt: str | None,
                     name: str | None = None) -> tuple[Storage, str]:
        storage = await self.ctx.storages.get(storage_id)
        if not storage.config.available_on(self.ctx.node) or storage.config.disable:
            raise GuestFailure(f"storage '{storage_id}' is not available on node "
                               f"'{self.ctx.node}'")
        if "images" not in storage.config.content:
            raise GuestFailure(f"storage '{storage_id}' does not support vm images")
        if name is not None and name != f"vm-{vmid}-cloudinit":
            raise GuestFailure(f"invalid volume name '{name}'")
        return storage, await storage.alloc(vmid, size, storage.resolve_format(fmt),
                                            name=name)

    async def allocate(self, vmid: int, storage_id: str, size: int, fmt: str | None
                       ) -> dict[str, Any]:
        """Allocate a volume for guest `vmid` that a live migration's incoming QEMU
        will receive (through its own NBD export); freed by `abort` unless the guest's
        config names it by then. {volid}."""
        _storage, volid = await self._alloc(vmid, storage_id, size, fmt)
        self._finished[volid] = vmid
        return {"volid": volid}

    async def start(self, vmid: int, storage_id: str, size: int, fmt: str | None,
                    name: str | None = None) -> dict[str, Any]:
        """Allocate a volume of `size` bytes for guest `vmid` on `storage_id` here (named
        `name`: only the guest's cloud-init drive has a fixed name) and export it
        writable over NBD; {volid, uri}."""
        storage, volid = await self._alloc(vmid, storage_id, size, fmt, name)
        exp = _Export(vmid, volid, False)
        self._exports[volid] = exp
        try:
            exp.activated = await storage.activate_volume(volid)
            src = storage.source(volid)
            uri = await self._serve(exp, src.source, src.format or "raw")
        except BaseException:
            await asyncio.shield(self._drop(exp, free=True))
            raise
        log.info("VM %s: importing %s, exported on %s", vmid, volid, uri)
        return {"volid": volid, "uri": uri}

    async def _serve(self, exp: _Export, source: str, fmt: str) -> str:
        host = self.ctx.cluster.config.cluster_address
        exp.export = f"import-{secrets.token_hex(8)}"
        exp.pidfile = self._pidfile_dir() / f"{exp.vmid}.{exp.export}.nbd.pid"
        last = ""
        for _attempt in range(5):        # a port taken between the probe and qemu-nbd
            port = free_port(host)
            argv = ["qemu-nbd", "--fork", "--pid-file", str(exp.pidfile), "-b", host,
                    "-p", str(port), "-x", exp.export, "-f", fmt, "--cache=writeback",
                    "--discard=unmap", "--shared=1", source]
            proc = await asyncio.create_subprocess_exec(
                *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
                start_new_session=True)
            try:
                _out, err = await asyncio.wait_for(proc.communicate(), 30)
            except BaseException:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                raise
            last = err.decode(errors="replace").strip()
            if proc.returncode == 0:        # --fork: the server listens now
                exp.pid = _read_pid(exp.pidfile)
                h = f"[{host}]" if ":" in host else host
                return f"nbd://{h}:{port}/{exp.export}"
            if "in use" not in last.lower():
                break
        raise GuestFailure(f"could not export {exp.volid} for the copy: {last}")

    async def finish(self, vmid: int, volid: str) -> dict[str, Any]:
        """The source's copy is done: wait for the export to end (data flushed, image
        closed), release the volume; its size."""
        exp = self._exports.get(volid)
        if exp is None or exp.vmid != vmid:
            raise GuestFailure(f"no copy of {volid} under way on {self.ctx.node}")
        deadline = time.monotonic() + EXPORT_END_TIMEOUT
        while _alive(exp.pid, exp.export):
            if time.monotonic() > deadline:
                await asyncio.shield(self._drop(exp, free=True))
                raise GuestFailure(f"the export of {volid} did not end after the copy")
            await asyncio.sleep(0.1)
        self._exports.pop(volid, None)
        self._finished[volid] = vmid
        await self._release(exp)
        storage = await self.ctx.storages.for_volid(volid)
        return {"volid": volid, "size": await storage.size(volid)}

    async def abort(self, vmid: int, volids: list[str] | None = None) -> dict[str, Any]:
        """Stop the exports of `vmid`'s copies here (all, or `volids`) and free their
        volumes, the finished ones too unless the guest's config (read by quorum) names
        them by now (the copy was committed: it is the guest's disk)."""
        dropped = []
        for volid, exp in list(self._exports.items()):
            if exp.vmid == vmid and (volids is None or volid in volids):
                await self._drop(exp, free=True)
                dropped.append(volid)
        done = [v for v, owner in self._finished.items()
                if owner == vmid and (volids is None or v in volids)]
        if done:
            named = await self._named(vmid)
            for volid in done:
                self._finished.pop(volid, None)
                if volid in named:
                    continue
                with contextlib.suppress(StorageError, OSError):
                    await (await self.ctx.storages.for_volid(volid)).free(volid)
                    dropped.append(volid)
        return {"freed": dropped}

    async def _named(self, vmid: int) -> set[str]:
        """The volumes guest `vmid`'s config names (quorum read); all of them on doubt."""
        owner = await self.ctx.configs.owner(vmid)
        if owner is None:
            return set()
        vm = await self.ctx.read(vmid, owner)
        text = [str(v) for sect in (vm.config, vm.pending) for v in sect.values()]
        return {t.split(",")[0] for t in text}

    def under_way(self, vmid: int) -> list[str]:
        return [v for v, e in self._exports.items() if e.vmid == vmid]

    async def _release(self, exp: _Export) -> None:
        if exp.pidfile is not None:
            with contextlib.suppress(OSError):
                exp.pidfile.unlink()
        if exp.activated:
            with contextlib.suppress(Exception):
                await (await self.ctx.storages.for_volid(exp.volid)).deactivate_volume(
                    exp.volid)

    async def _drop(self, exp: _Export, *, free: bool) -> None:
        self._exports.pop(exp.volid, None)
        if _alive(exp.pid, exp.export):
            assert exp.pid is not None
            with contextlib.suppress(ProcessLookupError):
                os.kill(exp.pid, signal.SIGKILL)
            deadline = time.monotonic() + 5
            while _alive(exp.pid, exp.export) and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        await self._release(exp)
        if free:
            try:
                await (await self.ctx.storages.for_volid(exp.volid)).free(exp.volid)
                log.info("VM %s: copy %s dropped and freed", exp.vmid, exp.volid)
            except (StorageError, OSError) as exc:
                log.warning("VM %s: could not free the partial copy %s: %s", exp.vmid,
                            exp.volid, exc)


def free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int | None, export: str) -> bool:
    """The export's qemu-nbd still runs (its pid, checked against its command line so
    that a reused pid is never taken for it)."""
    if pid is None:
        return False
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    state = stat.rpartition(")")[2].split()[0] if ")" in stat else ""
    return export.encode() in cmd and state != "Z"


# ---------------------------------------------------------------- source side


async def send_volumes(ctx: GuestContext, task: Task, target: str, vmid: int,
                       plan: list[tuple[str, str]], *, new_vmid: int | None = None,
                       bwlimit_kib: int | None = None) -> dict[str, str]:
    """Copy each (volid here, target storage id) of `plan` to node `target`, for guest
    `new_vmid` (default `vmid`); {old volid: new volid}. On any failure (or the task's
    cancellation) every copy made on the target is freed there and the error raised;
    the source volumes are never changed."""
    from binome.guest.disk_move import convert_with_progress
    from binome.guest.remote import node_call

    owner = new_vmid or vmid
    path = f"/nodes/{target}/qemu/{owner}/migrate/import"
    made: dict[str, str] = {}

    async def abort() -> None:
        # every copy of the guest on the target, also one whose start did not answer
        await abort_copies(ctx, task, target, owner, None)

    try:
        for volid, storage_id in plan:
            storage = await ctx.storages.for_volid(volid)
            size = await storage.size(volid)
            fmt = storage.volume_format(volid)
            params: dict[str, Any] = {"phase": "start", "source": ctx.node,
                                      "storage": storage_id, "size": size, "format": fmt}
            if is_cloudinit_volid(volid):      # PVE's name, which a start looks for
                params["name"] = f"vm-{owner}-cloudinit"
            answer = await node_call(ctx.cluster, target, "POST", path, params, timeout=90)
            new_volid, uri = str(answer["volid"]), str(answer["uri"])
            made[volid] = new_volid
            task.log(f"copying {volume_name(volid)} ({size} bytes) to {target}: "
                     f"{new_volid}")
            activated = await ctx.activate_here([volid])
            try:
                src = storage.source(volid)
                # -t writeback: the target is flushed before qemu-img exits 0 (its
                # default, unsafe, would leave that to the export's close)
                argv = ["qemu-img", "convert", "-p", "-n", "--target-is-zero",
                        "-t", "writeback", "-f", src.format or "raw", "-O", "raw"]
                if bwlimit_kib:
                    argv += ["-r", f"{bwlimit_kib}K"]
                started = time.monotonic()
                await convert_with_progress(task, [*argv, src.source, uri], size)
            finally:
                await asyncio.shield(ctx.deactivate_after(None, activated, timeout=10.0))
            await node_call(ctx.cluster, target, "POST", path,
                            {"phase": "finish", "source": ctx.node, "volumes": new_volid},
                            timeout=EXPORT_END_TIMEOUT + 30)
            took = max(time.monotonic() - started, 0.001)
            task.log(f"{volume_name(volid)}: copied to {target} as {new_volid} "
                     f"({size / took / 1048576:.1f} MiB/s)")
    except BaseException as exc:
        task.log(f"copy to {target} failed: {exc}" if str(exc) else
                 f"copy to {target} failed")
        await asyncio.shield(abort())
        raise
    return made


async def abort_copies(ctx: GuestContext, task: Task | None, target: str, vmid: int,
                       volids: list[str] | None) -> None:
    """Free on `target` the copies made there for guest `vmid` (`volids`, or all those
    under way or not yet named by its config: None) after a failure before the config
    named them; a failure is a warning."""
    from binome.guest.remote import node_call

    if volids is not None and not volids:
        return
    params = {"phase": "abort", "source": ctx.node}
    if volids:
        params["volumes"] = ",".join(volids)
    try:
        answer = await node_call(ctx.cluster, target, "POST",
                                 f"/nodes/{target}/qemu/{vmid}/migrate/import", params)
        freed = list((answer or {}).get("freed") or [])
        if task is not None and freed:
            task.log(f"removed the copies on {target}: {', '.join(freed)}")
    except BinomeError as exc:
        what = ", ".join(volids) if volids else f"the volumes of VM {vmid}"
        if task is not None:
            task.warn(f"cleanup on {target} failed: {exc} (free {what} there by hand)")
        else:
            log.warning("VM %s: cleanup of copies on %s failed: %s", vmid, target, exc)
