"""Find and release what labkit left on the host after a crash: mounts and loop devices of a store.

A mount belongs to a store when its target is inside the store root, when the directory it shows (its
origin, resolved through the mount of the filesystem it comes from) is inside the store root, or when it
is an overlay named ``labkit-*`` whose layers are inside it. A loop device belongs to it when its backing
file is inside the store root. With ``everything=True`` every ``labkit-*`` overlay and loop device on the
host counts too. The layers that make other objects (pool daemons in :mod:`labkit.thin.gc`, dm devices in
the dmthin backend, cgroups and links in :mod:`labkit.containers.gc`) register their own collectors in
:mod:`labkit._sys.leftovers`; this module imports them and runs all.

>>> from labkit.gc import find_leftovers
>>> find_leftovers("/nonexistent/labkit-store")
[]
"""
from __future__ import annotations

import os

# the layers that make kernel objects register their collectors when imported
from ._sys import leftovers, loop, mounts
from ._sys.leftovers import Leftover, collector, inside as _inside
from .containers import gc as _containers_gc  # noqa: F401  (cgroups, veths, bridges, netns, records)
from .snapshots import dmthin as _dmthin  # noqa: F401  (device-mapper devices)
from .snapshots.mount import unmount
from .thin import gc as _thin_gc  # noqa: F401  (pool daemons)

__all__ = ["Leftover", "collector", "find_leftovers", "gc"]


@collector(order=leftovers.MOUNTS)
def _mounts(root: str, everything: bool) -> list[Leftover]:
    info = mounts.mountinfo()
    origin_of = mounts.origins(info)
    loops_here = {lp.dev for lp in loop.list_loops() if _inside(lp.backing_file, root)}
    found = []
    for m in info:
        if m.target == root:
            continue
        origin = origin_of[m.mount_id] if m.root != "/" else None
        mine = (_inside(m.target, root) or (origin is not None and _inside(origin, root))
                or m.source in loops_here
                or (m.fstype == "overlay" and m.source.startswith("labkit-")
                    and (everything or root in m.super_options)))
        if mine:
            found.append(m)
    found.sort(key=lambda m: (m.target.count("/"), m.mount_id), reverse=True)
    return [Leftover("mount", m.target, f"{m.fstype} from {m.source}",
                     (lambda t=m.target: unmount(t, retries=5))) for m in found]


@collector(order=leftovers.LOOPS)
def _loops(root: str, everything: bool) -> list[Leftover]:
    out = []
    for lp in loop.list_loops():
        if _inside(lp.backing_file.removesuffix(" (deleted)"), root) or (everything and lp.name.startswith("labkit-")):
            out.append(Leftover("loop", lp.dev, f"backed by {lp.backing_file}", (lambda d=lp.dev: _detach(d))))
    return out


def _detach(dev: str) -> None:
    try:
        loop.detach(dev)
    except OSError as e:
        if e.errno != 6:  # ENXIO: already gone (autoclear after the unmount)
            raise


def find_leftovers(root: str, *, everything: bool = False) -> list[Leftover]:
    """Everything labkit made for the store at ``root`` that is still held by the kernel."""
    root = os.path.realpath(root)
    out: list[Leftover] = []
    for fn in leftovers.collectors():
        out.extend(fn(root, everything))
    return out


def gc(root: str, *, everything: bool = False, dry_run: bool = False) -> list[str]:
    """Release the store's leftovers (mounts deepest first, then loop devices, then the rest); returns what
    was released. Runs collectors again after each pass, since an unmount can free a loop device.

    >>> gc("/nonexistent/labkit-store")
    []
    """
    done: list[str] = []
    for _ in range(3):
        found = find_leftovers(root, everything=everything)
        if not found:
            break
        for item in found:
            if dry_run:
                done.append(str(item))
                continue
            try:
                item.release()
                done.append(str(item))
            except OSError as e:
                done.append(f"{item}: could not release: {e.strerror or e}")
        if dry_run:
            break
    return done
