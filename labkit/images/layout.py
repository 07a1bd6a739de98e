"""The names the image store gives things: snapshot names, snapshot labels, directories under its root.

>>> SNAPSHOT_PREFIX + "0" * 64 == "img-" + "0" * 64
True
"""
from __future__ import annotations

import re

__all__ = ["SNAPSHOT_PREFIX", "BUILD_PREFIX", "VIEW_PREFIX", "L_IMAGE", "L_PARENT", "L_TAG", "L_CREATED_BY",
           "L_COMMENT", "L_RECIPE", "L_BUILD", "L_VIEW", "TMP_DIR", "LEGACY_TMP", "CACHE_DIR", "CACHE_TMP",
           "UNMEASURED", "FULL_ID_RE", "ID_RE"]

#: an image's committed snapshot is ``img-<64 hex id>``
SNAPSHOT_PREFIX = "img-"
#: the active snapshot an import fills, and the views the store mounts to measure and export
BUILD_PREFIX, VIEW_PREFIX = "imgbuild-", "imgview-"
#: labels on an image's snapshot that repeat its row, so that ``check(repair=True)`` can register a
#: snapshot whose row was never written (a crash between the snapshot commit and the insert)
L_IMAGE, L_PARENT, L_TAG, L_CREATED_BY, L_COMMENT = ("labkit.image", "labkit.image.parent", "labkit.image.tag",
                                                     "labkit.image.created_by", "labkit.image.comment")
#: on the snapshot of an image a recipe step made: ``<file>:<line>`` of that step
L_RECIPE = "labkit.recipe"
#: labels on unfinished build and view snapshots
L_BUILD, L_VIEW = "labkit.image.build", "labkit.image.view"
#: ``<root>/tmp``: mount points and scratch directories; the prefixes older versions used at the top
TMP_DIR, LEGACY_TMP = "tmp", ("mnt-", "view-", "rootfs-")
#: ``<root>/cache`` and the prefixes of unfinished downloads in it
CACHE_DIR, CACHE_TMP = "cache", (".tmp-", ".part-")
#: the size column of an image registered but not yet measured
UNMEASURED = -1
FULL_ID_RE = re.compile(r"^[0-9a-f]{64}$")
ID_RE = re.compile(r"^[0-9a-f]{1,64}$")
