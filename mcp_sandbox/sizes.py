"""Sizes as people and Docker write them: ``512m``, ``2g``, ``1.5GiB``; binary units."""

from __future__ import annotations

import re

_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*\Z", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Bytes in ``text``; ValueError (saying what is accepted) for anything else."""
    match = _SIZE.match(text)
    if match is None or float(match.group(1)) <= 0:
        raise ValueError(f"{text!r} is not a size; write a number with k, m, g or t, such as 512m or 2g")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def format_size(size: int) -> str:
    """``10.2 GiB``, ``300 MiB``: three significant digits at most, binary units."""
    value = float(size)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if value < 1024:
            break
        value /= 1024
    else:
        unit = "TiB"
    return f"{value:.3g} {unit}"
