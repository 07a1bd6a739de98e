"""The FUSE filesystem that exposes a pool's thin devices as files, so a loop device can make them block devices.

The root directory lists one file per thin device, named by its id (``/1``, ``/2``...), of the device's
virtual size. Reads and writes go to :class:`labkit.thin.pool.Device`; ``fsync`` commits the pool (so a
loop device's flush, e.g. an ext4 journal commit, makes the mappings durable); ``fallocate`` with
``PUNCH_HOLE`` or ``ZERO_RANGE`` (what the loop driver sends for discard and write-zeroes) unmaps whole
blocks and writes zeros into the partial edges — discard passdown to the pool. A full pool answers ENOSPC,
which the loop device turns into an I/O error that ext4 reports.

Mounted with libfuse3 through mfusepy (:class:`PoolFUSE`), requests of up to 1 MiB. The data path copies
nothing in Python: a read fills libfuse's reply buffer straight from the pool's data file
(:meth:`labkit.thin.pool.Device.read_into`), a write hands libfuse's request buffer to the pool as a
``memoryview`` (mfusepy's own read/write would allocate and copy 1 MiB a request: ~1.7 ms/MiB here).
With ``writeback_cache`` (see docs/performance.md for why and what it measured) the kernel gathers the
loop device's writes in the FUSE file's page cache and sends them in the background, several at once;
that needs ``utimens`` (the kernel writes cached times back with SETATTR: without it every flush and
fallocate failed with EIO, which is how mkfs.ext4 failed).

>>> ops = PoolFS(pool)                                                        # doctest: +SKIP
>>> PoolFUSE(ops, "/var/lib/labkit/thin/dev", **mount_options("/var/lib/labkit/thin/pool"))  # doctest: +SKIP
"""
from __future__ import annotations

import ctypes
import errno
import os
import stat
import threading
import time
from collections.abc import Callable
from typing import Any

from .pool import Pool

LIBFUSE3 = "libfuse3.so.3"


def _name_libfuse3() -> None:
    """mfusepy finds libfuse with ``ctypes.util.find_library``, which runs ldconfig, then gcc and ld (100-200
    ms of a daemon's start here), and prefers libfuse2 when both are installed (its requests stop at
    128 KiB). When the loader finds libfuse3 by its soname, name it (``FUSE_LIBRARY_PATH``, which mfusepy
    reads and a caller may set to choose another)."""
    if os.environ.get("FUSE_LIBRARY_PATH"):
        return
    try:
        ctypes.CDLL(LIBFUSE3)
    except OSError:
        return
    os.environ["FUSE_LIBRARY_PATH"] = LIBFUSE3


_name_libfuse3()
import mfusepy  # noqa: E402  (after naming the library it loads)

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10
MAX_REQUEST = 1 << 20
FUSE_CAP_AUTO_INVAL_DATA = 1 << 12   # libfuse3's fuse_common.h
FUSE_CAP_WRITEBACK_CACHE = 1 << 16
#: whether the export asks the kernel for writeback caching (docs/performance.md: measured both ways)
WRITEBACK_CACHE = True


class PoolFS(mfusepy.Operations):
    """FUSE operations over a :class:`Pool`; counts open files so the daemon knows when it is idle."""

    use_ns = True

    def __init__(self, pool: Pool, *, on_ready: Callable[[], None] | None = None,
                 writeback_cache: bool | None = None) -> None:
        self.pool = pool
        self.writeback_cache = WRITEBACK_CACHE if writeback_cache is None else writeback_cache
        self.opened: dict[int, int] = {}
        self._count_lock = threading.Lock()
        self._closed = threading.Condition(self._count_lock)   # notified when a file is released
        # the kernel keeps a device file's pages between opens unless told otherwise; a device id that was
        # deleted and made again (orphan recovery) must not show the old device's pages
        self._generation: dict[int, int] = {}    # bumped when the daemon creates or deletes the id
        self._cached: dict[int, int] = {}        # the generation the kernel's pages belong to
        self._fuse: int | None = None             # libfuse's ``struct fuse *`` while mounted
        self._fuse_lock = threading.Lock()
        self._on_ready = on_ready
        self._t0 = int(time.time() * 1e9)

    # -- lifecycle ----------------------------------------------------------------------------
    def init_with_config(self, conn_info: Any, config_3: Any) -> None:
        if conn_info is not None:
            for field, value in (("max_write", MAX_REQUEST), ("max_readahead", MAX_REQUEST)):
                if hasattr(conn_info, field):
                    setattr(conn_info, field, value)
            if self.writeback_cache and conn_info.capable & FUSE_CAP_WRITEBACK_CACHE:
                conn_info.want |= FUSE_CAP_WRITEBACK_CACHE
            # the device files change only through this mount (and forget() drops what the daemon
            # changes): no attribute check on every cached read (libfuse turns it on by default)
            conn_info.want &= ~FUSE_CAP_AUTO_INVAL_DATA
        with self._fuse_lock:
            self._fuse = mfusepy._libfuse.fuse_get_context().contents.fuse
        if self._on_ready:
            self._on_ready()

    def destroy(self, path: str) -> None:
        with self._fuse_lock:
            self._fuse = None

    def open_count(self) -> int:
        """Open file handles across all devices (a loop device holds one)."""
        with self._count_lock:
            return sum(self.opened.values())

    def wait_closed(self, dev_id: int | None, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until nobody has device ``dev_id``'s file open (every device's:
        None); whether that is so. The kernel releases a file only after it has written its cached pages
        back (FUSE with writeback caching), so every write to the device has arrived by then."""
        def closed() -> bool:
            return not (self.opened.get(dev_id, 0) if dev_id is not None else sum(self.opened.values()))
        with self._closed:
            return self._closed.wait_for(closed, timeout)

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
        return self.open_cached(path, flags)[0]

    def open_cached(self, path: str, flags: int) -> tuple[int, bool]:
        """Open device ``path``: its file handle, and whether the kernel may keep the pages it has of it
        (False the first time and after the id was made again)."""
        dev_id = self._dev(path)
        with self._count_lock:
            self.opened[dev_id] = self.opened.get(dev_id, 0) + 1
            gen = self._generation.get(dev_id, 0)
            keep = self._cached.get(dev_id) == gen
            self._cached[dev_id] = gen
        return dev_id, keep

    def forget(self, dev_id: int) -> None:
        """Device ``dev_id`` was created or deleted: the kernel's pages of its file are not its pages, and
        its size may have changed (with writeback caching the kernel keeps a file's size itself and never
        takes it from ``getattr`` again): drop the kernel's inode and name of the file."""
        with self._count_lock:
            self._generation[dev_id] = self._generation.get(dev_id, 0) + 1
        name = str(dev_id).encode()
        with self._fuse_lock:
            if self._fuse:
                fuse = ctypes.c_void_p(self._fuse)
                _LIB.fuse_invalidate_path(fuse, b"/" + name)            # -ENOENT when not cached: fine
                _LIB.fuse_lowlevel_notify_inval_entry(_LIB.fuse_get_session(fuse), FUSE_ROOT_ID, name, len(name))

    def release(self, path: str, fh: int) -> int:
        with self._count_lock:
            n = self.opened.get(fh, 0) - 1
            if n > 0:
                self.opened[fh] = n
            else:
                self.opened.pop(fh, None)
            self._closed.notify_all()
        return 0

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        """mfusepy's path (a copy); :class:`PoolFUSE` calls :meth:`read_into` instead."""
        buf = bytearray(size)
        return bytes(memoryview(buf)[:self.read_into(fh, buf, offset)])

    def read_into(self, fh: int, buf: bytearray | memoryview, offset: int) -> int:
        """Fill ``buf`` from ``offset`` of device ``fh``; the number of bytes read."""
        try:
            return self.pool.device(fh).read_into(offset, buf)
        except OSError as e:
            raise self._oserror(e) from None

    def write(self, path: str | None, data: bytes | memoryview, offset: int, fh: int) -> int:
        dev = self.pool.device(fh)
        if offset + len(data) > dev.size:
            raise mfusepy.FuseOSError(errno.ENOSPC if offset < dev.size else errno.EFBIG)
        try:
            dev.write(offset, data)
        except OSError as e:
            raise self._oserror(e) from None
        return len(data)

    def utimens(self, path: str, times: Any = None) -> int:
        """Accepted and ignored (a device file's times mean nothing); with writeback caching the kernel
        sends its cached times back and treats a refusal as an I/O error."""
        self._dev(path)
        return 0

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


FUSE_ROOT_ID = 1
_LIB = mfusepy._libfuse
_LIB.fuse_get_session.argtypes, _LIB.fuse_get_session.restype = (ctypes.c_void_p,), ctypes.c_void_p
_LIB.fuse_invalidate_path.argtypes, _LIB.fuse_invalidate_path.restype = (ctypes.c_void_p, ctypes.c_char_p), ctypes.c_int
_LIB.fuse_lowlevel_notify_inval_entry.argtypes = (ctypes.c_void_p, ctypes.c_uint64, ctypes.c_char_p, ctypes.c_size_t)
_LIB.fuse_lowlevel_notify_inval_entry.restype = ctypes.c_int


class PoolFUSE(mfusepy.FUSE):
    """mfusepy's FUSE with a read and a write that copy nothing in Python: the read fills libfuse's reply
    buffer in place, the write passes libfuse's request buffer on as a ``memoryview`` (valid only during
    the call: the pool never keeps it)."""

    operations: PoolFS          # set by mfusepy.FUSE.__init__ (untyped): the PoolFS it mounts

    def open(self, path: bytes, fip: Any) -> int:
        """Keep the kernel's page cache of a device file across opens (``keep_cache``; what the
        ``kernel_cache`` option did for every file) unless the id was made again since it was cached."""
        fi = fip.contents
        fh, keep = self.operations.open_cached(path.decode(self.encoding, self.errors), fi.flags)
        fi.fh = fh
        fi.keep_cache = 1 if keep else 0
        return 0

    def read(self, path: bytes | None, buf: Any, size: int, offset: int, fip: Any) -> int:
        view = memoryview((ctypes.c_ubyte * size).from_address(ctypes.addressof(buf.contents))).cast("B")
        return self.operations.read_into(fip.contents.fh, view, offset)

    def write(self, path: bytes | None, buf: Any, size: int, offset: int, fip: Any) -> int:
        view = memoryview((ctypes.c_ubyte * size).from_address(ctypes.addressof(buf.contents))).cast("B")
        return self.operations.write(None, view, offset, fip.contents.fh)


def mount_options(pool_path: str) -> dict[str, Any]:
    """The mfusepy options labkit mounts with (the source names the pool, so gc can find it).

    One thread serves the requests (``nothreads``): the loop device sends one request at a time anyway,
    and with writeback caching the kernel's burst of small writes went 1.4-1.7x faster through one thread
    than through libfuse's pool of threads, which handed the GIL and the pool's lock from thread to thread
    for every request (docs/performance.md); large requests were as fast either way."""
    return {"foreground": True, "fsname": f"labkit-thin:{os.path.abspath(pool_path)}", "subtype": "labkit-thin",
            "direct_io": False, "default_permissions": True, "nothreads": True}
