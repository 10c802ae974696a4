"""The `binome` command table: every command the API registry declares, as plain data.

Owns the CLI's view of the API methods (command words, HTTP method and path, options)
and the cache file that holds it. The table comes from the API registry, but importing
the registry's method modules pulls in aiohttp, QEMU, storage and access code: about
0.8 s of CPU for every `binome` call, most of the cost of a command (and of the many
calls that scripts and tests make in a loop). So the table is written once to a cache
file keyed by the installed code (every module's path, size and mtime) and read back
as JSON by the next calls; any change to the code is a new key, and a cache that
cannot be read or written is only slower, never wrong.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

CACHE_FORMAT = 1
STALE_AFTER = 86400.0   # s: another code's table unused this long is removed


@dataclass(frozen=True)
class Option:
    """One parameter of a command, with what argparse and the call need of it."""

    name: str
    type: str
    optional: bool
    enum: tuple[str, ...] | None
    secret: bool
    help: str | None


@dataclass(frozen=True)
class Command:
    """One `binome` command: its words, how it calls the API and how it prints."""

    words: tuple[str, ...]
    positional: tuple[str, ...]
    formatter: str | None
    confirm: str | None
    help: str | None
    fixed: tuple[tuple[str, str], ...]
    http_method: str
    path: str
    name: str
    description: str
    options: tuple[Option, ...]

    @property
    def path_params(self) -> list[str]:
        return [s[1:-1] for s in self.path.split("/") if s.startswith("{")]


def _help_text(p: Any) -> str | None:
    text = p.description or None
    if p.props is not None:
        text = f"{text or ''} Format: {p.props.typetext()}".strip()
    if p.enum:
        text = f"{text or ''} ({'|'.join(p.enum)})".strip()
    if p.default is not None:
        text = f"{text or ''} [default: {p.default}]".strip()
    return text


def from_registry() -> list[Command]:
    """The table, from the registry itself (imports every API method module)."""
    from binome.api import methods  # noqa: F401  (registers every method)
    from binome.api.registry import registry

    table = []
    for spec, method in registry.commands():
        options = tuple(Option(name, p.type, p.optional, tuple(p.enum) if p.enum else None,
                               p.secret, _help_text(p))
                        for name, p in method.parameters.items())
        table.append(Command(tuple(spec.command), tuple(spec.positional), spec.formatter,
                             spec.confirm, spec.help, tuple(spec.fixed), method.method,
                             method.path, method.name, method.description, options))
    return sorted(table, key=lambda c: c.words)


def _code_key() -> str:
    """Names this installation's code: a change to any module is a new key."""
    package = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256(str(CACHE_FORMAT).encode())
    for path in sorted(package.rglob("*.py")):
        st = path.stat()
        digest.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:32]


def cache_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "binome" / f"cli-commands-{_code_key()}.json"


def _decode(raw: list[dict[str, Any]]) -> list[Command]:
    def option(o: dict[str, Any]) -> Option:
        return Option(o["name"], o["type"], o["optional"],
                      tuple(o["enum"]) if o["enum"] is not None else None, o["secret"],
                      o["help"])

    return [Command(tuple(c["words"]), tuple(c["positional"]), c["formatter"], c["confirm"],
                    c["help"], tuple((k, v) for k, v in c["fixed"]), c["http_method"],
                    c["path"], c["name"], c["description"],
                    tuple(option(o) for o in c["options"])) for c in raw]


def _write(path: Path, table: list[Command]) -> None:
    """Atomically (concurrent calls may race to write it). Tables of other code not
    used for a day are removed (another installation's recent one is left alone)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".cli-commands-")
    try:
        with os.fdopen(fd, "w") as out:
            json.dump([asdict(c) for c in table], out)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    now = time.time()
    for old in path.parent.glob("cli-commands-*.json"):
        with contextlib.suppress(OSError):
            if old != path and now - old.stat().st_mtime > STALE_AFTER:
                old.unlink()


def load() -> list[Command]:
    """The table: from the cache when it matches this code, else from the registry (and
    then cached for the next call)."""
    try:
        path = cache_path()
    except (OSError, RuntimeError):   # no home directory to cache in
        return from_registry()
    try:
        return _decode(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    table = from_registry()
    try:
        _write(path, table)
    except OSError:
        pass   # a read-only home: the next call builds the table again
    return table
