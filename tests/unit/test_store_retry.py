"""Store._call retries etcd errors that mean "not proposed" (a leader hand-over), and for reads
also "leader changed"; nothing else."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from binome.store.client import Store, StoreUnavailable


def rpc_error(details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(),
                                grpc.aio.Metadata(), details=details)


def store() -> Store:
    s = Store.__new__(Store)          # no channel: _call only needs these
    s.host, s.port, s.timeout = "127.0.0.1", 2379, 2.0
    return s


def flaky(errors: list[str]):
    calls = []

    async def op() -> str:
        calls.append(1)
        if len(calls) <= len(errors):
            raise rpc_error(errors[len(calls) - 1])
        return "done"
    return op, calls


def test_proposal_dropped_and_no_leader_are_retried():
    op, calls = flaky(["etcdserver: raft proposal dropped", "etcdserver: no leader"])
    assert asyncio.run(store()._call(op)) == "done"
    assert len(calls) == 3


def test_other_errors_are_not_retried():
    op, calls = flaky(["etcdserver: leader changed"])   # may have been applied
    with pytest.raises(StoreUnavailable, match="leader changed"):
        asyncio.run(store()._call(op))
    assert len(calls) == 1


def test_a_read_cut_by_a_leader_change_is_retried():
    op, calls = flaky(["etcdserver: leader changed"])   # a read applied nothing
    assert asyncio.run(store()._call(op, read_only=True)) == "done"
    assert len(calls) == 2


def test_retries_stop_at_the_deadline():
    op, calls = flaky(["etcdserver: no leader"] * 1000)
    with pytest.raises(StoreUnavailable, match="no leader"):
        asyncio.run(store()._call(op, timeout=0.3))
    assert 2 <= len(calls) < 10
