"""ctypes access to libc, with errno-checking call helpers.

>>> from labkit._sys.libc import libc
>>> libc.getpid() > 0
True
"""
from __future__ import annotations

import ctypes
import os

# the C library by its soname: ctypes.util.find_library runs ldconfig in a subprocess (milliseconds in
# every process, the container spawner's included)
libc = ctypes.CDLL("libc.so.6", use_errno=True)


def check(ret: int, what: str, *paths: str) -> int:
    """Raise ``OSError(errno)`` when a libc call returned -1; return ``ret`` otherwise."""
    if ret == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}", *paths[:1])
    return ret


def fsencode(p: str | os.PathLike[str] | None) -> bytes | None:
    """Encode a path (or ``None``) for a ``char *`` argument."""
    return None if p is None else os.fsencode(p)
