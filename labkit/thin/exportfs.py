"""The FUSE filesystem that exposes a pool's thin devices as files, so a loop device can make them block devices.

The root directory lists one file per thin device, named by its id (``/1``, ``/2``...), of the device's
virtual size. Reads and writes go to :class:`labkit.thin.pool.Device`; ``fsync`` commits the pool (so a
loop device's flush, e.g. an ext4 journal commit, makes the mappings durable); ``fallocate`` with
``PUNCH_HOLE`` or ``ZERO_RANGE`` (what the loop driver sends for discard and write-zeroes) unmaps whole
blocks and writes zeros into the partial edges — discard passdown to the pool. A full pool answers ENOSPC,
which the loop device turns into an I/O error that ext4 reports.

Mounted with libfuse3 through mfusepy, multi-threaded, ``direct_io`` (no second page cache under the
loop device's), requests of up to 1 MiB.

>>> ops = PoolFS(pool)                                   # doctest: +SKIP
>>> mfusepy.FUSE(ops, "/var/lib/labkit/thin/dev", foreground=True, direct_io=True)   # doctest: +SKIP
"""
from __future__ import annotations

import errno
import os
import stat
import threading
import time
from typing import Any, Callable

import mfusepy

from .pool import Pool

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10
MAX_REQUEST = 1 << 20


class PoolFS(mfusepy.Operations):
    """FUSE operations over a :class:`Pool`; counts open files so the daemon knows when it is idle."""

    use_ns = True

    def __init__(self, pool: Pool, *, on_ready: Callable[[], None] | None = None) -> None:
        self.pool = pool
        self.opened: dict[int, int] = {}
        self._count_lock = threading.Lock()
        self._on_ready = on_ready
        self._t0 = int(time.time() * 1e9)

    # -- lifecycle ----------------------------------------------------------------------------
    def init_with_config(self, conn_info: Any, config_3: Any) -> None:
        if conn_info is not None:
            for field, value in (("max_write", MAX_REQUEST), ("max_readahead", MAX_REQUEST)):
                if hasattr(conn_info, field):
                    setattr(conn_info, field, value)
        if self._on_ready:
            self._on_ready()

    def open_count(self) -> int:
        """Open file handles across all devices (a loop device holds one)."""
        with self._count_lock:
            return sum(self.opened.values())

    # -- helpers ------------------------------------------------------------------------------
    def _dev(self, path: str) -> int:
        name = path.lstrip("/")
        if not name.isdigit():
            raise mfusepy.FuseOSError(errno.ENOENT)
        dev_id = int(name)
        if dev_id not in self.pool.devices():
            raise mfusepy.FuseOSError(errno.ENOENT)
        return dev_id

    @staticmethod
    def _oserror(e: OSError) -> mfusepy.FuseOSError:
        return mfusepy.FuseOSError(e.errno or errno.EIO)

    # -- metadata -----------------------------------------------------------------------------
    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        now = self._t0
        if path == "/":
            return {"st_mode": stat.S_IFDIR | 0o755, "st_nlink": 2, "st_size": 0,
                    "st_atime": now, "st_mtime": now, "st_ctime": now}
        dev_id = self._dev(path)
        size = self.pool.device(dev_id).size
        return {"st_mode": stat.S_IFREG | 0o600, "st_nlink": 1, "st_size": size, "st_blocks": size // 512,
                "st_blksize": self.pool.block_size, "st_atime": now, "st_mtime": now, "st_ctime": now}

    def readdir(self, path: str, fh: int) -> list[str]:
        if path != "/":
            raise mfusepy.FuseOSError(errno.ENOTDIR)
        return [".", "..", *(str(d) for d in self.pool.devices())]

    def statfs(self, path: str) -> dict[str, int]:
        st = self.pool.status()
        bs = self.pool.block_size
        free = st.total_data_blocks - st.used_data_blocks
        return {"f_bsize": bs, "f_frsize": bs, "f_blocks": st.total_data_blocks, "f_bfree": free,
                "f_bavail": free, "f_namemax": 32}

    # -- files --------------------------------------------------------------------------------
    def open(self, path: str, flags: int) -> int:
        dev_id = self._dev(path)
        with self._count_lock:
            self.opened[dev_id] = self.opened.get(dev_id, 0) + 1
        return dev_id

    def release(self, path: str, fh: int) -> int:
        with self._count_lock:
            n = self.opened.get(fh, 0) - 1
            if n > 0:
                self.opened[fh] = n
            else:
                self.opened.pop(fh, None)
        return 0

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        try:
            return self.pool.device(fh).read(offset, size)
        except OSError as e:
            raise self._oserror(e) from None

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        dev = self.pool.device(fh)
        if offset + len(data) > dev.size:
            raise mfusepy.FuseOSError(errno.ENOSPC if offset < dev.size else errno.EFBIG)
        try:
            dev.write(offset, data)
        except OSError as e:
            raise self._oserror(e) from None
        return len(data)

    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        if length != self.pool.device(self._dev(path)).size:
            raise mfusepy.FuseOSError(errno.EPERM)  # a thin device's size is fixed
        return 0

    def flush(self, path: str, fh: int) -> int:
        return 0

    def fsync(self, path: str, datasync: int, fh: int) -> int:
        try:
            self.pool.device(fh).flush()
        except OSError as e:
            raise self._oserror(e) from None
        return 0

    def fallocate(self, path: str, mode: int, offset: int, size: int, fh: int) -> int:
        if not mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE):
            raise mfusepy.FuseOSError(errno.EOPNOTSUPP)  # preallocation has no meaning on a thin device
        dev = self.pool.device(fh)
        end = min(offset + size, dev.size)
        if end <= offset:
            return 0
        bs = self.pool.block_size
        first = -(-offset // bs) * bs
        last = end // bs * bs
        try:
            if first < last:
                dev.discard(first, last - first)
                head, tail = (offset, first), (last, end)
            else:
                head, tail = (offset, end), (end, end)
            for a, b in (head, tail):
                if b > a:
                    dev.write(a, bytes(b - a))
        except OSError as e:
            raise self._oserror(e) from None
        return 0

    # -- refused ------------------------------------------------------------------------------
    def create(self, path: str, mode: int, fi: Any = None) -> int:
        raise mfusepy.FuseOSError(errno.EPERM)  # devices are made through the pool, not by creat(2)

    def unlink(self, path: str) -> int:
        raise mfusepy.FuseOSError(errno.EPERM)


def mount_options(pool_path: str) -> dict[str, Any]:
    """The mfusepy options labkit mounts with (the source names the pool, so gc can find it)."""
    return {"foreground": True, "fsname": f"labkit-thin:{os.path.abspath(pool_path)}", "subtype": "labkit-thin",
            "direct_io": False, "kernel_cache": True, "default_permissions": True, "max_threads": 8}
