"""The package import graph of src/binome holds the layers docs/architecture.md describes.

Every import is found with `ast`: top-level ones, function-local ones (an inversion
hidden in a function is still an inversion) and, reported apart, `if TYPE_CHECKING:`
ones (they cost nothing at run time but still couple the packages). Each edge between
top-level units (packages such as `ha`, modules such as `config`) must be listed in
`ALLOWED_EDGES`: there are no known exceptions.

The pure modules (the HA state machines, the replica's pure state, the UPID and quorum
rules) import no I/O module at all (`FORBIDDEN_IN_PURE`).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

SRC = Path(__file__).resolve().parents[2] / "src"
ROOT = SRC / "binome"

#: Who may import whom, between top-level units of src/binome. ONE table, quoted by
#: docs/architecture.md. Layers, top to bottom:
#:   cli -> api (declarations: the method registry and schema) ;
#:   daemon -> api -> owners (ha, guest, storage, fence, cluster, tasks) -> store ;
#:   neutral leaf modules (config, errors, durable, loops, schema, tickets) anyone may use ;
#:   lab (and tests) on top of everything, imported by nothing in src/binome.
#: Owners import each other only downwards: ha -> guest, storage, fence, cluster, tasks ;
#: guest -> storage, cluster, tasks ; storage -> cluster, tasks ; cluster -> tasks.
LEAVES = frozenset({"config", "errors", "durable", "loops", "schema", "tickets", "units"})
ALLOWED_EDGES: dict[str, frozenset[str]] = {
    "cli": frozenset({"api", "tasks"}),   # tasks: the pure UPID format it prints
    "daemon": frozenset({"api", "ha", "guest", "storage", "fence", "cluster", "tasks",
                         "store", "access", "backup", "notify",
                         "metrics"}),  # builds the object graph
    "api": frozenset({"ha", "guest", "storage", "fence", "cluster", "tasks", "store",
                      "access", "backup", "notify", "metrics"}),
    # the Prometheus exporter: reads the owners' state at scrape time (never writes it)
    "metrics": frozenset({"ha", "guest", "storage", "cluster", "tasks", "store"}),
    "ha": frozenset({"guest", "storage", "fence", "cluster", "tasks", "store"}),
    # backup: the vzdump job and restore (guest.backups) and the backup content of a
    # dir storage (storage.dir) use the backup library
    "guest": frozenset({"storage", "cluster", "tasks", "store", "backup"}),
    "storage": frozenset({"cluster", "tasks", "store", "backup"}),
    "fence": frozenset({"store"}),
    "cluster": frozenset({"tasks", "store"}),
    "tasks": frozenset({"store"}),
    "store": frozenset(),
    # self-contained libraries: they take the store (or a directory) they are given
    "access": frozenset(),
    "backup": frozenset(),
    "notify": frozenset(),
    "lab": frozenset({"cli", "api", "daemon", "ha", "guest", "storage", "fence", "cluster",
                      "tasks", "store", "access", "backup", "notify", "metrics"}),
    **{leaf: frozenset() for leaf in LEAVES},
}

#: Single modules a unit may import although their package is not an allowed edge.
#: The replica's renderers (DRBD-style status, drbdsetup events2 lines) are pure text
#: functions of the JSON the API returns, shared by the engine (its status file) and
#: the CLI; the CLI must not depend on anything else of the storage package.
ALLOWED_MODULES: dict[str, frozenset[str]] = {
    "cli": frozenset({"binome.storage.replica.core.format",
                      "binome.storage.replica.core.events"}),
}

#: Modules that must stay pure (no I/O), so the simulator and unit tests drive them.
#: Prefixes match sub-modules too. Each must exist (test_tables_name_real_modules).
PURE_MODULES = (
    "binome.ha.commands", "binome.ha.context", "binome.ha.crm", "binome.ha.env",
    "binome.ha.lrm", "binome.ha.manager", "binome.ha.model", "binome.ha.nodes", "binome.ha.probe",
    "binome.ha.rules", "binome.ha.scheduler", "binome.ha.timers", "binome.ha.transitions",
    "binome.ha.sim", "binome.ha.availability",
    "binome.tasks.upid", "binome.cluster.quorum",
    "binome.storage.placement",
    "binome.storage.replica.core",
)
#: What a pure module may not import: processes, sockets, the network, etcd, files.
FORBIDDEN_IN_PURE = frozenset({
    "asyncio", "subprocess", "socket", "ssl", "select", "selectors", "signal", "fcntl",
    "shutil", "tempfile", "http", "urllib", "aetcd", "grpc", "aiohttp", "requests",
    "qemu", "pyghmi", "pam", "threading", "multiprocessing", "os", "io", "mmap",
    "binome.store", "binome.durable", "binome.daemon", "binome.api",
})


@dataclass(frozen=True)
class Import:
    importer: str       # module, e.g. binome.ha.manager
    imported: str       # module or package, e.g. binome.store.client
    line: int
    type_only: bool     # under `if TYPE_CHECKING:`
    local: bool         # inside a function


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(path: Path, modules: set[str]) -> Iterator[Import]:
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]

    def walk(node: ast.AST, type_only: bool, local: bool) -> Iterator[Import]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.body:
                    yield from walk_one(stmt, True, local)
                for stmt in child.orelse:
                    yield from walk_one(stmt, type_only, local)
                continue
            yield from walk_one(child, type_only, local)

    def walk_one(node: ast.AST, type_only: bool, local: bool) -> Iterator[Import]:
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(name, alias.name, node.lineno, type_only, local)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"   # `from pkg import module`
                yield Import(name, sub if sub in modules else target, node.lineno,
                             type_only, local)
        else:
            inner = local or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            yield from walk(node, type_only, inner)

    yield from walk(ast.parse(path.read_text(), str(path)), False, False)


def _graph() -> list[Import]:
    paths = sorted(ROOT.rglob("*.py"))
    modules = {_module_name(p) for p in paths}
    return [imp for p in paths for imp in _imports(p, modules)]


def _unit(module: str) -> str | None:
    """The top-level unit of a binome module (`binome.ha.manager` -> `ha`)."""
    parts = module.split(".")
    if parts[0] != "binome":
        return None
    return parts[1] if len(parts) > 1 else "binome"


def _violations(graph: list[Import]) -> dict[tuple[str, str], list[str]]:
    """Forbidden (importer, imported) pairs, each with readable lines saying where."""
    found: dict[tuple[str, str], list[str]] = {}
    for imp in graph:
        a, b = _unit(imp.importer), _unit(imp.imported)
        if a is None or b is None or a == b or b == "binome":
            continue
        if b in ALLOWED_EDGES.get(a, frozenset()) or b in LEAVES:
            continue
        if imp.imported in ALLOWED_MODULES.get(a, frozenset()):
            continue
        how = "TYPE_CHECKING " if imp.type_only else "function-local " if imp.local else ""
        found.setdefault((imp.importer, imp.imported), []).append(
            f"{imp.importer}:{imp.line}: {how}import of {imp.imported} "
            f"({a} -> {b} is not an allowed edge)")
    return found


def test_every_unit_is_in_the_table() -> None:
    units = {_module_name(p).split(".")[1] for p in ROOT.rglob("*.py")
             if p != ROOT / "__init__.py"}
    units = {u.removesuffix(".py") for u in units}
    assert units - set(ALLOWED_EDGES) == set(), "add the new package to ALLOWED_EDGES"


def test_no_import_crosses_the_layers_outside_the_table() -> None:
    found = sorted(line for lines in _violations(_graph()).values() for line in lines)
    assert found == [], "\n".join(found)


def test_nothing_outside_the_lab_imports_the_lab() -> None:
    users = sorted(f"{imp.importer}:{imp.line}" for imp in _graph()
                   if _unit(imp.imported) == "lab" and _unit(imp.importer) != "lab")
    assert users == []


def test_the_nbd_test_client_is_not_on_a_production_path() -> None:
    """The NBD client (tests, bench) is imported by no production module but the lab."""
    users = sorted(f"{imp.importer}:{imp.line}" for imp in _graph()
                   if imp.imported.startswith("binome.lab.nbd_client")
                   and _unit(imp.importer) != "lab")
    assert users == []


#: The storage interface: all that guest and HA code may import of `binome.storage`.
#: A backend's modules (the replicated engine, its records, its RPC names) stay behind it.
STORAGE_INTERFACE = frozenset({"binome.storage", "binome.storage.base",
                               "binome.storage.manager", "binome.storage.placement"})


def test_guest_and_ha_reach_storage_only_through_its_interface() -> None:
    bad = sorted(f"{imp.importer}:{imp.line}: {imp.imported}" for imp in _graph()
                 if _unit(imp.importer) in ("guest", "ha")
                 and _unit(imp.imported) == "storage"
                 and imp.imported not in STORAGE_INTERFACE)
    assert bad == [], "\n".join(bad)


def _exists(module: str) -> bool:
    path = SRC.joinpath(*module.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def test_tables_name_real_modules() -> None:
    """A rule about a module that was renamed away protects nothing: the tables must
    name modules and units that exist."""
    stale = [m for m in PURE_MODULES if not _exists(m)]
    stale += [f"leaf {leaf}" for leaf in LEAVES if not _exists(f"binome.{leaf}")]
    stale += [f"unit {u}" for u in ALLOWED_EDGES if not _exists(f"binome.{u}")]
    stale += [m for mods in ALLOWED_MODULES.values() for m in mods if not _exists(m)]
    stale += [m for m in STORAGE_INTERFACE if not _exists(m)]
    assert stale == []


def test_pure_modules_import_no_io() -> None:
    bad = []
    for imp in _graph():
        if not any(imp.importer == p or imp.importer.startswith(p + ".")
                   for p in PURE_MODULES):
            continue
        if imp.type_only:
            continue
        if any(imp.imported == f or imp.imported.startswith(f + ".")
               for f in FORBIDDEN_IN_PURE):
            bad.append(f"{imp.importer}:{imp.line}: {imp.imported}")
    assert bad == [], "\n".join(bad)


def test_the_graph_sees_local_and_type_checking_imports() -> None:
    """The walker itself: function-local and TYPE_CHECKING imports are found."""
    graph = _graph()
    assert any(i.local for i in graph) and any(i.type_only for i in graph)
