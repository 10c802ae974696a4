"""Golden scenarios: each directory under `scenarios/` is run and its log diffed with `log.expect`.

The simulator runs the real CRM and LRM; invariants are checked during the
whole run, so a scenario fails either on a log difference or on a violated
invariant. To regenerate expected logs deliberately (and then review every
changed line): `BINOME_SIM_REGEN=1 .venv/bin/pytest tests/sim/test_scenarios.py`.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

import pytest

from binome.ha.sim.scenario import load_scenario, render, run

SCENARIOS = Path(__file__).parent / "scenarios"
CASES = sorted(p.name for p in SCENARIOS.iterdir() if (p / "cmdlist").is_file())


@pytest.mark.parametrize("case", CASES)
def test_scenario_log(case: str) -> None:
    path = SCENARIOS / case
    got = render(run(load_scenario(path)))
    expect_file = path / "log.expect"
    if os.environ.get("BINOME_SIM_REGEN") == "1":
        expect_file.write_text(got)
        pytest.skip(f"{case}: log.expect regenerated; review it")
    assert expect_file.is_file(), f"{case}: no log.expect (BINOME_SIM_REGEN=1 writes it)"
    expected = expect_file.read_text()
    if got != expected:
        diff = "".join(difflib.unified_diff(expected.splitlines(keepends=True),
                                            got.splitlines(keepends=True),
                                            f"{case}/log.expect", f"{case}/log (this run)"))
        pytest.fail(f"scenario {case}: log differs from log.expect\n{diff}", pytrace=False)


def test_every_case_has_a_readme() -> None:
    missing = [c for c in CASES if not (SCENARIOS / c / "README").is_file()]
    assert not missing, f"scenarios without a README: {missing}"
