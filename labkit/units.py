"""Sizes as people write them: ``"64K"``, ``"10G"``, ``"1.5M"`` or plain integers (bytes).

>>> parse_size("64K"), parse_size("1G"), parse_size(4096)
(65536, 1073741824, 4096)
>>> format_size(1536 * 1024)
'1.5 MiB'
"""
from __future__ import annotations

import re

from .errors import InvalidArgument

_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)


def parse_size(value: int | str, *, what: str = "size") -> int:
    """Return ``value`` in bytes; accepts ints and strings such as ``"64K"``, ``"10GiB"``, ``"512"``."""
    if isinstance(value, bool):
        raise InvalidArgument(f"{what} {value!r}", "is not a size", fix="give bytes or a string like '64K', '10G'")
    if isinstance(value, int):
        if value < 0:
            raise InvalidArgument(f"{what} {value}", "is negative", fix="give a size of 0 or more")
        return value
    m = _RE.match(str(value))
    if not m:
        raise InvalidArgument(f"{what} {value!r}", "is not a size", fix="give bytes or a string like '64K', '10G'")
    number, unit = m.groups()
    return int(float(number) * _UNITS[unit.upper()])


def format_size(n: int | float) -> str:
    """Render bytes with a binary unit, e.g. ``'16 MiB'``."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            if unit == "B":
                return f"{int(n)} B"
            return f"{n:.1f} {unit}".replace(".0 ", " ")
        n /= 1024
    raise AssertionError("unreachable")
