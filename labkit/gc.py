"""Find and release what labkit left on the host after a crash: mounts and loop devices of a store.

A mount belongs to a store when its target is inside the store root, when the directory it shows (its
origin, resolved through the mount of the filesystem it comes from) is inside the store root, or when it
is an overlay named ``labkit-*`` whose layers are inside it. A loop device belongs to it when its backing
file is inside the store root. With ``everything=True`` every ``labkit-*`` overlay and loop device on the
host counts too. Later layers (FUSE daemons of the thin pool, network namespaces, cgroups) add their own
collectors with :func:`collector`.

>>> from labkit.gc import find_leftovers
>>> find_leftovers("/nonexistent/labkit-store")
[]
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

from ._sys import loop, mounts
from .snapshots.mount import unmount


@dataclass(frozen=True)
class Leftover:
    """One kernel object labkit left behind: ``kind`` (mount, loop, ...), its name, and how to release it."""

    kind: str
    name: str
    detail: str
    release: Callable[[], None]

    def __str__(self) -> str:
        return f"{self.kind} {self.name} ({self.detail})"


_COLLECTORS: list[Callable[[str, bool], list[Leftover]]] = []


def collector(fn: Callable[[str, bool], list[Leftover]]) -> Callable[[str, bool], list[Leftover]]:
    """Register ``fn(root, everything) -> [Leftover]``; collectors run in registration order."""
    _COLLECTORS.append(fn)
    return fn


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


@collector
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


@collector
def _device_mapper(root: str, everything: bool) -> list[Leftover]:
    """dm-thin devices of the dmthin backend (before the loop devices under them)."""
    from .snapshots.dmthin import _dm_leftovers
    return _dm_leftovers(root, everything)


@collector
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
    for fn in _COLLECTORS:
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


def _labkit_processes(root: str, everything: bool) -> list[tuple[int, str]]:
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
        except OSError:
            continue
        if "labkit.thin.daemon" not in argv:
            continue
        pool = argv[argv.index("labkit.thin.daemon") + 1] if argv.index("labkit.thin.daemon") + 1 < len(argv) else ""
        if everything or _inside(os.path.realpath(pool), root):
            out.append((int(pid), " ".join(argv)))
    return out


def _kill(pid: int) -> None:
    import signal
    import time
    try:
        os.kill(pid, signal.SIGTERM)
        for _ in range(100):
            os.kill(pid, 0)
            time.sleep(0.02)
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@collector
def _processes(root: str, everything: bool) -> list[Leftover]:
    """Thin pool daemons (FUSE) serving a pool inside the store."""
    return [Leftover("process", str(pid), args, (lambda p=pid: _kill(p)))
            for pid, args in _labkit_processes(root, everything)]


from .containers import gc as _containers_gc  # noqa: E402,F401  (registers the runtime's collectors)
