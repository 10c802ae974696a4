"""Integration fixtures: real etcd + binomed clusters on loopback addresses."""

from __future__ import annotations

import itertools
import os
import shutil
from collections.abc import Iterator

import pytest

from tests.integration.harness import Cluster, make_cluster

_nets = itertools.count(100 + os.getpid() % 50)


def _require_tools() -> None:
    if shutil.which("etcd") is None:
        pytest.skip("etcd is not installed (make setup installs etcd-server)")


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A healthy 2-node + witness cluster shared by non-destructive tests."""
    _require_tools()
    c = make_cluster(tmp_path_factory.mktemp("cluster"), next(_nets))
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
def fresh_cluster(tmp_path) -> Iterator[Cluster]:
    """A cluster of its own, for tests that kill nodes or override quorum."""
    _require_tools()
    c = make_cluster(tmp_path, next(_nets))
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
def lone_nodes(tmp_path) -> Iterator[Cluster]:
    """An empty harness: tests add nodes themselves."""
    _require_tools()
    c = Cluster(tmp_path, next(_nets))
    try:
        yield c
    finally:
        c.stop()
