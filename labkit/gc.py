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

import errno
import os
from functools import partial

# the layers that make kernel objects register their collectors when imported
from . import errors
from ._sys import leftovers, loop, mounts
from ._sys.leftovers import Leftover, collector
from ._sys.leftovers import inside as _inside
from .containers import gc as _containers_gc  # noqa: F401  (cgroups, veths, bridges, netns, records)
from .containers import proxy as _proxy  # noqa: F401  (published-port proxies)
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
                    and (everything or any(_inside(d, root) for d in _overlay_dirs(m.super_options)))))
        if mine:
            found.append(m)
    found.sort(key=lambda m: (m.target.count("/"), m.mount_id), reverse=True)
    return [Leftover("mount", m.target, f"{m.fstype} from {m.source}",
                     partial(unmount, m.target, retries=5)) for m in found]


def _overlay_dirs(options: str) -> list[str]:
    """The layer directories an overlay's super options name (lowerdir, upperdir, workdir; ``\\:``-escaped)."""
    out = []
    for opt in options.split(","):
        key, _, value = opt.partition("=")
        if key in ("lowerdir", "lowerdir+", "datadir+", "upperdir", "workdir") and value:
            out += [d.replace("\\:", ":") for d in value.replace("\\:", "\0").split(":") if d]
    return [d.replace("\0", ":") for d in out]


@collector(order=leftovers.LOOPS)
def _loops(root: str, everything: bool) -> list[Leftover]:
    out = []
    for lp in loop.list_loops():
        if _inside(lp.backing_file.removesuffix(" (deleted)"), root) or (everything and lp.name.startswith("labkit-")):
            out.append(Leftover("loop", lp.dev, f"backed by {lp.backing_file}", partial(_detach, lp.dev)))
    return out


def _detach(dev: str) -> None:
    try:
        loop.detach(dev)
    except OSError as e:
        if e.errno != errno.ENXIO:  # already gone (autoclear after the unmount)
            raise


#: what marks a directory as a labkit store (or one of its backends' roots): gc refuses any other
STORE_MARKERS = (".labkit-store", "metadata.db", "images.db", "snapshots", "images", "containers", "pool")
#: never a store, marker or not
SYSTEM_DIRS = {"/", "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib64", "/media", "/mnt", "/opt", "/proc",
               "/root", "/run", "/sbin", "/srv", "/sys", "/tmp", "/usr", "/var", "/var/lib", "/var/tmp"}


def check_root(root: str) -> str:
    """The real path of ``root`` if gc may work on it: not a system directory, and (when it exists) holding
    a labkit store marker or nothing at all. Otherwise a one-line :class:`~labkit.errors.InvalidArgument`.

    >>> check_root("/nonexistent/labkit-store")
    '/nonexistent/labkit-store'
    >>> check_root("/")                        # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    labkit.errors.InvalidArgument: gc root '/': ...
    """
    real = os.path.realpath(root)
    if real in SYSTEM_DIRS:
        raise errors.InvalidArgument(f"gc root {root!r}", "is a system directory, not a labkit store",
                                     fix="give the store's root (--root), e.g. /var/lib/labkit")
    if (os.path.isdir(real) and os.listdir(real)
            and not any(os.path.lexists(os.path.join(real, m)) for m in STORE_MARKERS)):
        raise errors.InvalidArgument(f"gc root {root!r}", "holds no labkit store (no .labkit-store, metadata.db, "
                                     "snapshots/, images/, containers/ or pool/)",
                                     fix="give the store's root (--root), or `labkit gc --all` for every labkit object")
    return real


def _pinned() -> dict[tuple[int, int], int]:
    """(st_dev, st_ino) of every process's root and working directory -> one pid holding it: a mount whose
    top directory is some process's root (a running container) or cwd is in use."""
    out: dict[tuple[int, int], int] = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        for what in ("root", "cwd"):
            try:
                st = os.stat(f"/proc/{pid}/{what}")
            except OSError:
                continue
            out.setdefault((st.st_dev, st.st_ino), int(pid))
    return out


def _in_use(item: Leftover, pinned: dict[tuple[int, int], int]) -> int | None:
    if item.kind != "mount":
        return None
    try:
        st = os.stat(item.name)
    except OSError:
        return None
    return pinned.get((st.st_dev, st.st_ino))


def find_leftovers(root: str, *, everything: bool = False) -> list[Leftover]:
    """Everything labkit made for the store at ``root`` that is still held by the kernel.

    ``root`` must be a labkit store (see :func:`check_root`); with ``everything`` it only scopes nothing:
    every labkit-named object on the host counts.
    """
    root = check_root(root)
    out: list[Leftover] = []
    for fn in leftovers.collectors():
        out.extend(fn(root, everything))
    return out


def gc(root: str, *, everything: bool = False, dry_run: bool = False, force: bool = False) -> list[str]:
    """Release the store's leftovers (mounts deepest first, then loop devices, then the rest); returns what
    was released. Runs collectors again after each pass, since an unmount can free a loop device.

    A mount that a live process uses as its root (a running container) or working directory is kept and
    reported, unless ``force``.

    >>> gc("/nonexistent/labkit-store")
    []
    """
    done: list[str] = []
    kept: set[str] = set()
    for _ in range(3):
        found = [f for f in find_leftovers(root, everything=everything) if str(f) not in kept]
        if not found:
            break
        pinned = {} if force else _pinned()
        for item in found:
            pid = _in_use(item, pinned)
            if pid is not None:
                kept.add(str(item))
                done.append(f"{item}: kept, in use by pid {pid} (--force releases it)")
                continue
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
