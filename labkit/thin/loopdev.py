"""Loop devices that their user holds open and that auto-clear: the kernel counts the users.

A pool's device files become block devices through loop devices. :func:`attach_held` binds a free loop
device with ``LO_FLAGS_AUTOCLEAR`` set from the start (one ``LOOP_CONFIGURE``, Linux 5.8, which also
spares the queue freeze a second ``LOOP_SET_STATUS64`` costs: about 3 ms instead of 20 here) and returns
a read-only descriptor of it that the caller keeps. The device then lives exactly as long as someone uses
it — that descriptor, a mount of it, another process's descriptor — and disappears after the last one,
even when its owner is killed. Nobody has to decide whether to detach a device someone else may be using.

(A candidate for :mod:`labkit._sys.loop` as ``attach(..., hold=True)``; it lives here until then.)

>>> dev, fd = attach_held("/var/lib/labkit/snapshots/thin/dev/3", name="labkit-thin-x-3")   # doctest: +SKIP
>>> os.close(fd)   # unmounted and unused elsewhere: the kernel detaches it now               # doctest: +SKIP
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import time

from .._sys import loop

__all__ = ["attach_held", "hold", "backing_file", "LOOP_CONFIGURE"]

LOOP_CONFIGURE = 0x4C0A


class LoopConfig(ctypes.Structure):
    """``struct loop_config`` (linux/loop.h)."""

    _fields_ = [("fd", ctypes.c_uint32), ("block_size", ctypes.c_uint32), ("info", loop.LoopInfo64),
                ("reserved", ctypes.c_uint64 * 8)]


def _configure(lfd: int, backing: int, name: str, readonly: bool) -> None:
    flags = loop.LO_FLAGS_AUTOCLEAR | (loop.LO_FLAGS_READ_ONLY if readonly else 0)
    cfg = LoopConfig()
    cfg.fd = backing
    cfg.info.lo_flags = flags
    cfg.info.lo_file_name = name.encode()[: loop.LO_NAME_SIZE - 1]
    try:
        fcntl.ioctl(lfd, LOOP_CONFIGURE, cfg)
        return
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTTY):
            raise
    fcntl.ioctl(lfd, loop.LOOP_SET_FD, backing)  # before 5.8: bind, then set the flags (lfd keeps it alive)
    info = loop.LoopInfo64()
    info.lo_flags = flags
    info.lo_file_name = name.encode()[: loop.LO_NAME_SIZE - 1]
    try:
        fcntl.ioctl(lfd, loop.LOOP_SET_STATUS64, info)
    except OSError:
        fcntl.ioctl(lfd, loop.LOOP_CLR_FD, 0)
        raise


def attach_held(path: str, *, name: str, readonly: bool = False) -> tuple[str, int]:
    """Bind a free loop device to ``path`` with auto-clear and return ``(device, fd)``: ``fd`` is a
    read-only descriptor of the device that keeps it alive until closed. ``name`` (at most 63 bytes) goes
    into ``lo_file_name``. Needs CAP_SYS_ADMIN; retries when another process takes the same free device."""
    mode = os.O_RDONLY if readonly else os.O_RDWR
    backing = os.open(path, mode | os.O_CLOEXEC)
    try:
        ctl = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
        try:
            for _ in range(50):
                dev = f"/dev/loop{fcntl.ioctl(ctl, loop.LOOP_CTL_GET_FREE)}"
                lfd = os.open(dev, mode | os.O_CLOEXEC)  # the loop device's open mode decides read-only too
                try:
                    try:
                        _configure(lfd, backing, name, readonly)
                    except OSError as e:
                        if e.errno == errno.EBUSY:
                            time.sleep(0.01)
                            continue
                        raise
                    return dev, os.open(dev, os.O_RDONLY | os.O_CLOEXEC)  # (a writable holder could stop mounts)
                finally:
                    os.close(lfd)
            raise OSError(errno.EBUSY, "no free loop device after 50 tries", path)
        finally:
            os.close(ctl)
    finally:
        os.close(backing)


def backing_file(dev: str) -> str | None:
    """The file ``dev`` is bound to now (sysfs), None when unbound."""
    try:
        with open(f"/sys/block/{os.path.basename(dev)}/loop/backing_file") as f:
            return f.read().strip()
    except OSError:
        return None


def hold(dev: str, path: str) -> int | None:
    """Hold an already attached ``dev`` open and set it to auto-clear, if it is (still) bound to ``path``
    once held — it can then no longer go away or be rebound. None when it is not."""
    try:
        fd = os.open(dev, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if backing_file(dev) != path:
            os.close(fd)
            return None
        info = loop.LoopInfo64()
        fcntl.ioctl(fd, loop.LOOP_GET_STATUS64, info)
        if not info.lo_flags & loop.LO_FLAGS_AUTOCLEAR:
            info.lo_flags |= loop.LO_FLAGS_AUTOCLEAR
            fcntl.ioctl(fd, loop.LOOP_SET_STATUS64, info)
        return fd
    except OSError:
        os.close(fd)
        return None
