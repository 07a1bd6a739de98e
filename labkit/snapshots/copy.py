"""The ``copy`` backend: every active snapshot is a full copy of its parent (the baseline).

This is what a container engine without copy-on-write would do, and what every other backend is measured
against: prepare time and space grow linearly with the parent's size.

Layout: ``<root>/snapshots/<id>/fs``. Active snapshots and the first snapshot are plain directories
(bind-mounted); a view binds its parent's directory read-only (a committed parent never changes, so no
copy is needed). Copies use ``cp -a --reflink=never`` so that even on xfs/btrfs the copy is real.

>>> from labkit.snapshots import open_snapshotter
>>> sn = open_snapshotter("copy", "/tmp/lk-copy")          # doctest: +SKIP
>>> sn.prepare("a").type                                     # doctest: +SKIP
'bind'
"""
from __future__ import annotations

import os
from typing import Any

from .._sys.fs import copy_tree, tree_usage
from .base import BaseSnapshotter, Kind, Mount, Row, Usage


class CopySnapshotter(BaseSnapshotter):
    """Full copies; no sharing at all."""

    name = "copy"
    reflink = "never"  # cp's --reflink mode; the reflink backend subclasses this one with "always"

    def _create(self, row: Row, chain: list[Row]) -> dict[str, Any] | None:
        fs = self.path(row, "fs")
        os.mkdir(fs, 0o755)
        if chain and row.kind is Kind.ACTIVE:
            copy_tree(self.path(chain[0], "fs"), fs, reflink=self.reflink)
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
        return self._layer_usage(self.path(row, "fs"))

    @staticmethod
    def _layer_usage(path: str) -> Usage:
        return Usage(*tree_usage(path))
