"""The HA configuration in etcd: the one module that reads and writes it (PVE::HA::Config).

Owns the keys under `/binome/ha/` that administrators change or read: the
resources, groups and rules documents (single JSON documents, edited with
compare-and-swap; the rules' logic is `binome.ha.rules`), the datacenter-wide
settings, the admin command queue the CRM master reads, the administrator's
power-off confirmations, and the read side of what the daemons publish
(manager status, LRM reports) for `ha status`. The API validates its input
and shapes its answers; everything that touches these keys is here. The
decoders (`decode_*`) turn the stored documents into the model
(`binome.ha.model`) for the daemons' Env too.

Refusals (no such resource, group in use, a changed digest...) are
`HaConfigError`: a `BinomeError`, so the API answers them as PVE does (500,
the message as reason); a rule refused per property is `RuleParamError` or
`RuleInvalid` (PVE's 400 with `errors`).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from binome.errors import BinomeError
from binome.ha.model import (
    FenceConfirmation,
    GroupConfig,
    HaSettings,
    ResourceConfig,
    parse_group_nodes,
)
from binome.ha.rules import (
    NODE_AFFINITY,
    RESOURCE_AFFINITY,
    Rule,
    check_feasibility,
    decode_rules,
    migrate_groups,
    next_order,
    parse_nodes,
    parse_resources,
)
from binome.store import keys
from binome.store.client import StoreUnavailable

if TYPE_CHECKING:
    from binome.store.client import Store

RESOURCE_KEYS = ("state", "group", "max_restart", "max_relocate", "comment",
                 "availability_target", "failback")
GROUP_KEYS = ("nodes", "restricted", "nofailback", "comment")
# qm stop/shutdown's hint to the LRM of how long the guest may take to shut down
STOP_TIMEOUT = "stop_timeout"


class HaConfigError(BinomeError):
    """A refused HA configuration change or a missing entry (the message says which)."""


class RuleInvalid(HaConfigError):
    """A rule the rule set cannot hold (PVE's 400 "Rule '<id>' is invalid." with the
    problems per property in `errors`)."""

    def __init__(self, rule_id: str, errors: Mapping[str, str]) -> None:
        super().__init__(f"Rule '{rule_id}' is invalid.")
        self.errors = dict(errors)


class RuleParamError(HaConfigError):
    """A rule property refused before any feasibility check (PVE's 400 per parameter)."""

    def __init__(self, errors: Mapping[str, str]) -> None:
        super().__init__("Parameter verification failed.")
        self.errors = dict(errors)


# ---------------------------------------------------------------- pure helpers


def sid_of(vmid: int) -> str:
    return f"vm:{vmid}"


def vmid_of_sid(sid: str) -> int | None:
    kind, _, vmid = sid.partition(":")
    return int(vmid) if kind == "vm" and vmid.isdigit() else None


def config_digest(doc: Mapping[str, Any] | None) -> str:
    """PVE's `digest` of a config document: refuses a change made on a stale read."""
    return hashlib.sha1(json.dumps(doc or {}, sort_keys=True).encode()).hexdigest()


def merge_resource(old: Mapping[str, Any], changes: Mapping[str, Any],
                   delete: Iterable[str] = ()) -> dict[str, Any]:
    """A resource entry with `changes` applied and `delete` removed, validated."""
    gone = set(delete)
    out = {k: v for k, v in old.items() if k not in gone}
    out.pop(STOP_TIMEOUT, None)   # a hint of the last qm stop/shutdown only
    for key in RESOURCE_KEYS:
        if changes.get(key) is not None:
            out[key] = changes[key]
    if out.get("state") == "enabled":
        out["state"] = "started"
    ResourceConfig.from_dict("vm:0", out)   # validates
    return out


def merge_group(old: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """A group entry with `changes` applied (`nodes` as `node[:priority],...`), validated."""
    out = dict(old)
    if changes.get("nodes") is not None:
        nodes = changes["nodes"]
        out["nodes"] = parse_group_nodes(nodes) if isinstance(nodes, str) else dict(nodes)
    for key in ("restricted", "nofailback", "comment"):
        if changes.get(key) is not None:
            out[key] = changes[key]
    GroupConfig.from_dict("g", out)   # validates
    return out


def decode_resources(doc: Mapping[str, Any] | None) -> dict[str, ResourceConfig]:
    return {sid: ResourceConfig.from_dict(sid, d) for sid, d in (doc or {}).items()}


def decode_groups(doc: Mapping[str, Any] | None) -> dict[str, GroupConfig]:
    return {name: GroupConfig.from_dict(name, d) for name, d in (doc or {}).items()}


def decode_settings(doc: Mapping[str, Any] | None) -> HaSettings:
    return HaSettings.from_dict(dict(doc) if doc else None)


def decode_commands(entries: Iterable[tuple[str, Any]]) -> list[tuple[str, str]]:
    """The queued admin commands among `(key, value)` entries, oldest first, as (id, line)."""
    return [(k, str(v)) for k, v in sorted(entries, key=lambda kv: kv[0])
            if k.startswith(keys.HA_COMMANDS)]


# ---------------------------------------------------------------- the repository


class HaConfig:
    """Reads and compare-and-swap writes of the HA configuration, on one store client."""

    def __init__(self, store: Store) -> None:
        self.store = store

    # ------------------------------------------------------------ resources

    async def resources(self, *, serializable: bool = False) -> dict[str, dict[str, Any]]:
        """`{sid: entry}` as stored (serializable: this node's copy, no quorum needed)."""
        return await self.store.get_value(keys.HA_RESOURCES, {},
                                          serializable=serializable) or {}

    async def resource(self, sid: str) -> dict[str, Any]:
        """One resource's entry; HaConfigError if there is none."""
        doc = await self.resources()
        if sid not in doc:
            raise HaConfigError(f"no such resource '{sid}'")
        return doc[sid]

    async def add_resource(self, sid: str, changes: Mapping[str, Any]) -> None:
        vmid = vmid_of_sid(sid)
        if vmid is None or await self.store.get(keys.vmid(vmid)) is None:
            raise HaConfigError(f"no such VM '{vmid}'")
        group = changes.get("group")
        if group and group not in await self.groups():
            raise HaConfigError(f"no such ha group '{group}'")
        cfg = merge_resource({"state": "started"}, changes)
        await self._edit(keys.HA_RESOURCES, sid, lambda _old: cfg,
                         exists=f"resource ID '{sid}' already defined")

    async def update_resource(self, sid: str, changes: Mapping[str, Any],
                              delete: Iterable[str] = (), digest: str | None = None) -> None:
        """Apply `changes`, remove `delete`; refused if `digest` is not the document's or
        the group to move it into does not exist (as `add_resource`)."""
        gone = list(delete)
        group = changes.get("group")
        if group and group not in await self.groups():
            raise HaConfigError(f"no such ha group '{group}'")

        def same_digest(doc: dict[str, Any]) -> None:
            if digest and digest != config_digest(doc):
                raise HaConfigError("detected modified configuration - file changed by other "
                                    "user? Try again.")

        await self._edit(keys.HA_RESOURCES, sid,
                         lambda old: merge_resource(old or {}, changes, gone),
                         missing=f"no such resource '{sid}'", check=same_digest)

    async def remove_resource(self, sid: str) -> None:
        await self._edit(keys.HA_RESOURCES, sid, lambda _old: None,
                         missing=f"no such resource '{sid}'")

    async def set_requested_state(self, sid: str, state: str,
                                  stop_timeout: float | None = None) -> None:
        """Set the requested state; `stop_timeout` tells the LRM how long the guest may take
        to shut down before it is stopped hard (0: at once, `qm stop`)."""
        def change(old: dict[str, Any] | None) -> dict[str, Any]:
            cfg = {k: v for k, v in (old or {}).items() if k != STOP_TIMEOUT}
            if stop_timeout is not None:
                cfg[STOP_TIMEOUT] = stop_timeout
            return {**cfg, "state": state}

        await self._edit(keys.HA_RESOURCES, sid, change, missing=f"no such resource '{sid}'")

    async def managed_resource(self, vmid: int) -> dict[str, Any] | None:
        """The resource entry of `vm:<vmid>` if the manager handles it (not `ignored`).

        Serializable and None when the store cannot answer: stopping a non-HA guest
        needs no quorum and must not start to (an HA guest's request needs quorum
        anyway, checked by the caller)."""
        try:
            doc = await self.resources(serializable=True)
        except StoreUnavailable:
            return None
        cfg = doc.get(sid_of(vmid))
        if cfg is None or cfg.get("state") == "ignored":
            return None
        return cfg

    async def poll_service(self, sid: str
                           ) -> tuple[dict[str, Any], dict[str, Any] | None] | None:
        """(the manager's status of `sid`, its resource entry or None if removed), or
        None while the store cannot answer (no quorum for a moment)."""
        try:
            status = await self.service_status(sid)
            doc = await self.resources()
        except StoreUnavailable:
            return None
        return status, doc.get(sid)

    # ------------------------------------------------------------ groups

    async def groups(self, *, serializable: bool = False) -> dict[str, dict[str, Any]]:
        return await self.store.get_value(keys.HA_GROUPS, {}, serializable=serializable) or {}

    async def group(self, name: str) -> dict[str, Any]:
        doc = await self.groups()
        if name not in doc:
            raise HaConfigError(f"no such ha group '{name}'")
        return doc[name]

    async def add_group(self, name: str, changes: Mapping[str, Any]) -> None:
        cfg = merge_group({}, changes)
        await self._edit(keys.HA_GROUPS, name, lambda _old: cfg,
                         exists=f"ha group '{name}' already defined")

    async def update_group(self, name: str, changes: Mapping[str, Any]) -> None:
        await self._edit(keys.HA_GROUPS, name, lambda old: merge_group(old or {}, changes),
                         missing=f"no such ha group '{name}'")

    async def remove_group(self, name: str) -> None:
        """Refused while a resource uses the group."""
        resources = await self.resources()
        users = sorted(sid for sid, cfg in resources.items() if cfg.get("group") == name)
        if users:
            raise HaConfigError(f"ha group '{name}' is used by {', '.join(users)}")
        await self._edit(keys.HA_GROUPS, name, lambda _old: None,
                         missing=f"no such ha group '{name}'")

    # ------------------------------------------------------------ rules (PVE 9)

    async def rules_doc(self) -> dict[str, Any]:
        return await self.store.get_value(keys.HA_RULES, {}) or {}

    async def rules_view(self, nodes: Iterable[str]
                         ) -> tuple[dict[str, Rule], dict[str, dict[str, list[str]]], str]:
        """(every rule, the groups' generated `ha-group-<g>` rules included, as upstream's
        index shows them; the feasibility errors per rule; the rules document's digest)."""
        doc = await self.rules_doc()
        full = await self._with_groups(decode_rules(doc))
        return full, check_feasibility(full, sorted(nodes)), config_digest(doc)

    async def add_rule(self, rule_id: str, params: Mapping[str, Any],
                       nodes: Iterable[str]) -> None:
        """Create a rule (`type`, `resources`, `nodes`/`strict` or `affinity`, `disable`,
        `comment`); refused as upstream's create_rule refuses it."""
        known = sorted(nodes)

        async def change(doc: dict[str, Any]) -> dict[str, Any]:
            rules = decode_rules(doc)
            if rule_id in doc:
                raise HaConfigError(f"HA rule '{rule_id}' already defined")
            rule = _rule_from_params(rule_id, params, None, (), next_order(rules))
            await self._check_rule(rule, known)
            rules[rule_id] = rule
            await self._assert_feasible(rules, rule_id, known)
            return {**doc, rule_id: rule.to_dict()}

        await self._update_async(keys.HA_RULES, change)

    async def update_rule(self, rule_id: str, params: Mapping[str, Any],
                          delete: Iterable[str], digest: str | None,
                          nodes: Iterable[str]) -> None:
        known = sorted(nodes)
        gone = list(delete)

        async def change(doc: dict[str, Any]) -> dict[str, Any]:
            if digest and digest != config_digest(doc):
                raise HaConfigError("detected modified configuration - file changed by other "
                                    "user? Try again.")
            rules = decode_rules(doc)
            old = rules.get(rule_id)
            if old is None:
                raise HaConfigError(f"HA rule '{rule_id}' does not exist")
            if params.get("type") and params["type"] != old.type:
                raise RuleParamError({"type": f"rule '{rule_id}' is a {old.type} rule"})
            rule = _rule_from_params(rule_id, params, old, gone, old.order)
            await self._check_rule(rule, known, only=params)
            rules[rule_id] = rule
            await self._assert_feasible(rules, rule_id, known)
            return {**doc, rule_id: rule.to_dict()}

        await self._update_async(keys.HA_RULES, change)

    async def remove_rule(self, rule_id: str) -> None:
        """Upstream deletes without asking whether it existed: so does this."""
        def change(doc: dict[str, Any] | None) -> dict[str, Any]:
            return {k: v for k, v in (doc or {}).items() if k != rule_id}
        await self.store.update(keys.HA_RULES, change)

    async def purge_rules_of(self, sid: str) -> None:
        """Take `sid` out of every rule; a rule left without resources goes (upstream's
        `ha-manager remove --purge`)."""
        def change(doc: dict[str, Any] | None) -> dict[str, Any]:
            out = {}
            for rule_id, data in (doc or {}).items():
                resources = [s for s in data.get("resources", []) if s != sid]
                if resources:
                    out[rule_id] = {**data, "resources": resources}
            return out
        await self.store.update(keys.HA_RULES, change)

    async def _with_groups(self, rules: Mapping[str, Rule]) -> dict[str, Rule]:
        return migrate_groups(rules, decode_groups(await self.groups()),
                              decode_resources(await self.resources()))

    async def _check_rule(self, rule: Rule, nodes: list[str],
                          only: Mapping[str, Any] | None = None) -> None:
        """Upstream's assert_valid_resources_param / assert_valid_nodes_param (on
        update: only for the properties given)."""
        if only is None or only.get("resources") is not None:
            if not rule.resources:
                raise HaConfigError("no resources were specified")
            configured = await self.resources()
            unknown = sorted(s for s in rule.resources if s not in configured)
            if unknown:
                raise HaConfigError(f"cannot use unmanaged resource(s) {', '.join(unknown)}.")
        if rule.type == NODE_AFFINITY and (only is None or only.get("nodes") is not None):
            if not rule.nodes:
                raise HaConfigError("no nodes were specified")
            missing = sorted(n for n in rule.nodes if n not in nodes)
            if missing:
                raise HaConfigError(f"cannot use non-existent node(s) {', '.join(missing)}.")

    async def _assert_feasible(self, rules: Mapping[str, Rule], rule_id: str,
                               nodes: list[str]) -> None:
        errors = check_feasibility(await self._with_groups(rules), nodes).get(rule_id)
        if errors:
            raise RuleInvalid(rule_id, {p: ", ".join(m) for p, m in sorted(errors.items())})

    async def _update_async(self, key: str, change: Callable[[dict[str, Any]], Any]) -> None:
        """Compare-and-swap of a document whose change needs reads of its own (a rule
        checks the resources and groups): read, change, write if unchanged, retry."""
        for _ in range(10):
            raw = await self.store.get(key)
            doc = dict(raw.value) if raw is not None and isinstance(raw.value, dict) else {}
            new = await change(doc)
            if await self.store.commit({key: 0 if raw is None else raw.mod_revision},
                                       {key: new}):
                return
        raise HaConfigError("create ha rule failed: the rules changed too often; try again")

    # ------------------------------------------------------------ settings and commands

    async def settings(self) -> dict[str, Any]:
        return await self.store.get_value(keys.HA_SETTINGS, {}) or {}

    async def set_settings(self, settings: HaSettings | None) -> None:
        """Store the settings; None deletes them (the defaults apply)."""
        if settings is None:
            await self.store.delete(keys.HA_SETTINGS)
        else:
            await self.store.put(keys.HA_SETTINGS, settings.to_dict())

    async def queue_command(self, line: str, origin: str) -> str:
        """Append an admin command (`migrate vm:100 n2`...) for the CRM master; its id."""
        seq = f"{time.time_ns():020d}-{origin}"
        await self.store.put(keys.ha_command(seq), line)
        return seq

    # ------------------------------------------------------------ what the daemons publish

    async def manager_status(self, *, serializable: bool = False) -> dict[str, Any]:
        return await self.store.get_value(keys.HA_MANAGER_STATUS, {},
                                          serializable=serializable) or {}

    async def service_status(self, sid: str, *, serializable: bool = False) -> dict[str, Any]:
        ms = await self.manager_status(serializable=serializable)
        return (ms.get("service_status") or {}).get(sid) or {}

    async def status_snapshot(self, *, serializable: bool = False) -> dict[str, Any]:
        """One read of everything `ha status` shows: `ms` (manager status), `lock` (the
        master's name), `resources`, `settings` (the datacenter-wide HA settings),
        `lrms` {node: report}, `confirms` {node: doc}."""
        entries = {e.key: e.value for e in await self.store.get_prefix(
            keys.HA, serializable=serializable)}
        lrms = {k[len(keys.HA_LRM):]: v for k, v in entries.items() if k.startswith(keys.HA_LRM)}
        confirms = {k[len(keys.HA_FENCE_CONFIRM):]: v for k, v in entries.items()
                    if k.startswith(keys.HA_FENCE_CONFIRM) and isinstance(v, dict)}
        return {"ms": entries.get(keys.HA_MANAGER_STATUS) or {},
                "lock": entries.get(keys.HA_MANAGER_LOCK),
                "resources": entries.get(keys.HA_RESOURCES) or {},
                "settings": entries.get(keys.HA_SETTINGS) or {}, "lrms": lrms,
                "confirms": confirms}

    async def hastates(self) -> dict[int, str]:
        """vmid -> PVE's `hastate`: the CRM state if it has one, else the requested state
        (serializable: the resources index answers without quorum)."""
        resources = await self.resources(serializable=True)
        if not resources:
            return {}
        services = (await self.manager_status(serializable=True)).get("service_status") or {}
        out = {}
        for sid, cfg in resources.items():
            vmid = vmid_of_sid(sid)
            if vmid is not None:
                out[vmid] = str((services.get(sid) or {}).get("state")
                                or cfg.get("state", "started"))
        return out

    # ------------------------------------------------------------ manual fence confirmation

    async def node_lease_alive(self, node: str) -> bool:
        """Whether the node's HA heartbeat or cluster alive key (both lease-bound) exists."""
        return (await self.store.get(keys.ha_heartbeat(node)) is not None
                or await self.store.get(keys.alive(node)) is not None)

    async def record_fence_confirmation(self, confirmation: FenceConfirmation) -> None:
        await self.store.put(keys.ha_fence_confirm(confirmation.node), confirmation.to_dict())

    async def settle_power_on(self, node: str) -> None:
        """The node was powered on by hand: a reboot's power-on the fencer still owed
        (`power_on: owed` in its fence request record) is no longer owed."""
        key = keys.ha_fence_request(node)
        for _ in range(5):
            raw = await self.store.get(key)
            if raw is None or not isinstance(raw.value, dict) \
                    or raw.value.get("power_on") != "owed":
                return
            new = {**raw.value, "power_on": "done by hand"}
            if await self.store.txn([(key, "mod", raw.mod_revision)], {key: (new, 0)}):
                return

    # ------------------------------------------------------------ internals

    async def _edit(self, key: str, name: str,
                    change: Callable[[dict[str, Any] | None], dict[str, Any] | None], *,
                    missing: str | None = None, exists: str | None = None,
                    check: Callable[[dict[str, Any]], None] | None = None) -> None:
        """One compare-and-swap edit of an entry of the resources or groups document.

        `change(old)` gives the new entry (None deletes it); `missing` / `exists` are
        the errors for an entry that must / must not be there already; `check(doc)`
        runs first on the whole document read.
        """
        def mutate(doc: dict[str, Any] | None) -> dict[str, Any]:
            doc = dict(doc or {})
            if check is not None:
                check(doc)
            if exists is not None and name in doc:
                raise HaConfigError(exists)
            if missing is not None and name not in doc:
                raise HaConfigError(missing)
            new = change(doc.get(name))
            if new is None:
                doc.pop(name, None)
            else:
                doc[name] = new
            return doc

        await self.store.update(key, mutate)


def _rule_from_params(rule_id: str, params: Mapping[str, Any], old: Rule | None,
                      delete: Iterable[str], order: int) -> Rule:
    """A rule from API parameters (strings as PVE sends them) over `old`; `delete`
    removes optional properties. RuleParamError per parameter."""
    errors: dict[str, str] = {}
    rtype = old.type if old is not None else str(params.get("type") or "")
    if rtype not in (NODE_AFFINITY, RESOURCE_AFFINITY):
        raise RuleParamError({"type": "property is missing and it is not optional"
                              if not rtype else f"value '{rtype}' does not have a value in "
                              "the enumeration 'node-affinity, resource-affinity'"})
    allowed = {"strict", "comment", "disable"} if rtype == NODE_AFFINITY \
        else {"comment", "disable"}
    own = {"nodes", "strict"} if rtype == NODE_AFFINITY else {"affinity"}
    for key in ("nodes", "strict", "affinity"):
        if params.get(key) is not None and key not in own:
            errors[key] = f"property is not defined in schema for type '{rtype}'"
    data: dict[str, Any] = old.to_dict() if old is not None else {"type": rtype}
    for key in delete:
        if key in ("resources", "nodes", "affinity", "type"):
            errors.setdefault("delete", f"unable to delete required option '{key}'")
        elif key not in allowed:
            errors.setdefault("delete", f"no such option '{key}'")
        elif params.get(key) is not None:
            errors.setdefault("delete",
                              f"cannot set and delete property '{key}' at the same time!")
        else:
            data.pop(key, None)
    if params.get("resources") is not None:
        try:
            data["resources"] = sorted(parse_resources(str(params["resources"])))
        except ValueError as exc:
            errors["resources"] = str(exc)
    if params.get("nodes") is not None and "nodes" in own:
        try:
            data["nodes"] = parse_nodes(str(params["nodes"]))
        except ValueError as exc:
            errors["nodes"] = str(exc)
    for key in ("strict", "disable"):
        if params.get(key) is not None and (key != "strict" or key in own):
            data[key] = bool(params[key])
    if params.get("affinity") is not None and "affinity" in own:
        data["affinity"] = params["affinity"]
    if params.get("comment") is not None:
        data["comment"] = str(params["comment"])
    if old is None:
        for key in ("resources", *sorted(own - {"strict"})):
            if key not in data and key not in errors:
                errors[key] = "property is missing and it is not optional"
    if errors:
        raise RuleParamError(errors)
    data["order"] = order
    try:
        return Rule.from_dict(rule_id, data)
    except ValueError as exc:
        raise RuleParamError({"affinity" if rtype == RESOURCE_AFFINITY else "type": str(exc)}
                             ) from None

