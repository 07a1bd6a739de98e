"""Path-safe extraction of untrusted tar archives into a root directory (every archive is hostile).

Every path is resolved one component at a time from a file descriptor of the root, with ``O_NOFOLLOW``
and ``O_DIRECTORY`` on each directory and ``O_NOFOLLOW|O_EXCL`` on the final name, so no symlink —
whether it came with the archive or was planted by an earlier member — is ever followed, and no byte
lands outside the root. ``tarfile``'s ``data_filter`` is not used: it refuses absolute symlinks, which
every Debian rootfs has (``/etc/localtime``); labkit creates those links but never follows them.
Reading the archive (compression by content, integrity checks, malformed input) is
:mod:`labkit.images.archive`'s job.

Rules (a violation is ``InvalidArgument`` naming the member):

* names: no NUL, at most ``max_name`` bytes (255 per component), not absolute, no ``..`` component;
* a path whose parent component is a symlink or a non-directory is refused (archives made by ``tar`` never
  write through a link; a layer that does is an attack);
* a relative symlink whose target climbs out of the root is refused; absolute targets are allowed (they
  mean "inside the root" in a container) but never followed here;
* a hard link must name an earlier non-directory member inside the root;
* device nodes are skipped (listed in the result) unless ``allow_devices``; FIFOs are fine;
* setuid/setgid bits are stripped unless ``keep_setuid``; the ``security.capability`` and ``trusted.*``
  extended attributes (file capabilities, and attributes only root may read) are dropped unless
  ``keep_privileged_xattrs`` — both are privilege an archive should not grant by itself;
* ``max_member_size``, ``max_total_size`` (apparent bytes) and ``max_members`` bound a member, the sum and
  the count. Unset, they derive from the free space and inodes of the filesystem under ``root``
  (:func:`space_limits`: free minus a margin), and while writing, the filesystem's free space is
  polled so that the extraction stops before the margin is eaten (block rounding, directories and
  inodes are not in the apparent total) — a gzip bomb is refused, never fills the disk;
* a later member replaces an earlier one of the same name (a directory only by a directory's metadata).

With ``whiteouts=True`` (applying an OCI/Docker layer on a parent) ``.wh.NAME`` deletes ``NAME`` and
``.wh..wh..opq`` empties its directory of what lower layers put there.

>>> import io, tarfile, tempfile
>>> buf = io.BytesIO()
>>> with tarfile.open(fileobj=buf, mode="w") as tf:
...     ti = tarfile.TarInfo("../evil"); tf.addfile(ti, io.BytesIO(b""))
>>> _ = buf.seek(0)
>>> try:
...     extract(buf, tempfile.mkdtemp())
... except Exception as e:
...     print(type(e).__name__, "../evil" in str(e))
InvalidArgument True
"""
from __future__ import annotations

import errno
import os
import shutil
import stat
import tarfile
from dataclasses import dataclass, field

from .. import errors
from .archive import Readable, TarStream, open_tar

__all__ = ["extract", "ExtractResult", "Limits", "space_limits", "DEFAULT_LIMITS", "PRIVILEGED_XATTRS"]

#: fixed ceilings, whatever the free space says
DEFAULT_LIMITS = {"max_member_size": 64 << 30, "max_total_size": 256 << 30, "max_members": 2_000_000,
                  "max_name": 4096}
#: the margin of free space an extraction leaves: 5% of the filesystem, at least 1 MiB, at most 256 MiB
MARGIN_MIN, MARGIN_MAX, MARGIN_FRACTION = 1 << 20, 256 << 20, 20
PRIVILEGED_XATTRS = ("security.capability", "trusted.")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_WH = ".wh."
_ARCHIVE_ERRNOS = {errno.EINVAL, errno.ENAMETOOLONG, errno.EEXIST, errno.ENOTDIR, errno.ELOOP, errno.EISDIR,
                   errno.EPERM, errno.EXDEV, errno.EMLINK}
_OPQ = ".wh..wh..opq"


@dataclass
class ExtractResult:
    """What an extraction did: members written, bytes of file data, what it skipped or dropped and why."""

    members: int = 0
    bytes: int = 0
    skipped: list[str] = field(default_factory=list)
    whiteouts: int = 0


@dataclass(frozen=True)
class Limits:
    """Bounds of one extraction. ``min_free_bytes``/``min_free_inodes``: the margin the filesystem under
    the root keeps while writing (0: not polled)."""

    max_member_size: int
    max_total_size: int
    max_members: int
    max_name: int = 4096
    min_free_bytes: int = 0
    min_free_inodes: int = 0


def space_limits(path_or_fd: str | os.PathLike[str] | int) -> Limits:
    """Default limits for extracting onto the filesystem at ``path_or_fd``: the apparent total and any
    member at most its free space minus a margin (5%, 1 MiB to 256 MiB), the member count at most its
    free inodes minus a margin (filesystems that report no inode count, like btrfs: 2 million), and
    never above :data:`DEFAULT_LIMITS`.

    >>> lim = space_limits("/")
    >>> 0 <= lim.max_total_size <= DEFAULT_LIMITS["max_total_size"] and lim.min_free_bytes >= MARGIN_MIN
    True
    """
    st = os.fstatvfs(path_or_fd) if isinstance(path_or_fd, int) else os.statvfs(path_or_fd)
    size, free = st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
    margin = min(MARGIN_MAX, max(MARGIN_MIN, size // MARGIN_FRACTION))
    budget = max(0, free - margin)
    if st.f_files > 0:
        imargin = min(10_000, max(16, st.f_files // MARGIN_FRACTION))
        members = min(DEFAULT_LIMITS["max_members"], max(0, st.f_favail - imargin))
    else:
        imargin, members = 0, DEFAULT_LIMITS["max_members"]
    return Limits(max_member_size=min(budget, DEFAULT_LIMITS["max_member_size"]),
                  max_total_size=min(budget, DEFAULT_LIMITS["max_total_size"]), max_members=members,
                  max_name=DEFAULT_LIMITS["max_name"], min_free_bytes=margin, min_free_inodes=imargin)


def _bad(member: str, why: str, fix: str = "the archive is unsafe; fix or rebuild it") -> errors.InvalidArgument:
    return errors.InvalidArgument(f"archive member {member!r}", why, fix=fix)


class _Space:
    """Polls the free space under the root while writing: often enough that the margin cannot be eaten
    between two polls (each member is counted as its data rounded up to blocks, plus one block)."""

    def __init__(self, root_fd: int, lim: Limits) -> None:
        self.fd, self.lim = root_fd, lim
        self.block = max(512, os.fstatvfs(root_fd).f_bsize)
        self.every = max(self.block, lim.min_free_bytes // 4)
        self.pending = 0
        self.pending_inodes = 0

    def add(self, nbytes: int, member: str, *, inode: bool = False) -> None:
        if not self.lim.min_free_bytes:
            return
        self.pending += -(-nbytes // self.block) * self.block + (self.block if inode else 0)
        self.pending_inodes += inode
        if self.pending >= self.every or self.pending_inodes >= max(1, self.lim.min_free_inodes // 4):
            self.poll(member)

    def poll(self, member: str) -> None:
        self.pending = self.pending_inodes = 0
        st = os.fstatvfs(self.fd)
        free = st.f_bavail * st.f_frsize
        if free < self.lim.min_free_bytes:
            raise _bad(member, f"would fill the filesystem: {free} bytes left, below the margin of "
                       f"{self.lim.min_free_bytes}", fix="free space, or give the store a bigger filesystem")
        if st.f_files > 0 and st.f_favail < self.lim.min_free_inodes:
            raise _bad(member, f"would use up the filesystem's inodes: {st.f_favail} left, below the margin of "
                       f"{self.lim.min_free_inodes}", fix="the archive has too many files for this filesystem")


def _split(member: tarfile.TarInfo, raw: str, max_name: int, *, what: str = "name") -> list[str]:
    name = member.name
    if "\0" in raw:
        raise _bad(name, f"its {what} contains a NUL byte")
    if len(raw.encode("utf-8", "surrogateescape")) > max_name:
        raise _bad(name, f"its {what} is longer than {max_name} bytes")
    if raw.startswith("/"):
        raise _bad(name, f"its {what} {raw!r} is absolute", fix="archive paths must be relative to the root")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    for p in parts:
        if p == "..":
            raise _bad(name, f"its {what} {raw!r} has a '..' component that could leave the root")
        if len(p.encode("utf-8", "surrogateescape")) > 255:
            raise _bad(name, f"its {what} has a component longer than 255 bytes")
    return parts


def _open_parent(root_fd: int, parts: list[str], member: str, *, create: bool) -> int:
    """An fd of the directory holding ``parts[-1]``, walking from the root without following any link."""
    fd = os.dup(root_fd)
    try:
        for comp in parts[:-1]:
            try:
                nfd = os.open(comp, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise _bad(member, f"its parent {comp!r} does not exist") from None
                os.mkdir(comp, 0o755, dir_fd=fd)
                nfd = os.open(comp, _DIR_FLAGS, dir_fd=fd)
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR):
                    kind = "a symlink" if stat.S_ISLNK(os.lstat(comp, dir_fd=fd).st_mode) else "not a directory"
                    raise _bad(member,
                               f"its path component {comp!r} is {kind}; labkit never writes through it") from None
                raise
            os.close(fd)
            fd = nfd
        return fd
    except BaseException:
        os.close(fd)
        raise


def _remove_entry(dfd: int, name: str) -> None:
    try:
        st = os.lstat(name, dir_fd=dfd)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(name, dir_fd=dfd)
    else:
        os.unlink(name, dir_fd=dfd)


def _climbs_out(parts: list[str], target: str) -> bool:
    if target.startswith("/"):
        return False
    depth = len(parts) - 1
    for comp in target.split("/"):
        if comp in ("", "."):
            continue
        depth += -1 if comp == ".." else 1
        if depth < 0:
            return True
    return False


def extract(archive: str | os.PathLike[str] | Readable, root: str | os.PathLike[str], *,
            allow_devices: bool = False, keep_setuid: bool = False, keep_privileged_xattrs: bool = False,
            same_owner: bool = True, whiteouts: bool = False, max_member_size: int | None = None,
            max_total_size: int | None = None, max_members: int | None = None, max_name: int | None = None,
            name: str | None = None) -> ExtractResult:
    """Extract ``archive`` (a path or binary reader, any compression) into the existing directory
    ``root``, safely. Limits left as None derive from the free space under ``root`` (:func:`space_limits`);
    ``name`` is how the archive is named in errors (default: its path).

    Raises ``InvalidArgument`` naming the first offending member, or the archive when it is malformed;
    what was written before stays inside ``root`` (the image store throws the whole snapshot away).

    >>> extract("rootfs.tar.gz", "/mnt/rootfs")      # doctest: +SKIP
    ExtractResult(members=1234, bytes=..., skipped=[], whiteouts=0)
    """
    res = ExtractResult()
    root_fd = os.open(os.fspath(root), _DIR_FLAGS)
    try:
        auto = space_limits(root_fd)
        given = {"max_member_size": max_member_size, "max_total_size": max_total_size,
                 "max_members": max_members, "max_name": max_name}
        lim = Limits(**{k: v if v is not None else getattr(auto, k) for k, v in given.items()},
                     min_free_bytes=auto.min_free_bytes, min_free_inodes=auto.min_free_inodes)
        space = _Space(root_fd, lim)
        with open_tar(archive, name=name) as stream:
            _extract(stream, root_fd, res, lim, space, allow_devices=allow_devices, keep_setuid=keep_setuid,
                     keep_xattrs=keep_privileged_xattrs, same_owner=same_owner, whiteouts=whiteouts)
    finally:
        os.close(root_fd)
    return res


def _extract(stream: TarStream, root_fd: int, res: ExtractResult, lim: Limits, space: _Space, *,
             allow_devices: bool, keep_setuid: bool, keep_xattrs: bool, same_owner: bool,
             whiteouts: bool) -> None:
    dir_times: list[tuple[list[str], float]] = []
    layer_made: set[tuple[str, ...]] = set()
    for m in stream:
        res.members += 1
        if res.members > lim.max_members:
            raise _bad(m.name, f"is member number {res.members}, over the limit of {lim.max_members}")
        if m.isreg() and m.size > lim.max_member_size:
            raise _bad(m.name, f"declares {m.size} bytes, over the per-member limit of {lim.max_member_size}")
        if m.isreg() and res.bytes + m.size > lim.max_total_size:
            raise _bad(m.name, f"brings the total past the limit of {lim.max_total_size} bytes")
        parts = _split(m, m.name, lim.max_name)
        if not parts:
            if m.isdir():       # "./" itself: the root's own metadata (its mtime is set last, below)
                _apply_meta(root_fd, None, m, same_owner, keep_setuid, keep_xattrs, res)
                dir_times.append(([], m.mtime))
                continue
            raise _bad(m.name, "names the root itself but is not a directory")
        base = parts[-1]
        if whiteouts and base.startswith(_WH):
            pfd = _open_parent(root_fd, parts, m.name, create=True)
            try:
                if base == _OPQ:
                    prefix = tuple(parts[:-1])
                    for entry in os.listdir(pfd):
                        if prefix + (entry,) not in layer_made:
                            _remove_entry(pfd, entry)
                else:
                    target = base[len(_WH):]
                    if not target or target in (".", ".."):
                        raise _bad(m.name, "is a whiteout of nothing")
                    _remove_entry(pfd, target)
            finally:
                os.close(pfd)
            res.whiteouts += 1
            continue
        if m.ischr() or m.isblk():
            if not allow_devices:
                res.skipped.append(f"{m.name}: device node (allow_devices=True to keep)")
                continue
        elif not (m.isreg() or m.isdir() or m.issym() or m.islnk() or m.isfifo()):
            res.skipped.append(f"{m.name}: unsupported member type {m.type!r}")
            continue
        try:
            pfd = _open_parent(root_fd, parts, m.name, create=True)
            try:
                _one(stream, m, parts, pfd, root_fd, res, lim, space, same_owner=same_owner,
                     keep_setuid=keep_setuid, keep_xattrs=keep_xattrs, dir_times=dir_times)
            finally:
                os.close(pfd)
        except OSError as e:
            if e.errno in _ARCHIVE_ERRNOS:     # the archive's fault: name the member
                raise _bad(m.name, f"cannot be created: {e.strerror}") from None
            raise OSError(e.errno, f"{e.strerror} (extracting archive member {m.name!r})") from e
        space.add(0, m.name, inode=True)
        if whiteouts:
            layer_made.add(tuple(parts))
    space.poll("(end of archive)")
    for parts, mtime in reversed(dir_times):
        if not parts:
            os.utime(root_fd, (mtime, mtime))
            continue
        try:
            pfd = _open_parent(root_fd, parts, "/".join(parts), create=False)
        except errors.InvalidArgument:
            continue
        try:
            fd = os.open(parts[-1], _DIR_FLAGS, dir_fd=pfd)
            os.utime(fd, (mtime, mtime))
            os.close(fd)
        except OSError:
            pass
        finally:
            os.close(pfd)


def _mode(m: tarfile.TarInfo, keep_setuid: bool) -> int:
    mode = m.mode & 0o7777
    if keep_setuid:
        return mode
    # setgid on a directory only makes new files inherit its group: harmless, and kept
    return mode & ~stat.S_ISUID if m.isdir() else mode & ~(stat.S_ISUID | stat.S_ISGID)


def _apply_meta(pfd: int, name: str | None, m: tarfile.TarInfo, same_owner: bool, keep_setuid: bool,
                keep_xattrs: bool, res: ExtractResult) -> None:
    fd = pfd if name is None else os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
                                          | (os.O_DIRECTORY if m.isdir() else 0), dir_fd=pfd)
    try:
        _set_meta(fd, m, same_owner, keep_setuid, keep_xattrs, res)
    finally:
        if fd != pfd:
            os.close(fd)


def _set_meta(fd: int, m: tarfile.TarInfo, same_owner: bool, keep_setuid: bool, keep_xattrs: bool,
              res: ExtractResult) -> None:
    """Owner, mode, ``SCHILY.xattr.*`` and (for non-directories) mtime of an open member."""
    if same_owner:
        os.chown(fd, m.uid, m.gid)
    os.chmod(fd, _mode(m, keep_setuid))
    for k, v in (m.pax_headers or {}).items():
        if k.startswith("SCHILY.xattr."):
            attr = k[len("SCHILY.xattr."):]
            if not keep_xattrs and attr.startswith(PRIVILEGED_XATTRS):
                res.skipped.append(f"{m.name}: xattr {attr} dropped (keep_privileged_xattrs=True to keep)")
                continue
            try:
                os.setxattr(fd, attr, v.encode("utf-8", "surrogateescape"))
            except OSError:
                pass
    if not m.isdir():
        os.utime(fd, (m.mtime, m.mtime))


def _one(stream: TarStream, m: tarfile.TarInfo, parts: list[str], pfd: int, root_fd: int, res: ExtractResult,
         lim: Limits, space: _Space, *, same_owner: bool, keep_setuid: bool, keep_xattrs: bool,
         dir_times: list[tuple[list[str], float]]) -> None:
    max_name = lim.max_name
    name = parts[-1]
    try:
        old = os.lstat(name, dir_fd=pfd)
    except FileNotFoundError:
        old = None
    if m.isdir():
        if old is not None and not stat.S_ISDIR(old.st_mode):
            _remove_entry(pfd, name)
            old = None
        if old is None:
            os.mkdir(name, 0o700, dir_fd=pfd)
        _apply_meta(pfd, name, m, same_owner, keep_setuid, keep_xattrs, res)
        dir_times.append((parts, m.mtime))
        return
    if old is not None:
        _remove_entry(pfd, name)
    if m.isreg():
        src = stream.extractfile(m)
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=pfd)
        try:
            written = 0
            while True:
                chunk = src.read(1 << 20) if src is not None else b""
                if not chunk:
                    break
                written += len(chunk)
                if written > lim.max_member_size or res.bytes + written > lim.max_total_size:
                    raise _bad(m.name, "holds more data than the limits allow")
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view):]
                space.add(len(chunk), m.name)
            res.bytes += written
            _set_meta(fd, m, same_owner, keep_setuid, keep_xattrs, res)
        finally:
            os.close(fd)
    elif m.issym():
        target = m.linkname
        if "\0" in target or len(target) > max_name:
            raise _bad(m.name, "has a symlink target with NUL or over the length limit")
        if _climbs_out(parts, target):
            raise _bad(m.name, f"is a symlink to {target!r}, which climbs out of the root")
        os.symlink(target, name, dir_fd=pfd)
        if same_owner:
            os.chown(name, m.uid, m.gid, dir_fd=pfd, follow_symlinks=False)
        os.utime(name, (m.mtime, m.mtime), dir_fd=pfd, follow_symlinks=False)
    elif m.islnk():
        lparts = _split(m, m.linkname, max_name, what="hard link target")
        if not lparts:
            raise _bad(m.name, "is a hard link to the root")
        lpfd = _open_parent(root_fd, lparts, m.name, create=False)
        try:
            try:
                st = os.lstat(lparts[-1], dir_fd=lpfd)
            except FileNotFoundError:
                raise _bad(m.name, f"is a hard link to {m.linkname!r}, which is not in the archive before it") from None
            if stat.S_ISDIR(st.st_mode):
                raise _bad(m.name, f"is a hard link to the directory {m.linkname!r}")
            if stat.S_ISREG(st.st_mode) and not keep_setuid and st.st_mode & (stat.S_ISUID | stat.S_ISGID):
                raise _bad(m.name, "is a hard link to a setuid/setgid file")
            os.link(lparts[-1], name, src_dir_fd=lpfd, dst_dir_fd=pfd, follow_symlinks=False)
        finally:
            os.close(lpfd)
    elif m.isfifo() or m.ischr() or m.isblk():
        kind = stat.S_IFIFO if m.isfifo() else stat.S_IFCHR if m.ischr() else stat.S_IFBLK
        os.mknod(name, kind | 0o600, os.makedev(m.devmajor, m.devminor) if not m.isfifo() else 0, dir_fd=pfd)
        # never open() a node (a device open has side effects): change it by name, links not followed
        if same_owner:
            os.chown(name, m.uid, m.gid, dir_fd=pfd, follow_symlinks=False)
        os.chmod(name, _mode(m, keep_setuid), dir_fd=pfd)
        os.utime(name, (m.mtime, m.mtime), dir_fd=pfd, follow_symlinks=False)
