"""The registry ``labkit gc`` runs: each layer registers a collector of the kernel objects it makes.

A *collector* is ``fn(root, everything) -> [Leftover]``: what labkit made for the store at ``root`` (or,
with ``everything``, every labkit-named object on the host) that the kernel still holds. Layers register
their own collectors where they make the objects (mounts and loop devices in :mod:`labkit.gc`, dm-thin
devices in the dmthin backend, pool daemons in :mod:`labkit.thin`, cgroups and links in
:mod:`labkit.containers`); :mod:`labkit.gc` imports those layers and runs every collector. The registry
lives here, at the bottom, so that no lower layer imports an upper one to register.

>>> from labkit._sys.leftovers import collector, collectors, unregister
>>> @collector
... def nothing(root, everything):
...     return []
>>> nothing in collectors()
True
>>> unregister(nothing); nothing in collectors()
False
"""
from __future__ import annotations

import os
from collections.abc import Callable
from typing import NamedTuple, TypeVar, overload

__all__ = ["Leftover", "Collector", "collector", "collectors", "unregister", "inside",
           "MOUNTS", "DEVICE_MAPPER", "LOOPS", "PROCESSES", "CONTAINERS"]


class Leftover(NamedTuple):
    """One kernel object labkit left behind: ``kind`` (mount, loop, ...), its name, and how to release it.

    A named tuple, not a dataclass: `labkit run` imports this module (for :func:`inside`), and a dataclass
    costs ~1 ms to create."""

    kind: str
    name: str
    detail: str
    release: Callable[[], None]

    def __str__(self) -> str:
        return f"{self.kind} {self.name} ({self.detail})"


Collector = Callable[[str, bool], list[Leftover]]
_COLLECTORS: list[tuple[int, Collector]] = []

#: collector order: what holds a thing is released before the thing (a mount before its loop device)
MOUNTS, DEVICE_MAPPER, LOOPS, PROCESSES, CONTAINERS = 10, 20, 30, 40, 50


_C = TypeVar("_C", bound=Collector)


@overload
def collector(fn: _C, *, order: int = CONTAINERS) -> _C: ...
@overload
def collector(fn: None = None, *, order: int = CONTAINERS) -> Callable[[_C], _C]: ...


def collector(fn: _C | None = None, *, order: int = CONTAINERS) -> _C | Callable[[_C], _C]:
    """Register ``fn(root, everything) -> [Leftover]``; collectors run by ``order``, then registration.

    Usable bare (``@collector``) or with an order (``@collector(order=MOUNTS)``).
    """
    def register(f: _C) -> _C:
        if all(f is not g for _, g in _COLLECTORS):
            _COLLECTORS.append((order, f))
            _COLLECTORS.sort(key=lambda item: item[0])   # stable: registration order within one order
        return f
    return register(fn) if fn is not None else register


def collectors() -> list[Collector]:
    """The registered collectors, in the order they run."""
    return [f for _, f in _COLLECTORS]


def unregister(fn: Collector) -> None:
    """Forget a collector (tests)."""
    _COLLECTORS[:] = [(o, f) for o, f in _COLLECTORS if f is not fn]


def inside(path: str, root: str) -> bool:
    """True when ``path`` is ``root`` or lies below it, as strings of normalised absolute paths
    (``/var/lib/labkit2`` is not inside ``/var/lib/labkit``).

    >>> inside("/a/b/c", "/a/b"), inside("/a/bc", "/a/b"), inside("/a/b", "/a/b/")
    (True, False, True)
    """
    path, root = os.path.normpath(path), os.path.normpath(root)
    return path == root or path.startswith(root.rstrip("/") + "/")
