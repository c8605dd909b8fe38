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
