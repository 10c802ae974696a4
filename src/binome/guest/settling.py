"""Settling what a previous life of this daemon left of live migrations.

binomed may die (crash, SIGKILL, host OOM) while it drives a migration as its
source or serves one as its target; QEMU runs on without it. Once quorate,
with the config (read by quorum) as the only arbiter of where a guest may
run, `settle_at_start` cancels this node's own interrupted migrations (with the
mirror jobs of their local disks), stops the paused copies of VMs owned elsewhere
and resumes a copy that was handed over but never resumed; every watch round,
`settle_copy` also stops an incoming copy whose source went offline. Each action
is in the cluster log with its reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from binome.errors import BinomeError
from binome.guest.configs import VmConfig
from binome.guest.errors import GuestError

if TYPE_CHECKING:
    from binome.guest.context import GuestContext

log = logging.getLogger("binome.guest")


class MigrationSettler:
    def __init__(self, ctx: GuestContext) -> None:
        self.ctx = ctx

    async def settle_at_start(self) -> None:
        """Finish what a previous life of this daemon left of live migrations.

        binomed may die (crash, SIGKILL, host OOM) while it drives a migration
        as its source or serves one as its target; QEMU runs on without it. Once
        quorate, with the config read by quorum as the only arbiter of where a
        guest may run:
        - a VM of this node still locked `migrate`: its task died with the
          daemon. The migration is cancelled and the guest runs on here (a
          completed one too: the switch-over never happened, so the target
          never resumed), the other nodes drop their incoming copy, the lock goes.
        - a paused copy here of a VM owned elsewhere: either the source of a
          migration that switched over (its QEMU must never run again) or the
          target of one that was abandoned. It is stopped, and volumes promoted
          for it demoted; a migration still in progress (owner locked `migrate`)
          is left to its source, which will resume or abort it.
        - an incoming copy here, of a VM now owned here, complete but paused: the
          source switched over and could not reach us to resume it. It is resumed.
        Each action is in the cluster log with its reason."""
        await self.ctx.until_quorate(poll=0.5)
        try:
            for vm in await self.ctx.configs.list():
                if vm.config.get("lock") == "migrate":
                    await self._settle_source(vm.vmid)
            for vmid in self.ctx.runtime.running():
                await self.settle_copy(vmid)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("settling interrupted migrations failed")

    async def _settle_source(self, vmid: int) -> None:
        from binome.guest.remote import node_call

        async with self.ctx.lock(vmid):
            vm = await self.ctx.read(vmid)
            if vm.config.get("lock") != "migrate":
                return
            running = self.ctx.runtime.is_running(vmid)
            what = "stopped"
            if running:
                await self.ctx.runtime.cancel_migration(vmid)
                what = "running"
            _local, replicated = await self.ctx.disk_kinds(vm)
            for node in self.ctx.migration_nodes():
                try:
                    await node_call(self.ctx.cluster, node, "POST",
                                    f"/nodes/{node}/qemu/{vmid}/migrate/incoming",
                                    {"phase": "abort", "source": self.ctx.node}, timeout=30)
                except BinomeError as exc:
                    log.warning("VM %s: dropping the incoming copy on %s failed: %s "
                                "(it stops it itself when its binomed runs)", vmid, node, exc)
            if not running and replicated:
                # an offline migration demotes before it moves the config
                try:
                    await self.ctx.activate_here(replicated)
                except Exception as exc:
                    log.warning("VM %s: volumes not made Primary again: %s", vmid, exc)
            await self.ctx.configs.set_lock(vm, None)
        await self.ctx.clusterlog.write(
            f"VM {vmid}: migration interrupted by a binomed restart on {self.ctx.node}: "
            f"cancelled, the VM stays on {self.ctx.node} ({what}), lock removed", tag="qemu",
            pri="warning")

    async def settle_copy(self, vmid: int, *, at_start: bool = True) -> None:
        """A QEMU here that a migration may have left behind (see settle_at_start).
        Also run every watch round (`at_start` False) for the copies of VMs owned
        elsewhere: an incoming copy whose source node went offline can never complete
        (its source died with the host, or a restarted source aborts it), and would
        block the guest's recovery here; it is stopped (it never ran guest code)."""
        async with self.ctx.lock(vmid):
            if not self.ctx.runtime.is_running(vmid):
                return
            if at_start and vmid in self.ctx.incoming:
                return
            owner = await self.ctx.configs.owner(vmid)
            if owner == self.ctx.node and (not at_start or vmid in self.ctx.incoming):
                return
            try:
                runstate, migration, incoming = await self.ctx.runtime.migration_state(vmid)
            except GuestError:
                return
            if owner == self.ctx.node:
                if incoming and runstate == "paused" and migration in (None, "completed"):
                    await self._resume_handed_over(vmid)
                return
            if runstate not in ("inmigrate", "paused", "postmigrate", "finish-migrate"):
                if runstate == "running" and at_start:
                    await self.ctx.clusterlog.write(
                        f"VM {vmid} runs on {self.ctx.node} but its config is on "
                        f"{owner or 'no node'}: left running, check which copy is right",
                        tag="qemu", pri="err")
                return
            source_gone = False
            conf: VmConfig | None = None
            if owner is not None:
                with contextlib.suppress(BinomeError):
                    conf = await self.ctx.read(vmid, node=owner)
                if conf is None:
                    return     # the config is moving (a switch-over): look again later
                if conf.config.get("lock") == "migrate":
                    # in progress: its source resumes or aborts this copy, unless it is gone
                    source_gone = (runstate == "inmigrate"
                                   and not self.ctx.cluster.node_online(owner))
                    if not source_gone:
                        return
                elif not at_start:
                    return     # between rounds only the case above: a live flow may race
            elif not at_start:
                return
            if await self.ctx.configs.owner(vmid) != owner:
                return         # switched over meanwhile: this copy may be the guest now
            replicated: list[str] = []
            if conf is not None:
                with contextlib.suppress(Exception):
                    replicated = await self.ctx.active_here(conf)
            self.ctx.believed_running.discard(vmid)
            self.ctx.incoming.pop(vmid, None)
            await self.ctx.runtime.stop(vmid, timeout=5.0, requested="migrated")
            await self.ctx.deactivate_after(None, replicated, timeout=10.0)
        if source_gone:
            why = (f"incoming migration from {owner}, which went offline before it "
                   f"completed")
        else:
            side = "source" if runstate in ("postmigrate", "finish-migrate") else "target"
            why = f"the {side} of a migration a binomed restart interrupted"
        await self.ctx.clusterlog.write(
            f"VM {vmid}: paused copy on {self.ctx.node} stopped ({why}); the VM belongs to "
            f"{owner or 'no node'}", tag="qemu", pri="warning")

    async def _resume_handed_over(self, vmid: int) -> None:
        """Our incoming copy completed and the config moved here, but the source could
        not reach this daemon to resume it: resume it (the source never resumes a guest
        whose config moved away, so this is the only copy that may run)."""
        vm = await self.ctx.read(vmid)
        if vm.config.get("lock"):
            return
        await self.ctx.runtime.resume(vmid)
        self.ctx.believed_running.add(vmid)
        with contextlib.suppress(GuestError):
            await self.ctx.runtime.announce(vmid)
        await self.ctx.clusterlog.write(
            f"VM {vmid}: resumed on {self.ctx.node}: its migration here had switched over but "
            f"the guest was not resumed (binomed restarted)", tag="qemu", pri="warning")
