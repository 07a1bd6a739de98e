"""The ``reflink`` backend: a child is a FICLONE copy of its parent (``cp -a --reflink=always``).

Every file is a new inode whose extents are shared with the parent's until written, so prepare costs a
walk of the tree (per file, not per byte) and a child's usage is only what it changed (FIEMAP's SHARED
flag). Needs xfs with ``reflink=1`` or btrfs; when the store's own filesystem is neither, the backend
makes a sparse loop-file xfs (``mkfs.xfs -m reflink=1``) of ``loop_size`` under the store root.

>>> sn = open_snapshotter("reflink", "/tmp/lk-reflink", loop_size="4G")   # doctest: +SKIP
"""
from __future__ import annotations

import subprocess

from .._sys.fs import exclusive_usage, require_binary
from .._sys.probe import fs_type, has_filesystem, is_root
from .base import Usage
from .copy import CopySnapshotter
from .loopfs import LoopFSBacked


def _reflink_capable(root: str) -> bool:
    kind = fs_type(root)
    if kind == "btrfs":
        return True
    if kind == "xfs":
        out = subprocess.run(["xfs_info", root], capture_output=True, text=True).stdout
        return "reflink=1" in out
    return False


class ReflinkSnapshotter(LoopFSBacked, CopySnapshotter):
    """FICLONE copies: per-file copy-on-write on xfs (reflink=1) or btrfs."""

    name = "reflink"
    reflink = "always"
    loop_fstype = "xfs"

    @classmethod
    def supported(cls, root: str) -> str | None:
        if not is_root():
            return "needs root to mount its loop-file xfs: run as root"
        if _reflink_capable(root):
            return None
        if not has_filesystem("xfs"):
            return f"the store at {root} is not on xfs/btrfs and the kernel has no xfs: use --root on xfs or btrfs"
        return require_binary("mkfs.xfs", "xfsprogs")

    @classmethod
    def _can_host(cls, root: str) -> bool:
        return _reflink_capable(root)

    @staticmethod
    def _layer_usage(path: str) -> Usage:
        return Usage(*exclusive_usage(path))
