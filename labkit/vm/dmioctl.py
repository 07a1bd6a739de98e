"""device-mapper through its ioctls on ``/dev/mapper/control`` (include/uapi/linux/dm-ioctl.h), without dmsetup.

Under emulation every process costs ~0.4 s, so the VM's pool driver talks to device-mapper directly:
create a device, load a one-target table, suspend/resume, remove, send a target message, read a status
line. Thin and literal, like :mod:`labkit._sys.loop`: the kernel's semantics, ``OSError`` with errno.
Nothing waits for udev (labkit's VM stops it): :func:`create` makes the ``/dev/mapper/<name>`` node itself,
as dmsetup does without udev, and keeps a link udev made instead; :func:`remove` deletes it.

>>> hex(_req(DM_VERSION))
'0xc138fd00'
>>> len(_HDR.pack(*_header("x")))
312
"""
from __future__ import annotations

import errno
import fcntl
import os
import stat
import struct
import time

__all__ = ["create", "remove", "suspend", "resume", "message", "status", "table", "exists"]

CONTROL = "/dev/mapper/control"
DM_VERSION, DM_DEV_CREATE, DM_DEV_REMOVE, DM_DEV_SUSPEND, DM_DEV_STATUS = 0, 3, 4, 6, 7
DM_TABLE_LOAD, DM_TABLE_STATUS, DM_TARGET_MSG = 9, 12, 14
DM_READONLY_FLAG = 1 << 0
DM_SUSPEND_FLAG = 1 << 1
DM_STATUS_TABLE_FLAG = 1 << 4
DM_BUFFER_FULL_FLAG = 1 << 8
# struct dm_ioctl: version[3], data_size, data_start, target_count, open_count, flags, event_nr, padding,
# dev, name[128], uuid[129], data[7]  -> 312 bytes
_HDR = struct.Struct("=3IIIIiIIIQ128s129s7s")
# struct dm_target_spec: sector_start, length, status, next, target_type[16]
_SPEC = struct.Struct("=QQiI16s")
_BUF = 16 << 10


def _req(nr: int) -> int:
    return (3 << 30) | (_HDR.size << 16) | (0xFD << 8) | nr   # _IOWR(DM_IOCTL, nr, struct dm_ioctl)


def _header(name: str, *, flags: int = 0, target_count: int = 0, size: int = _BUF) -> tuple:
    if len(name.encode()) >= 128:
        raise ValueError(f"device-mapper name {name!r} is longer than 127 bytes")
    return (4, 0, 0, size, _HDR.size, target_count, 0, flags, 0, 0, 0, name.encode(), b"", b"")


def _ioctl(nr: int, name: str, data: bytes = b"", *, flags: int = 0, target_count: int = 0) -> tuple[tuple, bytes]:
    size = max(_BUF, _HDR.size + len(data) + 8)
    buf = bytearray(size)
    _HDR.pack_into(buf, 0, *_header(name, flags=flags, target_count=target_count, size=size))
    buf[_HDR.size:_HDR.size + len(data)] = data
    fd = os.open(CONTROL, os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, _req(nr), buf, True)
    finally:
        os.close(fd)
    hdr = _HDR.unpack_from(buf, 0)
    return hdr, bytes(buf[hdr[4]:hdr[3]])


def _node(name: str) -> str:
    return os.path.join("/dev/mapper", name)


def create(name: str, target: str, start: int, length: int, params: str, *, readonly: bool = False) -> str:
    """Create ``name`` with one target (``length`` sectors of ``target`` with ``params``), resume it
    (make the table live) and make its ``/dev/mapper`` node; returns the node's path."""
    hdr, _ = _ioctl(DM_DEV_CREATE, name, flags=DM_READONLY_FLAG if readonly else 0)
    try:
        table(name, target, start, length, params, readonly=readonly)
        resume(name)
    except BaseException:
        _ioctl(DM_DEV_REMOVE, name)
        raise
    return _make_node(name, hdr[10])


def _make_node(name: str, dev: int) -> str:
    """``/dev/mapper/<name>`` for ``dev``: kept if it already leads there (udev's symlink), else made."""
    path = _node(name)
    for _ in range(3):
        try:
            st = os.stat(path)
            if stat.S_ISBLK(st.st_mode) and st.st_rdev == dev:
                return path
        except FileNotFoundError:
            pass
        if os.path.lexists(path):
            os.unlink(path)
        os.makedirs("/dev/mapper", exist_ok=True)
        try:
            os.mknod(path, stat.S_IFBLK | 0o600, dev)
            return path
        except FileExistsError:   # udev made its link meanwhile: look again
            continue
    return path


def exists(name: str) -> bool:
    """True when device-mapper has a device called ``name`` (DM_DEV_STATUS)."""
    try:
        _ioctl(DM_DEV_STATUS, name)
    except OSError as e:
        if e.errno == errno.ENXIO:
            return False
        raise
    return True


def table(name: str, target: str, start: int, length: int, params: str, *, readonly: bool = False) -> None:
    """DM_TABLE_LOAD of one target into ``name``'s inactive table (live after :func:`resume`)."""
    p = params.encode() + b"\0"
    p += b"\0" * (-(len(p)) % 8)
    spec = _SPEC.pack(start, length, 0, _SPEC.size + len(p), target.encode())
    _ioctl(DM_TABLE_LOAD, name, spec + p, target_count=1, flags=DM_READONLY_FLAG if readonly else 0)


def suspend(name: str) -> None:
    """Suspend ``name`` (in-flight IO completes and is flushed first)."""
    _ioctl(DM_DEV_SUSPEND, name, flags=DM_SUSPEND_FLAG)


def resume(name: str) -> None:
    """Resume ``name``, swapping in a loaded table if there is one."""
    _ioctl(DM_DEV_SUSPEND, name)


def remove(name: str, *, retries: int = 100) -> None:
    """DM_DEV_REMOVE (retrying while the device is briefly busy, like ``dmsetup remove --retry``) and
    unlink its node."""
    for i in range(retries):
        try:
            _ioctl(DM_DEV_REMOVE, name)
            break
        except OSError as e:
            if e.errno != errno.EBUSY or i == retries - 1:
                raise
            time.sleep(0.2)
    if os.path.lexists(_node(name)):
        try:
            os.unlink(_node(name))
        except FileNotFoundError:
            pass


def message(name: str, msg: str, sector: int = 0) -> None:
    """DM_TARGET_MSG: what ``dmsetup message <name> <sector> <msg>`` sends."""
    _ioctl(DM_TARGET_MSG, name, struct.pack("=Q", sector) + msg.encode() + b"\0")


def status(name: str) -> str:
    """The first target's status as ``dmsetup status`` prints it: ``<start> <length> <target> <status>``."""
    hdr, data = _ioctl(DM_TABLE_STATUS, name)
    if hdr[7] & DM_BUFFER_FULL_FLAG:
        raise OSError(errno.ENOSPC, f"device-mapper status of {name} does not fit {_BUF} bytes")
    if hdr[5] < 1:
        return ""
    start, length, _st, _next, ttype = _SPEC.unpack_from(data, 0)
    text = data[_SPEC.size:].split(b"\0", 1)[0].decode()
    kind = ttype.split(b"\0", 1)[0].decode()
    return f"{start} {length} {kind} {text}"
