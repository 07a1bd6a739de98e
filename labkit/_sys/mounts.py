"""mount(2), umount2(2), the new mount API (fsopen/fsconfig/fsmount/move_mount) and /proc/self/mountinfo.

The new mount API is used for overlayfs because it takes lower layers one at a time
(``lowerdir+``, Linux >= 6.8), so a deep chain is not limited by mount(2)'s one-page option string.

>>> from labkit._sys.mounts import mountinfo
>>> any(m.target == "/" for m in mountinfo())
True
"""
from __future__ import annotations

import ctypes
import errno
import os
from typing import NamedTuple

from .libc import check, fsencode, libc

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19

MNT_FORCE = 1
MNT_DETACH = 2

# new mount API (include/uapi/linux/mount.h); syscall numbers are the same on x86_64 and aarch64
SYS_MOVE_MOUNT, SYS_FSOPEN, SYS_FSCONFIG, SYS_FSMOUNT = 429, 430, 431, 432
FSOPEN_CLOEXEC = 1
FSCONFIG_SET_FLAG, FSCONFIG_SET_STRING, FSCONFIG_CMD_CREATE = 0, 1, 6
FSMOUNT_CLOEXEC = 1
MOVE_MOUNT_F_EMPTY_PATH = 4
MOUNT_ATTR_RDONLY = 1


def mount(source: str, target: str, fstype: str | None, flags: int = 0, data: str | None = None) -> None:
    """mount(2). ``target`` must be an existing directory (or file for a file bind mount); needs CAP_SYS_ADMIN."""
    ret = libc.mount(fsencode(source), fsencode(target), fsencode(fstype), ctypes.c_ulong(flags),
                     fsencode(data))
    check(ret, f"mount {fstype or 'bind'} {source} on {target}", target)


def umount(target: str, flags: int = 0) -> None:
    """umount2(2). ``MNT_DETACH`` detaches lazily; EBUSY if in use without it."""
    check(libc.umount2(fsencode(target), ctypes.c_int(flags)), f"umount {target}", target)


def fsopen(fstype: str) -> int:
    """fsopen(2): a filesystem context fd for ``fstype`` (ENOSYS before Linux 5.2)."""
    return check(libc.syscall(SYS_FSOPEN, fsencode(fstype), FSOPEN_CLOEXEC), f"fsopen {fstype}")


def fsconfig(fd: int, cmd: int, key: str | None = None, value: str | None = None) -> None:
    """fsconfig(2): set one parameter (``FSCONFIG_SET_STRING``/``SET_FLAG``) or ``FSCONFIG_CMD_CREATE``."""
    check(libc.syscall(SYS_FSCONFIG, fd, cmd, fsencode(key), fsencode(value), 0),
          f"fsconfig {key}={value}" if key else "fsconfig create")


def fsmount(fd: int, attr: int = 0) -> int:
    """fsmount(2): turn a created context into a detached mount fd."""
    return check(libc.syscall(SYS_FSMOUNT, fd, FSMOUNT_CLOEXEC, attr), "fsmount")


def move_mount(mnt_fd: int, target: str) -> None:
    """move_mount(2) of a detached mount fd onto ``target``."""
    check(libc.syscall(SYS_MOVE_MOUNT, mnt_fd, b"", -100, fsencode(target), MOVE_MOUNT_F_EMPTY_PATH),
          f"move_mount onto {target}", target)


def mount_fs(fstype: str, source: str, target: str, options: list[tuple[str, str | None]],
             *, readonly: bool = False) -> None:
    """Mount with the new API, setting ``options`` in order (``(key, None)`` is a flag).

    Raises ``OSError`` with the errno of the step that failed; the kernel's own message (if any) is read
    from the context fd and added to the error text.
    """
    fd = fsopen(fstype)
    try:
        fsconfig(fd, FSCONFIG_SET_STRING, "source", source)
        for key, value in options:
            if value is None:
                fsconfig(fd, FSCONFIG_SET_FLAG, key)
            else:
                fsconfig(fd, FSCONFIG_SET_STRING, key, value)
        try:
            fsconfig(fd, FSCONFIG_CMD_CREATE)
        except OSError as e:
            raise OSError(e.errno, f"{e.strerror}{_fs_log(fd)}", target) from None
        mfd = fsmount(fd, MOUNT_ATTR_RDONLY if readonly else 0)
        try:
            move_mount(mfd, target)
        finally:
            os.close(mfd)
    finally:
        os.close(fd)


def _fs_log(fd: int) -> str:
    msgs = []
    while True:
        try:
            msg = os.read(fd, 4096)
        except OSError:
            break
        if not msg:
            break
        msgs.append(msg.decode(errors="replace"))
    return f" ({'; '.join(msgs)})" if msgs else ""


def new_mount_api() -> bool:
    """True when fsopen(2) works here (Linux >= 5.2 and not filtered by seccomp)."""
    try:
        os.close(fsopen("tmpfs"))
        return True
    except OSError as e:
        return e.errno not in (errno.ENOSYS, errno.EPERM)


class MountInfo(NamedTuple):
    """One line of /proc/self/mountinfo (a named tuple: a dataclass costs ~1 ms to create, and `labkit run`
    imports this module)."""

    mount_id: int
    root: str
    target: str
    options: str
    fstype: str
    source: str
    super_options: str
    dev: str = ""  # major:minor of the filesystem


def _unescape(s: str) -> str:
    return s.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def mountinfo(pid: str = "self") -> list[MountInfo]:
    """Parse ``/proc/<pid>/mountinfo`` (proc(5))."""
    out = []
    with open(f"/proc/{pid}/mountinfo") as f:
        for line in f:
            left, _, right = line.rstrip("\n").partition(" - ")
            a = left.split(" ")
            b = right.split(" ")
            out.append(MountInfo(int(a[0]), _unescape(a[3]), _unescape(a[4]), a[5], b[0], _unescape(b[1]),
                                 b[2] if len(b) > 2 else "", a[2]))
    return out


def origins(info: list[MountInfo]) -> dict[int, str | None]:
    """For each mount id, the host path of the directory it shows, where one can be named: a bind mount
    of ``/var/lib/x/fs`` shows ``/var/lib/x/fs`` (its ``root`` resolved through a mount of the whole
    filesystem); a mount of a whole filesystem shows its own target."""
    whole: dict[str, str] = {}
    for m in sorted(info, key=lambda m: m.mount_id, reverse=True):
        if m.root == "/":
            whole[m.dev] = m.target
    out: dict[int, str | None] = {}
    for m in info:
        base = whole.get(m.dev)
        out[m.mount_id] = (m.target if m.root == "/" else
                           os.path.normpath(base + "/" + m.root) if base else None)
    return out


def is_mountpoint(path: str) -> bool:
    """True when ``path`` (resolved) is the target of a mount in this namespace."""
    real = os.path.realpath(path)
    return any(m.target == real for m in mountinfo())


def mounts_under(prefix: str) -> list[MountInfo]:
    """Mounts whose target is ``prefix`` or below it, deepest first (the order to unmount in)."""
    real = os.path.realpath(prefix).rstrip("/") or "/"
    found = [m for m in mountinfo() if m.target == real or m.target.startswith(real + "/")]
    return sorted(found, key=lambda m: (m.target.count("/"), m.mount_id), reverse=True)
