"""A :class:`Mount` value: what a snapshotter hands back, mounted onto a target by the caller.

Types: ``bind`` (a directory; ``ro`` makes it read-only), ``overlay`` (options are ``lowerdir+``,
``upperdir``, ``workdir`` entries, passed to the kernel one by one through the new mount API), and any
block filesystem (``ext4`` on a loop device: ``source`` is the device).

>>> m = Mount("bind", "/var/lib/labkit/x/fs", ("ro",))
>>> m.readonly
True
>>> with m.mount("/mnt/rootfs") as path:    # doctest: +SKIP
...     os.listdir(path)
"""
from __future__ import annotations

import errno
import os
import time
from types import TracebackType

from .._sys import mounts as sysmount
from .._sys.record import Record


class Mount(Record):
    """How to mount one snapshot: ``type``, ``source`` and ``options`` (``"ro"``, ``"key=value"``)."""

    type: str
    source: str
    options: tuple[str, ...] = ()

    @property
    def readonly(self) -> bool:
        """True for a read-only mount (a view)."""
        return "ro" in self.options

    def mount(self, target: str | os.PathLike[str]) -> Mounted:
        """Mount onto ``target`` (an existing directory); returns a handle that unmounts (a context manager).

        On failure nothing stays mounted and ``OSError`` names the target.
        """
        target = os.fspath(target)
        if self.type == "bind":
            sysmount.mount(self.source, target, None, sysmount.MS_BIND)
            if self.readonly:
                try:
                    sysmount.mount("none", target, None,
                                   sysmount.MS_REMOUNT | sysmount.MS_BIND | sysmount.MS_RDONLY)
                except BaseException:
                    sysmount.umount(target, sysmount.MNT_DETACH)
                    raise
        elif self.type == "overlay":
            opts: list[tuple[str, str | None]] = []
            for o in self.options:
                if o == "ro":
                    continue
                k, sep, v = o.partition("=")
                opts.append((k, v if sep else None))
            sysmount.mount_fs("overlay", self.source, target, opts, readonly=self.readonly)
        else:
            flags = sysmount.MS_RDONLY if self.readonly else 0
            data = ",".join(o for o in self.options if o != "ro") or None
            sysmount.mount(self.source, target, self.type, flags, data)
        return Mounted(self, target)


    def targets(self) -> list[str]:
        """Where this mount is mounted now (bind: the same directory shown; overlay: the same name;
        block filesystems: the same device), deepest first.

        >>> Mount("bind", "/nonexistent/labkit").targets()
        []
        """
        info = sysmount.mountinfo()
        if self.type == "bind":
            origin = sysmount.origins(info)
            src = os.path.realpath(self.source)
            found = [m.target for m in info if origin[m.mount_id] == src and m.target != src]
        else:
            found = [m.target for m in info if m.source == self.source and m.fstype == self.type]
        return sorted(found, key=lambda t: t.count("/"), reverse=True)


class Mounted:
    """A mounted :class:`Mount`; ``unmount()`` (or leaving the ``with`` block) releases it."""

    def __init__(self, mount: Mount, target: str) -> None:
        self.mount = mount
        self.target = target
        self._mounted = True

    def unmount(self, *, retries: int = 50) -> None:
        """Unmount; retries briefly on EBUSY (a process still leaving), then detaches lazily. Idempotent."""
        if not self._mounted:
            return
        unmount(self.target, retries=retries)
        self._mounted = False

    def __enter__(self) -> str:
        return self.target

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.unmount()

    def __repr__(self) -> str:
        return f"<Mounted {self.mount.type} on {self.target}{'' if self._mounted else ' (unmounted)'}>"


def unmount(target: str, *, retries: int = 50) -> None:
    """Unmount ``target``, retrying on EBUSY for a while and then detaching lazily; EINVAL (not mounted) is ignored."""
    for i in range(retries):
        try:
            sysmount.umount(target)
            return
        except OSError as e:
            if e.errno == errno.EINVAL:
                return
            if e.errno != errno.EBUSY:
                raise
            time.sleep(min(0.002 * (i + 1), 0.05))
    sysmount.umount(target, sysmount.MNT_DETACH)
