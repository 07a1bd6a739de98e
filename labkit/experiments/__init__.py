"""Parameterised measurements that return tidy pandas DataFrames (one row per observation).

Every row carries its parameters, the repetition and a warm-up flag, and the host (kernel, the store's
filesystem, backend, labkit version, CPU model) as columns; units are in column names (``seconds``,
``parent_bytes``). :func:`save` writes a CSV plus a JSON of the environment beside it.

>>> from labkit.experiments import environment
>>> "kernel" in environment()
True
"""
from __future__ import annotations

import json
import os
import platform
import time
from typing import Any

import pandas as pd

from .. import __version__
from .._sys.probe import fs_type, kernel


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment(root: str | None = None) -> dict[str, Any]:
    """The host facts every result row and result file carries."""
    return {
        "kernel": kernel(),
        "store_fs": fs_type(root) if root else "",
        "labkit_version": __version__,
        "cpu_model": cpu_model(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "hostname": platform.node(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def save(df: pd.DataFrame, out: str, *, env: dict[str, Any] | None = None) -> tuple[str, str]:
    """Write ``df`` to ``out`` (CSV) and its environment to ``out`` with ``.json``; returns both paths."""
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    df.to_csv(out, index=False)
    meta = os.path.splitext(out)[0] + ".json"
    with open(meta, "w") as f:
        json.dump({"environment": env or environment(), "rows": len(df), "columns": list(df.columns)}, f, indent=2)
    return out, meta


def load(path: str) -> pd.DataFrame:
    """Read a result CSV back (its environment JSON is beside it)."""
    return pd.read_csv(path)
