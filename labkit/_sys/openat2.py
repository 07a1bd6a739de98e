"""openat2(2): open a path relative to a directory fd with resolution restrictions (Linux >= 5.6).

The point is ``RESOLVE_IN_ROOT``: every ``..`` and every absolute symlink met while resolving ``path``
stays below ``dirfd``, as if the process had ``chroot``-ed there for this one lookup. That is how
host-side code reads ``/etc/passwd`` of a container's root filesystem or creates a mount point in it
without ever following a hostile symlink (``etc/passwd -> /etc/shadow``) out to the host.

Preconditions (openat2(2)):

* ``dirfd`` is an open directory (an ``O_PATH`` fd is fine) or ``AT_FDCWD``; ``path`` is relative to it
  (with ``RESOLVE_IN_ROOT`` an absolute ``path`` is also taken relative to ``dirfd``);
* ``mode`` must be 0 unless ``flags`` has ``O_CREAT`` or ``O_TMPFILE`` (else ``EINVAL``); unknown bits in
  ``flags`` or ``resolve`` give ``EINVAL`` (unlike open(2), nothing is silently ignored);
* ``RESOLVE_IN_ROOT`` and ``RESOLVE_BENEATH`` give ``EXDEV`` where the path would leave the root (for
  ``BENEATH``), and ``EAGAIN`` when a concurrent rename made the lookup unsafe: retry then;
* ``RESOLVE_NO_MAGICLINKS`` refuses ``/proc/<pid>/fd/*``-style links (``ELOOP``); ``RESOLVE_NO_SYMLINKS``
  refuses every symlink (``ELOOP``); ``RESOLVE_NO_XDEV`` refuses crossing a mount (``EXDEV``);
* ``ENOSYS`` before Linux 5.6 (or where a seccomp filter hides the call).

>>> import os
>>> root = os.open("/", os.O_PATH | os.O_DIRECTORY)
>>> fd = openat2(root, "../../etc", os.O_PATH | os.O_DIRECTORY, resolve=RESOLVE_IN_ROOT)
>>> os.path.samestat(os.fstat(fd), os.stat("/etc"))
True
>>> os.close(fd); os.close(root)
"""
from __future__ import annotations

import ctypes
import os

from .libc import libc

__all__ = ["openat2", "OpenHow", "SYS_OPENAT2", "RESOLVE_NO_XDEV", "RESOLVE_NO_MAGICLINKS",
           "RESOLVE_NO_SYMLINKS", "RESOLVE_BENEATH", "RESOLVE_IN_ROOT", "RESOLVE_CACHED"]

#: the same number on every architecture (the generic syscall table, Linux 5.6)
SYS_OPENAT2 = 437

# include/uapi/linux/openat2.h
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10
RESOLVE_CACHED = 0x20


class OpenHow(ctypes.Structure):
    """``struct open_how { u64 flags; u64 mode; u64 resolve; }`` (24 bytes, version 0)."""

    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def openat2(dirfd: int, path: str | bytes, flags: int, mode: int = 0, *, resolve: int = 0) -> int:
    """openat2(2): a new fd for ``path`` relative to ``dirfd``; ``OSError`` with the errno on failure.

    ``flags`` are open(2)'s ``O_*`` (``O_CLOEXEC`` is added: the fd never leaks into an exec),
    ``resolve`` the ``RESOLVE_*`` bits above.
    """
    how = OpenHow(flags | os.O_CLOEXEC, mode, resolve)
    p = os.fsencode(path)
    ret = libc.syscall(ctypes.c_long(SYS_OPENAT2), ctypes.c_int(dirfd), ctypes.c_char_p(p),
                       ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how)))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"openat2 {os.fsdecode(p)}: {os.strerror(err)}", os.fsdecode(p))
    return int(ret)
