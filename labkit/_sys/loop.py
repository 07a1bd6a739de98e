"""Loop devices through the kernel's ioctls (loop(4)), without losetup.

A device is configured with ``LO_FLAGS_AUTOCLEAR`` by default, so it detaches by itself once the last
user (a mount) lets go, and carries a labkit name in ``lo_file_name`` (shown by :func:`list_loops`).

>>> import os, tempfile
>>> from labkit._sys.loop import attach, detach
>>> f = tempfile.NamedTemporaryFile(); os.truncate(f.name, 1 << 20)
>>> dev = attach(f.name, name="labkit-doctest", autoclear=False)   # doctest: +SKIP
>>> detach(dev)                                                      # doctest: +SKIP
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import time

from .record import Record

LOOP_SET_FD = 0x4C00
LOOP_CLR_FD = 0x4C01
LOOP_SET_STATUS64 = 0x4C04
LOOP_GET_STATUS64 = 0x4C05
LOOP_CTL_GET_FREE = 0x4C82
LO_FLAGS_READ_ONLY = 1
LO_FLAGS_AUTOCLEAR = 4
LO_FLAGS_DIRECT_IO = 16
LO_NAME_SIZE = 64


class LoopInfo64(ctypes.Structure):
    _fields_ = [
        ("lo_device", ctypes.c_uint64), ("lo_inode", ctypes.c_uint64), ("lo_rdevice", ctypes.c_uint64),
        ("lo_offset", ctypes.c_uint64), ("lo_sizelimit", ctypes.c_uint64), ("lo_number", ctypes.c_uint32),
        ("lo_encrypt_type", ctypes.c_uint32), ("lo_encrypt_key_size", ctypes.c_uint32),
        ("lo_flags", ctypes.c_uint32), ("lo_file_name", ctypes.c_char * LO_NAME_SIZE),
        ("lo_crypt_name", ctypes.c_char * LO_NAME_SIZE), ("lo_encrypt_key", ctypes.c_ubyte * 32),
        ("lo_init", ctypes.c_uint64 * 2),
    ]


def attach(path: str, *, name: str, readonly: bool = False, autoclear: bool = False) -> str:
    """Attach ``path`` to a free loop device and return ``/dev/loopN``.

    With ``autoclear`` the kernel tears the device down at its last close — which is at once, when this
    function closes its own descriptor, unless the caller holds it open. So attach without it, mount, then
    call :func:`set_autoclear`, which makes the unmount release the device.

    ``name`` (at most 63 bytes) goes into ``lo_file_name`` so leftovers can be recognised as labkit's.
    Needs CAP_SYS_ADMIN and /dev/loop-control. Retries when another process takes the same free device.
    """
    flags = os.O_RDONLY if readonly else os.O_RDWR
    backing = os.open(path, flags | os.O_CLOEXEC)
    try:
        ctl = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
        try:
            for _ in range(50):
                n = fcntl.ioctl(ctl, LOOP_CTL_GET_FREE)
                dev = f"/dev/loop{n}"
                lfd = os.open(dev, flags | os.O_CLOEXEC)
                try:
                    try:
                        fcntl.ioctl(lfd, LOOP_SET_FD, backing)
                    except OSError as e:
                        if e.errno == errno.EBUSY:
                            time.sleep(0.01)
                            continue
                        raise
                    info = LoopInfo64()
                    info.lo_flags = (LO_FLAGS_AUTOCLEAR if autoclear else 0) | (LO_FLAGS_READ_ONLY if readonly else 0)
                    info.lo_file_name = name.encode()[: LO_NAME_SIZE - 1]
                    try:
                        fcntl.ioctl(lfd, LOOP_SET_STATUS64, info)
                    except OSError:
                        fcntl.ioctl(lfd, LOOP_CLR_FD, 0)
                        raise
                    return dev
                finally:
                    os.close(lfd)
            raise OSError(errno.EBUSY, "no free loop device after 50 tries", path)
        finally:
            os.close(ctl)
    finally:
        os.close(backing)


def set_autoclear(dev: str) -> None:
    """Set ``LO_FLAGS_AUTOCLEAR`` on a bound device (LOOP_SET_STATUS64 keeps the other fields)."""
    fd = os.open(dev, os.O_RDONLY | os.O_CLOEXEC)
    try:
        info = LoopInfo64()
        fcntl.ioctl(fd, LOOP_GET_STATUS64, info)
        info.lo_flags |= LO_FLAGS_AUTOCLEAR
        fcntl.ioctl(fd, LOOP_SET_STATUS64, info)
    finally:
        os.close(fd)


def detach(dev: str) -> None:
    """LOOP_CLR_FD: detach ``dev`` (with autoclear set it goes once the last opener closes). ENXIO if unbound."""
    fd = os.open(dev, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, LOOP_CLR_FD, 0)
    finally:
        os.close(fd)


class Loop(Record):
    """A bound loop device as sysfs and LOOP_GET_STATUS64 show it."""

    dev: str
    backing_file: str
    name: str
    autoclear: bool


def list_loops() -> list[Loop]:
    """Every bound loop device on the host."""
    out = []
    base = "/sys/block"
    for entry in sorted(os.listdir(base)):
        if not entry.startswith("loop"):
            continue
        try:
            with open(f"{base}/{entry}/loop/backing_file") as f:
                backing = f.read().strip()
        except OSError:
            continue
        name, autoclear = "", False
        try:
            fd = os.open(f"/dev/{entry}", os.O_RDONLY | os.O_CLOEXEC)
            try:
                info = LoopInfo64()
                fcntl.ioctl(fd, LOOP_GET_STATUS64, info)
                name = info.lo_file_name.decode(errors="replace")
                autoclear = bool(info.lo_flags & LO_FLAGS_AUTOCLEAR)
            finally:
                os.close(fd)
        except OSError:
            pass
        out.append(Loop(f"/dev/{entry}", backing, name, autoclear))
    return out
