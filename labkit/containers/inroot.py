"""Host-side access to a container's root filesystem that never leaves it.

A root filesystem is hostile: an image may ship ``etc/passwd -> /etc/shadow``, ``data -> /root`` or
``etc/group -> /dev/zero``. Code that runs on the host (or in the container's init before
``pivot_root``) therefore never builds a string path ``rootfs + "/" + rel`` and hands it to the kernel;
it opens the root once as a directory fd and resolves every path below it with
``openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`` (:mod:`labkit._sys.openat2`): ``..`` and absolute
symlinks are clamped to the root, exactly as they will be inside the container. What is created is
created through directory fds (``mkdir``/``mknod``/``symlink`` with ``dir_fd``), and mount targets are
given to mount(2) as ``/proc/self/fd/N`` of an ``O_PATH`` fd (runc's defence against CVE-2021-30465).

>>> import os, tempfile
>>> root = tempfile.mkdtemp()
>>> os.symlink("/etc", os.path.join(root, "escape"))        # points at the host's /etc...
>>> rfd = open_root(root)
>>> fd = mkdir_all(rfd, "/escape/made")                     # ...but resolves inside the root
>>> os.path.isdir(os.path.join(root, "etc", "made")), os.path.exists("/etc/made")
(True, False)
>>> os.close(fd); os.close(rfd)
"""
from __future__ import annotations

import errno
import os
import stat

from labkit._sys.openat2 import RESOLVE_IN_ROOT, RESOLVE_NO_MAGICLINKS, openat2

IN_ROOT = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS
#: a file read from a root filesystem on the host (passwd, group) is never larger than this
MAX_READ = 1 << 20


def open_root(path: str) -> int:
    """An ``O_PATH`` directory fd of ``path`` (the root every lookup is clamped to); close it after use."""
    return os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)


def _rel(path: str) -> str:
    rel = path.strip("/")
    return rel or "."


def resolve(root_fd: int, path: str, flags: int = os.O_PATH) -> int:
    """Open ``path`` as seen from inside the root (``OSError`` ENOENT, ENOTDIR... as open(2)); retried on
    ``EAGAIN`` (a concurrent rename)."""
    for _ in range(16):
        try:
            return openat2(root_fd, _rel(path), flags, resolve=IN_ROOT)
        except OSError as e:
            if e.errno != errno.EAGAIN:
                raise
    raise OSError(errno.EAGAIN, f"{path}: lookup kept racing with renames", path)


def fd_path(fd: int) -> str:
    """``/proc/self/fd/N``: how mount(2) and friends take a target resolved through an fd."""
    return f"/proc/self/fd/{fd}"


def _link_target(parent_fd: int, parent: str, name: str) -> str | None:
    """Where the symlink ``name`` in ``parent`` points, as a path to resolve inside the root (``None``
    if it is not a symlink)."""
    try:
        target = os.readlink(name, dir_fd=parent_fd)
    except OSError as e:
        if e.errno in (errno.EINVAL, errno.ENOENT):
            return None
        raise
    return target if target.startswith("/") else f"{parent}/{target}"


def _check_depth(depth: int, path: str) -> None:
    if depth > 40:
        raise OSError(errno.ELOOP, f"{path}: too many levels of symbolic links", path)


def mkdir_all(root_fd: int, path: str, mode: int = 0o755, *, _depth: int = 0) -> int:
    """``mkdir -p path`` inside the root; return an ``O_PATH`` fd of the directory.

    Each missing component is made with ``mkdir(name, dir_fd=parent)`` where ``parent`` was itself
    resolved inside the root, so a symlink anywhere on the way is followed only within the root. A
    dangling symlink on the way has its target made (inside the root, as runc's securejoin does); a
    non-directory on the way raises ``OSError`` (ENOTDIR), a symlink loop ELOOP.
    """
    _check_depth(_depth, path)
    try:
        return resolve(root_fd, path, os.O_PATH | os.O_DIRECTORY)
    except FileNotFoundError:
        pass
    parts = [p for p in path.split("/") if p and p != "."]
    for i, name in enumerate(parts):
        prefix = "/".join(parts[:i + 1])
        try:
            os.close(resolve(root_fd, prefix, os.O_PATH | os.O_DIRECTORY))
            continue
        except FileNotFoundError:
            if name == "..":
                raise
        parent = "/".join(parts[:i])
        pfd = resolve(root_fd, parent, os.O_PATH | os.O_DIRECTORY)
        try:
            try:
                os.mkdir(name, mode, dir_fd=pfd)     # in the parent as resolved inside the root
            except FileExistsError:
                target = _link_target(pfd, parent, name)
                if target is not None:               # a dangling symlink: make what it names, inside
                    os.close(mkdir_all(root_fd, target, mode, _depth=_depth + 1))
        finally:
            os.close(pfd)
    return resolve(root_fd, path, os.O_PATH | os.O_DIRECTORY)


def touch(root_fd: int, path: str, mode: int = 0o644, *, _depth: int = 0) -> int:
    """Make sure a non-directory exists at ``path`` inside the root (an empty file if nothing is there);
    return an ``O_PATH`` fd of it. An existing file, device or FIFO is not opened for I/O, so opening
    has no side effects; an existing directory raises ``IsADirectoryError``. A dangling symlink has its
    target made inside the root."""
    _check_depth(_depth, path)
    try:
        fd = resolve(root_fd, path)
    except FileNotFoundError:
        parent, name = os.path.split(path.rstrip("/"))
        pfd = mkdir_all(root_fd, parent or "/")
        try:
            try:
                os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                                 mode, dir_fd=pfd))
            except FileExistsError:
                target = _link_target(pfd, parent, name)
                if target is not None:
                    os.close(touch(root_fd, target, mode, _depth=_depth + 1))
        finally:
            os.close(pfd)
        fd = resolve(root_fd, path)
    if stat.S_ISDIR(os.fstat(fd).st_mode):
        os.close(fd)
        raise IsADirectoryError(errno.EISDIR, f"{path}: is a directory", path)
    return fd


def read_file(root_fd: int, path: str, limit: int = MAX_READ) -> bytes | None:
    """The contents of the regular file ``path`` inside the root, or ``None`` when it does not exist.

    Anything but a regular file (a device such as ``/dev/zero``, a FIFO, a socket) raises
    ``OSError(EINVAL)`` without being read; so does a file larger than ``limit`` bytes. Opening uses
    ``O_NONBLOCK | O_NOCTTY`` so that a FIFO or terminal cannot block or capture the caller.
    """
    try:
        fd = resolve(root_fd, path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except FileNotFoundError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, f"{path}: not a regular file", path)
        if st.st_size > limit:
            raise OSError(errno.EFBIG, f"{path}: larger than {limit} bytes", path)
        data = b""
        while len(data) <= limit and (chunk := os.read(fd, limit + 1 - len(data))):
            data += chunk
        if len(data) > limit:
            raise OSError(errno.EFBIG, f"{path}: larger than {limit} bytes", path)
        return data
    finally:
        os.close(fd)
