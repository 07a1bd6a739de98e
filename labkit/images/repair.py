"""``ImageStore.check``: what a crash left between images.db, the snapshotter and the store's directories,
and its repair (the table is in docs/images.md, "After a crash").

These functions take the store and use its private helpers (one package), so that ``store.py`` stays
about making, looking at and removing images.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from .. import errors
from .._sys.mounts import mounts_under
from ..snapshots import Info, Kind
from .layout import (
    CACHE_DIR,
    CACHE_TMP,
    FULL_ID_RE,
    L_BUILD,
    L_COMMENT,
    L_CREATED_BY,
    L_RECIPE,
    L_TAG,
    L_VIEW,
    LEGACY_TMP,
    SNAPSHOT_PREFIX,
    TMP_DIR,
)
from .records import CheckReport
from .reference import normalize
from .safeio import confined

if TYPE_CHECKING:
    from .store import ImageStore

__all__ = ["check", "leftover_dirs"]


def check(store: ImageStore, *, repair: bool = False) -> CheckReport:
    """Find (and with ``repair``, fix) what a crash left; see :meth:`ImageStore.check`."""
    problems: list[str] = []
    repairs: list[str] = []

    def found(problem: str, action: str, fn: Callable[[], Any] | None = None) -> None:
        problems.append(problem)
        if fn is None:
            repairs.append("none: " + action)
        elif not repair:
            repairs.append(f"would {action}")
        else:
            try:
                fn()
            except (errors.LabkitError, OSError) as e:
                repairs.append(f"not repaired ({action}): {' '.join(str(e).split())}")
            else:
                repairs.append(action)

    with store._lock:
        rows = {r[1]: r[0] for r in store.db.execute("SELECT id, snapshot FROM images")}
        infos = {i.name: i for i in store.sn.walk()}
        for i in infos.values():
            if i.kind is not Kind.COMMITTED and (L_BUILD in i.labels or L_VIEW in i.labels):
                found(f"unfinished {i.kind.value} snapshot {i.name}", f"remove snapshot {i.name}",
                      partial(store.sn.remove, i.name))
        orphans = sorted((i for i in infos.values() if i.kind is Kind.COMMITTED
                          and i.name.startswith(SNAPSHOT_PREFIX) and i.name not in rows),
                         key=lambda i: (i.created, i.name))
        for i in orphans:       # oldest first: a chain of orphans is registered parents first
            image_id = i.name[len(SNAPSHOT_PREFIX):]
            if not FULL_ID_RE.match(image_id):
                found(f"snapshot {i.name} has no image row",
                      f"snapshot {i.name} is not named img-<64 hex digits>; remove it by hand if it is not wanted")
                continue
            found(f"snapshot {i.name} has no image row", f"register snapshot {i.name} as image {image_id[:12]}",
                  partial(adopt, store, i))
        for snap, img in rows.items():
            if snap not in infos:
                found(f"image {img[:12]} has no snapshot", f"remove the row of image {img[:12]}",
                      partial(forget, store, img))
        for img, snap in store.db.execute("SELECT id, snapshot FROM images WHERE size < 0").fetchall():
            if snap in infos:
                found(f"image {img[:12]} has no measured size", f"measure image {img[:12]}",
                      partial(_measure, store, img, snap))
    for path in leftover_dirs(store.root):
        found(f"leftover directory {path}", f"remove directory {path}", partial(remove_leftover, store.root, path))
    return CheckReport(problems=tuple(problems), repairs=tuple(repairs))


def adopt(store: ImageStore, info: Info) -> None:
    """Register a committed ``img-<id>`` snapshot that has no row, from its parent and labels (its tag
    only if the tag is still free); never delete it: it may hold a container's only copy."""
    image_id = info.name[len(SNAPSHOT_PREFIX):]
    parent_id = None
    if info.parent is not None:
        r = store.db.execute("SELECT id FROM images WHERE snapshot=?", (info.parent,)).fetchone()
        if r is None:
            raise errors.FailedPrecondition(f"snapshot {info.name}", f"has parent {info.parent!r}, not an image",
                                            fix="repair its parent first, or remove it by hand")
        parent_id = r[0]
    ref = info.labels.get(L_TAG) or None
    if ref:
        try:
            ref = normalize(ref)
        except errors.InvalidArgument:
            ref = None
    if ref and store.db.execute("SELECT 1 FROM tags WHERE ref=?", (ref,)).fetchone():
        ref = None     # the tag moved on meanwhile: leave it where it is
    store._register(image_id, info.name, parent_id, ref,
                    info.labels.get(L_CREATED_BY, "registered by check(repair=True)"),
                    info.labels.get(L_COMMENT, ""), None, store._config(parent_id), created=info.created,
                    recipe=info.labels.get(L_RECIPE, ""))
    store._measure_best_effort(image_id, info.name)


def forget(store: ImageStore, image_id: str) -> None:
    """Drop the row (and tags) of an image whose snapshot is gone; its children lose their parent."""
    with store._tx() as db:
        db.execute("UPDATE images SET parent=NULL WHERE parent=?", (image_id,))
        db.execute("DELETE FROM tags WHERE image=?", (image_id,))
        db.execute("DELETE FROM images WHERE id=?", (image_id,))


def _measure(store: ImageStore, image_id: str, snapshot: str) -> None:
    """Record the size of an image whose size was never measured."""
    store._set_size(image_id, store._measure(snapshot))


def leftover_dirs(root: str) -> list[str]:
    """Scratch directories of the store under ``root``: everything in ``tmp/``, the old top-level
    ``mnt-*``/``view-*``/``rootfs-*``, unfinished downloads in ``cache/``."""
    found: list[str] = []
    for base, names in ((os.path.join(root, TMP_DIR), None), (root, LEGACY_TMP),
                        (os.path.join(root, CACHE_DIR), CACHE_TMP)):
        try:
            entries = sorted(os.listdir(base))
        except (FileNotFoundError, NotADirectoryError):
            continue
        found += [os.path.join(base, e) for e in entries if names is None or e.startswith(names)]
    return found


def remove_leftover(root: str, path: str) -> None:
    """Remove a scratch directory (checked to be inside ``root``) unless something is mounted in it."""
    real = confined(path, root)
    busy = mounts_under(real)
    if busy:
        raise errors.FailedPrecondition(f"directory {path}", f"has {busy[-1].target} mounted",
                                        fix="release it with `labkit gc` first")
    if os.path.isdir(real) and not os.path.islink(path):
        shutil.rmtree(real)
    else:
        os.unlink(path)
