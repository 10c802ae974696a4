"""A binome-backup storage's encryption key on every node that backs up or restores.

The key file is made (or given) on the node where the storage is added
(`storage_create`); `push_encryption_key` then sends it to every other
guest-hosting node the storage is available on, each over its API on the
cluster's authenticated channel (HTTPS verified against the cluster CA, a
root@pam ticket signed with the cluster authkey: only members can make one),
to `POST /nodes/{node}/storage/{storage}/encryption-key`, which keeps it only if
its fingerprint is the one the definition records. The key never goes through
etcd, is never logged (a `secret` parameter) and no method returns it. A node
that was down gets it with `binome storage set-key STORAGE --key-file FILE` on it
(or the same call through another node's API with `--node`).

Validates, calls and shapes: the key file and the check belong to the node's
`StorageManager`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from binome.access.permission import ROOT_ONLY
from binome.api.context import RequestContext
from binome.api.errors import param_error
from binome.api.methods.common import NODE
from binome.api.registry import CliSpec, registry
from binome.api.schema import Param
from binome.guest.remote import RemoteCallFailed, node_call
from binome.storage.base import StorageError

log = logging.getLogger(__name__)

PUSH_TIMEOUT = 10.0   # per node, all at once: a storage add waits at most this


async def push_encryption_key(ctx: RequestContext, storage_id: str, key_text: str
                              ) -> dict[str, str | None]:
    """Send the storage's key file to the other nodes; {node: None (kept) or why not}.
    A node that cannot be reached now is reported (cluster log), not waited for."""
    manager = ctx.services.storages
    nodes = await manager.key_recipients(storage_id)

    async def send(node: str) -> str | None:
        try:
            await node_call(ctx.services.cluster, node, "POST",
                            f"/nodes/{node}/storage/{storage_id}/encryption-key",
                            {"key": key_text}, timeout=PUSH_TIMEOUT)
            return None
        except RemoteCallFailed as exc:
            return str(exc)

    results = dict(zip(nodes, await asyncio.gather(*(send(n) for n in nodes)), strict=True))
    for node, error in sorted(results.items()):
        if error is None:
            log.info("storage %s: encryption key file sent to %s", storage_id, node)
            continue
        await ctx.services.clusterlog.write(
            f"storage {storage_id}: its encryption key file could not be sent to node "
            f"{node} ({error}); run 'binome storage set-key {storage_id} --key-file FILE' on "
            f"{node} before it backs up or restores", tag="storage", pri="warning")
    return results


@registry.register(
    "POST", "/nodes/{node}/storage/{storage}/encryption-key", name="storage_set_key",
    permission=ROOT_ONLY, proxyto="node",
    description="binome: keep a binome-backup storage's encryption key file on this node "
                "(sent by the node where the storage was added, or by root for a node "
                "that was down). Only the key whose fingerprint the storage's definition "
                "records is kept.",
    parameters={"node": NODE,
                "storage": Param(pattern=r"[a-z][a-z0-9\-_.]*", max_length=64,
                                 description="Storage ID."),
                "key": Param(secret=True, max_length=4096,
                             extra={"multiline": True},   # a key file's JSON
                             description="The key file's contents (JSON).")},
    cli=CliSpec(("storage", "set-key"), positional=("storage",)),
)
async def storage_set_key(ctx: RequestContext, params: dict[str, Any]) -> None:
    try:
        await ctx.services.storages.receive_encryption_key(params["storage"], params["key"])
    except StorageError as exc:
        text = str(exc)
        if "does not exist" in text or "not a binome-backup" in text or "has no" in text:
            raise param_error("storage", text) from None
        raise param_error("key", text) from None
