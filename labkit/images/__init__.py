"""Images: a store of committed snapshots with tags, lineage and provenance; safe imports and exports.

The store answers with frozen dataclasses of flat fields (:mod:`labkit.images.records`); this package
never imports pandas (the Lab turns records into DataFrames).

Names are imported on first use (PEP 562), so ``labkit run`` loads the store and not the archive,
recipe and export machinery (``labkit.images.tarsafe``, ``build``, ``save``, ``interop``) it does not use.

>>> from labkit.images import parse_reference
>>> parse_reference("app")
('app', 'latest')
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

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


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{where}", __name__), name)
    globals()[name] = value          # looked up once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
