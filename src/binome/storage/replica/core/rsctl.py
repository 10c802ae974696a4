"""The resync rate controllers (pure): DRBD's fixed rate and its dynamic "plan ahead" one.

The SyncTarget (and the VerifyS side of an online verify) asks the peer for
data; these functions decide how much it may ask for, step by step.

- **Fixed** (`c_plan_ahead` 0): never ahead of `resync_rate` bytes/s
  (`fixed_delay`); 0 means unlimited.
- **Dynamic** (`c_plan_ahead` > 0 s): DRBD 8.4's `drbd_rs_controller`, ported
  with bytes and seconds instead of sectors and jiffies. Every `STEP` seconds
  it is told what arrived since the last step and what is still in flight; it
  wants `c_fill_target` bytes in flight, or, when that is 0, as much as keeps
  the requests' delay at `c_delay_target` s at the current incoming rate (the
  very first step, with nothing measured yet, plans `resync_rate` x
  plan-ahead, or `c_max_rate` x plan-ahead when `resync_rate` is 0). The
  difference to what is in flight and already planned is spread over the
  plan's `c_plan_ahead / STEP` steps; this step asks for what arrived plus
  its share of corrections, capped at `c_max_rate`.
- **c-min-rate** (`step_budget`): while application I/O is active, the
  resync is throttled down to `c_min_rate` (the application gets the rest of
  the bandwidth); 0 disables the throttle. DRBD's test of activity: more than
  64 sectors of application I/O since the last look; here per step, and the
  application stays "busy" until it has been quiet for APP_QUIET seconds (one
  idle step would otherwise open the whole request window at once).
"""

from __future__ import annotations

from dataclasses import dataclass

STEP = 0.1                   # seconds per controller step (DRBD: SLEEP_TIME, HZ/10)
APP_ACTIVE_BYTES = 32 * 1024  # application I/O per step that counts as "active"
APP_QUIET = 1.0              # seconds without such I/O before the application is idle


@dataclass(frozen=True)
class RateSettings:
    resync_rate: int = 0          # bytes/s; fixed controller's rate, dynamic's first guess
    c_plan_ahead: float = 0.0     # seconds; 0 = fixed controller
    c_fill_target: int = 0        # bytes wanted in flight; 0 = use c_delay_target
    c_delay_target: float = 1.0   # seconds of requests in flight at the incoming rate
    c_max_rate: int = 100 << 20   # bytes/s cap of the dynamic controller
    c_min_rate: int = 0           # bytes/s under application I/O (DRBD: 250 KiB/s); 0 = off

    @property
    def dynamic(self) -> bool:
        return self.c_plan_ahead > 0

    @property
    def steps(self) -> int:
        return max(1, round(self.c_plan_ahead / STEP))


@dataclass(frozen=True)
class Plan:
    """The controller's state: corrections planned for the next steps (DRBD's rs_plan_s)."""

    slots: tuple[float, ...] = ()
    total: float = 0.0

    @classmethod
    def empty(cls, steps: int) -> Plan:
        return cls(slots=(0.0,) * steps, total=0.0)


def controller_step(s: RateSettings, plan: Plan, received: int,
                    in_flight: int) -> tuple[int, Plan]:
    """One step of the dynamic controller: (bytes to request in this step, new plan).

    `received`: resync bytes that arrived since the previous step; `in_flight`:
    bytes requested and not yet arrived.
    """
    steps = len(plan.slots) or s.steps
    slots = list(plan.slots) or [0.0] * steps
    if in_flight + received == 0:
        # Start of the resync (or a stall): nothing measured, plan for resync_rate
        # (c_max_rate when it is 0: a zero plan would never start).
        want = (s.resync_rate or s.c_max_rate) * STEP * steps
    elif s.c_fill_target:
        want = float(s.c_fill_target)
    else:
        want = received * s.c_delay_target / STEP
    correction = want - in_flight - plan.total
    cps = correction / steps                       # spread over the plan
    slots = [v + cps for v in slots]
    total = plan.total + cps * steps
    curr = slots.pop(0)                            # this step's share
    slots.append(0.0)
    total -= curr
    req = max(0.0, received + curr)
    req = min(req, s.c_max_rate * STEP)
    return int(req), Plan(tuple(slots), total)


def fixed_delay(rate: int, moved: int, elapsed: float) -> float:
    """Fixed controller: seconds to wait before the next request (0: go on)."""
    if rate <= 0:
        return 0.0
    return max(0.0, moved / rate - elapsed)


def step_budget(s: RateSettings, dynamic_req: int | None, app_bytes: int) -> int | None:
    """Bytes the resync may request in this step; None: no limit beyond the fixed rate.

    `dynamic_req` is `controller_step`'s answer (None with the fixed
    controller). c-min-rate: when the application did more than
    APP_ACTIVE_BYTES of I/O in the last step, the resync gets at most
    `c_min_rate` (DRBD throttles it down to that rate; 0 disables this).
    """
    budget = dynamic_req
    if s.c_min_rate > 0 and app_bytes > APP_ACTIVE_BYTES:
        cap = int(s.c_min_rate * STEP)
        budget = cap if budget is None else min(budget, cap)
    return budget
