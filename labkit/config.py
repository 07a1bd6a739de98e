"""Where labkit keeps its store, decided in one place.

The store root is the ``root`` given by the caller, else ``$LABKIT_ROOT``, else ``/var/lib/labkit``.
Every entry point (the CLI, :class:`labkit.Lab`, experiments, widgets) asks :func:`default_root`.

>>> import os
>>> default_root("/tmp/x/../store")
'/tmp/store'
>>> os.environ["LABKIT_ROOT"] = "/srv/lk"; default_root(None)
'/srv/lk'
>>> del os.environ["LABKIT_ROOT"]; default_root(None)
'/var/lib/labkit'
"""
from __future__ import annotations

import os

__all__ = ["DEFAULT_ROOT", "default_root", "bench_root"]

DEFAULT_ROOT = "/var/lib/labkit"


def default_root(root: str | os.PathLike[str] | None = None) -> str:
    """The absolute store root: ``root``, else ``$LABKIT_ROOT``, else ``/var/lib/labkit``."""
    return os.path.abspath(os.fspath(root) if root else (os.environ.get("LABKIT_ROOT") or DEFAULT_ROOT))


def bench_root(root: str | os.PathLike[str] | None = None) -> str:
    """Scratch directory for experiments: ``root`` if given, else ``<default_root()>/bench``."""
    return os.path.abspath(os.fspath(root)) if root else os.path.join(default_root(), "bench")
