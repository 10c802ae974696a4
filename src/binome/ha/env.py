"""The environment seam: everything the CRM and the LRM know of the world goes through here.

Like pve-ha-manager's `PVE::HA::Env`, the HA logic never touches a clock, a
socket, etcd or QEMU directly; it calls an `Env`. Two implementations exist
(or will): `binome.ha.sim.env.SimEnv` (the deterministic simulator) and the
etcd-backed adapter of the daemon (see `docs/ha.md`, "Daemon integration").
An `Env` serves one daemon of one node: it knows its node name and tags the
log lines it writes with node and daemon (`n1/crm`, `n1/lrm`).

The interface is split by consumer so each side sees only what it needs:

- `ClusterEnv`: shared reads (time, log, quorum, manager status, placement
  facts);
- `CrmEnv`: what the elected manager needs (lock, writes of the manager
  status, HA config, node leases, LRM reports, config moves, fencing);
- `LrmEnv`: what a node's LRM needs (its lease, its watchdog, its status
  document, the guest executor, shutdown requests).

Contract for implementations:

- Every read that decides an action is linearizable (etcd: a quorum read); a
  node without quorum raises `EnvUnavailable` instead of answering from a
  stale cache. `quorate()` answers from the node's own view.
- Every state-changing write is conditional (the fencing token): manager
  status writes compare the revision that was read *and* that this node
  still holds the manager lock; LRM status writes compare the revision of
  that node's document; a config move compares the config's current owner.
  A failed comparison raises `Conflict` and nothing is written.
- Times are seconds on a monotonic clock shared by the node's processes
  (`CLOCK_MONOTONIC` in the daemon, the virtual clock in the simulator).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Protocol

from binome.ha.model import (
    FenceConfirmation,
    FenceStatus,
    GroupConfig,
    HaSettings,
    LeaseInfo,
    LrmResult,
    LrmStatus,
    ManagerStatus,
    NodeFacts,
    NodeInfo,
    ResourceConfig,
)
from binome.ha.rules import Rule


class EnvUnavailable(Exception):
    """The store cannot be reached with quorum; the caller abandons its round."""


class Conflict(Exception):
    """A conditional write lost: someone else wrote first, or the lock is gone."""


class ClusterEnv(Protocol):
    @property
    def node(self) -> str:
        """The name of the node this Env serves."""
        ...

    def now(self) -> float:
        """Monotonic seconds."""
        ...

    def log(self, level: str, message: str) -> None:
        """Cluster log / event log (levels: info, warn, err, alert)."""
        ...

    def notify(self, kind: str, **fields: str | int) -> None:
        """An administrator notification of the event catalogue (`binome.notify.events`:
        its kind and fields) for a decision of this round. Never blocks or fails; the
        daemon sends it only once the round's writes are committed, so a decision that
        loses its compare-and-swap is not announced."""
        ...

    def quorate(self) -> bool:
        """Whether this node can currently reach a quorum of the store."""
        ...

    def cluster_nodes(self) -> dict[str, NodeInfo]:
        """The cluster's nodes that can run guests (not the witness), with capabilities."""
        ...

    def read_manager_status(self) -> tuple[ManagerStatus, int]:
        """The manager status and its revision (0 when it does not exist yet)."""
        ...

    def read_settings(self) -> HaSettings:
        """Cluster-wide HA settings (the shutdown policy)."""
        ...

    def service_config_node(self, sid: str) -> str | None:
        """The node that owns the service's guest config (where it may run)."""
        ...

    def replica_states(self, sid: str) -> dict[str, dict[str, str]]:
        """For each replicated volume of the service: node -> disk state.

        Disk states are DRBD's names (`UpToDate`, `Outdated`, `Inconsistent`,
        `DUnknown`, ...); a node missing from a volume's map has no replica.
        An empty mapping means the service has no replicated volume.
        """
        ...


class CrmEnv(ClusterEnv, Protocol):
    def try_manager_lock(self) -> bool:
        """Take or keep the manager lock (bound to this node's lease); True if held."""
        ...

    def release_manager_lock(self) -> None: ...

    def write_manager_status(self, status: ManagerStatus, revision: int,
                             done_commands: Sequence[str] = ()) -> int:
        """Write if the document is still at `revision` and the lock is still ours.

        The admin commands named by `done_commands` (ids from `read_commands`)
        are deleted in the same transaction, so a lost round loses no command.
        Returns the new revision; raises Conflict otherwise.
        """
        ...

    def read_resources(self) -> dict[str, ResourceConfig]: ...

    def read_groups(self) -> dict[str, GroupConfig]: ...

    def read_rules(self) -> dict[str, Rule]:
        """The HA rules as stored (`binome.ha.rules`; groups are not in them)."""
        ...

    def read_commands(self) -> list[tuple[str, str]]:
        """Queued admin commands as (id, line), oldest first (`migrate vm:100 n2`, ...)."""
        ...

    def node_facts(self) -> dict[str, NodeFacts]:
        """Lease state of every cluster node.

        `last_renewal` must be the store's time of the node's latest renewal
        (not `expiry - ttl`: etcd pushes expiries forward on a leader change).
        A node missing from the mapping is taken to hold no lease at all.
        """
        ...

    def read_lrm_statuses(self) -> dict[str, LrmStatus]: ...

    def move_service_config(self, sid: str, from_node: str, to_node: str) -> None:
        """Move the guest config in one transaction; Conflict if it is not on `from_node`."""
        ...

    def fence(self, node: str) -> str:
        """Ask the node's fence device to power it off; returns a request id."""
        ...

    def fence_status(self, node: str) -> FenceStatus | None:
        """The state of the latest fence request for `node`, if any."""
        ...

    def fence_confirmations(self) -> dict[str, FenceConfirmation]:
        """The administrator's power-off confirmations, by node (`binome fence --confirm-off`)."""
        ...

    def manager_lock_holder(self) -> str | None:
        """The node holding the manager lock in this round's snapshot, if any."""
        ...

    def probe_power(self, node: str) -> str:
        """Read `node`'s chassis power state through its fence device (a query, no
        action); returns a request id. Guarded like `fence`: done only if `node` has not
        renewed its lease since this round's snapshot (and, from a master, the lock is
        still ours). A chassis read "off" between two such checks proves the node runs
        nothing: its lease is then revoked, and the status says CONFIRMED."""
        ...

    def power_probe_status(self, node: str) -> FenceStatus | None:
        """The latest power probe of `node`: PENDING, CONFIRMED (read off, lease revoked)
        or FAILED (read on, unreadable, or refused by the guard; `detail` says which)."""
        ...


class LrmEnv(ClusterEnv, Protocol):
    def own_lease(self) -> LeaseInfo:
        """This node's lease; `renewed_at` is when the last successful renewal was *sent*."""
        ...

    def read_lrm_status(self) -> tuple[LrmStatus | None, int]: ...

    def write_lrm_status(self, status: LrmStatus, revision: int) -> int:
        """Conditional on `revision`; returns the new revision, raises Conflict."""
        ...

    def watchdog_arm(self, deadline: float, sids: Collection[str]) -> None:
        """Arm the watchdog, or move its deadline (absolute monotonic seconds), protecting `sids`.

        When the deadline passes without a new call, the guests in `sids` are
        killed (with `/dev/watchdog`, the machine resets). A guest is listed
        before it starts here (incoming migrations included) and stays listed
        until it has stopped (`binome.fence.watchdog` has the same rule).
        """
        ...

    def watchdog_disarm(self) -> None: ...

    def watchdog_fired(self) -> bool:
        """True once the watchdog fired, until the next `watchdog_arm` (the daemon's
        adapter answers True once per fire: its supervisor reports a fire until it
        has read the next arm's deadline, `binome.fence.watchdog.Watchdog.new_fire`)."""
        ...

    def shutdown_request(self) -> str | None:
        """`reboot` or `poweroff` when the node is shutting down, else None."""
        ...

    def shutdown_ready(self) -> None:
        """The LRM has finished what the shutdown policy needs; the node may go down."""
        ...

    def running_guests(self) -> set[str]:
        """HA guests running (or booting) on this node."""
        ...

    def exec_start(self, sid: str, uid: str) -> None:
        """Start the guest; the executor refuses (result ERROR/EWRONG_NODE) when the config
        is not on this node, the watchdog does not protect `sid`, or a replica is not
        UpToDate."""
        ...

    def exec_stop(self, sid: str, uid: str) -> None: ...

    def exec_migrate(self, sid: str, uid: str, target: str) -> None:
        """Live-migrate to `target`; the executor moves the config at switch-over."""
        ...

    def exec_relocate(self, sid: str, uid: str, target: str) -> None:
        """Stop if running, then move the config to `target`."""
        ...

    def jobs(self) -> dict[str, str]:
        """Commands in progress: uid -> sid."""
        ...

    def collect_results(self) -> dict[str, LrmResult]:
        """Results of finished commands since the last call, by uid."""
        ...


class Env(CrmEnv, LrmEnv, Protocol):
    """One node's complete environment: what `binomed` provides to its CRM and LRM."""
