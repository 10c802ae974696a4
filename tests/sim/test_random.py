"""Randomized fault schedules, each checked against the invariants after every step.

Every seed generates a cluster, services and a fault schedule
(`binome.ha.sim.randomized`), runs it with the invariants checked at every
event, heals everything, waits, and checks that the requested states
converged. A failing seed prints itself (cluster, services, cmdlist) and the
end of its log; replay it with

    BINOME_SIM_SEED=<n> .venv/bin/pytest tests/sim/test_random.py
    .venv/bin/python -m binome.ha.sim.randomized <n> --log [--write tests/sim/scenarios/<case>]

`BINOME_SIM_SEEDS` (default 1000) and `BINOME_SIM_FIRST_SEED` (default 0) pick
the range: CI runs the same seeds every time; raise them locally to explore.
"""

from __future__ import annotations

import os

import pytest

from binome.ha.sim.randomized import check


def _seeds() -> list[int]:
    if os.environ.get("BINOME_SIM_SEED"):
        return [int(os.environ["BINOME_SIM_SEED"])]
    first = int(os.environ.get("BINOME_SIM_FIRST_SEED", "0"))
    return list(range(first, first + int(os.environ.get("BINOME_SIM_SEEDS", "1000"))))


@pytest.mark.parametrize("seed", _seeds(), ids=lambda s: f"seed-{s}")
def test_random_faults_keep_invariants_and_converge(seed: int) -> None:
    outcome = check(seed)
    if outcome.error:
        tail = "\n".join(outcome.log.splitlines()[-60:])
        replay = (f"BINOME_SIM_SEED={seed} .venv/bin/pytest tests/sim/test_random.py, or "
                  f".venv/bin/python -m binome.ha.sim.randomized {seed} --log")
        pytest.fail(f"seed {seed}: {outcome.error}\n\n{outcome.case.describe()}\n"
                    f"--- last log lines\n{tail}\n\nreplay: {replay}", pytrace=False)
