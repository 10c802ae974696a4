"""The volume engine: one process per node serving many volumes, driven over a control socket.

The engine runs apart from `binomed` (restarting the daemon must not stop
guest I/O) and is re-adopted by it through the control socket (see
`supervisor`). State directory layout:

    <state>/engine.sock          control socket (JSON lines, `control`)
    <state>/engine.pid           pid of the running engine (flock-protected)
    <state>/volumes/<name>/      volume.json, meta, data.img (default backing)
    <state>/nbd/<name>.sock      NBD export of an up volume (default location)

Commands (DRBD's verbs where they exist): ping, list, create, delete, up,
down, connect, disconnect, primary, secondary, outdate, invalidate,
invalidate-remote, pause-sync, resume-sync, verify, verify-stop, resize, status,
proc, bitmap, write-bitmap, shutdown; for the daemon's quorum fencing: peer-outdated (the
fence-peer handler succeeded), outdated-by-peer (the peer fenced us first),
set-fencing (standalone mode); attach (a replaced disk after a local I/O
error detached the old one), set-handlers (handler commands), adjust (change
the resync controller, protocol, allow-two-primaries, verify/csums algorithms
of an existing volume, live); and `events`, a
stream of every state change (one status object per change, preceded by one
per up volume and an `exists-end` marker) and of handler runs (`call`,
`response`).

`up` attaches the disk, opens the NBD socket and, for a volume with a
network configuration, starts connecting to the peer; the volume starts
Secondary; only a Primary serves I/O. What `up` brought up is not remembered
across an engine restart: the daemon, which owns the desired state, issues
`up` again (a volume that was Primary comes back with the crashed-primary
flag, as in DRBD).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from binome.storage.replica.core import format as fmt
from binome.storage.replica.core.config import ConfigError, VolumeConfig, parse_size
from binome.storage.replica.core.states import StateError
from binome.storage.replica.engine.config_file import load_config, save_config
from binome.storage.replica.engine.control import ControlError, ControlServer, Stream
from binome.storage.replica.engine.volume.errors import VolumeError
from binome.storage.replica.engine.volume.volume import Volume

log = logging.getLogger("binome.replica.engine")

VERSION = fmt.VERSION
EVENT_QUEUE = 10000        # a subscriber this far behind is dropped (it re-reads status)


class Engine:
    def __init__(self, state_dir: Path, socket_dir: Path | None = None) -> None:
        self.state_dir = state_dir
        self.volumes_dir = state_dir / "volumes"
        self.socket_dir = socket_dir or state_dir / "nbd"
        self.control_path = str(state_dir / "engine.sock")
        self.volumes: dict[str, Volume] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._control = ControlServer(self.handle)
        self.stopped = asyncio.Event()
        self._subscribers: set[asyncio.Queue] = set()
        self._commands: dict[str, Callable[..., Awaitable[Any]]] = {
            "ping": self.ping, "list": self.list_volumes, "create": self.create,
            "delete": self.delete, "up": self.up, "down": self.down, "primary": self.primary,
            "connect": self.connect, "disconnect": self.disconnect,
            "secondary": self.secondary, "outdate": self.outdate, "status": self.status,
            "proc": self.proc, "bitmap": self.bitmap, "write-bitmap": self.write_bitmap,
            "shutdown": self.shutdown, "invalidate": self.invalidate,
            "invalidate-remote": self.invalidate_remote, "pause-sync": self.pause_sync,
            "resume-sync": self.resume_sync, "peer-outdated": self.peer_outdated,
            "outdated-by-peer": self.outdated_by_peer, "set-fencing": self.set_fencing,
            "verify": self.verify, "verify-stop": self.verify_stop, "resize": self.resize,
            "events": self.events, "attach": self.attach, "set-handlers": self.set_handlers,
            "adjust": self.adjust,
        }

    async def start(self) -> None:
        self.volumes_dir.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        await self._control.start(self.control_path)
        log.info("engine %s started (pid %d), control socket %s", VERSION, os.getpid(),
                 self.control_path)

    async def stop(self) -> None:
        """Detach every volume cleanly (roles are kept: see the module docstring)."""
        await self._control.close()
        for name in list(self.volumes):
            async with self._lock(name):
                vol = self.volumes.pop(name, None)
                if vol is not None:
                    try:
                        await vol.detach()
                    except Exception:
                        log.exception("%s: detach failed", name)
        self.stopped.set()

    # --- dispatch -----------------------------------------------------------------------

    async def handle(self, cmd: str, args: dict[str, Any]) -> Any:
        fn = self._commands.get(cmd)
        if fn is None:
            raise ControlError("EINVAL", f"unknown command {cmd!r}")
        try:
            return await fn(**args)
        except TypeError as e:
            raise ControlError("EINVAL", f"{cmd}: {e}") from None
        except StateError as e:
            raise ControlError("ESTATE", str(e)) from None
        except VolumeError as e:
            raise ControlError(e.code, str(e)) from None
        except ConfigError as e:
            raise ControlError("EINVAL", str(e)) from None

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    def _dir(self, name: str) -> Path:
        return self.volumes_dir / name

    def _config(self, name: str) -> VolumeConfig:
        path = self._dir(name) / "volume.json"
        if not isinstance(name, str) or not path.is_file():
            raise ControlError("ENOENT", f"no volume named {name!r}")
        return load_config(path)

    def _up(self, name: str) -> Volume:
        vol = self.volumes.get(name)
        if vol is None:
            self._config(name)
            raise ControlError("ESTATE", f"volume {name} is not up")
        return vol

    # --- commands -----------------------------------------------------------------------

    async def ping(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "version": VERSION, "volumes": sorted(self.volumes)}

    async def list_volumes(self) -> list[dict[str, Any]]:
        names = sorted(p.name for p in self.volumes_dir.iterdir()
                       if (p / "volume.json").is_file())
        return [{"name": n, "up": n in self.volumes} for n in names]

    async def create(self, name: str, size: int | str, backing: str | None = None,
                     meta: str | None = None, socket: str | None = None,
                     bm_block_size: int = 4096, al_extents: int = 1237,
                     al_extent_size: int = 4 * 1024 * 1024,
                     fencing: str = "dont-care", **net: Any) -> dict[str, Any]:
        """Record a volume and write fresh metadata (DRBD: config + create-md).

        `net` takes the replication settings of `config.VolumeConfig` (address,
        peer_address, secret, protocol, node, peer_node, after_sb_*pri, ...).
        """
        vdir = self._dir(name)
        cfg = VolumeConfig(
            name=name, size=parse_size(size), backing=backing or str(vdir / "data.img"),
            meta=meta or str(vdir / "meta"),
            socket=socket or str(self.socket_dir / f"{name}.sock"),
            bm_block_size=bm_block_size, al_extents=al_extents, al_extent_size=al_extent_size,
            fencing=fencing, **net)
        cfg.validate()
        async with self._lock(name):
            if (vdir / "volume.json").exists():
                raise ControlError("EEXIST", f"volume {name} already exists")
            vdir.mkdir(parents=True, exist_ok=True)
            try:
                await asyncio.to_thread(Volume.create_md, cfg)
            except OSError as e:
                shutil.rmtree(vdir, ignore_errors=True)
                raise ControlError("EIO", f"{name}: create-md failed: {e}") from e
            save_config(cfg, vdir / "volume.json")
        log.info("%s: created, %d bytes, backing %s", name, cfg.size, cfg.backing)
        return {"name": name, "size": cfg.size, "backing": cfg.backing, "meta": cfg.meta,
                "socket": cfg.socket}

    async def delete(self, name: str, remove_data: bool = False) -> None:
        async with self._lock(name):
            cfg = self._config(name)
            if name in self.volumes:
                raise ControlError("EBUSY", f"volume {name} is up; run down first")
            vdir = self._dir(name)
            if remove_data:
                Path(cfg.backing).unlink(missing_ok=True)
            Path(cfg.meta).unlink(missing_ok=True)
            (vdir / "volume.json").unlink()
            if vdir.is_dir() and not any(vdir.iterdir()):
                vdir.rmdir()
        log.info("%s: deleted%s", name, " with its data" if remove_data else "")

    async def up(self, name: str) -> dict[str, Any]:
        async with self._lock(name):
            if name in self.volumes:
                return self.volumes[name].status()
            vol = Volume(self._config(name))
            vol.on_change = self._changed
            vol.on_helper = self._helper_event
            vol.conf_path = str(self._dir(name) / "volume.json")
            await vol.attach()
            try:
                await vol.start_export()
                if vol.config.has_net:
                    await vol.connect()
            except BaseException:
                await vol.detach()
                raise
            self.volumes[name] = vol
            self._changed(vol)
            return vol.status()

    async def connect(self, name: str, discard_my_data: bool = False,
                      dry_run: bool = False) -> dict[str, Any]:
        """Start connecting to the peer (StandAlone -> WFConnection)."""
        async with self._lock(name):
            vol = self._up(name)
            await vol.connect(discard_my_data=discard_my_data, dry_run=dry_run)
            return vol.status()

    async def disconnect(self, name: str) -> dict[str, Any]:
        async with self._lock(name):
            vol = self._up(name)
            await vol.disconnect()
            return vol.status()

    async def down(self, name: str, force: bool = False) -> None:
        """Demote (unless in use, or forced), disconnect, detach (drbdadm down)."""
        async with self._lock(name):
            vol = self._up(name)
            if vol.open_count and not force:
                raise ControlError("EBUSY", f"State change failed: (-12) Device is held open "
                                            f"by someone ({vol.open_count} NBD clients)")
            if vol.open_count == 0:
                await vol.demote()
            await vol.detach()
            del self.volumes[name]
            self._publish({"event": "down", "name": name})

    async def attach(self, name: str) -> dict[str, Any]:
        """Attach the backing store again after it failed and was detached (on-io-error)."""
        async with self._lock(name):
            vol = self._up(name)
            await vol.reattach()
            return vol.status()

    async def primary(self, name: str, force: bool = False) -> dict[str, Any]:
        async with self._lock(name):
            vol = self._up(name)
            await vol.promote(force=force)
            return vol.status()

    async def secondary(self, name: str) -> dict[str, Any]:
        async with self._lock(name):
            vol = self._up(name)
            await vol.demote()
            return vol.status()

    async def outdate(self, name: str) -> dict[str, Any]:
        async with self._lock(name):
            vol = self._up(name)
            await vol.outdate()
            return vol.status()

    async def invalidate(self, name: str) -> dict[str, Any]:
        async with self._lock(name):
            vol = self._up(name)
            await vol.invalidate()
            return vol.status()

    async def invalidate_remote(self, name: str) -> dict[str, Any]:
        async with self._lock(name):
            vol = self._up(name)
            await vol.invalidate_remote()
            return vol.status()

    async def pause_sync(self, name: str) -> dict[str, Any]:
        vol = self._up(name)
        vol.pause_sync(True)
        self._changed(vol)          # the status changed (paused.user) even when no state did
        return vol.status()

    async def resume_sync(self, name: str) -> dict[str, Any]:
        vol = self._up(name)
        vol.pause_sync(False)
        self._changed(vol)          # the status changed (paused.user) even when no state did
        return vol.status()

    async def verify(self, name: str, start: int = 0) -> dict[str, Any]:
        """Online verify (drbdadm verify): VerifyS here, VerifyT on the peer; runs on."""
        async with self._lock(name):
            vol = self._up(name)
            vol.verify(int(start))
            return vol.status()

    async def resize(self, name: str, size: int | str,
                     assume_peer_has_space: bool = False) -> dict[str, Any]:
        """Grow a volume (drbdadm resize): the peer's copy, then this one; volume.json too."""
        async with self._lock(name):
            vol = self._up(name)
            await vol.resize(parse_size(size), assume_peer_has_space=assume_peer_has_space)
            return vol.status()

    async def verify_stop(self, name: str) -> dict[str, Any]:
        vol = self._up(name)
        vol.verify_stop()
        return vol.status()

    async def peer_outdated(self, name: str, by: str = "") -> dict[str, Any]:
        """The fence-peer handler (the daemon) recorded the peer's copy Outdated."""
        async with self._lock(name):
            vol = self._up(name)
            changed = await vol.peer_outdated(by)
            return {**vol.status(), "changed": changed}

    async def outdated_by_peer(self, name: str, by: str = "") -> dict[str, Any]:
        """The cluster says this copy is Outdated (the peer fenced it): refuse to serve."""
        async with self._lock(name):
            vol = self._up(name)
            await vol.outdated_by_peer(by)
            return vol.status()

    async def set_fencing(self, name: str, fencing: str) -> dict[str, Any]:
        """Change the fencing policy (persisted); `dont-care` is the standalone mode."""
        async with self._lock(name):
            cfg = dataclasses.replace(self._config(name), fencing=fencing)
            cfg.validate()
            save_config(cfg, self._dir(name) / "volume.json")
            vol = self.volumes.get(name)
            if vol is None:
                return {"name": name, "fencing": fencing, "cstate": "Unconfigured"}
            await vol.set_fencing(fencing)
            log.warning("%s: fencing set to %s", name, fencing)
            return vol.status()

    async def adjust(self, name: str, dry_run: bool = False, **changes: Any) -> dict[str, Any]:
        """Change settings of an existing volume (drbdadm adjust; config.ADJUSTABLE).

        Up: applied live (Volume.adjust: the peer too for the settings both must
        agree on, while connected). Not up: volume.json only. Answers
        {"changed": {setting: [old, new]}, "settings": {...}} (+ the status when up);
        EINVAL for a bad value, ESTATE ("<setting>: reason") for a refused change.
        """
        async with self._lock(name):
            vol = self.volumes.get(name)
            if vol is not None:
                changed = await vol.adjust(changes, dry_run=bool(dry_run))
                return {**vol.status(), "changed": changed}
            cfg = self._config(name)
            new = cfg.adjusted(changes)
            changed = {k: [a, b] for k, a in cfg.settings().items()
                       if (b := new.settings()[k]) != a}
            if changed and not dry_run:
                save_config(new, self._dir(name) / "volume.json")
                log.info("%s: adjusted (not up): %s", name, ", ".join(
                    f"{k} {a!r} -> {b!r}" for k, (a, b) in changed.items()))
            return {"name": name, "cstate": "Unconfigured", "changed": changed,
                    "settings": (cfg if dry_run else new).settings()}

    async def set_handlers(self, name: str, handlers: dict[str, str],
                           handler_timeout: float | None = None) -> dict[str, Any]:
        """Replace the volume's handler commands (persisted; used from the next run on)."""
        async with self._lock(name):
            cfg = self._config(name)
            cfg = dataclasses.replace(cfg, handlers=dict(handlers), handler_timeout=float(
                cfg.handler_timeout if handler_timeout is None else handler_timeout))
            cfg.validate()
            save_config(cfg, self._dir(name) / "volume.json")
            vol = self.volumes.get(name)
            if vol is not None:
                vol.config = dataclasses.replace(vol.config, handlers=cfg.handlers,
                                                 handler_timeout=cfg.handler_timeout)
            log.info("%s: handlers set: %s", name, ", ".join(sorted(handlers)) or "none")
            return {"name": name, "handlers": sorted(handlers)}

    # --- events -------------------------------------------------------------------------

    def _changed(self, vol: Volume) -> None:
        if self._subscribers and vol.meta is not None:
            self._publish({"event": "change", "name": vol.name, "status": vol.status()})

    def _helper_event(self, vol: Volume, helper: str, status: int | None) -> None:
        # drbdsetup events2's "call helper" / "response helper ... status:N".
        if status is None:
            self._publish({"event": "call", "name": vol.name, "helper": helper})
        else:
            self._publish({"event": "response", "name": vol.name, "helper": helper,
                           "status": status})

    def _publish(self, event: dict[str, Any]) -> None:
        for q in list(self._subscribers):
            if q.qsize() >= EVENT_QUEUE:
                self._subscribers.discard(q)
                q.put_nowait(None)           # tells the stream to end: the reader lagged
            else:
                q.put_nowait(event)

    async def events(self) -> Stream:
        """Every state change from now on, after one `exists` event per up volume and an
        `exists-end` marker; handler runs appear as `call` and `response` events."""
        q: asyncio.Queue = asyncio.Queue()
        self._subscribers.add(q)
        for name in sorted(self.volumes):
            q.put_nowait({"event": "exists", "name": name, "status": self.volumes[name].status()})
        q.put_nowait({"event": "exists-end"})     # events2's "exists -": the snapshot is over

        async def gen() -> AsyncIterator[dict[str, Any]]:
            try:
                while (item := await q.get()) is not None:
                    yield item
            finally:
                self._subscribers.discard(q)

        return Stream(gen())

    async def status(self, name: str | None = None) -> Any:
        if name is not None:
            vol = self.volumes.get(name)
            if vol is None:
                cfg = self._config(name)
                return {"name": name, "size": cfg.size, "cstate": "Unconfigured"}
            return vol.status()
        return [self.volumes[n].status() for n in sorted(self.volumes)]

    async def proc(self) -> str:
        """A /proc/drbd-style text for every up volume."""
        return fmt.proc_drbd([self.volumes[n].status() for n in sorted(self.volumes)])

    async def bitmap(self, name: str, max_runs: int = 10000) -> dict[str, Any]:
        """The out-of-sync bits as runs (first bit, count), for status tools and tests."""
        vol = self._up(name)
        assert vol.bitmap is not None
        runs: list[list[int]] = []
        for run in vol.bitmap.runs():
            if len(runs) >= max_runs:
                break
            runs.append(list(run))
        return {"block_size": vol.config.bm_block_size, "weight": vol.bitmap.weight,
                "runs": runs}

    async def write_bitmap(self, name: str) -> dict[str, Any]:
        vol = self._up(name)
        return {"pages": await vol.write_bitmap()}

    async def shutdown(self) -> dict[str, Any]:
        asyncio.get_running_loop().call_soon(lambda: asyncio.ensure_future(self.stop()))
        return {"stopping": True}
