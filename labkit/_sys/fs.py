"""Filesystem helpers shared by every layer: copying a tree, measuring allocated and exclusive space, running
host tools with one-line errors, formatting the empty ext4 of a base device.

>>> import tempfile
>>> d = tempfile.mkdtemp(); open(d + "/f", "w").write("x" * 5000)
5000
>>> tree_usage(d).inodes
2
"""
from __future__ import annotations

import ctypes
import fcntl
import os
import stat
from typing import NamedTuple

from .. import errors


class Usage(NamedTuple):
    """Allocated bytes and inode count (``labkit.snapshots.Usage`` has the same two fields)."""

    size: int
    inodes: int


def copy_tree(src: str, dst: str, *, reflink: str = "never") -> None:
    """Copy the contents of ``src`` into the existing directory ``dst`` with ``cp -a`` (ownership, modes,
    times, xattrs, hard links, device nodes and overlay whiteouts kept). ``reflink`` is cp's
    ``--reflink=never|always|auto``: coreutils 9 reflinks by default, so the copy baseline must say never.
    """
    import subprocess  # (here: `labkit run` never starts a tool; its import is ~4 ms)
    res = subprocess.run(["cp", "-a", f"--reflink={reflink}", "--", f"{src}/.", dst],
                         capture_output=True, text=True)
    if res.returncode:
        msg = res.stderr.strip().splitlines()
        raise OSError(f"copying {src} to {dst} failed: {msg[-1] if msg else res.returncode}")


def tree_usage(path: str) -> Usage:
    """Allocated bytes and inode count of everything under ``path`` (hard links counted once), like du."""
    seen: set[tuple[int, int]] = set()
    size = 0
    for st in _walk_stats(path):
        key = (st.st_dev, st.st_ino)
        if key in seen:
            continue
        seen.add(key)
        size += st.st_blocks * 512
    return Usage(size, len(seen))


def _walk_stats(path: str):
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    yield st
    if not stat.S_ISDIR(st.st_mode):
        return
    stack = [path]
    while stack:
        d = stack.pop()
        try:
            it = os.scandir(d)
        except (FileNotFoundError, NotADirectoryError):
            continue
        with it:
            for e in it:
                try:
                    st = e.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                yield st
                if stat.S_ISDIR(st.st_mode):
                    stack.append(e.path)


# ---- FIEMAP (Documentation/filesystems/fiemap.rst) -----------------------------------------------------
FS_IOC_FIEMAP = 0xC020660B
FIEMAP_FLAG_SYNC = 0x1
FIEMAP_EXTENT_LAST = 0x1
FIEMAP_EXTENT_UNKNOWN = 0x2
FIEMAP_EXTENT_DATA_INLINE = 0x200
FIEMAP_EXTENT_SHARED = 0x2000
_NEXT = 128


class _Extent(ctypes.Structure):
    _fields_ = [("fe_logical", ctypes.c_uint64), ("fe_physical", ctypes.c_uint64), ("fe_length", ctypes.c_uint64),
                ("fe_reserved64", ctypes.c_uint64 * 2), ("fe_flags", ctypes.c_uint32),
                ("fe_reserved", ctypes.c_uint32 * 3)]


class _Fiemap(ctypes.Structure):
    _fields_ = [("fm_start", ctypes.c_uint64), ("fm_length", ctypes.c_uint64), ("fm_flags", ctypes.c_uint32),
                ("fm_mapped_extents", ctypes.c_uint32), ("fm_extent_count", ctypes.c_uint32),
                ("fm_reserved", ctypes.c_uint32), ("fm_extents", _Extent * _NEXT)]


def exclusive_bytes(fd: int) -> int:
    """Bytes of the file's extents that are not shared with another file or snapshot (FIEMAP, synced first)."""
    total = 0
    start = 0
    while True:
        fm = _Fiemap(fm_start=start, fm_length=(1 << 64) - 1 - start, fm_flags=FIEMAP_FLAG_SYNC,
                     fm_extent_count=_NEXT)
        fcntl.ioctl(fd, FS_IOC_FIEMAP, fm)
        n = fm.fm_mapped_extents
        if n == 0:
            return total
        for i in range(n):
            e = fm.fm_extents[i]
            if not e.fe_flags & FIEMAP_EXTENT_SHARED:
                total += e.fe_length
            if e.fe_flags & FIEMAP_EXTENT_LAST:
                return total
        last = fm.fm_extents[n - 1]
        start = last.fe_logical + last.fe_length


def exclusive_usage(path: str) -> Usage:
    """Usage from unshared extents: bytes of file data not shared with a parent (reflink, btrfs snapshot);
    inodes = regular files holding exclusive data (a snapshot's directories are shared metadata on btrfs
    and cheap on xfs, so they are not counted). btrfs shares whole extents: a partly rewritten extent stays
    shared for the parent too, so the parent's exclusive bytes only grow when a whole extent is replaced.
    """
    size = 0
    inodes = 0
    seen: set[tuple[int, int]] = set()
    for dirpath, _dirnames, filenames in os.walk(path):
        for name in filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            if not stat.S_ISREG(st.st_mode):
                continue
            fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                excl = exclusive_bytes(fd)
            finally:
                os.close(fd)
            size += excl
            inodes += excl > 0
    return Usage(size, inodes)


def require_binary(name: str, package: str) -> str | None:
    """None when ``name`` is on PATH, else the reason with the apt fix."""
    from shutil import which
    return None if which(name) else f"needs {name}: apt-get install {package}"


def run(cmd: list[str], what: str) -> str:
    """Run a host tool; a failure becomes a one-line OSError naming ``what`` and the tool's last words."""
    import subprocess
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode:
        msg = (res.stderr or res.stdout).strip().splitlines()
        raise errors.LabkitError(what, f"{cmd[0]} failed: {msg[-1] if msg else 'exit ' + str(res.returncode)}")
    return res.stdout


def make_base_ext4(dev: str, scratch: str, *, what: str, discard: bool = False) -> None:
    """Format ``dev`` as the empty ext4 of a base device: root 0755, no lost+found (an image starts empty).

    ``scratch`` is a directory where a temporary mount point can be made.
    """
    import tempfile

    from . import mounts as sysmount
    opts = "lazy_itable_init=1,lazy_journal_init=1" + ("" if discard else ",nodiscard")
    run(["mkfs.ext4", "-q", "-F", "-E", opts, "-L", "labkit-base", dev], what)
    target = tempfile.mkdtemp(prefix="base-", dir=scratch)
    try:
        sysmount.mount(dev, target, "ext4", 0, None)
        try:
            os.rmdir(os.path.join(target, "lost+found"))
            os.chmod(target, 0o755)
        finally:
            sysmount.umount(target)
    finally:
        os.rmdir(target)
