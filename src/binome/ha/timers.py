"""HA timers: defaults chosen for seconds-scale failover, and the relations between them.

Every duration the CRM, the LRM, the watchdog and the fencing code wait on is
here, in seconds, so nothing is a hard-coded constant (Proxmox's fixed 60 s
fence delay, 120 s lock and 60 s watchdog are its users' first complaint).

The relations `validate()` enforces, and why:

- ``keepalive_interval <= lease_ttl / 3``: two renewals can be lost (an etcd
  leader election, a slow disk) before the lease is in danger.
- ``self_fence_deadline > keepalive_interval + lrm_round``: the watchdog is
  petted by the LRM round with a deadline counted from the last *successful*
  renewal, so a healthy node must always renew and pet before the deadline;
  otherwise it would self-fence in normal operation.
- ``self_fence_deadline < lease_ttl - safety_margin``: the watchdog kills the
  node's HA guests strictly before its lease can expire anywhere else. Lease
  expiry is what the CRM takes as the watchdog guarantee, so this inequality
  *is* the safety of recovery without a fence device. The margin absorbs the
  time to kill the guests and clock rate differences.
- ``fence_delay >= self_fence_deadline`` (and so ``>= 2 * keepalive_interval``):
  the CRM asks a fence device to act only on a node whose last renewal is
  older than its self-fence deadline. A node that stalls for less (etcd
  catch-up, a resync and a guest boot on two cores) renews in time and is
  left alone instead of being power-cycled; one that stalls longer has
  already killed its guests (its watchdog fired), so the device only makes
  the proof faster and certain: it never takes down anything that would
  have survived. The CRM counts from when it *saw* the renewal, never
  earlier than it was sent, and the watchdog from when it was sent, so the
  comparison errs on the side of not fencing. The default (4 s) leaves 0.2 s
  over the 3.8 s deadline for the round's own latency; the price is 1 s
  of device failover against the 3 s used before, paid for never power
  cycling a node that merely hiccuped.
- ``self_fence_deadline`` (3.8 s, not validated beyond the rules above)
  should exceed ``keepalive_interval`` + the longest etcd leader election
  (1-2 s with the 1 s election timeout): losing the etcd leader (the witness,
  which holds leadership) then never makes the nodes kill their guests;
  failed renewals are retried every 0.2 s for the same reason.
- ``keepalive_interval < power_probe_after < fence_delay``: a node whose
  renewal is this late has missed one; the CRM then *reads* its fence
  device's power state (a status query, never an action: a node that is
  merely slow loses nothing). A chassis that reads "off", read after the
  node's last renewal (the read is bracketed by two transactions that see
  its heartbeat unchanged), is the same proof a confirmed fence gives, so
  the node's lease is revoked and its guests recovered at once instead of
  after `fence_delay` or the lease's expiry. The default (1.5 x keepalive_interval,
  1.5 s) is half an interval past a missed renewal: a late renewal costs
  one status query.
- ``fence_retry >= fence_timeout``: a new fence attempt never overlaps the one
  still in flight.
- ``restart_grace >= fence_delay``: how long a node whose binomed restarts
  (services frozen, guests left running, watchdog released) may stay away
  before the CRM powers it off through its fence device to recover them. A
  restart normally takes a few seconds; fencing a node that is merely slow
  to restart is safe but kills its guests, so this is generous.

Expected failover with the defaults (node dies at T, its last renewal was
at T - d with 0 <= d < keepalive_interval, guest boot B = 3.5 s): a node
that lost its power (or crashed off) with a working fence device,
T - d + power_probe_after (1.5) + the status read + B: 5.1-6.0 s in the
simulator; a node that is cut off but still powered, with a working fence
device, T - d + fence_delay (4) + the next round + device power-off (~1 s)
+ B: 7.7-8.7 s; with the watchdog guarantee
only, T - d + lease_ttl (5) + B (lease expiry wakes the CRM): 7.6-8.6 s; when
the master itself dies its lock goes with its lease: the same 7.6-8.6 s
(`python -m binome.ha.sim.failover`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from binome.config import ConfigError


@dataclass(frozen=True)
class HaTimers:
    """Seconds. Defaults are the shipped configuration; see the module docstring."""

    lease_ttl: float = 5.0
    keepalive_interval: float = 1.0
    self_fence_deadline: float = 3.8
    safety_margin: float = 1.0
    fence_delay: float = 4.0
    fence_timeout: float = 5.0
    fence_retry: float = 10.0
    manager_round: float = 1.0
    lrm_round: float = 1.0
    restart_grace: float = 30.0
    # None: 1.5 x keepalive_interval, half an interval past a missed renewal
    power_probe_after: float | None = None

    def validate(self) -> HaTimers:
        """Raise ConfigError naming the offending key; return self for chaining."""
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None and f.name == "power_probe_after":
                continue
            if not isinstance(value, int | float) or value <= 0:
                raise ConfigError(f"ha.timers.{f.name}: must be a positive number of seconds")
        if self.keepalive_interval > self.lease_ttl / 3:
            raise ConfigError("ha.timers.keepalive_interval: must be <= lease_ttl / 3 "
                              f"({self.lease_ttl / 3:g} s), so two renewals can be lost")
        if self.self_fence_deadline <= self.keepalive_interval + self.lrm_round:
            raise ConfigError("ha.timers.self_fence_deadline: must be > keepalive_interval + "
                              f"lrm_round ({self.keepalive_interval + self.lrm_round:g} s), "
                              "or a healthy node would self-fence")
        if self.self_fence_deadline >= self.lease_ttl - self.safety_margin:
            raise ConfigError("ha.timers.self_fence_deadline: must be < lease_ttl - safety_margin "
                              f"({self.lease_ttl - self.safety_margin:g} s), so the watchdog "
                              "fires before the lease can expire")
        if self.fence_delay < 2 * self.keepalive_interval:
            raise ConfigError("ha.timers.fence_delay: must be >= 2 x keepalive_interval "
                              f"({2 * self.keepalive_interval:g} s)")
        if self.fence_delay < self.self_fence_deadline:
            raise ConfigError("ha.timers.fence_delay: must be >= self_fence_deadline "
                              f"({self.self_fence_deadline:g} s), or a node that stalls "
                              "for less than its deadline is powered off for nothing")
        if not self.keepalive_interval < self.probe_after < self.fence_delay:
            raise ConfigError("ha.timers.power_probe_after: must be > keepalive_interval "
                              f"({self.keepalive_interval:g} s), so only a missed renewal "
                              f"is probed, and < fence_delay ({self.fence_delay:g} s)")
        if self.restart_grace < self.fence_delay:
            raise ConfigError("ha.timers.restart_grace: must be >= fence_delay "
                              f"({self.fence_delay:g} s)")
        if self.fence_retry < self.fence_timeout:
            raise ConfigError("ha.timers.fence_retry: must be >= fence_timeout "
                              f"({self.fence_timeout:g} s)")
        return self

    @property
    def probe_after(self) -> float:
        """`power_probe_after`, or its default derived from `keepalive_interval`."""
        if self.power_probe_after is not None:
            return self.power_probe_after
        return 1.5 * self.keepalive_interval

    def to_dict(self) -> dict[str, float | None]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> HaTimers:
        """Build and validate timers from a (partial) mapping; unknown keys are errors."""
        data = dict(data or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"ha.timers.{unknown[0]}: unknown timer "
                              f"(known: {', '.join(sorted(known))})")
        return cls(**data).validate()
