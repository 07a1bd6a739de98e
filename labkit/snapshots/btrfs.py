"""The ``btrfs`` backend: each snapshot is a btrfs subvolume; a child is a snapshot of its parent's.

``prepare`` = ``btrfs subvolume snapshot`` of the parent (O(1): the trees are shared, copy-on-write);
``commit`` = set the subvolume read-only (``btrfs property set ro true``); ``remove`` = subvolume
delete. A view binds the parent read-only. Usage counts the extents not shared with any other
subvolume (FIEMAP's SHARED flag), so a child's usage is only what it wrote.

When the store's own filesystem is not btrfs, the backend makes a sparse loop-file btrfs of
``loop_size`` (default 20G) under the store root and mounts it (released on ``close``).

>>> sn = open_snapshotter("btrfs", "/tmp/lk-btrfs", loop_size="4G")   # doctest: +SKIP
"""
from __future__ import annotations

import os
from typing import Any

from .._sys.fs import exclusive_usage, require_binary, run
from .._sys.probe import fs_type, has_filesystem, is_root
from .base import BaseSnapshotter, Kind, Mount, Row, Usage
from .loopfs import LoopFSBacked


class BtrfsSnapshotter(LoopFSBacked, BaseSnapshotter):
    """btrfs subvolumes and snapshots: O(1) copy-on-write copies of whole trees."""

    name = "btrfs"
    loop_fstype = "btrfs"

    @classmethod
    def _can_host(cls, root: str) -> bool:
        return fs_type(root) == "btrfs"

    @classmethod
    def supported(cls, root: str) -> str | None:
        if not is_root():
            return "needs root to make and mount btrfs subvolumes: run as root"
        if not has_filesystem("btrfs"):
            return "the kernel has no btrfs: modprobe btrfs, or use a kernel with CONFIG_BTRFS_FS"
        return require_binary("btrfs", "btrfs-progs") or (
            None if fs_type(root) == "btrfs" else require_binary("mkfs.btrfs", "btrfs-progs"))

    def _create(self, row: Row, chain: list[Row]) -> dict[str, Any] | None:
        fs = self.path(row, "fs")
        if chain and row.kind is Kind.ACTIVE:
            run(["btrfs", "subvolume", "snapshot", self.path(chain[0], "fs"), fs], f"snapshot {row.name!r}")
        elif row.kind is Kind.ACTIVE or not chain:
            run(["btrfs", "subvolume", "create", fs], f"snapshot {row.name!r}")
        return None

    def _mount(self, row: Row, chain: list[Row]) -> Mount:
        if row.kind is Kind.VIEW:
            return Mount("bind", self.path(chain[0] if chain else row, "fs"), ("ro",))
        return Mount("bind", self.path(row, "fs"))

    def _commit(self, row: Row, chain: list[Row]) -> dict[str, Any] | None:
        run(["btrfs", "property", "set", "-ts", self.path(row, "fs"), "ro", "true"], f"commit {row.name!r}")
        return None

    def _remove(self, row: Row) -> None:
        fs = self.path(row, "fs")
        if os.path.isdir(fs):
            run(["btrfs", "subvolume", "delete", fs], f"remove {row.name!r}")

    def _usage(self, row: Row, chain: list[Row]) -> Usage:
        if row.kind is Kind.VIEW and chain:
            return Usage(0, 0)
        return Usage(*exclusive_usage(self.path(row, "fs")))
