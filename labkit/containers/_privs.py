"""Thin ctypes wrappers for the privilege syscalls Python lacks: prctl, capget/capset, seccomp, mount_setattr.

Each keeps the kernel's semantics and raises ``OSError`` with the errno (rubber-docker's ``linux.c``
style). What to drop and in which order is decided one layer up (:mod:`labkit.containers._setup`).
Only the standard library is imported here: the spawner (``python -S``) loads this module.

>>> from labkit.containers import _privs
>>> eff, perm, inh = _privs.capget()
>>> eff & ~perm == 0                   # the effective set is always within the permitted set
True
>>> _privs.prctl(_privs.PR_GET_NO_NEW_PRIVS) in (0, 1)
True
"""
from __future__ import annotations

import ctypes
import errno
import os

from labkit._sys.libc import check, fsencode, libc

# include/uapi/linux/prctl.h
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_KEEPCAPS = 8
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
PR_SET_PDEATHSIG = 1

# include/uapi/linux/capability.h
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

# include/uapi/linux/seccomp.h; seccomp(2) is 317 on x86_64, 277 on aarch64/riscv64
SECCOMP_SET_MODE_FILTER = 1
_SYS_SECCOMP = {"x86_64": 317, "aarch64": 277, "arm64": 277, "riscv64": 277}

# include/uapi/linux/mount.h; mount_setattr(2) is 442 everywhere (Linux 5.12)
SYS_MOUNT_SETATTR = 442
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
MOUNT_ATTR_NOEXEC = 0x8


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    """prctl(2) with integer arguments; returns the call's result (``PR_GET_*`` values)."""
    ret = libc.prctl(ctypes.c_int(option), ctypes.c_ulong(arg2), ctypes.c_ulong(arg3), ctypes.c_ulong(arg4),
                     ctypes.c_ulong(arg5))
    return check(ret, f"prctl {option}")


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def capget() -> tuple[int, int, int]:
    """capget(2) of the calling thread: ``(effective, permitted, inheritable)`` as 64-bit masks."""
    hdr = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    check(libc.capget(ctypes.byref(hdr), data), "capget")
    eff, perm, inh = (getattr(data[0], k) | (getattr(data[1], k) << 32)
                      for k in ("effective", "permitted", "inheritable"))
    return eff, perm, inh


def capset(effective: int, permitted: int, inheritable: int) -> None:
    """capset(2) of the calling thread. New permitted must be within the old permitted set, effective
    within the new permitted set, inheritable within old inheritable | (bounding & permitted) (EPERM)."""
    hdr = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for i in (0, 1):
        data[i].effective = (effective >> (32 * i)) & 0xFFFFFFFF
        data[i].permitted = (permitted >> (32 * i)) & 0xFFFFFFFF
        data[i].inheritable = (inheritable >> (32 * i)) & 0xFFFFFFFF
    check(libc.capset(ctypes.byref(hdr), data), "capset")


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def seccomp_set_mode_filter(bpf: bytes, flags: int = 0) -> None:
    """seccomp(SECCOMP_SET_MODE_FILTER): install the classic-BPF program ``bpf`` (8 bytes per
    instruction) on the calling thread. Needs ``no_new_privs`` set or CAP_SYS_ADMIN (else EACCES);
    the filter is inherited across fork and execve and can never be removed."""
    nr = _SYS_SECCOMP.get(os.uname().machine)
    if nr is None:
        raise OSError(errno.ENOSYS, f"seccomp: unknown syscall number on {os.uname().machine}")
    if not bpf or len(bpf) % 8:
        raise OSError(errno.EINVAL, "seccomp: a BPF program is a non-empty multiple of 8 bytes")
    buf = ctypes.create_string_buffer(bpf, len(bpf))
    prog = _SockFprog(len(bpf) // 8, ctypes.cast(buf, ctypes.c_void_p))
    check(libc.syscall(ctypes.c_long(nr), ctypes.c_uint(SECCOMP_SET_MODE_FILTER), ctypes.c_uint(flags),
                       ctypes.byref(prog)), "seccomp")


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def mount_setattr(dirfd: int, path: str, flags: int, attr_set: int, attr_clr: int = 0) -> None:
    """mount_setattr(2) (Linux 5.12): change per-mount attributes (``MOUNT_ATTR_*``) of the mount at
    ``path`` relative to ``dirfd`` (``AT_EMPTY_PATH`` with ``""``: the fd itself), and of every mount
    below it with ``AT_RECURSIVE``. Needs CAP_SYS_ADMIN; ENOSYS on older kernels."""
    attr = _MountAttr(attr_set, attr_clr, 0, 0)
    check(libc.syscall(ctypes.c_long(SYS_MOUNT_SETATTR), ctypes.c_int(dirfd), fsencode(path),
                       ctypes.c_uint(flags), ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr))),
          f"mount_setattr {path}", path)
