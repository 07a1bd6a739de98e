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

import os
import shutil
import stat
import tempfile
from typing import Any

from .._sys.probe import fs_type, has_filesystem, is_root
from .._sys.fs import copy_tree, tree_usage
from .base import BaseSnapshotter, Kind, Mount, Row, Usage

KERNEL_MAX_LAYERS = 500


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
        import hashlib
        return "labkit-overlay-" + hashlib.sha1(self.root.encode()).hexdigest()[:8]

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
            return Mount("overlay", f"{self.mount_name}-{row.id}", ("ro", *(f"lowerdir+={d}" for d in lowers), "redirect_dir=follow"))
        if not lowers:
            return Mount("bind", self.path(row, "fs"))
        return Mount("overlay", f"{self.mount_name}-{row.id}",
                     (*(f"lowerdir+={d}" for d in lowers), f"upperdir={self.path(row, 'fs')}",
                      f"workdir={self.path(row, 'work')}", "redirect_dir=on", "index=on"))

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
        so those names would show the stale lower file: link them into the upper layer now.
        """
        index = self.path(row, "work", "index")
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
        upper = self.path(row, "fs")
        upper_of: dict[int, str] = {}
        for dirpath, dirnames, filenames in os.walk(upper):
            for name in filenames:
                p = os.path.join(dirpath, name)
                st = os.lstat(p)
                if st.st_ino in wanted and stat.S_ISREG(st.st_mode):
                    upper_of.setdefault(st.st_ino, os.path.relpath(p, upper))
        if not upper_of:
            return
        merged = (Mount("bind", lowers[0], ("ro",)) if len(lowers) == 1 else
                  Mount("overlay", f"{self.mount_name}-{row.id}-links",
                        ("ro", *(f"lowerdir+={d}" for d in lowers), "redirect_dir=follow")))
        target = tempfile.mkdtemp(prefix="links-", dir=self.path(row))
        try:
            with merged.mount(target):
                origin = {}  # lower (dev, ino) -> the upper copy
                for rel in upper_of.values():
                    try:
                        st = os.lstat(os.path.join(target, rel))
                    except FileNotFoundError:
                        continue
                    if st.st_nlink > 1:
                        origin[(st.st_dev, st.st_ino)] = rel
                for dirpath, dirnames, filenames in os.walk(target):
                    for name in filenames:
                        p = os.path.join(dirpath, name)
                        st = os.lstat(p)
                        src = origin.get((st.st_dev, st.st_ino))
                        rel = os.path.relpath(p, target)
                        if src is None or rel == src or os.path.lexists(os.path.join(upper, rel)):
                            continue
                        self._copy_up_dirs(target, upper, os.path.dirname(rel))
                        os.link(os.path.join(upper, src), os.path.join(upper, rel))
        finally:
            os.rmdir(target)
        # the copies are now plain hard links of this layer: drop the kernel's bookkeeping of their lower
        # origin and link count, or a child mounted with index=on would count the aliases wrong
        for rel in upper_of.values():
            for attr in ("trusted.overlay.origin", "trusted.overlay.nlink"):
                try:
                    os.removexattr(os.path.join(upper, rel), attr, follow_symlinks=False)
                except OSError:
                    pass

    @staticmethod
    def _copy_up_dirs(view: str, upper: str, rel: str) -> None:
        """Create ``rel``'s directories in the upper layer with the lower's mode and owner."""
        parts = [p for p in rel.split(os.sep) if p]
        for i in range(1, len(parts) + 1):
            d = os.path.join(upper, *parts[:i])
            if not os.path.lexists(d):
                st = os.stat(os.path.join(view, *parts[:i]))
                os.mkdir(d, st.st_mode & 0o7777)
                os.chown(d, st.st_uid, st.st_gid)
                os.utime(d, ns=(st.st_atime_ns, st.st_mtime_ns))

    def _flatten(self, row: Row, lowers: list[str]) -> None:
        """Replace ``row``'s upper layer with the merged content of it and its lowers."""
        merged = Mount("overlay", f"{self.mount_name}-{row.id}-flatten",
                       ("ro", f"lowerdir+={self.path(row, 'fs')}", *(f"lowerdir+={d}" for d in lowers),
                        "redirect_dir=follow"))
        flat = self.path(row, "fs.flat")
        os.mkdir(flat)
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

    def _remove(self, row: Row) -> None:
        """The directories go with the base class's storage removal."""

    def _usage(self, row: Row, chain: list[Row]) -> Usage:
        if row.kind is Kind.VIEW:
            return Usage(0, 0)
        return Usage(*tree_usage(self.path(row, "fs")))
