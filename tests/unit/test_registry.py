"""Method registry: routing, 501s, declaration checks, and the global registry's consistency."""

import re

import pytest

from binome.access.permission import World
from binome.api.errors import NotImplementedMethod
from binome.api.registry import CliSpec, Registry
from binome.api.schema import Param


async def handler(ctx, params):
    return None


def other_handler(ctx, params):
    return None


@pytest.fixture
def reg():
    r = Registry()
    r.register("GET", "/nodes", name="list_nodes", description="nodes")(handler)
    r.register("GET", "/nodes/{node}/tasks/{upid}/status", name="task_status",
               description="status",
               parameters={"node": Param(), "upid": Param()})(handler)
    r.register("DELETE", "/nodes/{node}/tasks/{upid}", name="task_stop", description="stop",
               parameters={"node": Param(), "upid": Param()})(handler)
    return r


def test_match_static(reg):
    m, params = reg.match("GET", "/nodes")
    assert m.name == "list_nodes"
    assert params == {}


def test_match_trailing_slash(reg):
    assert reg.match("GET", "/nodes/")[0].name == "list_nodes"


def test_match_with_path_params(reg):
    m, params = reg.match("GET", "/nodes/n1/tasks/UPID:n1:00000001/status")
    assert m.name == "task_status"
    assert params == {"node": "n1", "upid": "UPID:n1:00000001"}


def test_percent_encoded_segments_unquoted(reg):
    upid = "UPID:n1:00000001:0000BEEF:65000000:vzdump:100:root@pam:"
    quoted = upid.replace(":", "%3A").replace("@", "%40")
    m, params = reg.match("DELETE", f"/nodes/n1/tasks/{quoted}")
    assert m.name == "task_stop"
    assert params == {"node": "n1", "upid": upid}


def test_encoded_slash_stays_in_one_segment(reg):
    _m, params = reg.match("DELETE", "/nodes/n1/tasks/a%2Fb")
    assert params["upid"] == "a/b"


def test_unknown_path_is_501(reg):
    with pytest.raises(NotImplementedMethod) as info:
        reg.match("GET", "/x")
    assert info.value.status == 501
    assert info.value.message == "Method 'GET /x' not implemented"


def test_wrong_method_is_501(reg):
    with pytest.raises(NotImplementedMethod) as info:
        reg.match("POST", "/nodes")
    assert info.value.status == 501
    assert info.value.message == "Method 'POST /nodes' not implemented"


def test_wrong_length_is_501(reg):
    with pytest.raises(NotImplementedMethod):
        reg.match("GET", "/nodes/n1/tasks/u/status/extra")
    with pytest.raises(NotImplementedMethod):
        reg.match("GET", "/nodes/n1/tasks/u")


def test_undeclared_path_param_rejected():
    r = Registry()
    with pytest.raises(ValueError, match="path parameter node not declared"):
        r.register("GET", "/nodes/{node}", name="x", description="x")(handler)
    with pytest.raises(ValueError, match="upid"):
        r.register("GET", "/nodes/{node}/tasks/{upid}", name="y", description="y",
                   parameters={"node": Param()})(handler)
    assert r.methods == []


def test_duplicate_declaration_rejected():
    r = Registry()
    r.register("GET", "/version", name="version", description="v")(handler)
    with pytest.raises(ValueError, match="declared twice"):
        r.register("GET", "/version", name="version2", description="v")(other_handler)
    assert len(r.methods) == 1
    # the same path with another HTTP method is a different method
    r.register("POST", "/version", name="set_version", description="v")(handler)
    assert len(r.methods) == 2


def test_register_returns_handler_and_wraps_single_cli():
    r = Registry()
    spec = CliSpec(command=("node", "list"))
    assert r.register("GET", "/nodes", name="n", description="d", cli=spec)(handler) is handler
    assert r.methods[0].cli == (spec,)
    assert r.commands() == [(spec, r.methods[0])]


def test_fresh_registry_is_independent(reg):
    assert len(reg.methods) == 3
    assert Registry().methods == []


# --- the global registry --------------------------------------------------------------------

@pytest.fixture(scope="module")
def global_registry():
    import binome.api.methods  # noqa: F401  (registers every method)
    from binome.api.registry import registry
    assert registry.methods
    return registry


def test_global_path_params_declared(global_registry):
    for m in global_registry.methods:
        for p in m.path_params:
            assert p in m.parameters, f"{m.method} {m.path}: {p}"


def test_global_unique_routes_and_names(global_registry):
    routes = [(m.method, m.path) for m in global_registry.methods]
    assert len(routes) == len(set(routes))
    names = [m.name for m in global_registry.methods]
    assert len(names) == len(set(names))


def test_global_cli_commands_unique(global_registry):
    commands = [spec.command for spec, _m in global_registry.commands()]
    assert commands
    dupes = {c for c in commands if commands.count(c) > 1}
    assert not dupes


def test_global_descriptions_nonempty(global_registry):
    for m in global_registry.methods:
        assert m.description.strip(), f"{m.method} {m.path}"


def test_global_every_route_reaches_its_method(global_registry):
    # no method is shadowed by an earlier one whose path parameter swallows a literal segment
    for m in global_registry.methods:
        concrete = re.sub(r"\{[^}]+\}", "some-value", m.path)
        found, _params = global_registry.match(m.method, concrete)
        assert found is m, f"{m.method} {m.path} is routed to {found.path}"


def test_global_openapi_document(global_registry):
    from binome.api.openapi import document
    doc = document(global_registry)
    assert doc["openapi"].startswith("3.")
    for m in global_registry.methods:
        entry = doc["paths"]["/api2/json" + m.path][m.method.lower()]
        assert entry["operationId"] == m.name
        assert entry["summary"] == m.description
        in_path = {p["name"] for p in entry["parameters"] if p["in"] == "path"}
        assert in_path == set(m.path_params)
        if isinstance(m.permission, World):
            assert entry["security"] == []
    op_ids = [op["operationId"] for item in doc["paths"].values() for op in item.values()]
    assert sorted(op_ids) == sorted(m.name for m in global_registry.methods)


def test_content_volume_takes_the_rest_of_the_path(reg):
    # PVE's fragmentDelimiter '' on .../content: volume ids hold a slash
    reg.register("DELETE", "/nodes/{node}/storage/{storage}/content/{volume}", name="vol_del",
                 description="d", parameters={"node": Param(), "storage": Param(),
                                              "volume": Param()})(handler)
    m, params = reg.match("DELETE", "/nodes/n1/storage/bk/content/bk:backup/vzdump-qemu-1.x")
    assert m.name == "vol_del" and params["volume"] == "bk:backup/vzdump-qemu-1.x"
    assert reg.match("DELETE", "/nodes/n1/tasks/UPID:x")[0].name == "task_stop"
    with pytest.raises(NotImplementedMethod):
        reg.match("DELETE", "/nodes/n1/tasks/a/b")
