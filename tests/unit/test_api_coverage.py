"""The client coverage table in docs/api-compatibility.md is what tools/api_coverage.py
renders from the clients' endpoint lists (docs/data/client-endpoints) and the method
registry: adding or removing a method without regenerating the table fails here."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def coverage_tool():
    spec = importlib.util.spec_from_file_location("api_coverage",
                                                  ROOT / "tools" / "api_coverage.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_docs_table_is_current() -> None:
    tool = coverage_tool()
    doc = tool.DOC.read_text()
    assert tool.current_section(doc) == tool.render(), (
        "docs/api-compatibility.md: the client coverage table is stale; run "
        "`.venv/bin/python tools/api_coverage.py`")


def test_each_list_names_its_source_commit() -> None:
    tool = coverage_tool()
    for client in tool.CLIENTS:
        sources, endpoints = tool.load(client)
        assert sources and all(" commit " in s and len(s.split(" commit ")[1].split()[0]) == 40
                               for s in sources)
        assert len(endpoints) == len(set(endpoints)) > 50


def test_matching_follows_the_path_shape() -> None:
    tool = coverage_tool()
    served = [("GET", "/nodes/{node}/qemu/{vmid}/config"),
              ("POST", "/nodes/{node}/qemu/{vmid}/agent/{command}")]
    # a client's variable matches a variable, whatever its name
    assert tool.serves(served, ("GET", "/nodes/{node}/qemu/{id}/config"))
    # a client's literal matches a variable (a command name) or the same literal
    assert tool.serves(served, ("POST", "/nodes/{node}/qemu/{vmid}/agent/ping"))
    # not another verb, another literal or another length
    assert not tool.serves(served, ("PUT", "/nodes/{node}/qemu/{vmid}/config"))
    assert not tool.serves(served, ("GET", "/nodes/{node}/qemu/{vmid}/pending"))
    assert not tool.serves(served, ("GET", "/nodes/{node}/qemu/{vmid}"))
    # a client's variable does not match a literal (it could be anything)
    assert not tool.serves([("GET", "/nodes/{node}/qemu/{vmid}/status/current")],
                           ("GET", "/nodes/{node}/qemu/{vmid}/status/{command}"))
    assert tool.exclusion("/nodes/{node}/lxc/{vmid}/config") == "LXC"
    assert tool.exclusion("/nodes/{node}/qemu/{vmid}/firewall/rules") == "firewall"
    assert tool.exclusion("/nodes/{node}/qemu/{vmid}/config") is None


def test_exclusions_by_design_are_by_verb_and_place() -> None:
    tool = coverage_tool()
    # the host's configuration: writes excluded, reads (served) are not
    assert tool.exclusion("/nodes/{node}/network/{iface}", "PUT") == "host configuration"
    assert tool.exclusion("/nodes/{node}/network", "GET") is None
    assert tool.exclusion("/nodes/{node}/apt/repositories", "GET") == "host configuration"
    assert tool.exclusion("/nodes/{node}/subscription", "GET") is None
    assert tool.exclusion("/nodes/{node}/subscription", "PUT") == "host configuration"
    # container templates go with LXC, ZFS pools by design
    assert tool.exclusion("/nodes/{node}/aplinfo", "POST") == "LXC"
    assert tool.exclusion("/nodes/{node}/storage/{s}/oci-registry-pull", "POST") == "LXC"
    assert tool.exclusion("/nodes/{node}/storage/{s}/content", "POST") is None
    assert tool.exclusion("/nodes/{node}/disks/zfs/{name}", "GET") == "ZFS"
    assert tool.exclusion("/nodes/{node}/disks/list", "GET") is None
