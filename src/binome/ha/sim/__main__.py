"""`python -m binome.ha.sim DIR [DIR...]`: run scenarios, print their logs and the guests' outages.

`--write` stores each log as the scenario's `log.expect` (review it before committing).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from binome.ha.sim.metrics import outages
from binome.ha.sim.scenario import load_scenario, render, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m binome.ha.sim")
    parser.add_argument("dirs", nargs="+", type=Path)
    parser.add_argument("--write", action="store_true", help="write log.expect")
    parser.add_argument("--quiet", action="store_true", help="only print outages")
    args = parser.parse_args(argv)
    for path in args.dirs:
        world = run(load_scenario(path))
        text = render(world)
        if not args.quiet:
            print(text, end="")
        print(f"== {path.name}: outages")
        for outage in outages(world.guests):
            print(f"   {outage}")
        if args.write:
            (path / "log.expect").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
