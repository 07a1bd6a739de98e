"""The host facts every result row and result file carries: the host and the worker process that ran the
case, kernel, the store's filesystem, labkit's version, the CPU model.

A case run on an executor (another process, or another machine under Dask) reports the facts of the worker
that ran it, not those of the process that asked: :func:`worker_dir` gives each worker process a scratch
directory of its own under the sweep's root, and :func:`environment` (:data:`HOST_COLUMNS` of it) the
columns of its rows.

>>> from labkit.experiments.host import HOST_COLUMNS, environment, worker_id
>>> env = environment()
>>> set(HOST_COLUMNS) <= set(env), env["worker"] == worker_id()
(True, True)
"""
from __future__ import annotations

import contextlib
import os
import platform
import re
import stat
import threading
import time
from collections.abc import Iterator
from typing import Any

from .. import errors
from .._sys.probe import fs_type, kernel
from ..version import __version__

__all__ = ["cpu_model", "environment", "worker_id", "worker_dir", "HOST_COLUMNS"]

#: the columns :func:`labkit.experiments.framework.run` adds to every row (``store_fs`` only where the
#: experiment did not set it itself)
HOST_COLUMNS = ("hostname", "worker", "kernel", "labkit_version", "cpu_model", "store_fs")


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
    """The host facts every result row and result file carries (``store_fs``: the filesystem of ``root``,
    ``worker``: this process as ``hostname:pid``)."""
    return {
        "kernel": kernel(),
        "store_fs": fs_type(root) if root else "",
        "labkit_version": __version__,
        "cpu_model": cpu_model(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "hostname": platform.node(),
        "worker": worker_id(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def worker_id() -> str:
    """This process as ``hostname:pid``: the ``worker`` column, saying where a case ran."""
    return f"{platform.node() or 'localhost'}:{os.getpid()}"


@contextlib.contextmanager
def worker_dir(root: str) -> Iterator[str]:
    """This worker process's own scratch directory under ``root`` (``<hostname>-<pid>``) for the block, so
    that two workers never share a store, even on one machine or on a shared filesystem. It is removed when
    the last case of this process that uses it ends, if empty (what a case left stays to be looked at).

    Refuses a directory that is a symlink or that another user owns (``root`` may be writable by others).

    >>> import tempfile; root = tempfile.mkdtemp()
    >>> with worker_dir(root) as d:
    ...     os.path.basename(d) == worker_id().replace(":", "-"), os.listdir(root) != []
    (True, True)
    >>> os.listdir(root)
    []
    """
    name = re.sub(r"[^A-Za-z0-9._-]", "_", platform.node() or "localhost").lstrip(".")[:64] or "host"
    path = os.path.join(root, f"{name}-{os.getpid()}")
    with _DIR_LOCK:   # cases of one worker may run in threads: make, count and remove under one lock
        os.makedirs(path, mode=0o700, exist_ok=True)
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
            raise errors.FailedPrecondition(f"worker directory {path}", "is not a directory of this user",
                                            fix="remove it, or give the sweep another root")
        _DIR_USERS[path] = _DIR_USERS.get(path, 0) + 1
    try:
        yield path
    finally:
        with _DIR_LOCK:
            _DIR_USERS[path] -= 1
            if not _DIR_USERS[path]:
                del _DIR_USERS[path]
                with contextlib.suppress(OSError):   # not empty: kept
                    os.rmdir(path)


_DIR_LOCK = threading.Lock()
_DIR_USERS: dict[str, int] = {}
