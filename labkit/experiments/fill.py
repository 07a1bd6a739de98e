"""Fill a directory with files of realistic sizes, like an OS image: many small files, some larger ones.

The size mix follows a Debian minbase root filesystem (most files under 16 KiB, most bytes in files of
100 KiB to a few MiB). Content is pseudo-random (not zeros), so no filesystem can skip or compress it.

>>> import tempfile, os
>>> d = tempfile.mkdtemp()
>>> n = fill_tree(d, 1 << 20, seed=1)
>>> abs(sum(os.path.getsize(os.path.join(p, f)) for p, _, fs in os.walk(d) for f in fs) - (1 << 20)) < 4096
True
"""
from __future__ import annotations

import os
import random

# (probability, low, high) of a file's size in bytes
_MIX = [(0.55, 256, 16 << 10), (0.30, 16 << 10, 128 << 10), (0.13, 128 << 10, 2 << 20), (0.02, 2 << 20, 16 << 20)]
_CHUNK = 1 << 20


def _bucket(x: float) -> tuple[int, int]:
    """The (low, high) size range that ``x`` in [0, 1) falls in (the last one if rounding leaves it past all)."""
    for p, lo, hi in _MIX:
        if x < p:
            return lo, hi
        x -= p
    return _MIX[-1][1], _MIX[-1][2]


def _sizes(total: int, rng: random.Random) -> list[int]:
    sizes, left = [], total
    while left > 0:
        lo, hi = _bucket(rng.random())
        s = min(left, int(rng.uniform(lo, hi)))
        sizes.append(s)
        left -= s
    return sizes


def fill_tree(path: str, total_bytes: int, *, seed: int = 0, files_per_dir: int = 64) -> int:
    """Write about ``total_bytes`` of files under ``path`` in subdirectories; returns the number of files."""
    rng = random.Random(seed)
    block = rng.randbytes(_CHUNK)
    n = 0
    for i, size in enumerate(_sizes(total_bytes, rng)):
        d = os.path.join(path, "usr", f"d{i // files_per_dir:04d}")
        if i % files_per_dir == 0:
            os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"f{i:06d}"), "wb") as f:
            header = i.to_bytes(8, "little")
            left = size
            while left > 0:
                piece = block[: min(left, _CHUNK)]
                f.write(header + piece[8:] if left == size and len(piece) > 8 else piece)
                left -= len(piece)
        n += 1
    return n
