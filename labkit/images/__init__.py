"""Images: a store of committed snapshots with tags, lineage and provenance; safe imports and exports.

The store answers with frozen records of flat fields (:mod:`labkit.images.records`); this package
never imports pandas (the Lab turns records into DataFrames).

Names are imported on first use (PEP 562), so ``labkit run`` loads the store and not the archive,
recipe and export machinery (``labkit.images.tarsafe``, ``build``, ``save``, ``interop``) it does not use.

>>> from labkit.images import parse_reference
>>> parse_reference("app")
('app', 'latest')
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .._sys import lazy

if TYPE_CHECKING:
    from .busybox import build_busybox_rootfs
    from .records import (
        BuildResult,
        BuildStep,
        CheckReport,
        DfRow,
        HistoryEntry,
        ImageConfig,
        ImageInfo,
        PruneReport,
        Removal,
        Requirements,
        RmiReport,
        SaveReport,
        TreeNode,
    )
    from .reference import normalize, parse_reference
    from .store import ImageStore
    from .tarsafe import ExtractResult, Limits, extract, space_limits

__all__ = ["ImageStore", "build_busybox_rootfs", "parse_reference", "normalize", "extract", "ExtractResult",
           "Limits", "space_limits", "ImageInfo", "HistoryEntry", "Removal", "RmiReport", "PruneReport", "DfRow",
           "TreeNode", "Requirements", "CheckReport", "ImageConfig", "SaveReport", "BuildResult", "BuildStep"]

#: public name -> the module of this package that defines (or re-exports) it
_WHERE = {"ImageStore": "store", "build_busybox_rootfs": "busybox", "parse_reference": "reference",
          "normalize": "reference", "extract": "tarsafe", "ExtractResult": "tarsafe", "Limits": "tarsafe",
          "space_limits": "tarsafe",
          **{n: "records" for n in ("ImageInfo", "HistoryEntry", "Removal", "RmiReport", "PruneReport", "DfRow",
                                    "TreeNode", "Requirements", "CheckReport", "ImageConfig", "SaveReport",
                                    "BuildResult", "BuildStep")}}


__getattr__, __dir__ = lazy.attributes(__name__, _WHERE, globals())
