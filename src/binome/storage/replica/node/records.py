"""The volume records in etcd: the one owner of their keys (layout, reads, CAS updates, deletion).

    /binome/volumes/<vol>/config          the volume's desired state (record below)
    /binome/volumes/<vol>/fencing         {"outdated": {node: {"by", "time", "reason"}}}
    /binome/volumes/<vol>/state/<node>    what <node>'s engine reports (for the HA manager)
    /binome/volume-secrets/<vol>          {"secret": hex}: the replication secret, write-only
    /binome/volume-ports/<port>           {"volume": vol}: one replication port per volume

The secret lives outside `/binome/volumes/` so that listing the volumes (the
API, the HA manager) can never carry it. A volume's keys are under
`/binome/volumes/<vol>/` (the trailing slash keeps `vm-1-disk-1` apart from
`vm-1-disk-10`).

The key functions and `parse`/`views_of` are pure (a watcher or a snapshot
reader uses them); `VolumeRecords` does the reads and compare-and-swap writes
for `node.volumes.VolumeService`. What a record means (effective disk states,
settings) is `core.views`.
"""


from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from binome.storage.replica.node.errors import VolumeFailure

if TYPE_CHECKING:
    from binome.store.client import Store

ROOT = "/binome"
VOLUMES = f"{ROOT}/volumes/"
SECRETS = f"{ROOT}/volume-secrets/"
PORTS = f"{ROOT}/volume-ports/"


def prefix(vol: str) -> str:
    return f"{VOLUMES}{vol}/"


def config(vol: str) -> str:
    return f"{VOLUMES}{vol}/config"


def fencing(vol: str) -> str:
    return f"{VOLUMES}{vol}/fencing"


def state(vol: str, node: str) -> str:
    return f"{VOLUMES}{vol}/state/{node}"


def secret(vol: str) -> str:
    return f"{SECRETS}{vol}"


def port(number: int) -> str:
    return f"{PORTS}{number}"


def parse(key: str) -> tuple[str, str, str | None] | None:
    """(volume, "config" | "fencing" | "state", node or None) of a key under VOLUMES."""
    if not key.startswith(VOLUMES):
        return None
    parts = key[len(VOLUMES):].split("/")
    if len(parts) == 2 and parts[1] in ("config", "fencing"):
        return parts[0], parts[1], None
    if len(parts) == 3 and parts[1] == "state":
        return parts[0], "state", parts[2]
    return None


def views_of(entries: Iterable[Any]) -> dict[str, dict[str, Any]]:
    """volume -> {"config", "outdated", "states"} from entries of a range over VOLUMES (pure).

    Entries have `.key` and `.value`; malformed values count as absent (a
    `config` that is not an object is None). The view has the shape of
    `VolumeRecords.view()`, for `core.views.effective_disk_states`.
    """
    views: dict[str, dict[str, Any]] = {}
    for e in entries:
        parsed = parse(e.key)
        if parsed is None:
            continue
        vol, kind, node = parsed
        view = views.setdefault(vol, {"config": None, "outdated": {}, "states": {}})
        if kind == "config":
            view["config"] = e.value if isinstance(e.value, dict) else None
        elif kind == "fencing":
            view["outdated"] = dict(((e.value or {}) if isinstance(e.value, dict) else {})
                                    .get("outdated", {}))
        elif node is not None:
            view["states"][node] = e.value if isinstance(e.value, dict) else {}
    return views


def _missing(name: str) -> VolumeFailure:
    return VolumeFailure(f"no replicated volume named '{name}' in the cluster")


class VolumeRecords:
    """Reads and compare-and-swap writes of the volume records, for one node's daemon.

    `store` returns the cluster store or raises VolumeFailure (this node is not
    in a cluster); StoreUnavailable from the store passes through to the caller.
    """

    def __init__(self, store: Callable[[], Store]) -> None:
        self._store = store

    # ------------------------------------------------------------------ reads
    async def get(self, name: str, *, serializable: bool = True) -> dict[str, Any]:
        """The volume's record (VolumeFailure if there is none)."""
        entry = await self._store().get(config(name), serializable=serializable)
        if entry is None:
            raise _missing(name)
        return dict(entry.value)

    async def exists(self, name: str) -> bool:
        """Whether the volume has a record (linearizable read)."""
        return await self._store().get(config(name)) is not None

    async def all(self) -> dict[str, dict[str, Any]]:
        """volume -> record, every volume of the cluster (serializable read)."""
        out: dict[str, dict[str, Any]] = {}
        for e in await self._store().get_prefix(VOLUMES, serializable=True):
            parsed = parse(e.key)
            if parsed is not None and parsed[1] == "config":
                out[parsed[0]] = dict(e.value)
        return out

    async def of_node(self, node: str) -> tuple[dict[str, dict[str, Any]],
                                                 dict[str, dict[str, Any]]]:
        """(volume -> record naming `node`, volume -> its fencing marks), one serializable read."""
        records: dict[str, dict[str, Any]] = {}
        marks: dict[str, dict[str, Any]] = {}
        for e in await self._store().get_prefix(VOLUMES, serializable=True):
            parsed = parse(e.key)
            if parsed is None:
                continue
            if parsed[1] == "config" and node in (e.value or {}).get("nodes", {}):
                records[parsed[0]] = dict(e.value)
            elif parsed[1] == "fencing":
                marks[parsed[0]] = dict((e.value or {}).get("outdated", {}))
        return records, marks

    async def view(self, name: str) -> dict[str, Any]:
        """The record, the fencing marks and every node's published state (no secret)."""
        rec: dict[str, Any] | None = None
        marks: dict[str, Any] = {}
        states: dict[str, Any] = {}
        for e in await self._store().get_prefix(prefix(name), serializable=True):
            parsed = parse(e.key)
            if parsed is None:
                continue
            if parsed[1] == "config":
                rec = dict(e.value)
            elif parsed[1] == "fencing":
                marks = dict((e.value or {}).get("outdated", {}))
            elif parsed[2] is not None:
                states[parsed[2]] = e.value
        if rec is None:
            raise _missing(name)
        return {"config": rec, "outdated": marks, "states": states}

    async def secret(self, name: str) -> str | None:
        """The volume's replication secret (None if missing); never returned by the API."""
        entry = await self._store().get(secret(name))
        return None if entry is None else entry.value["secret"]

    # ------------------------------------------------------------------ fencing marks
    async def fencing_marks(self, name: str) -> tuple[dict[str, Any], int | None]:
        """(node -> Outdated mark, the key's mod revision or None), a linearizable read."""
        entry = await self._store().get(fencing(name))
        marks = dict(((entry.value if entry else None) or {}).get("outdated", {}))
        return marks, (entry.mod_revision if entry else None)

    async def swap_fencing_marks(self, name: str, marks: dict[str, Any],
                                 revision: int | None) -> bool:
        """Replace the marks if the key still has `revision` (None: must not exist)."""
        return await self._store().commit({fencing(name): revision or 0},
                                          {fencing(name): {"outdated": marks}})

    # ------------------------------------------------------------------ writes
    async def update(self, name: str, mutate: Callable[[dict[str, Any]], dict[str, Any]]
                     ) -> dict[str, Any]:
        """Compare-and-swap `mutate(record)` into the record; VolumeFailure if none. The new one."""
        def apply(old: dict[str, Any] | None) -> dict[str, Any]:
            if old is None:
                raise _missing(name)
            return mutate(dict(old))

        return await self._store().update(config(name), apply)

    async def publish_state(self, name: str, node: str, state_view: dict[str, Any]) -> None:
        """Write what `node`'s engine reports for the volume (`state/<node>`)."""
        await self._store().put(state(name, node), state_view)

    async def claim(self, rec: dict[str, Any], secret_hex: str, first_port: int,
                    last_port: int) -> int:
        """Create the record with its secret, a free port and empty marks, atomically.

        Sets rec["port"]; returns the port. VolumeFailure if the name exists, no
        port is free, or concurrent creations keep winning.
        """
        store = self._store()
        name = rec["name"]
        for _ in range(10):
            if await store.get(config(name)) is not None:
                raise VolumeFailure(f"volume '{name}' already exists")
            used = {int(e.key[len(PORTS):]) for e in await store.get_prefix(PORTS)
                    if e.key[len(PORTS):].isdigit()}
            number = next((p for p in range(first_port, last_port + 1) if p not in used), None)
            if number is None:
                raise VolumeFailure(f"no free replication port in {first_port}-{last_port}")
            rec["port"] = number
            if await store.commit(
                    {config(name): 0, secret(name): 0, port(number): 0, fencing(name): 0},
                    {config(name): rec, secret(name): {"secret": secret_hex},
                     port(number): {"volume": name}, fencing(name): {"outdated": {}}}):
                return number
        raise VolumeFailure(f"volume '{name}': could not claim a name and a port "
                            f"(concurrent creations)")

    async def ack_deletion(self, name: str, node: str) -> bool:
        """Note that `node`'s copy is gone; the last node removes every key. True if gone."""
        store = self._store()
        for _ in range(10):
            entry = await store.get(config(name))
            if entry is None:
                return True
            rec = dict(entry.value)
            deleted = sorted(set(rec.get("deleted", [])) | {node})
            if set(deleted) >= set(rec["nodes"]):
                deletes = [config(name), fencing(name), secret(name)]
                if rec.get("port") is not None:
                    deletes.append(port(int(rec["port"])))
                if await store.commit({config(name): entry.mod_revision}, None, deletes):
                    await store.delete_prefix(prefix(name))
                    return True
            elif await store.commit({config(name): entry.mod_revision},
                                    {config(name): {**rec, "deleted": deleted}}):
                return False
        raise VolumeFailure(f"volume {name}: too many concurrent updates of its record")
