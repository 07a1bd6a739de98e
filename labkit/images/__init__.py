"""Images: a store of committed snapshots with tags, lineage and provenance; safe imports and exports.

>>> from labkit.images import parse_reference
>>> parse_reference("app")
('app', 'latest')
"""
from __future__ import annotations

from .busybox import build_busybox_rootfs
from .reference import normalize, parse_reference
from .store import ImageStore
from .tarsafe import ExtractResult, extract

__all__ = ["ImageStore", "build_busybox_rootfs", "parse_reference", "normalize", "extract", "ExtractResult"]
