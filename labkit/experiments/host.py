"""The host facts every result row and result file carries: kernel, the store's filesystem, labkit's
version, the CPU model.

>>> from labkit.experiments.host import environment
>>> "kernel" in environment()
True
"""
from __future__ import annotations

import os
import platform
import time
from typing import Any

from .._sys.probe import fs_type, kernel
from ..version import __version__

__all__ = ["cpu_model", "environment"]


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
    """The host facts every result row and result file carries (``store_fs``: the filesystem of ``root``)."""
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
