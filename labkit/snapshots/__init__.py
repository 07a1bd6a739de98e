"""Snapshot backends behind one contract (see :mod:`labkit.snapshots.base`), registered in one place, with
their optional abilities as protocols (:class:`PoolBacked`, :class:`BlockMapped`; see
:mod:`labkit.snapshots.capabilities`).

>>> from labkit.snapshots import backend_names
>>> "copy" in backend_names()
True
"""
from __future__ import annotations

import importlib
import os
from typing import Any

from .. import errors
from .._sys.record import Record
from ..config import default_root
from .base import BaseSnapshotter, Info, Kind, Recovered, Snapshotter, Usage, parse_filters
from .capabilities import BlockMapped, PoolBacked, SnapshotBlock, StoreSpace
from .mount import Mount, Mounted

# Registration in one place: name -> module:class. Order is preference for the default backend.
_BACKENDS: dict[str, str] = {
    "thin": "labkit.snapshots.thin:ThinSnapshotter",
    "overlay": "labkit.snapshots.overlay:OverlaySnapshotter",
    "btrfs": "labkit.snapshots.btrfs:BtrfsSnapshotter",
    "reflink": "labkit.snapshots.reflink:ReflinkSnapshotter",
    "copy": "labkit.snapshots.copy:CopySnapshotter",
    "dmthin": "labkit.snapshots.dmthin:DmThinSnapshotter",
}


def _load(name: str) -> type[BaseSnapshotter] | None:
    target = _BACKENDS[name]
    mod, _, cls = target.partition(":")
    try:
        found: type[BaseSnapshotter] = getattr(importlib.import_module(mod), cls)
        return found
    except ModuleNotFoundError as e:
        if e.name == mod:
            return None
        raise


def backend_class(name: str) -> type[BaseSnapshotter]:
    """The snapshotter class of backend ``name``, so that its classmethods (``supported``,
    ``options_for``) can be asked before a store exists.

    >>> backend_class("copy").name
    'copy'
    """
    if name not in _BACKENDS:
        raise errors.InvalidArgument(f"backend {name!r}", "is unknown", fix=f"choose one of {', '.join(_BACKENDS)}")
    cls = _load(name)
    if cls is None:
        raise errors.Unsupported(f"{name} backend", "is not implemented in this version of labkit")
    return cls


def backend_names() -> list[str]:
    """Every backend labkit knows of, implemented or not, in order of preference."""
    return list(_BACKENDS)


class BackendStatus(Record):
    """Whether a backend runs here, and if not, why and the fix."""

    name: str
    available: bool
    reason: str
    doc: str


def backend_status(root: str | None = None) -> list[BackendStatus]:
    """The status of every backend for a store at ``root``.

    >>> any(s.name == "copy" and s.available for s in backend_status("/tmp"))
    True
    """
    root = default_root(root)
    out = []
    for name in _BACKENDS:
        cls = _load(name)
        if cls is None:
            out.append(BackendStatus(name, False, "not implemented in this version of labkit", ""))
            continue
        reason = cls.supported(os.path.join(root, "snapshots", name))
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        out.append(BackendStatus(name, reason is None, reason or "", doc))
    return out


def default_backend(root: str | None = None) -> str:
    """The most capable backend that runs here (thin, overlay, btrfs, reflink, then copy)."""
    for s in backend_status(root):
        if s.available:
            return s.name
    raise errors.Unsupported("no snapshot backend", "runs on this host", fix="run as root on Linux")


def open_snapshotter(name: str, root: str | os.PathLike[str], **options: Any) -> BaseSnapshotter:
    """Open backend ``name`` with its store at ``root`` (created if missing).

    >>> sn = open_snapshotter("copy", "/tmp/lk-doc")     # doctest: +SKIP
    """
    return backend_class(name)(root, **options)


__all__ = ["Snapshotter", "BaseSnapshotter", "Info", "Kind", "Usage", "Mount", "Mounted", "Recovered", "parse_filters",
           "backend_class", "backend_names", "backend_status", "default_backend", "open_snapshotter", "BackendStatus",
           # optional abilities (labkit.snapshots.capabilities): test with isinstance, never by backend name
           "StoreSpace", "SnapshotBlock", "PoolBacked", "BlockMapped"]
