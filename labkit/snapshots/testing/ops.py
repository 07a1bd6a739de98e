"""Operations of the conformance suite: each is applied identically to a snapshot's mount and to the flat
reference tree, so that the two can be compared afterwards (containerd's ``fstest.Applier``).

An operation is a callable ``op(root)`` whose ``__name__`` says what it does (``create_file('/a', 3 bytes,
0o644)``); :func:`apply` runs several and turns an ``OSError`` into an ``AssertionError`` naming the step.

>>> import pathlib, tempfile
>>> root = pathlib.Path(tempfile.mkdtemp())
>>> apply(root, create_dir("/etc"), create_file("/etc/hosts", b"127.0.0.1 localhost"))
>>> (root / "etc" / "hosts").stat().st_mtime == MTIME
True
"""
from __future__ import annotations

import errno
import os
import pathlib
import shutil
import socket
import stat
from collections.abc import Callable

__all__ = ["Op", "apply", "create_file", "create_dir", "remove_all", "chown", "chmod", "rename", "link", "symlink",
           "set_xattr", "remove_xattr", "set_mtime", "write_at", "mkfifo", "mknod", "mksock", "MTIME", "MiB"]

MiB = 1 << 20
MTIME = 1_600_000_000
"""The mtime (whole seconds) every file written by an operation gets, so that flat and snapshot agree."""

Op = Callable[[pathlib.Path], None]


def _op(desc: str, fn: Callable[[pathlib.Path], None]) -> Op:
    fn.__qualname__ = fn.__name__ = desc
    return fn


def _p(root: pathlib.Path, path: str) -> pathlib.Path:
    return root / path.lstrip("/")


def apply(root: str | os.PathLike[str], *ops: Op) -> None:
    """Apply ``ops`` in order under ``root``."""
    root = pathlib.Path(root)
    for op in ops:
        try:
            op(root)
        except OSError as e:
            raise AssertionError(f"operation {op.__name__} under {root} failed: {e}") from e


def create_file(path: str, data: bytes = b"", mode: int = 0o644, *, mtime: int = MTIME) -> Op:
    """Write ``data`` to ``path`` (an existing file is truncated in place, keeping its inode), set mode and mtime."""
    def op(root: pathlib.Path) -> None:
        p = _p(root, path)
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, data) if len(data) < MiB else _write_all(fd, data)
            os.fchmod(fd, mode)
        finally:
            os.close(fd)
        os.utime(p, (mtime, mtime))
    return _op(f"create_file({path!r}, {len(data)} bytes, {mode:#o})", op)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def write_at(path: str, offset: int, data: bytes, *, mtime: int = MTIME) -> Op:
    """Overwrite ``data`` at ``offset`` inside an existing file (no truncation), then set its mtime."""
    def op(root: pathlib.Path) -> None:
        p = _p(root, path)
        fd = os.open(p, os.O_WRONLY | os.O_NOFOLLOW)
        try:
            os.lseek(fd, offset, os.SEEK_SET)
            _write_all(fd, data)
        finally:
            os.close(fd)
        os.utime(p, (mtime, mtime))
    return _op(f"write_at({path!r}, {offset}, {len(data)} bytes)", op)


def create_dir(path: str, mode: int = 0o755) -> Op:
    """mkdir -p ``path`` and set its mode."""
    def op(root: pathlib.Path) -> None:
        p = _p(root, path)
        os.makedirs(p, exist_ok=True)
        os.chmod(p, mode)
    return _op(f"create_dir({path!r}, {mode:#o})", op)


def remove_all(path: str) -> Op:
    """rm -rf ``path``."""
    def op(root: pathlib.Path) -> None:
        p = _p(root, path)
        if p.is_dir() and not p.is_symlink():
            for dirpath, dirnames, filenames in os.walk(p, topdown=False):
                for n in filenames:
                    os.unlink(os.path.join(dirpath, n))
                for n in dirnames:
                    q = os.path.join(dirpath, n)
                    os.unlink(q) if os.path.islink(q) else os.rmdir(q)
            os.rmdir(p)
        elif os.path.lexists(p):
            os.unlink(p)
    return _op(f"remove_all({path!r})", op)


def chown(path: str, uid: int, gid: int) -> Op:
    """lchown ``path``."""
    return _op(f"chown({path!r}, {uid}, {gid})", lambda root: os.lchown(_p(root, path), uid, gid))


def chmod(path: str, mode: int) -> Op:
    """chmod ``path``."""
    return _op(f"chmod({path!r}, {mode:#o})", lambda root: os.chmod(_p(root, path), mode))


def rename(src: str, dst: str, *, exdev_fallback: bool = False) -> Op:
    """rename(2) ``src`` to ``dst``. With ``exdev_fallback``, EXDEV (overlayfs renaming a directory of a
    lower layer without ``redirect_dir``) is handled as mv(1) does: copy the tree, then remove the source."""
    def op(root: pathlib.Path) -> None:
        s, d = _p(root, src), _p(root, dst)
        try:
            os.rename(s, d)
        except OSError as e:
            if not (exdev_fallback and e.errno == errno.EXDEV):
                raise
            _copy_like_mv(s, d)
            remove_all(src)(root)
    return _op(f"rename({src!r}, {dst!r})", op)


def _copy_like_mv(s: pathlib.Path, d: pathlib.Path) -> None:
    shutil.copytree(s, d, symlinks=True, copy_function=shutil.copy2)
    for dirpath, dirnames, filenames in os.walk(s):
        rel = os.path.relpath(dirpath, s)
        for n in [".", *dirnames, *filenames]:
            sp, dp = os.path.join(dirpath, n), os.path.join(d, rel, n)
            st = os.lstat(sp)
            os.lchown(dp, st.st_uid, st.st_gid)
            if not stat.S_ISLNK(st.st_mode):
                os.chmod(dp, stat.S_IMODE(st.st_mode))
            os.utime(dp, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def link(src: str, dst: str) -> Op:
    """Hard link ``dst`` to ``src``."""
    return _op(f"link({src!r}, {dst!r})", lambda root: os.link(_p(root, src), _p(root, dst), follow_symlinks=False))


def symlink(target: str, path: str, *, mtime: int = MTIME) -> Op:
    """Symlink ``path`` -> ``target`` (stored verbatim), with the symlink's own mtime set."""
    def op(root: pathlib.Path) -> None:
        p = _p(root, path)
        os.symlink(target, p)
        os.utime(p, (mtime, mtime), follow_symlinks=False)
    return _op(f"symlink({target!r}, {path!r})", op)


def set_xattr(path: str, name: str, value: bytes) -> Op:
    """setxattr (not following symlinks)."""
    return _op(f"set_xattr({path!r}, {name!r})",
               lambda root: os.setxattr(_p(root, path), name, value, follow_symlinks=False))


def remove_xattr(path: str, name: str) -> Op:
    """removexattr (not following symlinks)."""
    return _op(f"remove_xattr({path!r}, {name!r})",
               lambda root: os.removexattr(_p(root, path), name, follow_symlinks=False))


def set_mtime(path: str, mtime: int) -> Op:
    """Set atime and mtime of ``path`` itself (a symlink is not followed)."""
    return _op(f"set_mtime({path!r}, {mtime})",
               lambda root: os.utime(_p(root, path), (mtime, mtime), follow_symlinks=False))


def mkfifo(path: str, mode: int = 0o644, *, mtime: int = MTIME) -> Op:
    """A named pipe (with its mtime set, so that flat and snapshot agree however slow the machine)."""
    def op(root: pathlib.Path) -> None:
        os.mkfifo(_p(root, path))
        os.chmod(_p(root, path), mode)
        os.utime(_p(root, path), (mtime, mtime))
    return _op(f"mkfifo({path!r}, {mode:#o})", op)


def mknod(path: str, kind: str, major: int, minor: int, mode: int = 0o600, *, mtime: int = MTIME) -> Op:
    """A character (``kind="c"``) or block (``"b"``) device node (needs CAP_MKNOD), with its mtime set."""
    def op(root: pathlib.Path) -> None:
        fmt = stat.S_IFCHR if kind == "c" else stat.S_IFBLK
        os.mknod(_p(root, path), fmt | mode, os.makedev(major, minor))
        os.chmod(_p(root, path), mode)
        os.utime(_p(root, path), (mtime, mtime))
    return _op(f"mknod({path!r}, {kind}, {major}, {minor})", op)


def mksock(path: str, mode: int = 0o755, *, mtime: int = MTIME) -> Op:
    """A unix socket node (bound through /proc/self/fd so that long paths work), left behind when closed,
    with its mtime set."""
    def op(root: pathlib.Path) -> None:
        p = _p(root, path)
        dfd = os.open(p.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.bind(f"/proc/self/fd/{dfd}/{p.name}")
        finally:
            os.close(dfd)
        os.chmod(p, mode)
        os.utime(p, (mtime, mtime))
    return _op(f"mksock({path!r})", op)
