"""Thin ctypes wrappers for the namespace syscalls Python 3.11 lacks: unshare, setns, pivot_root, sethostname.

Each keeps the kernel's semantics and raises ``OSError`` with the errno (rubber-docker's ``linux.c``
style); mount/umount2 come from :mod:`labkit._sys.mounts`.

>>> from labkit.containers import _ns
>>> _ns.CLONE_NEWNET == 0x40000000
True
>>> _ns.unshare(_ns.CLONE_NEWUTS)          # doctest: +SKIP
>>> _ns.sethostname("box")                 # doctest: +SKIP
"""
from __future__ import annotations

import ctypes
import errno
import os

from labkit._sys.libc import check, fsencode, libc

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

#: namespace file under /proc/<pid>/ns -> its CLONE_ flag, in the order exec joins them (mnt last, so the
#: other /proc/<pid>/ns files are still reachable through the host's /proc)
NS_FLAGS = {"ipc": CLONE_NEWIPC, "uts": CLONE_NEWUTS, "net": CLONE_NEWNET, "pid": CLONE_NEWPID,
            "mnt": CLONE_NEWNS}

_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "arm64": 41, "riscv64": 41, "ppc64le": 203,
                   "s390x": 217, "i686": 217, "i386": 217, "armv7l": 218}


def unshare(flags: int) -> None:
    """unshare(2): move the calling thread into new namespaces for ``flags`` (``CLONE_NEW*``).

    ``CLONE_NEWPID`` affects only children created afterwards (the first becomes PID 1);
    ``CLONE_NEWNS`` fails with EINVAL in a process whose other threads share its filesystem info.
    """
    check(libc.unshare(ctypes.c_int(flags)), f"unshare {flags:#x}")


def setns(fd: int, nstype: int = 0) -> None:
    """setns(2): join the namespace open at ``fd`` (``/proc/<pid>/ns/<kind>``); ``nstype`` 0 accepts any.

    Joining a PID namespace affects children created afterwards; joining a mount namespace needs the
    caller not to share its filesystem info with other threads.
    """
    check(libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype)), f"setns {nstype:#x}")


def pivot_root(new_root: str, put_old: str) -> None:
    """pivot_root(2): make ``new_root`` (a mount point, not on the current root's mount) the root of this
    mount namespace and move the old root to ``put_old`` (may be ``new_root`` itself, as runc does:
    then unmount ``"."`` with ``MNT_DETACH`` right after)."""
    nr = _SYS_PIVOT_ROOT.get(os.uname().machine)
    if nr is None:
        raise OSError(errno.ENOSYS, f"pivot_root: unknown syscall number on {os.uname().machine}")
    check(libc.syscall(ctypes.c_long(nr), fsencode(new_root), fsencode(put_old)),
          f"pivot_root {new_root} {put_old}", new_root)


def sethostname(name: str) -> None:
    """sethostname(2) in the caller's UTS namespace (at most 64 bytes)."""
    b = name.encode()
    check(libc.sethostname(b, ctypes.c_size_t(len(b))), f"sethostname {name}")


def ns_inode(pid: int | str, kind: str) -> int:
    """Inode of ``/proc/<pid>/ns/<kind>``: two processes share a namespace when these are equal."""
    return os.stat(f"/proc/{pid}/ns/{kind}").st_ino
