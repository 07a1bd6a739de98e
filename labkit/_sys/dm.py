"""device-mapper through its ioctls on ``/dev/mapper/control`` (include/uapi/linux/dm-ioctl.h), without dmsetup.

What ``dmsetup create/remove/suspend/resume/message/status/table/ls/targets`` send, one ioctl each, with no
process per call (under emulation a process costs ~0.4 s; on any host it is milliseconds against
microseconds). Thin and literal, like :mod:`labkit._sys.loop`: the kernel's semantics, ``OSError`` with
errno (``ENXIO``: no such device; ``EBUSY``: open or in use, or on create a name that is taken; ``EINVAL``:
a table or message the target refused; a thin-pool message passes its own: ``EEXIST`` for a device id that
is taken, ``ENODATA`` for one that does not exist).

Nodes: udev is not waited for (labkit's VM stops it; a host with udev may make its own link, which is
kept). :func:`create` makes ``/dev/mapper/<name>`` itself, as dmsetup does without udev; :func:`remove`
deletes it. Only the standard library: imported by the CLI's gc path and by the VM's guest.

>>> hex(_req(DM_VERSION))
'0xc138fd00'
>>> len(_HDR.pack(*_header("x")))
312
>>> create("a/b", "linear", 0, 8, "/dev/loop0 0")
Traceback (most recent call last):
ValueError: device-mapper name 'a/b' is longer than 127 bytes or has a NUL or /
"""
from __future__ import annotations

import errno
import fcntl
import os
import stat
import struct
import time

__all__ = ["CONTROL", "available", "create", "remove", "suspend", "resume", "message", "status", "table",
           "exists", "list_devices", "targets", "node"]

CONTROL = "/dev/mapper/control"
DM_VERSION, DM_LIST_DEVICES, DM_DEV_CREATE, DM_DEV_REMOVE, DM_DEV_SUSPEND, DM_DEV_STATUS = 0, 2, 3, 4, 6, 7
DM_TABLE_LOAD, DM_TABLE_STATUS, DM_LIST_VERSIONS, DM_TARGET_MSG = 9, 12, 13, 14
DM_READONLY_FLAG = 1 << 0
DM_SUSPEND_FLAG = 1 << 1
DM_STATUS_TABLE_FLAG = 1 << 4
DM_BUFFER_FULL_FLAG = 1 << 8
# struct dm_ioctl: version[3], data_size, data_start, target_count, open_count, flags, event_nr, padding,
# dev, name[128], uuid[129], data[7]  -> 312 bytes
_HDR = struct.Struct("=3IIIIiIIIQ128s129s7s")
# struct dm_target_spec: sector_start, length, status, next, target_type[16]
_SPEC = struct.Struct("=QQiI16s")
# struct dm_name_list: dev, next, name[] (at offset 12)
_NAME_LIST = struct.Struct("=QI")
# struct dm_target_versions: next, version[3], name[]
_VERSIONS = struct.Struct("=I3I")
_BUF = 16 << 10


def _req(nr: int) -> int:
    return (3 << 30) | (_HDR.size << 16) | (0xFD << 8) | nr   # _IOWR(DM_IOCTL, nr, struct dm_ioctl)


def _header(name: str, *, flags: int = 0, target_count: int = 0, size: int = _BUF) -> tuple:
    raw = name.encode()
    if len(raw) >= 128 or "\0" in name or "/" in name:
        raise ValueError(f"device-mapper name {name!r} is longer than 127 bytes or has a NUL or /")
    return (4, 0, 0, size, _HDR.size, target_count, 0, flags, 0, 0, 0, raw, b"", b"")


def _ioctl(nr: int, name: str, data: bytes = b"", *, flags: int = 0, target_count: int = 0,
           size: int = _BUF) -> tuple[tuple, bytes]:
    size = max(size, _HDR.size + len(data) + 8)
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


def _full(nr: int, name: str = "", flags: int = 0) -> tuple[tuple, bytes]:
    """An ioctl whose answer may not fit: retried with a buffer 4x larger while the kernel says it is full."""
    size = _BUF
    while True:
        hdr, data = _ioctl(nr, name, flags=flags, size=size)
        if not hdr[7] & DM_BUFFER_FULL_FLAG:
            return hdr, data
        if size >= 16 << 20:
            raise OSError(errno.ENOSPC, f"device-mapper answer does not fit {size} bytes")
        size *= 4


def available() -> bool:
    """True when this kernel has device-mapper (``/dev/mapper/control`` exists).

    >>> isinstance(available(), bool)
    True
    """
    return os.path.exists(CONTROL)


def node(name: str) -> str:
    """The path of ``name``'s node: ``/dev/mapper/<name>``.

    >>> node("labkit-x-pool")
    '/dev/mapper/labkit-x-pool'
    """
    return os.path.join("/dev/mapper", name)


def create(name: str, target: str, start: int, length: int, params: str, *, readonly: bool = False) -> str:
    """Create ``name`` with one target (``length`` sectors of ``target`` with ``params``), resume it (make
    the table live) and make its ``/dev/mapper`` node; returns the node's path. ``EBUSY`` when the name is
    taken (the kernel's answer, not EEXIST); a table the target refuses (``EINVAL``) leaves no device behind."""
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
    path = node(name)
    for _ in range(3):
        try:
            st = os.stat(path)
            if stat.S_ISBLK(st.st_mode) and st.st_rdev == dev:
                return path
        except FileNotFoundError:
            pass
        if os.path.lexists(path):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
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


def remove(name: str, *, retries: int = 100, delay: float = 0.05) -> None:
    """DM_DEV_REMOVE (retrying while the device is briefly busy — a closing opener, udev's blkid — like
    ``dmsetup remove --retry``, ``retries`` times ``delay`` seconds apart) and unlink its node. ``EBUSY``
    after the last try (it is mounted or held open), ``ENXIO`` when there is no such device."""
    for i in range(retries):
        try:
            _ioctl(DM_DEV_REMOVE, name)
            break
        except OSError as e:
            if e.errno != errno.EBUSY or i == retries - 1:
                raise
            time.sleep(delay)
    path = node(name)
    if os.path.lexists(path):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def message(name: str, msg: str, sector: int = 0) -> None:
    """DM_TARGET_MSG: what ``dmsetup message <name> <sector> <msg>`` sends."""
    _ioctl(DM_TARGET_MSG, name, struct.pack("=Q", sector) + msg.encode() + b"\0")


def status(name: str) -> str:
    """The first target's status as ``dmsetup status`` prints it: ``<start> <length> <target> <status>``
    (a thin-pool commits its metadata first, as with dmsetup: no ``--noflush``)."""
    hdr, data = _full(DM_TABLE_STATUS, name)
    if hdr[5] < 1:
        return ""
    start, length, _st, _next, ttype = _SPEC.unpack_from(data, 0)
    text = data[_SPEC.size:].split(b"\0", 1)[0].decode()
    kind = ttype.split(b"\0", 1)[0].decode()
    return f"{start} {length} {kind} {text}"


def list_devices() -> dict[str, int]:
    """Every device-mapper device: {name: device number} (``dmsetup ls``); ``{}`` without device-mapper."""
    if not available():
        return {}
    _hdr, data = _full(DM_LIST_DEVICES)
    out: dict[str, int] = {}
    off = 0
    while off + _NAME_LIST.size <= len(data):
        dev, nxt = _NAME_LIST.unpack_from(data, off)
        if dev == 0:     # "no devices"
            break
        name = data[off + _NAME_LIST.size:].split(b"\0", 1)[0].decode(errors="replace")
        out[name] = dev
        if not nxt:
            break
        off += nxt
    return out


def targets() -> dict[str, str]:
    """The kernel's loaded target types and their versions (``dmsetup targets``): {name: "1.22.0"}."""
    _hdr, data = _full(DM_LIST_VERSIONS)
    out: dict[str, str] = {}
    off = 0
    while off + _VERSIONS.size <= len(data):
        nxt, major, minor, patch = _VERSIONS.unpack_from(data, off)
        name = data[off + _VERSIONS.size:].split(b"\0", 1)[0].decode(errors="replace")
        if name:
            out[name] = f"{major}.{minor}.{patch}"
        if not nxt:
            break
        off += nxt
    return out
