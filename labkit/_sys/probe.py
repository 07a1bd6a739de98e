"""Host probes: which filesystems the kernel knows, what a path lives on, who we are.

>>> from labkit._sys.probe import fs_type
>>> isinstance(fs_type("/"), str)
True
"""
from __future__ import annotations

import os

from .mounts import mountinfo


def kernel_filesystems() -> set[str]:
    """Names in /proc/filesystems (a module not yet loaded is missing until something mounts it)."""
    with open("/proc/filesystems") as f:
        return {line.split()[-1] for line in f if line.strip()}


def has_filesystem(name: str) -> bool:
    """True when the kernel knows ``name`` (tries ``modprobe`` once if it is missing)."""
    if name in kernel_filesystems():
        return True
    import subprocess  # (here: a `labkit run` whose filesystem is loaded starts no tool)
    try:                                   # no shell: ``name`` is never parsed as a command line
        subprocess.run(["modprobe", "--", name], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    except OSError:                        # no modprobe (kmod): the kernel keeps what it has
        pass
    return name in kernel_filesystems()


def fs_type(path: str) -> str:
    """Filesystem type of the mount holding ``path`` (longest matching mount target)."""
    real = os.path.realpath(path)
    while not os.path.exists(real):
        real = os.path.dirname(real)
    best, kind = "", "unknown"
    for m in mountinfo():
        t = m.target.rstrip("/") or "/"
        if (real == t or real.startswith(t.rstrip("/") + "/") or t == "/") and len(t) >= len(best):
            best, kind = t, m.fstype
    return kind


def is_root() -> bool:
    """True when running with uid 0."""
    return os.geteuid() == 0


def kernel() -> str:
    """The running kernel release, e.g. ``6.18.0``."""
    return os.uname().release
