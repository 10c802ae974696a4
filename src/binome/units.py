"""How durations and sizes read for an administrator: one formatter each for logs,
task logs, notifications and CLI.

Owns nothing but the text: `human_duration(31_536)` is "8 h 45 min 36 s", the way the
seeds spoke of downtime; `render_bytes(1536)` is "1.5 KiB", as PVE's task logs say it.
"""

from __future__ import annotations


def human_duration(seconds: float, *, tenths_under_a_minute: bool = False) -> str:
    """`2 h 3 min 4 s`; whole seconds, or `4.2 s` below a minute when asked."""
    if tenths_under_a_minute and seconds < 60:
        return f"{seconds:.1f} s"
    secs = round(seconds)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if secs >= size:
            parts.append(f"{secs // size} {unit}")
            secs %= size
    if secs or not parts:
        parts.append(f"{secs} s")
    return " ".join(parts)


def render_bytes(count: float, *, whole_bytes: bool = False) -> str:
    """PVE's render_bytes($value, 1): `512.0 B`, `1.5 GiB`; `512 B` with `whole_bytes`
    (vzdump's task log)."""
    units = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
    value, unit = float(count), 0
    while value >= 1024 and unit < len(units) - 1:
        value /= 1024
        unit += 1
    if whole_bytes and unit == 0:
        return f"{int(value)} B"
    return f"{value:.1f} {units[unit]}"
