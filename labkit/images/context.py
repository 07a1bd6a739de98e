"""A build context: what ``COPY`` may read, its digest (the step cache's key), and the copy into an image.

The context is a directory on the host, and everything in it is treated as hostile:

* a source is named relative to the context (``/app`` means ``<context>/app``); one that climbs out of it
  (``../x``) is refused, and the context is walked from a directory fd one component at a time with
  ``O_NOFOLLOW``: **no symlink in the context is ever followed**. A source that is itself a symlink is
  refused; symlinks inside a copied directory are copied as symlinks. FIFOs, sockets, devices and other
  filesystems mounted inside the context are refused (a FIFO would block the build, a mount is not the
  context's content);
* the digest is sha256 over every entry (path, type, permission bits, and a file's content or a link's
  target) in sorted order — not owners or times, so a checkout on another machine hits the same cache;
* the copy goes into the mounted image through :func:`labkit._sys.openat2.openat2` with
  ``RESOLVE_IN_ROOT``: the destination's directories are resolved as the container will see them (a
  ``/bin -> usr/bin`` link leads to ``/usr/bin``), clamped inside the image, and the final name is always
  created anew with ``O_EXCL | O_NOFOLLOW``. Files get the source's permission bits (setuid and setgid
  dropped), owner 0:0 (or ``--chown``), and the source's mtime; the content is hashed again while copied,
  and a context that changed since its digest was taken fails the step.

>>> import tempfile, os
>>> ctx = tempfile.mkdtemp()
>>> _ = open(os.path.join(ctx, "app.sh"), "w").write("echo hi\\n")
>>> check_source(ctx, "../etc/passwd", "Labfile:3")       # doctest: +ELLIPSIS
Traceback (most recent call last):
...
labkit.errors.InvalidArgument: Labfile:3: COPY source '../etc/passwd' is outside the build context: ...
>>> check_source(ctx, "/app.sh", "Labfile:3")
'app.sh'
"""
from __future__ import annotations

import errno
import hashlib
import os
import posixpath
import stat
from dataclasses import dataclass

from .. import errors
from .._sys.openat2 import RESOLVE_IN_ROOT, RESOLVE_NO_MAGICLINKS, openat2

__all__ = ["check_source", "digest", "copy_into", "CopyOptions"]

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_IN_ROOT = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS
_CHUNK = 1 << 20


@dataclass(frozen=True)
class CopyOptions:
    """``--chown`` and ``--chmod`` of a COPY (None: the default, 0:0 and the source's bits)."""

    uid: int = 0
    gid: int = 0
    mode: int | None = None


def _bad(where: str, why: str, fix: str | None = None) -> errors.InvalidArgument:
    return errors.InvalidArgument(where, why, fix=fix)


def check_source(context: str, src: str, where: str) -> str:
    """``src`` as a path relative to the context (``""``: the context itself), after checking that it
    stays inside, exists, and reaches no symlink, FIFO, device or other filesystem on the way."""
    parts = [p for p in src.split("/") if p not in ("", ".")]
    rel = posixpath.normpath("/".join(parts)) if parts else ""
    if rel == ".." or rel.startswith("../"):
        raise _bad(where, f"COPY source {src!r} is outside the build context",
                   fix="a recipe copies only files inside its context directory")
    rel = "" if rel == "." else rel
    top = os.open(context, _DIR)
    try:
        dev = os.fstat(top).st_dev
        fd, name = _walk(top, rel, src, where)
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False) if name else os.fstat(fd)
        except FileNotFoundError:
            raise _bad(where, f"COPY source {src!r} is not in the build context {context!r}",
                       fix="give a path relative to the context") from None
        finally:
            if fd != top:
                os.close(fd)
        _kind(st, src, where, dev)
        if stat.S_ISLNK(st.st_mode):
            raise _bad(where, f"COPY source {src!r} is a symlink", fix="labkit follows no symlink in the context: "
                       "name the file it points to")
    finally:
        os.close(top)
    return rel


def _walk(top: int, rel: str, src: str, where: str) -> tuple[int, str]:
    """(fd of the directory holding the last component, its name); ``rel == ""``: (top, "")."""
    if not rel:
        return top, ""
    parts = rel.split("/")
    fd = top
    try:
        for comp in parts[:-1]:
            try:
                nfd = os.open(comp, _DIR, dir_fd=fd)
            except FileNotFoundError:
                raise _bad(where, f"COPY source {src!r} is not in the build context",
                           fix="give a path relative to the context") from None
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise _bad(where, f"COPY source {src!r} goes through {comp!r}, which is a symlink or not a "
                               "directory", fix="labkit follows no symlink in the context") from None
                raise
            if fd != top:
                os.close(fd)
            fd = nfd
        return fd, parts[-1]
    except BaseException:
        if fd != top:
            os.close(fd)
        raise


def _kind(st: os.stat_result, path: str, where: str, dev: int) -> str:
    m = st.st_mode
    if stat.S_ISREG(m):
        return "f"
    if stat.S_ISLNK(m):
        return "l"
    if stat.S_ISDIR(m):
        if st.st_dev != dev:
            raise _bad(where, f"COPY source {path!r} is another filesystem mounted in the context",
                       fix="copy its files into the context instead")
        return "d"
    what = "a FIFO" if stat.S_ISFIFO(m) else "a socket" if stat.S_ISSOCK(m) else "a device"
    raise _bad(where, f"COPY source {path!r} is {what}", fix="a recipe copies files, directories and symlinks")


def _entries(dfd: int, prefix: str, where: str, dev: int):  # type: ignore[no-untyped-def]
    """(relative path, kind, stat, dir fd, name) of everything below ``dfd``, sorted, depth first."""
    for name in sorted(os.listdir(dfd)):
        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        path = f"{prefix}/{name}" if prefix else name
        kind = _kind(st, path, where, dev)
        yield path, kind, st, dfd, name
        if kind == "d":
            cfd = os.open(name, _DIR, dir_fd=dfd)
            try:
                yield from _entries(cfd, path, where, dev)
            finally:
                os.close(cfd)


def _file_hash(dfd: int, name: str) -> str:
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dfd)
    h = hashlib.sha256()
    try:
        while chunk := os.read(fd, _CHUNK):
            h.update(chunk)
    finally:
        os.close(fd)
    return h.hexdigest()


def _record(h: hashlib._Hash, path: str, kind: str, st: os.stat_result, payload: str) -> None:
    h.update(f"{kind}\0{path}\0{stat.S_IMODE(st.st_mode):o}\0{payload}\n".encode("utf-8", "surrogateescape"))


def digest(context: str, sources: list[str], where: str) -> str:
    """sha256 (``sha256:<hex>``) of the sources' entries: path, type, permission bits, content or target."""
    h = hashlib.sha256()
    top = os.open(context, _DIR)
    try:
        dev = os.fstat(top).st_dev
        for src in sources:
            h.update(f"source\0{src}\n".encode("utf-8", "surrogateescape"))
            fd, name = _walk(top, src, src, where)
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False) if name else os.fstat(fd)
                kind = _kind(st, src, where, dev)
                if kind == "f":
                    _record(h, "", kind, st, _file_hash(fd, name))
                    continue
                if kind != "d":
                    raise _bad(where, f"COPY source {src!r} is a symlink", fix="name the file it points to")
                _record(h, "", kind, st, "")
                dfd = os.open(name, _DIR, dir_fd=fd) if name else os.dup(fd)
                try:
                    for path, k, est, efd, ename in _entries(dfd, "", where, dev):
                        payload = (_file_hash(efd, ename) if k == "f"
                                   else os.readlink(ename, dir_fd=efd) if k == "l" else "")
                        _record(h, path, k, est, payload)
                finally:
                    os.close(dfd)
            finally:
                if fd != top:
                    os.close(fd)
    finally:
        os.close(top)
    return "sha256:" + h.hexdigest()


# ---- writing into the image ----------------------------------------------------------------------------
def _resolve(root_fd: int, path: str, flags: int = os.O_PATH | os.O_DIRECTORY) -> int:
    rel = path.strip("/") or "."
    for _ in range(16):
        try:
            return openat2(root_fd, rel, flags, resolve=_IN_ROOT)
        except OSError as e:
            if e.errno != errno.EAGAIN:
                raise
    raise OSError(errno.EAGAIN, f"{path}: lookup kept racing with renames", path)


def _mkdirs(root_fd: int, path: str, where: str, mode: int = 0o755, _depth: int = 0) -> int:
    """``mkdir -p path`` inside the image (links resolved inside it, as the container will see them; a
    dangling link on the way has its target made, inside the image); an ``O_PATH`` fd of the directory."""
    if _depth > 40:
        raise _bad(where, f"path {path!r} of the image: too many levels of symbolic links", fix="fix the links")
    done = ""
    for comp in [p for p in path.split("/") if p]:
        nxt = f"{done}/{comp}"
        try:
            os.close(_resolve(root_fd, nxt))
        except FileNotFoundError:
            pfd = _resolve(root_fd, done or "/")
            try:
                os.mkdir(comp, mode, dir_fd=pfd)
            except FileExistsError:          # a dangling symlink: make what it names, inside the image
                try:
                    target = os.readlink(comp, dir_fd=pfd)
                except OSError:
                    raise _bad(where, f"path {path!r} of the image: {nxt!r} cannot be made",
                               fix="remove it in an earlier step, or copy elsewhere") from None
                base = target if target.startswith("/") else posixpath.join(done or "/", target)
                os.close(_mkdirs(root_fd, posixpath.normpath("/" + base), where, mode, _depth + 1))
            finally:
                os.close(pfd)
        except NotADirectoryError:
            raise _bad(where, f"path {path!r} of the image: {nxt!r} is not a directory",
                       fix="copy elsewhere, or remove it in an earlier step") from None
        done = nxt
    return _resolve(root_fd, path or "/")


def _clear(pfd: int, name: str, path: str, where: str) -> None:
    """Make room for a new non-directory ``name``: a file or link there goes; a directory is an error."""
    try:
        st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        raise _bad(where, f"COPY would replace the directory {path!r} of the image with a file",
                   fix="copy to another path")
    os.unlink(name, dir_fd=pfd)


def _mode(st: os.stat_result, opts: CopyOptions) -> int:
    if opts.mode is not None:
        return opts.mode
    return stat.S_IMODE(st.st_mode) & ~(stat.S_ISUID | stat.S_ISGID)


def _copy_file(sfd: int, sname: str, st: os.stat_result, pfd: int, name: str, path: str, opts: CopyOptions,
               where: str) -> str:
    """Copy one file; returns the sha256 of what was copied."""
    _clear(pfd, name, path, where)
    src = os.open(sname, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=sfd)
    try:
        dst = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=pfd)
        try:
            fh = hashlib.sha256()
            while chunk := os.read(src, _CHUNK):
                fh.update(chunk)
                view = memoryview(chunk)
                while view:
                    view = view[os.write(dst, view):]
            os.fchown(dst, opts.uid, opts.gid)
            os.fchmod(dst, _mode(st, opts))
            os.utime(dst, ns=(st.st_mtime_ns, st.st_mtime_ns))
        finally:
            os.close(dst)
    finally:
        os.close(src)
    return fh.hexdigest()


def _copy_link(sfd: int, sname: str, st: os.stat_result, pfd: int, name: str, path: str, opts: CopyOptions,
               where: str) -> str:
    """Copy one symlink (as a symlink, never followed); returns its target."""
    target = os.readlink(sname, dir_fd=sfd)
    _clear(pfd, name, path, where)
    os.symlink(target, name, dir_fd=pfd)
    os.chown(name, opts.uid, opts.gid, dir_fd=pfd, follow_symlinks=False)
    os.utime(name, ns=(st.st_mtime_ns, st.st_mtime_ns), dir_fd=pfd, follow_symlinks=False)
    return target


def _copy_tree(dfd: int, root_fd: int, dest: str, prefix: str, opts: CopyOptions, h: hashlib._Hash, where: str,
               dev: int, stamps: list[tuple[str, os.stat_result, bool]]) -> None:
    for name in sorted(os.listdir(dfd)):
        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        rel = f"{prefix}/{name}" if prefix else name
        kind = _kind(st, rel, where, dev)
        path = f"{dest.rstrip('/')}/{name}"
        if kind == "d":
            _record(h, rel, kind, st, "")
            pfd = _resolve(root_fd, dest)
            try:
                try:
                    os.mkdir(name, 0o700, dir_fd=pfd)
                    made = True
                except FileExistsError:
                    made = False
            finally:
                os.close(pfd)
            fd = _mkdirs(root_fd, path, where)      # an existing one may be a link inside the image
            os.close(fd)
            stamps.append((path, st, made))
            cfd = os.open(name, _DIR, dir_fd=dfd)
            try:
                _copy_tree(cfd, root_fd, path, rel, opts, h, where, dev, stamps)
            finally:
                os.close(cfd)
            continue
        pfd = _resolve(root_fd, dest)
        try:
            payload = (_copy_file if kind == "f" else _copy_link)(dfd, name, st, pfd, name, path, opts, where)
        finally:
            os.close(pfd)
        _record(h, rel, kind, st, payload)


def copy_into(context: str, sources: list[str], root: str, dest: str, opts: CopyOptions, where: str) -> str:
    """Copy the checked ``sources`` (relative to ``context``) to ``dest`` (absolute, in the image mounted
    at ``root``) with Docker's rules: several sources, a directory source or a ``dest`` ending in ``/``
    make ``dest`` a directory (a directory source's *contents* go in it); one file to an existing
    directory goes inside it; else ``dest`` is the file's new path. Returns the digest of what was copied
    (the same as :func:`digest` when nothing changed meanwhile)."""
    h = hashlib.sha256()
    root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    top = os.open(context, _DIR)
    stamps: list[tuple[str, os.stat_result, bool]] = []
    try:
        dev = os.fstat(top).st_dev
        kinds = []
        for src in sources:
            fd, name = _walk(top, src, src, where)
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False) if name else os.fstat(fd)
            finally:
                if fd != top:
                    os.close(fd)
            kinds.append(_kind(st, src, where, dev))
        into_dir = dest.endswith("/") or len(sources) > 1 or kinds[0] == "d"
        if not into_dir:
            try:
                os.close(_resolve(root_fd, dest))
                into_dir = True            # an existing directory: the file goes inside it
            except (FileNotFoundError, NotADirectoryError):
                pass
        dest = posixpath.normpath(dest)
        if into_dir:
            os.close(_mkdirs(root_fd, dest, where))
        else:
            os.close(_mkdirs(root_fd, posixpath.dirname(dest), where))
        for src, kind in zip(sources, kinds):
            h.update(f"source\0{src}\n".encode("utf-8", "surrogateescape"))
            fd, name = _walk(top, src, src, where)
            try:
                if kind == "f":
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                    target = posixpath.join(dest, posixpath.basename(src)) if into_dir else dest
                    pfd = _resolve(root_fd, posixpath.dirname(target))
                    try:
                        payload = _copy_file(fd, name, st, pfd, posixpath.basename(target), target, opts, where)
                    finally:
                        os.close(pfd)
                    _record(h, "", kind, st, payload)
                    continue
                st = os.stat(name, dir_fd=fd, follow_symlinks=False) if name else os.fstat(fd)
                _record(h, "", kind, st, "")
                dfd = os.open(name, _DIR, dir_fd=fd) if name else os.dup(fd)
                try:
                    _copy_tree(dfd, root_fd, dest, "", opts, h, where, dev, stamps)
                finally:
                    os.close(dfd)
            finally:
                if fd != top:
                    os.close(fd)
        for path, st, made in reversed(stamps):      # directories: owner, mode and time after their content
            if not made:          # a directory the image had keeps its owner, mode and time
                continue
            fd = _resolve(root_fd, path, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fchown(fd, opts.uid, opts.gid)
                os.fchmod(fd, _mode(st, opts))
                os.utime(fd, ns=(st.st_mtime_ns, st.st_mtime_ns))
            finally:
                os.close(fd)
    finally:
        os.close(top)
        os.close(root_fd)
    return "sha256:" + h.hexdigest()
