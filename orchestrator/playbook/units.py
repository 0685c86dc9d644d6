"""Human sizes, rates and durations as they appear in playbooks (``4GiB``, ``200MiB/s``, ``1h``).

Binary and decimal prefixes are both accepted because operators copy numbers from vendor consoles that use
either; a bare integer is bytes (or seconds). Anything absurd (negative, or above 1 EiB) is rejected here
so that every later stage can trust the number.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1024,
    "ki": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "mi": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1024**3,
    "gi": 1024**3,
    "t": 1000**4,
    "tb": 1000**4,
    "tib": 1024**4,
    "ti": 1024**4,
    "p": 1000**5,
    "pb": 1000**5,
    "pib": 1024**5,
    "pi": 1024**5,
    "e": 1000**6,
    "eb": 1000**6,
    "eib": 1024**6,
    "ei": 1024**6,
}
_SIZE_RE = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")
MAX_SIZE = 1024**6  # 1 EiB: nothing real is bigger, a typo often is.

_DURATION_UNITS = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([a-z]*)")


def _kind(value: Any) -> str:
    """What a value that is not a number or text looks like to someone who wrote YAML."""
    if value is None:
        return "an empty value"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def parse_size(value: Any) -> int:
    """Bytes from ``4GiB``, ``512 MB``, ``1.5TiB`` or an integer."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 4GiB or 512MiB, got a boolean")
    number: int | float
    if isinstance(value, int | float):
        number = value  # an int stays exact: float() would round sizes above 2**53 bytes
    elif isinstance(value, str):
        match = _SIZE_RE.match(value)
        if not match or match.group(2).lower() not in _UNITS:
            raise ValueError(f"expected a size such as 4GiB, 512MiB or 100GB, got {value!r}")
        digits, factor = match.group(1), _UNITS[match.group(2).lower()]
        number = int(digits) * factor if "." not in digits else float(digits) * factor
    else:
        raise ValueError(f"expected a size such as 4GiB, got {_kind(value)}")
    if math.isnan(number):
        raise ValueError("expected a size such as 4GiB, got NaN")
    if number < 0:
        raise ValueError("a size cannot be negative")
    if number > MAX_SIZE:
        raise ValueError(f"{value!r} is larger than 1 EiB; check the unit")
    return int(number)


def parse_rate(value: Any) -> int:
    """Bytes per second from ``200MiB/s`` (the ``/s`` is optional); ``1Gbit/s`` and ``100Mbps`` are bits."""
    try:
        if isinstance(value, str):
            text = value.strip()
            for suffix, divisor in (("bits/s", 8), ("bit/s", 8), ("bps", 8), ("bit", 8), ("/s", 1)):
                if text.lower().endswith(suffix):
                    rate = parse_size(text[: -len(suffix)] or "x") // divisor
                    break
            else:
                rate = parse_size(text)
        else:
            rate = parse_size(value)
    except ValueError as exc:
        # parse_size's own wording ("a size such as 4GiB") would mislead on a rate field.
        if not str(exc).startswith("expected a size"):
            raise
        shown = (
            repr(value)
            if isinstance(value, str | int | float) and not isinstance(value, bool)
            else ("a boolean" if isinstance(value, bool) else _kind(value))
        )
        raise ValueError(f"expected a rate such as 200MiB/s, 1Gbit/s or 100Mbps, got {shown}") from None
    if rate == 0:
        raise ValueError("a bandwidth limit of 0 would never finish; omit the limit for no limit")
    return rate


def parse_duration(value: Any) -> float:
    """Seconds from ``90``, ``30s``, ``5m``, ``1h30m`` or ``2d``."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s, 5m or 1h")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        parts = _DURATION_RE.findall(text)
        if (
            not text
            or "".join(n + u for n, u in parts) != text
            or any(u not in _DURATION_UNITS for _, u in parts)
        ):
            raise ValueError(f"expected a duration such as 30s, 5m, 1h or 1h30m, got {value!r}")
        seconds = sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
    else:
        raise ValueError(f"expected a duration such as 30s, 5m or 1h, got {_kind(value)}")
    if not math.isfinite(seconds):
        raise ValueError("expected a duration such as 30s, 5m or 1h, got an infinite or NaN number")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


def format_size(n: float) -> str:
    """Short binary form for reports: ``1.5 GiB``."""
    units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"]
    value = float(n)
    for unit in units:
        if abs(value) < 1024 or unit == units[-1]:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} PiB"


def format_duration(seconds: float) -> str:
    """``1h 02m``, ``4m 10s`` or ``12.3s``: precise where it matters, short where it does not."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h {minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours:02d}h"


_SIZE_PATTERN = r"^\s*\d+(\.\d+)?\s*([KMGTPEkmgtpe][iI]?)?[Bb]?\s*$"  # exactly what parse_size accepts
_SIZE_SCHEMA = {
    "anyOf": [{"type": "integer", "minimum": 0}, {"type": "string", "pattern": _SIZE_PATTERN}],
    "description": "bytes, or a number with a unit: 512MiB, 4GiB, 100GB",
}
_RATE_SCHEMA = {
    "anyOf": [{"type": "integer", "minimum": 1}, {"type": "string"}],
    "description": "bytes per second: 200MiB/s, 1Gbit/s",
}
_DURATION_SCHEMA = {
    "anyOf": [{"type": "number", "minimum": 0}, {"type": "string"}],
    "description": "seconds, or 30s, 5m, 1h, 1h30m, 2d",
}

Size = Annotated[int, BeforeValidator(parse_size), WithJsonSchema(_SIZE_SCHEMA)]
Rate = Annotated[int, BeforeValidator(parse_rate), WithJsonSchema(_RATE_SCHEMA)]
Duration = Annotated[
    float, BeforeValidator(parse_duration), WithJsonSchema(_DURATION_SCHEMA), PlainSerializer(float)
]
