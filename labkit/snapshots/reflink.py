"""The ``reflink`` backend: a child is a FICLONE copy of its parent (``cp -a --reflink=always``).

Every file is a new inode whose extents are shared with the parent's until written, so prepare costs a
walk of the tree (per file, not per byte) and a child's usage is only what it changed (FIEMAP's SHARED
flag). Needs xfs with ``reflink=1`` or btrfs; when the store's own filesystem is neither, the backend
makes a sparse loop-file xfs (``mkfs.xfs -m reflink=1``) of ``loop_size`` under the store root.

>>> sn = open_snapshotter("reflink", "/tmp/lk-reflink", loop_size="4G")   # doctest: +SKIP
"""
from __future__ import annotations

import os
import subprocess
from typing import Any

from .._sys.probe import fs_type, has_filesystem, is_root
from ._fsutil import copy_tree, exclusive_usage, require_binary
from .base import BaseSnapshotter, Kind, Mount, Row, Usage
from .loopfs import LoopFS


def _reflink_capable(root: str) -> bool:
    kind = fs_type(root)
    if kind == "btrfs":
        return True
    if kind == "xfs":
        out = subprocess.run(["xfs_info", root], capture_output=True, text=True).stdout
        return "reflink=1" in out
    return False


class ReflinkSnapshotter(BaseSnapshotter):
    """FICLONE copies: per-file copy-on-write on xfs (reflink=1) or btrfs."""

    name = "reflink"

    def __init__(self, root: str | os.PathLike[str], *, loop_size: int | str = "20G") -> None:
        self.loop_size = loop_size
        self.loopfs: LoopFS | None = None
        super().__init__(root)

    @classmethod
    def supported(cls, root: str) -> str | None:
        if not is_root():
            return "needs root to mount its loop-file xfs: run as root"
        if _reflink_capable(root):
            return None
        if not has_filesystem("xfs"):
            return f"the store at {root} is not on xfs/btrfs and the kernel has no xfs: use --root on xfs or btrfs"
        return require_binary("mkfs.xfs", "xfsprogs")

    def _open(self) -> None:
        if not _reflink_capable(self.root):
            self.loopfs = LoopFS(self.root, "xfs", size=self.loop_size, backend=self.name)
            self.loopfs.open()
            self.storage = os.path.join(self.loopfs.mountpoint, "snapshots")
            os.makedirs(self.storage, exist_ok=True)

    def _close(self) -> None:
        if self.loopfs is not None:
            self.loopfs.close()

    def _create(self, row: Row, chain: list[Row]) -> dict[str, Any] | None:
        fs = self.path(row, "fs")
        os.mkdir(fs, 0o755)
        if chain and row.kind is Kind.ACTIVE:
            copy_tree(self.path(chain[0], "fs"), fs, reflink="always")
        return None

    def _mount(self, row: Row, chain: list[Row]) -> Mount:
        if row.kind is Kind.VIEW:
            return Mount("bind", self.path(chain[0] if chain else row, "fs"), ("ro",))
        return Mount("bind", self.path(row, "fs"))

    def _remove(self, row: Row) -> None:
        """The directory goes with the base class's storage removal."""

    def _usage(self, row: Row, chain: list[Row]) -> Usage:
        if row.kind is Kind.VIEW:
            return Usage(0, 0)
        return exclusive_usage(self.path(row, "fs"))
