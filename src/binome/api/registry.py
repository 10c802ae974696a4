"""The schema-driven method registry: each API method is declared once.

A declaration (HTTP method, path, parameters, returns, permission, handler,
optional CLI binding) gives: the route and its dispatch, parameter validation
with PVE-style errors, the permission check, proxying to the node named in the
path, the OpenAPI document, and the CLI's subcommand with its `--help`.

Permissions are `binome.access.permission` declarations (PVE's `permissions =>`):
the server enforces them before the handler runs; no handler checks by hand, except
to filter a listing (`AnyUser(filter=...)` says what it hides).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from binome.access.permission import ANY_USER, ROOT_ONLY, WORLD, Decl, Perm
from binome.api.errors import NotImplementedMethod
from binome.api.wire import path_segment
from binome.schema import Param

__all__ = ["ANY_USER", "ROOT_ONLY", "WORLD", "ApiMethod", "CliSpec", "Decl", "Perm",
           "Registry", "WithTotal", "privs", "registry"]

if TYPE_CHECKING:
    from binome.api.context import RequestContext

Handler = Callable[["RequestContext", dict[str, Any]], Awaitable[Any]]


def privs(*names: str, path: str = "/", any: bool = False) -> Perm:
    """PVE's `['perm', path, [privs]]`: the privileges on `path`, which may name the
    method's parameters, e.g. "/vms/{vmid}". `any`: one of them suffices."""
    return Perm(path, tuple(names), any=any)


@dataclass(frozen=True)
class CliSpec:
    """How a method appears in the `binome` command line."""

    command: tuple[str, ...]
    positional: tuple[str, ...] = ()
    formatter: str | None = None
    confirm: str | None = None   # a warning shown before running; needs --yes or typing "yes"
    help: str | None = None
    fixed: tuple[tuple[str, str], ...] = ()   # parameters this command always sends


@dataclass(frozen=True)
class WithTotal:
    """A list result that also carries PVE's top-level `total`."""

    data: list[Any]
    total: int


@dataclass
class ApiMethod:
    method: str
    path: str
    name: str
    description: str
    handler: Handler
    parameters: dict[str, Param] = field(default_factory=dict)
    returns: dict[str, Any] = field(default_factory=lambda: {"type": "null"})
    permission: Decl = ANY_USER
    proxyto: str | None = None
    cli: tuple[CliSpec, ...] = ()
    allow_token: bool = True     # PVE's allowtoken: login, password and TFA writes refuse tokens
    # a multipart upload (PVE's upload): the text fields before the file part are the
    # parameters, the file part (its file name: `filename`) is left unread for the handler
    # to stream (`UPLOAD_PART` in the request); the body has no size limit
    upload: bool = False

    @property
    def segments(self) -> list[str]:
        return [s for s in self.path.split("/") if s]

    @property
    def path_params(self) -> list[str]:
        return [s[1:-1] for s in self.segments if s.startswith("{")]


class Registry:
    def __init__(self) -> None:
        self.methods: list[ApiMethod] = []

    def register(self, method: str, path: str, *, name: str, description: str,
                 parameters: dict[str, Param] | None = None,
                 returns: dict[str, Any] | None = None,
                 permission: Decl = ANY_USER, proxyto: str | None = None,
                 cli: CliSpec | tuple[CliSpec, ...] = (), allow_token: bool = True,
                 upload: bool = False) -> Callable[[Handler], Handler]:
        def decorator(handler: Handler) -> Handler:
            m = ApiMethod(method=method, path=path, name=name, description=description,
                          handler=handler, parameters=dict(parameters or {}),
                          returns=returns or {"type": "null"}, permission=permission,
                          proxyto=proxyto,
                          cli=(cli,) if isinstance(cli, CliSpec) else tuple(cli),
                          allow_token=allow_token, upload=upload)
            for p in m.path_params:
                if p not in m.parameters:
                    raise ValueError(f"{method} {path}: path parameter {p} not declared")
            if any(x.method == method and x.path == path for x in self.methods):
                raise ValueError(f"{method} {path} declared twice")
            self.methods.append(m)
            return handler
        return decorator

    def match(self, method: str, path: str) -> tuple[ApiMethod, dict[str, str]]:
        # strictly (BadPath: 400): the parts become parameters and the 501's reason phrase
        parts = [path_segment(s) for s in path.split("/") if s]
        for m in self.methods:
            if m.method != method:
                continue
            segs = m.segments
            candidate = parts
            if segs[-2:] == ["content", "{volume}"] and len(parts) > len(segs):
                # PVE's `fragmentDelimiter => ''` on .../content: a volume id may hold a
                # slash (local:backup/vzdump-...), so the rest of the path is the volume
                candidate = [*parts[:len(segs) - 1], "/".join(parts[len(segs) - 1:])]
            if len(segs) != len(candidate):
                continue
            found: dict[str, str] = {}
            for seg, part in zip(segs, candidate, strict=True):
                if seg.startswith("{"):
                    found[seg[1:-1]] = part
                elif seg != part:
                    break
            else:
                return m, found
        raise NotImplementedMethod(method, "/" + "/".join(parts))

    def commands(self) -> list[tuple[CliSpec, ApiMethod]]:
        return [(spec, m) for m in self.methods for spec in m.cli]


registry = Registry()
