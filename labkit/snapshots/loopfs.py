"""A filesystem in a sparse file on a loop device under the store root (Docker's loop-lvm idea).

Used by the btrfs and reflink backends when the store's own filesystem cannot host them. The image file
is ``<root>/<fstype>.img`` (sparse: it costs only what is written), the mount point ``<root>/mnt``. The
loop device carries the name ``labkit-<backend>-<hash of root>`` and is set to auto-clear, so unmounting
releases it; ``labkit gc`` finds both by the image path if a process dies with them held.

>>> fs = LoopFS("/tmp/lk/btrfs", "btrfs", size="2G", backend="btrfs")   # doctest: +SKIP
>>> fs.open(); fs.mountpoint                                            # doctest: +SKIP
'/tmp/lk/btrfs/mnt'
>>> fs.close()                                                          # doctest: +SKIP
"""
from __future__ import annotations

import hashlib
import os
import subprocess
from typing import Any

from .. import errors
from .._sys import loop, mounts
from ..units import parse_size
from .._sys.fs import run
from .capabilities import StoreSpace
from .mount import unmount

MKFS = {
    "btrfs": ["mkfs.btrfs", "-q", "-f"],
    "xfs": ["mkfs.xfs", "-q", "-f", "-m", "reflink=1"],
}


def loop_name(root: str, backend: str) -> str:
    """The labkit name a store's loop device carries."""
    return f"labkit-{backend}-{hashlib.sha1(os.path.abspath(root).encode()).hexdigest()[:12]}"


class LoopFS:
    """A loop-file ``fstype`` filesystem of ``size`` bytes (sparse) mounted at ``<root>/mnt``."""

    def __init__(self, root: str, fstype: str, *, size: int | str, backend: str) -> None:
        self.root = os.path.abspath(root)
        self.fstype = fstype
        self.size = parse_size(size, what=f"{backend} loop file size")
        self.backend = backend
        self.image = os.path.join(self.root, f"{fstype}.img")
        self.mountpoint = os.path.join(self.root, "mnt")

    def open(self) -> None:
        """Create (first time) and mount the filesystem; idempotent if it is already mounted here."""
        os.makedirs(self.mountpoint, exist_ok=True)
        if mounts.is_mountpoint(self.mountpoint):
            return
        fresh = not os.path.exists(self.image)
        if fresh:
            if self.size < (300 << 20):
                raise errors.InvalidArgument(f"{self.backend} loop file size {self.size}", "is too small",
                                             fix="give at least 300M")
            with open(self.image, "wb") as f:
                f.truncate(self.size)
            try:
                run([*MKFS[self.fstype], self.image], f"{self.backend} loop filesystem {self.image}")
            except BaseException:
                os.unlink(self.image)
                raise
        dev = loop.attach(self.image, name=loop_name(self.root, self.backend))
        try:
            mounts.mount(dev, self.mountpoint, self.fstype, 0, None)
            loop.set_autoclear(dev)
        except BaseException:
            if mounts.is_mountpoint(self.mountpoint):
                unmount(self.mountpoint)
            try:
                loop.detach(dev)
            except OSError:
                pass
            raise

    def close(self) -> None:
        """Unmount (the auto-clear loop device goes with it). Lazy if something still uses it."""
        if mounts.is_mountpoint(self.mountpoint):
            unmount(self.mountpoint)


class LoopFSBacked:
    """Mixin for backends that need a particular filesystem: when the store's own cannot host them
    (``_can_host(root)`` is False), ``_open`` makes a ``loop_fstype`` LoopFS of ``loop_size`` under the
    store root and points ``storage`` into it; ``_close`` unmounts it."""

    loop_fstype = ""
    loopfs: LoopFS | None = None

    def __init__(self, root: str | os.PathLike[str], *, loop_size: int | str = "20G") -> None:
        self.loop_size = loop_size
        self.loopfs = None
        super().__init__(root)  # type: ignore[call-arg]

    @classmethod
    def _can_host(cls, root: str) -> bool:
        raise NotImplementedError

    @classmethod
    def options_for(cls, largest_image_bytes: int) -> dict[str, Any]:
        """A loop-file filesystem of 3x the largest image plus 1 GiB (at least 2 GiB)."""
        return {"loop_size": max(3 * largest_image_bytes + (1 << 30), 2 << 30)}

    def store_space(self) -> StoreSpace:
        """Blocks in use on the loop-file filesystem (synced first), or the default count without one."""
        if self.loopfs is None:
            return super().store_space()  # type: ignore[misc]
        fd = os.open(self.loopfs.mountpoint, os.O_RDONLY)
        try:
            os.fsync(fd)
            if self.loop_fstype == "btrfs":   # btrfs accounts delayed allocations only after its own sync
                subprocess.run(["btrfs", "filesystem", "sync", self.loopfs.mountpoint], capture_output=True)
            st = os.fstatvfs(fd)
        finally:
            os.close(fd)
        return StoreSpace((st.f_blocks - st.f_bfree) * st.f_frsize, st.f_blocks * st.f_frsize,
                          f"blocks in use on the loop-file {self.loop_fstype}")

    def _open(self) -> None:
        if not self._can_host(self.root):  # type: ignore[attr-defined]
            self.loopfs = LoopFS(self.root, self.loop_fstype, size=self.loop_size, backend=self.name)  # type: ignore[attr-defined]
            self.loopfs.open()
            self.storage = os.path.join(self.loopfs.mountpoint, "snapshots")
            os.makedirs(self.storage, exist_ok=True)

    def _close(self) -> None:
        if self.loopfs is not None:
            self.loopfs.close()
