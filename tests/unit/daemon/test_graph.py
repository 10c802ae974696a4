"""The node's object graph is built in its constructor, callbacks included."""

from __future__ import annotations

from pathlib import Path

import pytest

from binome.api.server import ApiServer
from binome.config import NodeConfig
from binome.daemon.graph import NodeGraph

pytestmark = pytest.mark.unit


def _graph(tmp_path: Path, role: str) -> NodeGraph:
    cfg = NodeConfig(state_dir=tmp_path / "state", name="n1", cluster_address="127.0.0.1",
                     role=role)
    return NodeGraph(cfg)


def test_a_witness_has_no_guests_volumes_or_ha(tmp_path: Path) -> None:
    graph = _graph(tmp_path, "witness")
    assert graph.guests is None and graph.volumes is None and graph.ha is None
    assert isinstance(graph.api, ApiServer) and graph.api.services is graph


def test_a_node_has_guests_volumes_and_ha(tmp_path: Path) -> None:
    graph = _graph(tmp_path, "node")
    assert graph.guests is not None and graph.volumes is not None and graph.ha is not None
    assert graph.storages.replicas is not None


def test_the_cluster_gets_its_callbacks_in_its_constructor(tmp_path: Path) -> None:
    graph = _graph(tmp_path, "witness")
    assert graph.cluster.monitor.on_node_stats == graph.host.summary
    graph.cluster.local.on_tls_change()        # what create/join call: nothing served yet
