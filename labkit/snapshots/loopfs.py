"""A filesystem in a sparse file on a loop device under the store root (Docker's loop-lvm idea).

Used by the btrfs and reflink backends when the store's own filesystem cannot host them. The image file
is ``<root>/<fstype>.img`` (sparse: it costs only what is written), the mount point ``<root>/mnt``. The
loop device carries the name ``labkit-<backend>-<hash of root>`` and is set to auto-clear, so unmounting
releases it; ``labkit gc`` finds both by the image path if a process dies with them held.

Several processes may use one store at once (two notebooks, the CLI beside a notebook): the mount is
shared, and its users are counted by the kernel. Each open holds a shared ``flock`` on
``<root>/<fstype>.users`` until it closes; a close unmounts only when it can turn its lock exclusive,
i.e. when no other open remains (a process that died let go of its lock with its last descriptor). Opens
and closes take ``<root>/<fstype>.lock`` exclusively around their check-and-mount or check-and-unmount,
so a close never unmounts under an open that is just starting. An open finds a mount that is already
there (another process's, or one a crashed process left) and uses it instead of mounting again.

>>> fs = LoopFS("/tmp/lk/btrfs", "btrfs", size="2G", backend="btrfs")   # doctest: +SKIP
>>> fs.open(); fs.mountpoint                                            # doctest: +SKIP
'/tmp/lk/btrfs/mnt'
>>> fs.close()                                                          # doctest: +SKIP
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .. import errors
from .._sys import loop, mounts
from .._sys.fs import run
from ..units import parse_size
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
    """A loop-file ``fstype`` filesystem of ``size`` bytes (sparse) mounted at ``<root>/mnt``, shared by
    every process that opens it (see the module docstring)."""

    def __init__(self, root: str, fstype: str, *, size: int | str, backend: str) -> None:
        self.root = os.path.abspath(root)
        self.fstype = fstype
        self.size = parse_size(size, what=f"{backend} loop file size")
        self.backend = backend
        self.image = os.path.join(self.root, f"{fstype}.img")
        self.mountpoint = os.path.join(self.root, "mnt")
        self._users: int | None = None   # our shared lock on <root>/<fstype>.users while open

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Hold ``<root>/<fstype>.lock`` exclusively: one open or close at a time, across processes."""
        fd = _open_lock(os.path.join(self.root, f"{self.fstype}.lock"))
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def mounted_device(self) -> str | None:
        """The loop device of this image mounted at the mount point, or None when nothing is mounted there.

        ``FailedPrecondition`` when something else is mounted there (it is never used nor unmounted).
        """
        real = os.path.realpath(self.mountpoint)
        found = [m for m in mounts.mountinfo() if m.target == real]
        if not found:
            return None
        top = found[-1]                          # the last mount on a target is the one seen
        if top.fstype == self.fstype and _backing_file(top.source) == os.path.realpath(self.image):
            return top.source
        raise errors.FailedPrecondition(self.mountpoint, f"has {top.fstype} {top.source} mounted, not {self.image}",
                                        fix=f"unmount it: umount {self.mountpoint}")

    def open(self) -> None:
        """Create (first time) and mount the filesystem, or join the mount that is already there.
        Idempotent for one LoopFS object."""
        if self._users is not None:
            return
        os.makedirs(self.mountpoint, exist_ok=True)
        with self._exclusive():
            users = _open_lock(os.path.join(self.root, f"{self.fstype}.users"))
            try:
                fcntl.flock(users, fcntl.LOCK_SH)
                if self.mounted_device() is None:
                    self._mount()
            except BaseException:
                os.close(users)
                raise
            self._users = users

    def _mount(self) -> None:
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
        """Leave the filesystem; the last user (in any process) unmounts it, and the auto-clear loop device
        goes with the mount. Lazy if something still uses it. Idempotent."""
        users, self._users = self._users, None
        if users is None:
            return
        try:
            with self._exclusive():
                try:
                    # only we remain when our shared lock can become exclusive (a failed conversion drops
                    # our shared lock, which is what closing does anyway)
                    fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError as e:
                    if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                        raise
                    return
                if self.mounted_device() is not None:
                    unmount(self.mountpoint)
        finally:
            os.close(users)


def _open_lock(path: str) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)


def _backing_file(dev: str) -> str | None:
    """The file behind loop device ``dev`` (``/dev/loopN``), from sysfs; None if it is not a bound loop."""
    name = os.path.basename(dev)
    if not name.startswith("loop"):
        return None
    try:
        with open(f"/sys/block/{name}/loop/backing_file") as f:
            return os.path.realpath(f.read().strip())
    except OSError:
        return None


class LoopFSBacked:
    """Mixin for backends that need a particular filesystem: when the store's own cannot host them
    (``_can_host(root)`` is False), ``_open`` makes a ``loop_fstype`` LoopFS of ``loop_size`` under the
    store root and points ``storage`` into it; ``_close`` leaves it (the last user unmounts it)."""

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
            # the backend class after this mixin in the MRO (mypy sees object)
            space: StoreSpace = super().store_space()  # type: ignore[misc]
            return space
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
            try:
                self.storage = os.path.join(self.loopfs.mountpoint, "snapshots")
                os.makedirs(self.storage, exist_ok=True)
            except BaseException:
                self.loopfs.close()
                raise

    def _close(self) -> None:
        if self.loopfs is not None:
            self.loopfs.close()
