"""The etcd client wrapper: TLS connection, JSON values, compare-and-swap, leases, membership,
member status, leadership transfer and prefix watches.

aetcd speaks only plaintext gRPC, so `_TlsClient` opens a TLS channel with the
node's certificate (etcd runs with client-cert-auth). Everything above this
module talks to `Store`; nobody imports aetcd elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aetcd
import grpc
from aetcd import exceptions as etcd_exc
from aetcd import rpc

from binome.store import keys

# etcd errors returned before a request was proposed to raft (nothing applied)
_NOT_PROPOSED = ("raft proposal dropped", "etcdserver: no leader")
# A linearizable read whose ReadIndex was cut by a leader change: a read changes nothing,
# so retrying it is always safe (a write answered this way may have been applied).
_READ_INTERRUPTED = ("etcdserver: leader changed",)


class StoreUnavailable(RuntimeError):
    """etcd could not answer: no quorum, member down or timeout."""


class Conflict(RuntimeError):
    """A compare-and-swap lost: somebody else changed the key first."""


@dataclass(frozen=True)
class Member:
    id: int
    name: str
    peer_urls: tuple[str, ...]
    client_urls: tuple[str, ...]
    is_learner: bool


@dataclass(frozen=True)
class Entry:
    key: str
    value: Any
    mod_revision: int


@dataclass(frozen=True)
class LeasedEntry:
    """An entry with the lease it is bound to (0: none)."""

    key: str
    value: Any
    mod_revision: int
    lease: int


@dataclass(frozen=True)
class WatchEvent:
    """One change seen by a watch: `kind` is "put" or "delete"; `prev` is the key as it
    was before (None when it did not exist, or when the watch did not ask for it)."""

    kind: str
    key: str
    value: Any
    mod_revision: int
    lease: int
    version: int
    prev: LeasedEntry | None = None


# etcd cancels a watch carrying this metadata when its member loses the raft leader
# (clientv3's WithRequireLeader): a member cut off from quorum must not leave a watch
# that silently never fires.
_REQUIRE_LEADER = (("hasleader", "true"),)


class _TlsClient(aetcd.Client):
    """aetcd.Client over a TLS channel (mutual TLS with the cluster CA)."""

    def __init__(self, host: str, port: int, credentials: grpc.ChannelCredentials,
                 timeout: float | None) -> None:
        super().__init__(host=host, port=port, timeout=timeout)
        self._credentials = credentials

    async def connect(self) -> None:
        if self._connected.is_set():
            return
        target = f"{self._host}:{self._port}"
        self.channel = rpc.secure_channel(target, self._credentials,
                                          options=list(self._options.items()))
        self.kvstub = rpc.KVStub(self.channel)
        self.clusterstub = rpc.ClusterStub(self.channel)
        self.leasestub = rpc.LeaseStub(self.channel)
        self.maintenancestub = rpc.MaintenanceStub(self.channel)
        self._watcher = aetcd.watcher.Watcher(
            rpc.WatchStub(self.channel), timeout=self._timeout,
            metadata=tuple(self.metadata or ()) + _REQUIRE_LEADER)
        self._connected.set()


def _credentials(ca: Path, cert: Path, key: Path) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes(),
        private_key=key.read_bytes(),
        certificate_chain=cert.read_bytes(),
    )


def _decode(raw: bytes | None) -> Any:
    if raw is None:
        return None
    return json.loads(raw)


def _decode_lenient(raw: bytes) -> Any:
    """A value that is not JSON reads as None instead of failing the whole range."""
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _encode(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


class Store:
    """One node's connection to the cluster state (its local etcd member)."""

    def __init__(self, host: str, port: int, *, ca: Path, cert: Path, key: Path,
                 timeout: float = 5.0) -> None:
        self.host, self.port = host, port
        self._creds = _credentials(ca, cert, key)
        self.timeout = timeout
        self._client = _TlsClient(host, port, self._creds, timeout)

    @classmethod
    def for_url(cls, url: str, *, ca: Path, cert: Path, key: Path, timeout: float = 5.0) -> Store:
        hostport = url.split("://", 1)[-1].rstrip("/")
        host, _, port = hostport.rpartition(":")
        return cls(host.strip("[]"), int(port), ca=ca, cert=cert, key=key, timeout=timeout)

    def clone(self, url: str | None = None) -> Store:
        """A new client with the same credentials and timeout, of the same member or of
        the member at client `url`.

        A grpc.aio channel belongs to the event loop it was created on: a loop running
        in another thread (the HA lease keeper) needs a client of its own."""
        host, port = self.host, self.port
        if url is not None:
            hostport = url.split("://", 1)[-1].rstrip("/")
            h, _, p = hostport.rpartition(":")
            host, port = h.strip("[]"), int(p)
        other = Store.__new__(Store)
        other.host, other.port, other._creds = host, port, self._creds
        other.timeout = self.timeout
        other._client = _TlsClient(host, port, self._creds, self.timeout)
        return other

    @property
    def url(self) -> str:
        """The client URL of the member this client talks to."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self.port}"

    async def close(self) -> None:
        try:
            await self._client.close()
        except Exception:  # closing a dead channel must never mask the caller's error
            pass

    async def _call(self, coro_fn, *args, timeout: float | None = None,
                    read_only: bool = False, **kwargs):
        deadline = time.monotonic() + (timeout or self.timeout)
        retried = _NOT_PROPOSED + _READ_INTERRUPTED if read_only else _NOT_PROPOSED
        pause = 0.05
        while True:
            try:
                return await asyncio.wait_for(coro_fn(*args, **kwargs),
                                              max(0.01, deadline - time.monotonic()))
            except (TimeoutError, etcd_exc.ClientError, grpc.RpcError) as exc:
                if isinstance(exc, etcd_exc.PreconditionFailedError):
                    raise
                cause = exc.__cause__ if isinstance(exc, etcd_exc.ClientError) else exc
                detail = cause.details() if isinstance(cause, grpc.aio.AioRpcError) else str(exc)
                # A leader transfer or election drops proposals / answers "no leader"
                # before anything is proposed: retrying within the caller's deadline is
                # safe for every request (nothing was applied) and hides the hand-over.
                if (detail and any(t in detail for t in retried)
                        and deadline - time.monotonic() > pause):
                    await asyncio.sleep(pause)
                    pause = min(pause * 2, 0.4)
                    continue
                raise StoreUnavailable(f"etcd {self.host}:{self.port}: {detail or 'timeout'}") \
                    from exc

    # key/value, JSON encoded
    async def _range(self, key: str, range_end: str | None, serializable: bool,
                     timeout: float | None):
        await self._call(self._client.connect)
        request = rpc.RangeRequest(key=key.encode(), serializable=serializable)
        if range_end is not None:
            request.range_end = range_end.encode()
            request.sort_target = rpc.RangeRequest.KEY
            request.sort_order = rpc.RangeRequest.ASCEND
        response = await self._call(self._client.kvstub.Range, request, timeout=timeout,
                                    read_only=True)
        return response.kvs

    async def get(self, key: str, *, serializable: bool = False,
                  timeout: float | None = None) -> Entry | None:
        kvs = await self._range(key, None, serializable, timeout)
        if not kvs:
            return None
        return Entry(key, _decode(kvs[0].value), int(kvs[0].mod_revision))

    async def get_value(self, key: str, default: Any = None, **kw) -> Any:
        entry = await self.get(key, **kw)
        return default if entry is None else entry.value

    async def get_prefix(self, prefix: str, *, serializable: bool = False,
                         timeout: float | None = None) -> list[Entry]:
        kvs = await self._range(prefix, keys.prefix_end(prefix), serializable, timeout)
        return [Entry(kv.key.decode(), _decode(kv.value), int(kv.mod_revision)) for kv in kvs]

    async def range_leased(self, prefix: str,
                           timeout: float | None = None) -> tuple[list[LeasedEntry], int]:
        """Linearizable range over a prefix with each key's lease, and the store revision."""
        await self._call(self._client.connect, timeout=timeout)
        request = rpc.RangeRequest(key=prefix.encode(),
                                   range_end=keys.prefix_end(prefix).encode())
        response = await self._call(self._client.kvstub.Range, request, timeout=timeout,
                                    read_only=True)
        return ([LeasedEntry(kv.key.decode(), _decode_lenient(kv.value), int(kv.mod_revision),
                             int(kv.lease)) for kv in response.kvs],
                int(response.header.revision))

    async def txn(self, compare: list[tuple[str, str, int]],
                  puts: dict[str, tuple[Any, int]], deletes: Sequence[str] = (),
                  timeout: float | None = None) -> int | None:
        """One transaction. `compare` holds (key, "mod"|"create", revision); each put
        carries its lease (0: none). Returns the new store revision, or None when a
        comparison failed and nothing was written."""
        cmp = []
        for key, target, rev in compare:
            c = rpc.Compare(key=key.encode(), result=rpc.Compare.EQUAL)
            if target == "mod":
                c.target = rpc.Compare.MOD
                c.mod_revision = rev
            else:
                c.target = rpc.Compare.CREATE
                c.create_revision = rev
            cmp.append(c)
        ops = [rpc.RequestOp(request_put=rpc.PutRequest(key=k.encode(), value=_encode(v),
                                                        lease=lease))
               for k, (v, lease) in puts.items()]
        ops += [rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=k.encode()))
                for k in deletes]
        await self._call(self._client.connect, timeout=timeout)
        response = await self._call(self._client.kvstub.Txn,
                                    rpc.TxnRequest(compare=cmp, success=ops, failure=[]),
                                    timeout=timeout)
        return int(response.header.revision) if response.succeeded else None

    async def count_prefix(self, prefix: str) -> int:
        return len(await self.get_prefix(prefix))

    async def put(self, key: str, value: Any, *, lease: int | None = None) -> None:
        await self._call(self._client.put, key.encode(), _encode(value), lease=lease)

    async def delete(self, key: str) -> bool:
        result = await self._call(self._client.delete, key.encode())
        return bool(result and result.deleted)

    async def delete_prefix(self, prefix: str) -> None:
        await self._call(self._client.delete_prefix, prefix.encode())

    async def create(self, key: str, value: Any) -> bool:
        """Put only if the key does not exist; True if we created it."""
        tx = self._client.transactions
        ok, _ = await self._call(self._client.transaction,
                                 compare=[tx.create(key.encode()) == 0],
                                 success=[tx.put(key.encode(), _encode(value))], failure=[])
        return bool(ok)

    async def commit(self, expect: dict[str, int], puts: dict[str, Any] | None = None,
                     deletes: Sequence[str] = (), *, bump_config: bool = False) -> bool:
        """Atomically apply puts/deletes if every key in `expect` still has that mod revision.

        A revision of 0 means "must not exist". With bump_config, the cluster
        config version is incremented in the same transaction (its revision is
        compared too), so every membership/config change is versioned.
        """
        tx = self._client.transactions
        compare = [tx.mod(k.encode()) == rev for k, rev in expect.items()]
        success = [tx.put(k.encode(), _encode(v)) for k, v in (puts or {}).items()]
        success += [tx.delete(k.encode()) for k in deletes]
        if bump_config and keys.CLUSTER in (puts or {}):
            # the caller rewrites the cluster record itself (and compared its revision)
            assert puts is not None
            doc = dict(puts[keys.CLUSTER])
            doc["config_version"] = int(doc.get("config_version", 0)) + 1
            success = [tx.put(k.encode(), _encode(doc if k == keys.CLUSTER else v))
                       for k, v in puts.items()] + [tx.delete(k.encode()) for k in deletes]
        elif bump_config:
            cluster = await self.get(keys.CLUSTER)
            if cluster is None:
                raise StoreUnavailable("cluster record missing")
            doc = dict(cluster.value)
            doc["config_version"] = int(doc.get("config_version", 0)) + 1
            compare.append(tx.mod(keys.CLUSTER.encode()) == cluster.mod_revision)
            success.append(tx.put(keys.CLUSTER.encode(), _encode(doc)))
        ok, _ = await self._call(self._client.transaction, compare=compare, success=success,
                                 failure=[])
        return bool(ok)

    async def update(self, key: str, mutate, *, bump_config: bool = False,
                     attempts: int = 10) -> Any:
        """Read-modify-write with CAS and retries; `mutate(old_value) -> new_value`."""
        for _ in range(attempts):
            entry = await self.get(key)
            new = mutate(None if entry is None else entry.value)
            rev = 0 if entry is None else entry.mod_revision
            if await self.commit({key: rev}, {key: new}, bump_config=bump_config):
                return new
        raise Conflict(f"{key}: too many concurrent updates")

    async def bump_config_version(self, **extra_puts: Any) -> int:
        for _ in range(10):
            if await self.commit({}, extra_puts or None, bump_config=True):
                return int((await self.get_value(keys.CLUSTER))["config_version"])
        raise Conflict("cluster config version: too many concurrent updates")

    # quorum
    async def linearizable_probe(self, timeout: float) -> int:
        """A quorum read; returns the cluster revision or raises StoreUnavailable."""
        await self._call(self._client.connect)
        response = await self._call(
            self._client.kvstub.Range,
            rpc.RangeRequest(key=keys.CLUSTER.encode(), count_only=True),
            timeout=timeout,
        )
        return int(response.header.revision)

    # leases
    async def grant_lease(self, ttl: int) -> int:
        lease = await self._call(self._client.lease, ttl)
        return int(lease.id)

    async def refresh_lease(self, lease_id: int, timeout: float | None = None) -> int:
        """Renew the lease; returns the TTL left (0 when the lease has expired)."""
        response = await self._call(self._lease_keepalive_once, lease_id, timeout=timeout)
        return int(response.TTL)

    async def _lease_keepalive_once(self, lease_id: int):
        await self._client.connect()

        async def one():
            yield rpc.LeaseKeepAliveRequest(ID=lease_id)

        async for response in self._client.leasestub.LeaseKeepAlive(one()):
            return response
        raise StoreUnavailable("lease keepalive stream closed")

    async def revoke_lease(self, lease_id: int) -> None:
        await self._call(self._client.revoke_lease, lease_id)

    # membership
    async def members(self, timeout: float | None = None) -> list[Member]:
        await self._call(self._client.connect)
        response = await self._call(self._client.clusterstub.MemberList,
                                    rpc.MemberListRequest(), timeout=timeout)
        return [_member(m) for m in response.members]

    async def add_learner(self, peer_urls: list[str],
                          settle: float = 15.0) -> tuple[Member, list[Member]]:
        """Add a non-voting member. etcd refuses reconfiguration for a few seconds after a
        member became active ("unhealthy cluster"); that is retried for `settle` seconds."""
        await self._call(self._client.connect)
        deadline = asyncio.get_running_loop().time() + settle
        while True:
            try:
                response = await self._call(
                    self._client.clusterstub.MemberAdd,
                    rpc.MemberAddRequest(peerURLs=peer_urls, isLearner=True))
                return _member(response.member), [_member(m) for m in response.members]
            except StoreUnavailable as exc:
                if "unhealthy cluster" not in str(exc) or \
                        asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(0.5)

    async def promote(self, member_id: int) -> None:
        await self._call(self._client.connect)
        await self._call(self._client.clusterstub.MemberPromote,
                         rpc.MemberPromoteRequest(ID=member_id))

    async def remove_member(self, member_id: int) -> None:
        await self._call(self._client.connect)
        await self._call(self._client.clusterstub.MemberRemove,
                         rpc.MemberRemoveRequest(ID=member_id))

    async def member_status(self, timeout: float) -> dict[str, Any]:
        """Status of the member this client talks to; answered locally, even without quorum."""
        await self._call(self._client.connect)
        response = await self._call(self._client.maintenancestub.Status, rpc.StatusRequest(),
                                    timeout=timeout)
        return {
            "member_id": int(response.header.member_id),
            "cluster_id": int(response.header.cluster_id),
            "leader": int(response.leader),
            "raft_term": int(response.raftTerm),
            "raft_index": int(response.raftIndex),
            "is_learner": bool(response.isLearner),
            "version": response.version,
            "raft_applied_index": int(response.raftAppliedIndex),
            "errors": list(response.errors),   # alarms (NOSPACE, CORRUPT), as etcd words them
        }

    async def move_leader(self, target_id: int, timeout: float | None = None) -> None:
        """Ask the member this client talks to, which must be the leader, to hand etcd
        leadership to member `target_id` (Maintenance/MoveLeader: aetcd has the stub but
        no wrapper). etcd answers once the target leads, or fails ("not leader",
        "leadership transfer timeout")."""
        await self._call(self._client.connect)
        await self._call(self._client.maintenancestub.MoveLeader,
                         rpc.MoveLeaderRequest(targetID=target_id), timeout=timeout)

    def watch_prefix(self, prefix: str):
        return self._client.watch_prefix(prefix.encode())

    @contextlib.asynccontextmanager
    async def watch_prefixes(self, prefixes: Sequence[str], *, prev_kv: bool = False,
                             timeout: float | None = None
                             ) -> AsyncIterator[AsyncIterator[WatchEvent]]:
        """Watch every change under `prefixes` from now on (revision order per prefix).

        `async with store.watch_prefixes([...]) as events: async for ev in events:`.
        Entering creates the watches (StoreUnavailable if it cannot); leaving
        cancels them. The iterator raises StoreUnavailable when the stream breaks
        (member down, member without leader, compaction): the caller re-creates
        the watch and must assume it missed events meanwhile.
        """
        await self._call(self._client.connect, timeout=timeout)
        watcher = self._client._watcher
        queue: asyncio.Queue[Any] = asyncio.Queue()

        async def on_event(event: Any) -> None:
            queue.put_nowait(event)

        async def events() -> AsyncIterator[WatchEvent]:
            while True:
                item = await queue.get()
                if item is None or isinstance(item, BaseException):
                    raise StoreUnavailable(f"etcd {self.host}:{self.port}: watch ended"
                                           + (f": {item!r}" if item is not None else ""))
                yield _watch_event(item)

        created: list[int] = []
        try:
            for prefix in prefixes:
                cb = await self._call(watcher.add_callback, prefix.encode(), on_event,
                                      range_end=keys.prefix_end(prefix).encode(),
                                      prev_kv=prev_kv, timeout=timeout)
                created.append(cb.watch_id)
            yield events()
        finally:
            for watch_id in created:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(watcher.cancel(watch_id), 1.0)


def _watch_event(event: Any) -> WatchEvent:
    kv, prev = event.kv, event.prev_kv
    return WatchEvent(
        kind="delete" if event.kind == "DELETE" else "put", key=kv.key.decode(),
        value=_decode_lenient(kv.value) if kv.value else None,
        mod_revision=int(kv.mod_revision), lease=int(kv.lease), version=int(kv.version),
        prev=None if prev is None or not prev.key else LeasedEntry(
            prev.key.decode(), _decode_lenient(prev.value), int(prev.mod_revision),
            int(prev.lease)))


def _member(m) -> Member:
    return Member(int(m.ID), m.name, tuple(m.peerURLs), tuple(m.clientURLs), bool(m.isLearner))
