"""Small display filters for the dashboard (django.contrib.humanize is not installed)."""

from __future__ import annotations

from django import template

register = template.Library()


@register.filter
def compact(value: int | float | None) -> str:
    """1234 -> "1.2k", 5600000 -> "5.6M"; exact below 1000."""
    if value is None:
        return ""
    n = float(value)
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.1f}{unit}"
    return str(int(n)) if n == int(n) else f"{n:.2f}"


@register.filter
def seconds(value: float | None) -> str:
    """A duration for people: "–", "0.4 s", "12 s", "3 min 5 s", "2 h 10 min"."""
    if value is None:
        return "–"
    s = float(value)
    if s < 10:
        return f"{s:.1f} s"
    if s < 60:
        return f"{s:.0f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60)} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60)} min"
