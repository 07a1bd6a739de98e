"""Images: a store of committed snapshots with tags, lineage and provenance; safe imports and exports.

The store answers with frozen dataclasses of flat fields (:mod:`labkit.images.records`); this package
never imports pandas (the Lab turns records into DataFrames).

>>> from labkit.images import parse_reference
>>> parse_reference("app")
('app', 'latest')
"""
from __future__ import annotations

from .busybox import build_busybox_rootfs
from .records import (BuildResult, BuildStep, CheckReport, DfRow, HistoryEntry, ImageConfig, ImageInfo,
                      PruneReport, Removal, Requirements, RmiReport, SaveReport, TreeNode)
from .reference import normalize, parse_reference
from .store import ImageStore
from .tarsafe import ExtractResult, Limits, extract, space_limits

__all__ = ["ImageStore", "build_busybox_rootfs", "parse_reference", "normalize", "extract", "ExtractResult",
           "Limits", "space_limits", "ImageInfo", "HistoryEntry", "Removal", "RmiReport", "PruneReport", "DfRow",
           "TreeNode", "Requirements", "CheckReport", "ImageConfig", "SaveReport", "BuildResult", "BuildStep"]
