"""The ``overlay`` backend: overlayfs with the parent chain as lower layers (Docker's overlay2).

Each snapshot owns ``<root>/snapshots/<id>/fs`` (its upper layer: only what it changed, deletions as
whiteouts) and ``work`` (overlayfs's workdir). An active snapshot mounts ``overlay`` with its parents as
``lowerdir+`` entries (nearest first) through the new mount API, so the one-page limit of mount(2)'s
option string does not apply; a snapshot without parent is a plain bind mount, as in containerd.
``redirect_dir=on`` lets a directory from a lower layer be renamed in place (without it rename(2)
fails with EXDEV and only ``mv``'s copy fallback works, as on Docker's overlay2). ``index=on`` keeps the
names of a hard-linked lower file together when one is written; at commit, the other names are linked
into the layer, since a committed layer has no index (Docker's overlay2 breaks such links).

The kernel stacks at most 500 lower layers. ``max_layers`` (default 250) bounds the chain: committing a
snapshot that would give its children more lower layers than that **flattens** it — its ``fs`` becomes
the merged content of the whole chain (a squashed layer), and chains stop there. Usage then counts the
full squashed copy, which is honest: removing it frees that much.

>>> sn = open_snapshotter("overlay", "/tmp/lk-ov", max_layers=250)   # doctest: +SKIP
"""
from __future__ import annotations

import errno
import os
import shutil
import stat
from collections.abc import Iterator
from typing import Any

from .._sys.fs import copy_tree, tree_usage
from .._sys.libc import check, libc
from .._sys.openat2 import RESOLVE_BENEATH, RESOLVE_NO_SYMLINKS, openat2
from .._sys.probe import fs_type, has_filesystem, is_root
from .base import BaseSnapshotter, Kind, Mount, Row, Usage

KERNEL_MAX_LAYERS = 500


def _sha1_hex(data: bytes) -> str:
    """SHA-1 from CPython's own implementation: hashlib's digest without loading OpenSSL (~3-6 ms of
    every ``labkit run``; the standard library's ``random`` does the same with ``_sha512``)."""
    try:
        from _sha1 import sha1  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        from hashlib import sha1
    return str(sha1(data).hexdigest())


class OverlaySnapshotter(BaseSnapshotter):
    """overlayfs layers: a child stores only what it changed."""

    name = "overlay"

    def __init__(self, root: str | os.PathLike[str], *, max_layers: int = 250) -> None:
        if not 1 <= max_layers < KERNEL_MAX_LAYERS:
            from ..errors import InvalidArgument
            raise InvalidArgument(f"max_layers {max_layers}", f"is outside 1..{KERNEL_MAX_LAYERS - 1}",
                                  fix="the kernel stacks at most 500 lower layers")
        self.max_layers = max_layers
        super().__init__(root)

    @property
    def mount_name(self) -> str:
        """Prefix of this store's overlay mount sources: ``labkit-overlay-<hash of the store root>``, so
        that snapshot 2 of one store is never taken for snapshot 2 of another."""
        return "labkit-overlay-" + _sha1_hex(self.root.encode())[:8]

    @classmethod
    def supported(cls, root: str) -> str | None:
        if not is_root():
            return "needs root to mount overlayfs: run as root"
        if not has_filesystem("overlay"):
            return "the kernel has no overlayfs: modprobe overlay, or use a kernel with CONFIG_OVERLAY_FS"
        if fs_type(root) in ("overlay", "tmpfs-noxattr"):
            return f"the store at {root} is on overlayfs, which cannot hold upper layers: use another --root"
        return None

    def _layers(self, chain: list[Row]) -> list[str]:
        """Lower directories for a child of ``chain[0]``, nearest first, stopping at a flattened layer."""
        out = []
        for r in chain:
            out.append(self.path(r, "fs"))
            if r.state.get("flat"):
                break
        return out

    def _create(self, row: Row, chain: list[Row]) -> dict[str, Any] | None:
        os.mkdir(self.path(row, "fs"), 0o755)
        if row.kind is Kind.ACTIVE:
            os.mkdir(self.path(row, "work"), 0o700)
        if chain and row.kind is Kind.ACTIVE:
            # the root directory of the merged tree takes its mode/owner from the upper dir: copy the parent's
            st = os.stat(self.path(chain[0], "fs"))
            os.chmod(self.path(row, "fs"), st.st_mode & 0o7777)
            os.chown(self.path(row, "fs"), st.st_uid, st.st_gid)
        return None

    def _mount(self, row: Row, chain: list[Row]) -> Mount:
        lowers = self._layers(chain)
        if row.kind is Kind.VIEW:
            if not lowers:
                return Mount("bind", self.path(row, "fs"), ("ro",))
            if len(lowers) == 1:
                return Mount("bind", lowers[0], ("ro",))
            return Mount("overlay", f"{self.mount_name}-{row.id}",
                         ("ro", *(f"lowerdir+={d}" for d in lowers), "redirect_dir=follow"))
        if not lowers:
            return Mount("bind", self.path(row, "fs"))
        # an ephemeral snapshot (a `run --rm` container's) is mounted volatile, as podman does: its upper
        # layer is never synced (unmount skips syncfs of the store's filesystem); see _persist
        volatile = ("volatile",) if row.state.get("ephemeral") else ()
        return Mount("overlay", f"{self.mount_name}-{row.id}",
                     (*(f"lowerdir+={d}" for d in lowers), f"upperdir={self.path(row, 'fs')}",
                      f"workdir={self.path(row, 'work')}", "redirect_dir=on", "index=on", *volatile))

    def _commit(self, row: Row, chain: list[Row]) -> dict[str, Any] | None:
        lowers = self._layers(chain)
        self._complete_hardlinks(row, lowers)
        shutil.rmtree(self.path(row, "work"), ignore_errors=True)
        if len(lowers) + 1 <= self.max_layers:
            return None
        self._flatten(row, lowers)
        return {**row.state, "flat": True}

    def _complete_hardlinks(self, row: Row, lowers: list[str]) -> None:
        """Give the layer every name of a hard-linked lower file that was copied up.

        With ``index=on`` the kernel copies up only the name that was written (say ``g``) and finds the
        other names (``f``, ``sub/h``) through ``work/index`` while mounted. A committed layer has no index,
        so those names would show the stale lower file: link them into the upper layer now — each one only
        where the container still sees it (no whiteout, symlink, opaque or redirected directory on the way).

        The upper layer is the container's: every lookup in it goes through directory fds without following
        a symlink (a directory replaced by ``-> /etc`` is never entered), so nothing outside it is touched.
        """
        index = self.path(row, "work", "index")     # the kernel's own; a container cannot reach the workdir
        try:
            entries = os.listdir(index)
        except FileNotFoundError:
            return
        wanted = set()
        for e in entries:
            st = os.lstat(os.path.join(index, e))
            if st.st_nlink > 1 and stat.S_ISREG(st.st_mode):  # not the shared whiteout of removed aliases
                wanted.add(st.st_ino)
        if not wanted or not lowers:
            return
        upper_fd = os.open(self.path(row, "fs"), os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            upper_of: dict[int, list[str]] = {}    # inode -> its names in the layer
            for rel, st in _files(upper_fd):
                if st.st_ino in wanted and stat.S_ISREG(st.st_mode):
                    upper_of.setdefault(st.st_ino, []).append(rel)
            if upper_of:
                self._link_aliases(row, lowers, upper_fd, list(upper_of.values()))
            # the copies are now plain hard links of this layer: drop the kernel's bookkeeping of their lower
            # origin and link count, or a child mounted with index=on would count the aliases wrong
            for names in upper_of.values():
                _remove_xattrs(upper_fd, names[0], ("trusted.overlay.origin", "trusted.overlay.nlink"))
        finally:
            os.close(upper_fd)

    def _link_aliases(self, row: Row, lowers: list[str], upper_fd: int, copied: list[list[str]]) -> None:
        """Link, in the upper layer, the other lower names of each copied-up file (``copied``: the names of
        each in the layer; the one that is also a lower name ties it to its lower origin)."""
        merged = (Mount("bind", lowers[0], ("ro",)) if len(lowers) == 1 else
                  Mount("overlay", f"{self.mount_name}-{row.id}-links",
                        ("ro", *(f"lowerdir+={d}" for d in lowers), "redirect_dir=follow")))
        import tempfile  # (commit only: tempfile loads random, not needed to run a container)
        target = tempfile.mkdtemp(prefix="links-", dir=self.path(row))
        try:
            with merged.mount(target):
                view_fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
                try:
                    origin = {}  # lower (dev, ino) -> the upper copy
                    for names in copied:
                        for rel in names:
                            st = _lstat_beneath(view_fd, rel)
                            if st is not None and st.st_nlink > 1 and stat.S_ISREG(st.st_mode):
                                origin[(st.st_dev, st.st_ino)] = rel
                                break
                    for rel, st in _files(view_fd):
                        src = origin.get((st.st_dev, st.st_ino))
                        if src is not None and rel != src:
                            _link_alias(upper_fd, view_fd, src, rel)
                finally:
                    os.close(view_fd)
        finally:
            os.rmdir(target)

    def _flatten(self, row: Row, lowers: list[str]) -> None:
        """Replace ``row``'s upper layer with the merged content of it and its lowers."""
        merged = Mount("overlay", f"{self.mount_name}-{row.id}-flatten",
                       ("ro", f"lowerdir+={self.path(row, 'fs')}", *(f"lowerdir+={d}" for d in lowers),
                        "redirect_dir=follow"))
        flat = self.path(row, "fs.flat")
        os.mkdir(flat)
        import tempfile
        target = tempfile.mkdtemp(prefix="flatten-", dir=self.path(row))
        try:
            with merged.mount(target):
                st = os.stat(target)
                copy_tree(target, flat, reflink="auto")
                os.chmod(flat, st.st_mode & 0o7777)
                os.chown(flat, st.st_uid, st.st_gid)
        except BaseException:
            shutil.rmtree(flat, ignore_errors=True)
            raise
        finally:
            os.rmdir(target)
        old = self.path(row, "fs.old")
        os.rename(self.path(row, "fs"), old)
        os.rename(flat, self.path(row, "fs"))
        shutil.rmtree(old)

    def _persist(self, row: Row) -> None:
        """A volatile mount left the upper layer's writes unsynced: sync the filesystem that holds it."""
        fd = os.open(self.path(row, "fs"), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            check(libc.syncfs(fd), "syncfs", self.path(row, "fs"))
        finally:
            os.close(fd)

    def _remove(self, row: Row) -> None:
        """The directories go with the base class's storage removal."""

    def _usage(self, row: Row, chain: list[Row]) -> Usage:
        if row.kind is Kind.VIEW:
            return Usage(0, 0)
        return Usage(*tree_usage(self.path(row, "fs")))


# ---- walking a layer without following its symlinks ---------------------------------------------------------
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_BENEATH = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS


def _files(top: int) -> Iterator[tuple[str, os.stat_result]]:
    """``(relative path, lstat)`` of every non-directory under the open directory ``top``; directories are
    entered through fds opened with ``O_NOFOLLOW`` relative to their parent, so a symlink (or a directory
    swapped for one meanwhile) is reported as what it is and never followed."""
    stack: list[tuple[str, int, list[os.DirEntry[str]]]] = []
    fd = os.dup(top)
    try:
        with os.scandir(fd) as it:
            stack.append(("", fd, list(it)))
    except BaseException:
        os.close(fd)
        raise
    try:
        while stack:
            rel, fd, entries = stack[-1]
            if not entries:
                os.close(fd)
                stack.pop()
                continue
            e = entries.pop()
            path = f"{rel}/{e.name}" if rel else e.name
            try:
                st = e.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if not stat.S_ISDIR(st.st_mode):
                yield path, st
                continue
            try:
                sub = os.open(e.name, _DIR, dir_fd=fd)
            except OSError as err:
                if err.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                    continue
                raise
            try:
                with os.scandir(sub) as it:
                    stack.append((path, sub, list(it)))
            except BaseException:
                os.close(sub)
                raise
    finally:
        for _rel, fd, _entries in stack:
            os.close(fd)


def _lstat_beneath(top: int, rel: str) -> os.stat_result | None:
    """lstat of ``rel`` below ``top`` when no component on the way is a symlink (else None)."""
    try:
        fd = openat2(top, rel, os.O_PATH | os.O_NOFOLLOW, resolve=_BENEATH)
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.EXDEV):
            return None
        raise
    try:
        return os.fstat(fd)
    finally:
        os.close(fd)


def _hides_lower(fd: int) -> bool:
    """An upper directory that is opaque (re-made by the container) or redirected (renamed) does not show
    the lower directory of the same path below it."""
    for attr, hides in (("trusted.overlay.opaque", lambda v: v == b"y"), ("trusted.overlay.redirect", bool)):
        try:
            if hides(os.getxattr(fd, attr)):
                return True
        except OSError as e:
            if e.errno not in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
                raise
    return False


def _link_alias(upper: int, view: int, src: str, rel: str) -> None:
    """Hard-link the upper file ``src`` at ``rel`` in the upper layer if the container still sees the lower
    name ``rel`` there, copying up missing directories with the lower ones' mode, owner and times."""
    *dirs, name = rel.split("/")
    fd = os.dup(upper)
    try:
        for i, d in enumerate(dirs):
            try:
                st: os.stat_result | None = os.stat(d, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                st = None
            if st is not None and not stat.S_ISDIR(st.st_mode):
                return          # a whiteout, a symlink, a file: the lower name is gone from the container's view
            if st is None:      # a directory of the lower layers only: copy it up
                lower = _lstat_beneath(view, "/".join(dirs[: i + 1]))
                if lower is None or not stat.S_ISDIR(lower.st_mode):
                    return
                os.mkdir(d, 0o700, dir_fd=fd)
            sub = os.open(d, _DIR, dir_fd=fd)
            os.close(fd)
            fd = sub
            if st is None:
                assert lower is not None            # (set above whenever st is None)
                os.fchown(fd, lower.st_uid, lower.st_gid)
                os.fchmod(fd, stat.S_IMODE(lower.st_mode))
                os.utime(fd, ns=(lower.st_atime_ns, lower.st_mtime_ns))
            elif _hides_lower(fd):
                return
        try:
            os.stat(name, dir_fd=fd, follow_symlinks=False)
            return              # the layer has the name already (rewritten, removed, replaced)
        except FileNotFoundError:
            pass
        src_dir, _, src_name = src.rpartition("/")
        sfd = openat2(upper, src_dir or ".", _DIR, resolve=_BENEATH)
        try:
            os.link(src_name, name, src_dir_fd=sfd, dst_dir_fd=fd, follow_symlinks=False)
        finally:
            os.close(sfd)
    finally:
        os.close(fd)


def _remove_xattrs(upper: int, rel: str, names: tuple[str, ...]) -> None:
    """Remove xattrs ``names`` of the regular file ``rel`` below ``upper`` (through an ``O_PATH`` fd, so a
    symlink is never followed and no device or fifo is opened)."""
    try:
        fd = openat2(upper, rel, os.O_PATH | os.O_NOFOLLOW, resolve=_BENEATH)
    except OSError:
        return
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return
        for attr in names:
            try:
                os.removexattr(f"/proc/self/fd/{fd}", attr)
            except OSError:
                pass
    finally:
        os.close(fd)
