"""How durations read for an administrator: one formatter for logs, notifications and CLI.

Owns nothing but the text: `human_duration(31_536)` is "8 h 45 min 36 s", the way the
seeds spoke of downtime.
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
