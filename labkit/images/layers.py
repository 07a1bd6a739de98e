"""An image's layer as a tar: the difference between its tree and its parent's, written deterministically.

:func:`write_layer` walks both trees together with directory file descriptors (``O_DIRECTORY |
O_NOFOLLOW``) and ``lstat`` — no symlink is ever followed, no mount crossed — and writes to a tar stream
what the new tree adds or changes, and a whiteout for what it deletes (the OCI image spec's
``layer.md``, as Docker's naive differ does it):

* an entry is **changed** when its type, mode, owner, size, mtime (nanoseconds), device number, symlink
  target, extended attributes or (for regular files) link count differ; when both mtimes have no
  nanoseconds (trees that came from a tar) and everything else is equal, the contents are compared, so
  an edit within the same second is not missed;
* a name the parent had and the child has not becomes ``.wh.NAME``; a directory that still exists but
  kept none of the parent's names gets one opaque marker ``.wh..wh..opq`` instead of a whiteout each;
* the parents of every entry written are written too (owner, mode and mtime of a directory travel with
  the layer); the root ``./`` is written in a base layer, and in a child layer only when its mode, owner
  or extended attributes changed (its mtime changes with every top-level entry and means nothing);
* hard links: the first name of an inode in the layer is a file, later names link to it;
* sockets cannot be in a tar: they are skipped and listed.

The tar is reproducible: entries sorted by name, PAX format, numeric owners with empty user and group
names, mode and whole-second mtime from the files (no PAX time records), extended attributes as
``SCHILY.xattr.*`` in sorted order, gzip (if asked) with no name and mtime 0. Saving the same image twice
gives the same bytes, and so does saving an image re-imported from such a layer.

>>> import io, os, tempfile
>>> old, new = tempfile.mkdtemp(), tempfile.mkdtemp()
>>> for d in (old, new):
...     _ = open(os.path.join(d, "keep"), "w").write("same"); os.utime(os.path.join(d, "keep"), (1, 1))
>>> _ = open(os.path.join(old, "gone"), "w").write("x")
>>> _ = open(os.path.join(new, "added"), "w").write("y")
>>> out = io.BytesIO()
>>> stats = write_layer(out, new, old)
>>> import tarfile; _ = out.seek(0); [m.name for m in tarfile.open(fileobj=out)]
['added', '.wh.gone']
"""
from __future__ import annotations

import errno
import gzip
import hashlib
import os
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from .. import errors

__all__ = ["write_layer", "LayerStats", "Digesting", "WH_PREFIX", "OPAQUE", "SKIP_XATTRS", "gzip_writer"]

WH_PREFIX, OPAQUE = ".wh.", ".wh..wh..opq"
#: attributes never carried: overlayfs's own bookkeeping, and the host's SELinux labels
SKIP_XATTRS = ("trusted.overlay.", "user.overlay.", "security.selinux")
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_CHUNK = 1 << 20


@dataclass
class LayerStats:
    """What one layer holds: entries written (whiteouts included), whiteouts, file bytes, skipped names."""

    entries: int = 0
    whiteouts: int = 0
    bytes: int = 0
    skipped: list[str] = field(default_factory=list)


class Digesting:
    """A write-only stream that hashes (sha256) and counts what passes through to ``f`` (or nowhere)."""

    def __init__(self, f: BinaryIO | None = None) -> None:
        self.f, self.h, self.n = f, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.h.update(data)
        self.n += len(data)
        if self.f is not None:
            self.f.write(data)
        return len(data)

    def flush(self) -> None:
        if self.f is not None:
            self.f.flush()

    def tell(self) -> int:
        return self.n

    @property
    def digest(self) -> str:
        """``sha256:<hex>`` of what was written so far."""
        return "sha256:" + self.h.hexdigest()


def gzip_writer(f: BinaryIO, level: int = 6) -> gzip.GzipFile:
    """A gzip stream into ``f`` whose header holds no file name and mtime 0 (same input, same bytes)."""
    return gzip.GzipFile(filename="", mode="wb", fileobj=f, compresslevel=level, mtime=0)


def _xattrs(fd_or_path: int | str) -> dict[str, bytes]:
    follow = not isinstance(fd_or_path, str)
    try:
        names = os.listxattr(fd_or_path, follow_symlinks=follow)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EPERM, errno.EACCES):
            return {}
        raise
    out = {}
    for n in sorted(names):
        if n.startswith(SKIP_XATTRS):
            continue
        try:
            out[n] = os.getxattr(fd_or_path, n, follow_symlinks=follow)
        except OSError as e:
            if e.errno not in (errno.ENODATA, errno.ENOTSUP, errno.EPERM, errno.EACCES):
                raise
    return out


class _Entry:
    """One name in a directory: its lstat and, when asked, its xattrs and link target."""

    __slots__ = ("dfd", "name", "st", "_x", "_link")

    def __init__(self, dfd: int, name: str, st: os.stat_result) -> None:
        self.dfd, self.name, self.st = dfd, name, st
        self._x: dict[str, bytes] | None = None
        self._link: str | None = None

    @property
    def link(self) -> str:
        if self._link is None:
            self._link = os.readlink(self.name, dir_fd=self.dfd)
        return self._link

    def xattrs(self) -> dict[str, bytes]:
        if self._x is None:
            mode = self.st.st_mode
            if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
                fd = os.open(self.name, (_DIR if stat.S_ISDIR(mode) else os.O_RDONLY | os.O_NOFOLLOW
                                         | os.O_CLOEXEC | os.O_NONBLOCK), dir_fd=self.dfd)
                try:
                    self._x = _xattrs(fd)
                finally:
                    os.close(fd)
            else:   # never open a device or FIFO: name it through the directory's fd, the last step not followed
                self._x = _xattrs(f"/proc/self/fd/{self.dfd}/{self.name}")
        return self._x


def _lstat(dfd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _same_content(a: _Entry, b: _Entry) -> bool:
    fa = os.open(a.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=a.dfd)
    try:
        fb = os.open(b.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=b.dfd)
        try:
            while True:
                x, y = os.read(fa, _CHUNK), os.read(fb, _CHUNK)
                if x != y:
                    return False
                if not x:
                    return True
        finally:
            os.close(fb)
    finally:
        os.close(fa)


def _meta_same(a: _Entry, b: _Entry, *, mtime: bool = True) -> bool:
    sa, sb = a.st, b.st
    if stat.S_IFMT(sa.st_mode) != stat.S_IFMT(sb.st_mode) or sa.st_mode != sb.st_mode \
            or sa.st_uid != sb.st_uid or sa.st_gid != sb.st_gid:
        return False
    if (stat.S_ISCHR(sa.st_mode) or stat.S_ISBLK(sa.st_mode)) and sa.st_rdev != sb.st_rdev:
        return False
    if not stat.S_ISDIR(sa.st_mode) and sa.st_size != sb.st_size:
        return False
    if stat.S_ISREG(sa.st_mode) and sa.st_nlink != sb.st_nlink:
        return False
    if mtime and sa.st_mtime_ns != sb.st_mtime_ns:
        return False
    if stat.S_ISLNK(sa.st_mode) and a.link != b.link:
        return False
    return a.xattrs() == b.xattrs()


def _changed(new: _Entry, old: _Entry) -> bool:
    if not _meta_same(new, old):
        return True
    if stat.S_ISREG(new.st.st_mode) and new.st.st_mtime_ns % 1_000_000_000 == 0 and new.st.st_size:
        return not _same_content(new, old)     # whole-second times (from a tar): the time proves nothing
    return False


class _Writer:
    """Emits tar members in walk order; directories are written lazily, when something inside them is."""

    def __init__(self, tf: tarfile.TarFile, stats: LayerStats) -> None:
        self.tf, self.stats = tf, stats
        self.pending: list[tuple[str, _Entry | None]] = []    # ancestors not written yet (path, entry)
        self.links: dict[tuple[int, int], tuple[str, os.stat_result]] = {}

    def flush(self) -> None:
        for path, e in self.pending:
            if e is not None:
                self._add(path, e)
        self.pending = [(p, None) for p, _ in self.pending]

    def _info(self, path: str, e: _Entry) -> tarfile.TarInfo:
        st = e.st
        ti = tarfile.TarInfo(path)
        ti.mode = stat.S_IMODE(st.st_mode)
        ti.uid, ti.gid = st.st_uid, st.st_gid
        ti.uname = ti.gname = ""
        ti.mtime = st.st_mtime_ns // 1_000_000_000
        pax = {f"SCHILY.xattr.{k}": v.decode("utf-8", "surrogateescape") for k, v in e.xattrs().items()}
        if pax:
            ti.pax_headers = pax
        return ti

    def _add(self, path: str, e: _Entry) -> None:
        mode = e.st.st_mode
        if path != ".":
            name = path.rsplit("/", 1)[-1]
            if name.startswith(WH_PREFIX):
                raise errors.InvalidArgument(f"file {path!r} of the image", f"starts with {WH_PREFIX!r}, which "
                                             "an image layer reserves for whiteouts", fix="rename or remove it first")
        if stat.S_ISSOCK(mode):
            self.stats.skipped.append(f"{path}: socket (a tar cannot hold one)")
            return
        ti = self._info(path, e)
        data: BinaryIO | None = None
        if stat.S_ISDIR(mode):
            ti.type = tarfile.DIRTYPE
        elif stat.S_ISLNK(mode):
            ti.type, ti.linkname = tarfile.SYMTYPE, e.link
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            ti.type = tarfile.CHRTYPE if stat.S_ISCHR(mode) else tarfile.BLKTYPE
            ti.devmajor, ti.devminor = os.major(e.st.st_rdev), os.minor(e.st.st_rdev)
        elif stat.S_ISFIFO(mode):
            ti.type = tarfile.FIFOTYPE
        else:
            key = (e.st.st_dev, e.st.st_ino)
            first = self.links.get(key) if e.st.st_nlink > 1 else None
            if first is not None and first[1].st_size == e.st.st_size and first[1].st_mtime_ns == e.st.st_mtime_ns:
                ti.type, ti.linkname = tarfile.LNKTYPE, first[0]
            else:
                if e.st.st_nlink > 1:
                    self.links[key] = (path, e.st)
                ti.type, ti.size = tarfile.REGTYPE, e.st.st_size
                fd = os.open(e.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=e.dfd)
                data = os.fdopen(fd, "rb")
        try:
            self.tf.addfile(ti, data)
        finally:
            if data is not None:
                data.close()
        self.stats.entries += 1
        self.stats.bytes += ti.size

    def add(self, path: str, e: _Entry) -> None:
        self.flush()
        self._add(path, e)

    def whiteout(self, path: str) -> None:
        self.flush()
        ti = tarfile.TarInfo(path)
        ti.mode, ti.uname, ti.gname, ti.mtime = 0o644, "", "", 0
        self.tf.addfile(ti)
        self.stats.entries += 1
        self.stats.whiteouts += 1


def _join(prefix: str, name: str) -> str:
    return name if prefix in ("", ".") else f"{prefix}/{name}"


def _names(dfd: int) -> list[str]:
    return sorted(os.listdir(dfd))


def _walk(w: _Writer, nfd: int, ofd: int | None, prefix: str, dev: int) -> None:
    """The differences below one directory (``ofd`` None: everything in it is new)."""
    new_names = _names(nfd)
    old_names = _names(ofd) if ofd is not None else []
    if ofd is not None and old_names and not set(old_names) & set(new_names):
        w.flush()
        w.whiteout(_join(prefix, OPAQUE))
        ofd = None        # below an opaque directory everything is new
        old_names = []
    new_set = set(new_names)
    for name in sorted(new_set | set(old_names)):
        path = _join(prefix, name)
        if name not in new_set:
            w.whiteout(_join(prefix, WH_PREFIX + name))
            continue
        st = _lstat(nfd, name)
        if st is None:
            continue
        e = _Entry(nfd, name, st)
        ost = _lstat(ofd, name) if ofd is not None else None
        o = _Entry(ofd, name, ost) if ost is not None and ofd is not None else None
        if stat.S_ISDIR(st.st_mode):
            if st.st_dev != dev:      # a mount inside the tree: not the image's content
                continue
            both = o is not None and stat.S_ISDIR(o.st.st_mode)
            if both and _meta_same(e, o):    # type: ignore[arg-type]
                w.pending.append((path, e))
            else:
                w.add(path, e)
                w.pending.append((path, None))
            cfd = os.open(name, _DIR, dir_fd=nfd)
            try:
                cofd = os.open(name, _DIR, dir_fd=ofd) if both and ofd is not None else None
                try:
                    _walk(w, cfd, cofd, path, dev)
                finally:
                    if cofd is not None:
                        os.close(cofd)
            finally:
                os.close(cfd)
            w.pending.pop()
            continue
        if o is None or _changed(e, o):
            w.add(path, e)


def write_layer(out: BinaryIO, new_root: str, old_root: str | None = None) -> LayerStats:
    """Write to ``out`` the tar of what ``new_root`` changes against ``old_root`` (None: the whole tree,
    a base layer). Both are directories (mounted views); nothing in them is followed or modified.

    >>> write_layer(open("/tmp/layer.tar", "wb"), "/mnt/child", "/mnt/parent")     # doctest: +SKIP
    LayerStats(entries=12, whiteouts=1, bytes=40960, skipped=[])
    """
    stats = LayerStats()
    nfd = os.open(new_root, _DIR)
    try:
        ofd = os.open(old_root, _DIR) if old_root is not None else None
        try:
            dev = os.fstat(nfd).st_dev
            with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tf:
                w = _Writer(tf, stats)
                root = _Entry(nfd, ".", os.fstat(nfd))
                root._x = _xattrs(nfd)
                if ofd is None:
                    w.add(".", root)
                else:
                    old = _Entry(ofd, ".", os.fstat(ofd))
                    old._x = _xattrs(ofd)
                    if not _meta_same(root, old, mtime=False):
                        w.add(".", root)
                _walk(w, nfd, ofd, ".", dev)
        finally:
            if ofd is not None:
                os.close(ofd)
    finally:
        os.close(nfd)
    return stats


def members(path: str) -> Iterator[tarfile.TarInfo]:
    """The members of a tar file (for tests and lessons)."""
    with tarfile.open(path) as tf:
        yield from tf
