"""The image store: images are committed snapshots, with tags, lineage and provenance in SQLite.

An image is the committed snapshot ``img-<id>`` of the store's snapshotter plus a row in
``<root>/images.db``: id (64 hex digits from random bytes; the short id is the first 12), parent image,
created, created_by, comment, size (apparent content bytes). Tags are ``name:tag`` rows pointing at an id.
Containers belong to the runtime; the store sees them as active (or view) snapshots whose parent is an
image's snapshot, and treats them as users of that image.

>>> from labkit.snapshots import open_snapshotter            # doctest: +SKIP
>>> store = ImageStore("/tmp/imgs", open_snapshotter("copy", "/tmp/imgs/sn"))   # doctest: +SKIP
>>> img = store.import_busybox(tag="busybox")                 # doctest: +SKIP
>>> store.history("busybox")[0]["created_by"]                 # doctest: +SKIP
'labkit import busybox'
"""
from __future__ import annotations

import hashlib
import os
import sqlite3
import tarfile
import tempfile
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import pandas as pd

from .. import errors
from .._db import connect, transaction
from ..snapshots import BaseSnapshotter, Info, Kind
from .._sys.fs import copy_tree
from . import tarsafe
from .busybox import build_busybox_rootfs
from .reference import normalize
from .sources import content_size, debian_tarball
from .sync import sync_tree

__all__ = ["ImageStore", "SNAPSHOT_PREFIX"]

SNAPSHOT_PREFIX = "img-"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
  id TEXT PRIMARY KEY, snapshot TEXT UNIQUE NOT NULL, parent TEXT REFERENCES images(id),
  created REAL NOT NULL, created_by TEXT NOT NULL DEFAULT '', comment TEXT NOT NULL DEFAULT '',
  size INTEGER NOT NULL DEFAULT 0, removal_pending INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS tags (ref TEXT PRIMARY KEY, image TEXT NOT NULL REFERENCES images(id));
CREATE INDEX IF NOT EXISTS images_parent ON images(parent);
CREATE INDEX IF NOT EXISTS tags_image ON tags(image);
"""


def _new_id() -> str:
    return hashlib.sha256(os.urandom(32) + str(time.time_ns()).encode()).hexdigest()


class ImageStore:
    """Images over committed snapshots of ``snapshotter``, with metadata at ``<root>/images.db``.

    >>> store = ImageStore("/tmp/imgs", sn)       # doctest: +SKIP
    >>> store.images()[["id", "tags"]]            # doctest: +SKIP
    """

    def __init__(self, root: str | os.PathLike[str], snapshotter: BaseSnapshotter) -> None:
        self.root = os.path.abspath(root)
        self.sn = snapshotter
        os.makedirs(self.root, exist_ok=True)
        self._lock = threading.RLock()
        self._db: sqlite3.Connection | None = connect(os.path.join(self.root, "images.db"), _SCHEMA)

    # ---- plumbing -----------------------------------------------------------------------------------
    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise errors.FailedPrecondition(f"image store at {self.root}", "is closed", fix="open a new ImageStore")
        return self._db

    def _tx(self) -> Any:
        return transaction(self.db, self._lock)

    def close(self) -> None:
        """Close the metadata database (not the snapshotter, which the caller owns). Idempotent."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def __enter__(self) -> "ImageStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _row(self, image_id: str) -> dict[str, Any]:
        r = self.db.execute("SELECT id,snapshot,parent,created,created_by,comment,size,removal_pending "
                            "FROM images WHERE id=?", (image_id,)).fetchone()
        if r is None:
            raise errors.NotFound(f"image {image_id[:12]}", fix="list images with images()")
        keys = ("id", "snapshot", "parent", "created", "created_by", "comment", "size", "removal_pending")
        return dict(zip(keys, r))

    def _tags(self, image_id: str) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT ref FROM tags WHERE image=? ORDER BY ref", (image_id,))]

    def resolve(self, ref: str) -> str:
        """The full image id for a tag, a full id or a unique id prefix (``sha256:`` allowed).

        >>> store.resolve("busybox")            # doctest: +SKIP
        '3f1c...'
        """
        with self._lock:
            r = None
            try:
                r = self.db.execute("SELECT image FROM tags WHERE ref=?", (normalize(ref),)).fetchone()
            except errors.InvalidArgument:
                pass
            if r:
                return r[0]
            pre = ref[7:] if ref.startswith("sha256:") else ref
            if pre and all(c in "0123456789abcdef" for c in pre):
                hits = [x[0] for x in self.db.execute(
                    "SELECT id FROM images WHERE id >= ? AND id < ? ORDER BY id", (pre, pre + "g"))]
                if len(hits) == 1:
                    return hits[0]
                if len(hits) > 1:
                    raise errors.InvalidArgument(f"image id prefix {ref!r}", f"is ambiguous ({len(hits)} images)",
                                                 fix="give more digits or a tag")
        raise errors.NotFound(f"image {ref!r}", fix="list images with images() or import one")

    def _users(self) -> tuple[dict[str, list[str]], dict[str, list[Info]]]:
        """children image ids per image id, and container (active/view) snapshots per image id."""
        snap_to_id = {s: i for i, s in self.db.execute("SELECT id, snapshot FROM images")}
        kids: dict[str, list[str]] = {i: [] for i in snap_to_id.values()}
        for i, p in self.db.execute("SELECT id, parent FROM images WHERE parent IS NOT NULL"):
            kids.setdefault(p, []).append(i)
        conts: dict[str, list[Info]] = {i: [] for i in snap_to_id.values()}
        for info in self.sn.walk("kind==active", "kind==view"):
            if info.parent in snap_to_id:
                conts[snap_to_id[info.parent]].append(info)
        return kids, conts

    # ---- making images -------------------------------------------------------------------------------
    def _build(self, fill: Callable[[str], Any], *, parent: str | None, tag: str | None, created_by: str,
               comment: str = "") -> str:
        """prepare -> mount -> fill -> unmount -> commit -> register, all or nothing."""
        ref = normalize(tag) if tag else None
        parent_id = self.resolve(parent) if parent else None
        parent_snap = self._row(parent_id)["snapshot"] if parent_id else None
        image_id = _new_id()
        key = f"imgbuild-{image_id[:12]}"
        snap = SNAPSHOT_PREFIX + image_id
        mnt_dir = tempfile.mkdtemp(prefix=f"mnt-{image_id[:12]}-", dir=self.root)
        committed = False
        try:
            mnt = self.sn.prepare(key, parent_snap, labels={"labkit.image.build": image_id})
            try:
                with mnt.mount(mnt_dir) as target:
                    fill(target)
                    size = content_size(target)
                self.sn.commit(snap, key, labels={"labkit.image": image_id})
                committed = True
                self._register(image_id, snap, parent_id, ref, created_by, comment, size)
            except BaseException:
                self.sn.remove(snap if committed else key)
                raise
        finally:
            os.rmdir(mnt_dir)
        return image_id

    def _register(self, image_id: str, snap: str, parent_id: str | None, ref: str | None, created_by: str,
                  comment: str, size: int) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO images(id,snapshot,parent,created,created_by,comment,size) VALUES (?,?,?,?,?,?,?)",
                       (image_id, snap, parent_id, time.time(), created_by, comment, size))
            if ref:   # a tag moves to the newest image, as in docker; the old one may become dangling
                db.execute("INSERT OR REPLACE INTO tags(ref,image) VALUES (?,?)", (ref, image_id))

    def import_busybox(self, *, tag: str | None = "busybox:latest") -> str:
        """A base image from the host's busybox-static; returns its id.

        >>> store.import_busybox(tag="busybox")      # doctest: +SKIP
        """
        return self._build(build_busybox_rootfs, parent=None, tag=tag, created_by="labkit import busybox")

    def import_dir(self, path: str | os.PathLike[str], *, tag: str | None = None, parent: str | None = None,
                   comment: str = "") -> str:
        """A new image from a host directory, copied with ownership, modes, xattrs and hard links.

        >>> store.import_dir("/srv/rootfs", tag="myroot")   # doctest: +SKIP
        """
        src = os.path.abspath(path)
        if not os.path.isdir(src):
            raise errors.NotFound(f"directory {src}", fix="give an existing directory")
        return self._build(lambda t: copy_tree(src, t, reflink="auto"), parent=parent, tag=tag,
                           created_by=f"labkit import dir {src}", comment=comment)

    def import_tar(self, archive: str | os.PathLike[str], *, tag: str | None = None, parent: str | None = None,
                   comment: str = "", created_by: str | None = None, **limits: Any) -> str:
        """A new image from a rootfs tar (plain, gz, bz2, xz, zst), extracted as hostile input.

        With ``parent`` the archive is applied as a layer on top of it, honouring ``.wh.`` whiteouts.
        ``limits`` go to :func:`labkit.images.tarsafe.extract` (``allow_devices``, ``keep_setuid``,
        ``max_member_size``, ``max_total_size``, ``max_members``).

        >>> store.import_tar("rootfs.tar.xz", tag="alpine")    # doctest: +SKIP
        """
        path = os.fspath(archive)
        if not os.path.isfile(path):
            raise errors.NotFound(f"archive {path}", fix="give an existing tar file")
        limits.setdefault("whiteouts", parent is not None)
        return self._build(lambda t: tarsafe.extract(path, t, **limits), parent=parent, tag=tag,
                           created_by=created_by or f"labkit import tar {os.path.basename(path)}", comment=comment)

    def import_docker_save(self, archive: str | os.PathLike[str], *, tag: str | None = None,
                           **limits: Any) -> list[str]:
        """Import the first image of a ``docker save`` archive as a chain of images, one per layer.

        Each layer tar is read straight out of the archive (nothing of the outer tar is extracted) and
        applied on the previous one with whiteouts. The top image gets ``tag`` or the archive's first
        RepoTag. Returns the ids, base first; a failing layer leaves the layers before it as untagged
        images (``prune()`` removes them).

        >>> store.import_docker_save("alpine.tar")     # doctest: +SKIP
        """
        import json
        path = os.fspath(archive)
        with tarfile.open(path, "r:*") as outer:
            try:
                mf = outer.getmember("manifest.json")
            except KeyError:
                raise errors.InvalidArgument(f"archive {path}", "has no manifest.json",
                                             fix="give the output of `docker save`") from None
            if not mf.isreg() or mf.size > 16 << 20:
                raise errors.InvalidArgument(f"archive member 'manifest.json' of {path}", "is not a small file")
            manifest = json.load(outer.extractfile(mf))
            if not isinstance(manifest, list) or not manifest or not isinstance(manifest[0].get("Layers"), list):
                raise errors.InvalidArgument(f"manifest.json of {path}", "has no Layers list")
            entry = manifest[0]
            ref = tag or (entry.get("RepoTags") or [None])[0]
            ids: list[str] = []
            for n, layer in enumerate(entry["Layers"]):
                try:
                    member = outer.getmember(layer)
                except KeyError:
                    raise errors.InvalidArgument(f"layer {layer!r} of {path}", "is not in the archive") from None
                if not member.isreg():
                    raise errors.InvalidArgument(f"layer {layer!r} of {path}", "is not a regular member")
                last = n == len(entry["Layers"]) - 1
                data = outer.extractfile(member)
                ids.append(self._build(
                    lambda t, d=data: tarsafe.extract(d, t, whiteouts=True, **limits),
                    parent=ids[-1] if ids else None, tag=ref if last else None,
                    created_by=f"labkit import docker-save {os.path.basename(path)} layer {n + 1}/{len(entry['Layers'])}"))
        return ids

    def import_debian(self, *, tag: str | None = "debian:bookworm", suite: str = "bookworm") -> str:
        """Debian minbase from the host's apt mirror via mmdebstrap, cached under ``<root>/cache``.

        >>> store.import_debian()       # doctest: +SKIP
        """
        tar = debian_tarball(os.path.join(self.root, "cache"), suite=suite)
        # built by us from a signed mirror: keep its setuid binaries (su, passwd) and device nodes out
        return self.import_tar(tar, tag=tag, keep_setuid=True,
                               created_by=f"mmdebstrap --variant=minbase {suite}")

    def commit(self, active_key: str, tag: str | None = None, *, created_by: str = "", comment: str = "") -> str:
        """Turn a container's active snapshot into a new image whose parent is the container's image.

        A stopped container (its snapshot not mounted) is committed in place: the key is consumed, as in
        the snapshot contract. A container still mounted (running, best frozen) keeps its snapshot: a fresh
        snapshot of its image receives only what differs (:func:`labkit.images.sync.sync_tree`), so
        unchanged files stay shared on copy-on-write backends.

        >>> store.commit("c1", "app:v2", created_by="sh -c 'echo hi > /hello'")   # doctest: +SKIP
        """
        ref = normalize(tag) if tag else None
        info = self.sn.stat(active_key)
        if info.kind is not Kind.ACTIVE:
            raise errors.FailedPrecondition(f"snapshot {active_key!r}", f"is {info.kind.value}, not active",
                                            fix="commit a container's active snapshot")
        parent_id = None
        if info.parent is not None:
            r = self.db.execute("SELECT id FROM images WHERE snapshot=?", (info.parent,)).fetchone()
            if r is None:
                raise errors.FailedPrecondition(f"snapshot {active_key!r}", f"has parent {info.parent!r}, not an image")
            parent_id = r[0]
        where = self.sn.mounts(active_key).targets()
        if where:
            live = where[-1]
            return self._build(lambda target: sync_tree(live, target), parent=parent_id, tag=ref,
                               created_by=created_by, comment=comment)
        image_id = _new_id()
        snap = SNAPSHOT_PREFIX + image_id
        self.sn.commit(snap, active_key, labels={"labkit.image": image_id})
        try:
            size = self._measure(snap)
            self._register(image_id, snap, parent_id, ref, created_by, comment, size)
        except BaseException:
            self.sn.remove(snap)
            raise
        return image_id

    def _measure(self, snap: str) -> int:
        return self._with_view(snap, content_size)

    def _with_view(self, snap: str, fn: Callable[[str], Any]) -> Any:
        with self._view(snap) as target:
            return fn(target)

    @contextmanager
    def _view(self, snap: str) -> Iterator[str]:
        key = f"imgview-{os.urandom(6).hex()}"
        mnt_dir = tempfile.mkdtemp(prefix="view-", dir=self.root)
        try:
            mnt = self.sn.view(key, snap, labels={"labkit.image.view": snap})
            try:
                with mnt.mount(mnt_dir) as target:
                    yield target
            finally:
                self.sn.remove(key)
        finally:
            os.rmdir(mnt_dir)

    @contextmanager
    def mounted(self, ref: str) -> Iterator[str]:
        """A read-only view of the image mounted on a temporary directory for a ``with`` block.

        >>> with store.mounted("busybox") as root:       # doctest: +SKIP
        ...     os.listdir(root)
        """
        with self._view(self._row(self.resolve(ref))["snapshot"]) as target:
            yield target

    def export(self, ref: str, tarpath: str | os.PathLike[str]) -> int:
        """Write the image's root filesystem as a PAX tar (numeric owners) through a read-only view;
        returns the bytes written.

        >>> store.export("busybox", "/tmp/bb.tar")     # doctest: +SKIP
        """
        row = self._row(self.resolve(ref))
        out = os.fspath(tarpath)
        tmp = out + ".part"

        def write(target: str) -> None:
            with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tf:
                for name in sorted(os.listdir(target)):
                    tf.add(os.path.join(target, name), arcname=name, recursive=True)
        try:
            self._with_view(row["snapshot"], write)
            os.rename(tmp, out)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return os.path.getsize(out)

    # ---- tags ---------------------------------------------------------------------------------------
    def tag(self, ref: str, new: str) -> str:
        """Point tag ``new`` at the image ``ref`` names (moving it if it pointed elsewhere).

        >>> store.tag("busybox", "base:v1")    # doctest: +SKIP
        'base:v1'
        """
        new_ref = normalize(new)
        with self._tx() as db:
            image_id = self.resolve(ref)
            db.execute("INSERT OR REPLACE INTO tags(ref,image) VALUES (?,?)", (new_ref, image_id))
            db.execute("UPDATE images SET removal_pending=0 WHERE id=?", (image_id,))   # wanted again
        return new_ref

    def untag(self, tag: str) -> str:
        """Remove one tag; returns the id it pointed at (the image stays).

        >>> store.untag("base:v1")   # doctest: +SKIP
        """
        ref = normalize(tag)
        with self._tx() as db:
            r = db.execute("SELECT image FROM tags WHERE ref=?", (ref,)).fetchone()
            if r is None:
                raise errors.NotFound(f"tag {ref!r}", fix="list tags with images()")
            db.execute("DELETE FROM tags WHERE ref=?", (ref,))
        return r[0]

    # ---- removing -----------------------------------------------------------------------------------
    def _delete(self, image_id: str) -> int:
        """Remove an unused image: row and snapshot together; returns bytes freed (its exclusive usage)."""
        with self._tx() as db:
            row = self._row(image_id)
            try:
                freed = self.sn.usage(row["snapshot"]).size
            except errors.NotFound:
                freed = 0
            db.execute("DELETE FROM tags WHERE image=?", (image_id,))
            db.execute("DELETE FROM images WHERE id=?", (image_id,))
            try:
                self.sn.remove(row["snapshot"])   # a failure rolls the rows back
            except errors.NotFound:
                pass
        return freed

    def rmi(self, ref: str, *, force: bool = False) -> dict[str, Any]:
        """Remove an image (or, given one of several tags, just that tag).

        Refused while a container or a child image uses it. ``force=True`` cannot remove a snapshot that
        has children either: it removes every tag, marks the image ``removal_pending`` and reports what
        still holds it (``kept_by``); ``prune()`` deletes it once its containers and children are gone.

        >>> store.rmi("app:v1")     # doctest: +SKIP
        {'untagged': ['app:v1'], 'deleted': [...], 'freed': 4096, 'kept_by': []}
        """
        with self._lock:
            image_id = self.resolve(ref)
            tags = self._tags(image_id)
            try:
                named = normalize(ref)
            except errors.InvalidArgument:
                named = None
            if named in tags and len(tags) > 1 and not force:
                self.untag(named)
                return {"untagged": [named], "deleted": [], "freed": 0, "kept_by": []}
            kids, conts = self._users()
            users = ([f"image {k[:12]}" for k in kids.get(image_id, [])]
                     + [f"container {c.labels.get('labkit.container', c.name)} ({c.kind.value} snapshot {c.name})"
                        for c in conts.get(image_id, [])])
            if users and not force:
                raise errors.FailedPrecondition(
                    f"image {ref!r} ({image_id[:12]})", f"is used by {', '.join(users)}",
                    fix="remove those first, or rmi(force=True) to untag it now and let prune() delete it later")
            with self._tx() as db:
                db.execute("DELETE FROM tags WHERE image=?", (image_id,))
                if users:
                    db.execute("UPDATE images SET removal_pending=1 WHERE id=?", (image_id,))
            if users:
                return {"untagged": tags, "deleted": [], "freed": 0, "kept_by": users}
            return {"untagged": tags, "deleted": [image_id], "freed": self._delete(image_id), "kept_by": []}

    def prune(self, *, dangling_only: bool = True, all: bool = False) -> dict[str, Any]:
        """Delete unneeded images; returns ids deleted and bytes freed.

        Dangling: untagged, no child image, no container — repeated, so an untagged chain goes up to the
        first image that is tagged or that a container or a tagged descendant needs.
        ``all=True`` (or ``dangling_only=False``) is ``docker image prune -a``: tagged or not, every image
        that no container needs (directly or through a descendant) is deleted.

        >>> store.prune()["freed"]    # doctest: +SKIP
        0
        """
        everything = all or not dangling_only
        deleted: list[str] = []
        freed = 0
        with self._lock:
            while True:
                kids, conts = self._users()
                ids = [r[0] for r in self.db.execute("SELECT id FROM images ORDER BY created DESC")]
                tagged = {r[0] for r in self.db.execute("SELECT DISTINCT image FROM tags")}
                victims = [i for i in ids if not kids.get(i) and not conts.get(i)
                           and (everything or i not in tagged)]
                if not victims:
                    break
                for i in victims:
                    freed += self._delete(i)
                    deleted.append(i)
        return {"deleted": deleted, "freed": freed}

    def check(self, *, repair: bool = False) -> list[str]:
        """What a crash left inconsistent between images.db and the snapshotter; ``repair`` fixes it.

        Finds build (``imgbuild-*``) and view (``imgview-*``) snapshots nobody finished, committed
        ``img-*`` snapshots without an image row, and rows whose snapshot is gone. Repair removes the
        snapshots (mounted ones are left for ``labkit gc`` to unmount first) and the orphan rows.
        Mounts left under the store root are ``labkit gc``'s job.

        >>> store.check()         # doctest: +SKIP
        []
        """
        problems: list[str] = []
        with self._lock:
            rows = {r[1]: r[0] for r in self.db.execute("SELECT id, snapshot FROM images")}
            infos = {i.name: i for i in self.sn.walk()}
            stale = [i for i in infos.values() if i.kind is not Kind.COMMITTED
                     and ("labkit.image.build" in i.labels or "labkit.image.view" in i.labels)]
            orphans = [i for i in infos.values() if i.kind is Kind.COMMITTED
                       and i.name.startswith(SNAPSHOT_PREFIX) and i.name not in rows]
            for i in stale:
                problems.append(f"unfinished {i.kind.value} snapshot {i.name}")
            for i in orphans:
                problems.append(f"snapshot {i.name} has no image row")
            missing = [img for snap, img in rows.items() if snap not in infos]
            for img in missing:
                problems.append(f"image {img[:12]} has no snapshot")
            if repair:
                for i in stale + orphans:
                    try:
                        self.sn.remove(i.name)
                    except errors.FailedPrecondition as e:
                        problems.append(f"not repaired: {e}")
                with self._tx() as db:
                    for img in missing:
                        db.execute("UPDATE images SET parent=NULL WHERE parent=?", (img,))
                        db.execute("DELETE FROM tags WHERE image=?", (img,))
                        db.execute("DELETE FROM images WHERE id=?", (img,))
        return problems

    # ---- looking ------------------------------------------------------------------------------------
    def _all_rows(self) -> list[dict[str, Any]]:
        return [self._row(r[0]) for r in self.db.execute("SELECT id FROM images ORDER BY created, id")]

    def images(self) -> pd.DataFrame:
        """One row per image: id (short), tags, parent (short), created, created_by, size, exclusive.

        >>> store.images().columns.tolist()      # doctest: +SKIP
        ['id', 'tags', 'parent', 'created', 'created_by', 'size', 'exclusive']
        """
        with self._lock:
            rows = [{"id": r["id"][:12], "tags": self._tags(r["id"]), "parent": (r["parent"] or "")[:12],
                     "created": pd.Timestamp(r["created"], unit="s", tz="UTC"), "created_by": r["created_by"],
                     "size": r["size"], "exclusive": self.sn.usage(r["snapshot"]).size}
                    for r in self._all_rows()]
        return pd.DataFrame(rows, columns=["id", "tags", "parent", "created", "created_by", "size", "exclusive"])

    def inspect(self, ref: str) -> dict[str, Any]:
        """Everything known about one image, as plain data.

        >>> store.inspect("busybox")["tags"]     # doctest: +SKIP
        ['busybox:latest']
        """
        with self._lock:
            row = self._row(self.resolve(ref))
            kids, conts = self._users()
            info = self.sn.stat(row["snapshot"])
            return {**row, "short_id": row["id"][:12], "tags": self._tags(row["id"]),
                    "exclusive": self.sn.usage(row["snapshot"]).size, "backend": self.sn.name,
                    "children": kids.get(row["id"], []),
                    "containers": [c.name for c in conts.get(row["id"], [])],
                    "snapshot_labels": info.labels, "removal_pending": bool(row["removal_pending"])}

    def history(self, ref: str) -> list[dict[str, Any]]:
        """The chain from this image back to its base, newest first, with created_by and sizes.

        >>> [h["created_by"] for h in store.history("app")]    # doctest: +SKIP
        ['sh -c make', 'labkit import busybox']
        """
        with self._lock:
            out = []
            image_id: str | None = self.resolve(ref)
            while image_id:
                r = self._row(image_id)
                out.append({"id": r["id"][:12], "created": r["created"], "created_by": r["created_by"],
                            "comment": r["comment"], "size": r["size"],
                            "exclusive": self.sn.usage(r["snapshot"]).size, "tags": self._tags(r["id"])})
                image_id = r["parent"]
            return out

    def tree(self) -> tuple[str, list[dict[str, Any]]]:
        """Lineage of every image as text and as nested data (``children``), containers as leaves.

        >>> text, data = store.tree()      # doctest: +SKIP
        """
        with self._lock:
            rows = self._all_rows()
            kids, conts = self._users()
            by_id = {r["id"]: r for r in rows}

            def node(i: str) -> dict[str, Any]:
                r = by_id[i]
                return {"id": i[:12], "tags": self._tags(i), "size": r["size"],
                        "exclusive": self.sn.usage(r["snapshot"]).size, "created_by": r["created_by"],
                        "containers": [c.labels.get("labkit.container", c.name) for c in conts.get(i, [])],
                        "children": [node(k) for k in kids.get(i, [])]}
            data = [node(r["id"]) for r in rows if r["parent"] is None]
        lines: list[str] = []

        def draw(n: dict[str, Any], prefix: str, last: bool, top: bool) -> None:
            tags = ",".join(n["tags"]) or "<none>"
            head = "" if top else ("└─ " if last else "├─ ")
            lines.append(f"{prefix}{head}{n['id']} {tags} size={n['size']} exclusive={n['exclusive']}"
                         + (f" containers={','.join(n['containers'])}" if n["containers"] else ""))
            sub = prefix + ("" if top else ("   " if last else "│  "))
            for j, k in enumerate(n["children"]):
                draw(k, sub, j == len(n["children"]) - 1, False)
        for n in data:
            draw(n, "", True, True)
        return "\n".join(lines), data

    def whatrequires(self, ref: str) -> dict[str, list[str]]:
        """Images and containers that depend on this image, transitively (short ids, container names).

        >>> store.whatrequires("busybox")     # doctest: +SKIP
        {'images': ['1a2b3c4d5e6f'], 'containers': ['web']}
        """
        with self._lock:
            root = self.resolve(ref)
            kids, conts = self._users()
            imgs: list[str] = []
            cs: list[str] = []
            stack = [root]
            while stack:
                i = stack.pop()
                cs += [c.labels.get("labkit.container", c.name) for c in conts.get(i, [])]
                for k in kids.get(i, []):
                    imgs.append(k[:12])
                    stack.append(k)
            return {"images": imgs, "containers": cs}

    def df(self) -> pd.DataFrame:
        """Disk use per image and container: total, shared, exclusive, reclaimable (bytes).

        ``layer`` = snapshotter.usage of the object's own snapshot. ``total`` = layers of the object and its
        ancestors. A layer counts as *shared* for an object when some other image or container also has it
        in its chain; ``exclusive = total - shared``; ``reclaimable`` = what removing the object now frees.

        >>> store.df()[["kind", "name", "total", "shared", "exclusive", "reclaimable"]]   # doctest: +SKIP
        """
        with self._lock:
            rows = self._all_rows()
            kids, conts = self._users()
            layer = {r["id"]: self.sn.usage(r["snapshot"]).size for r in rows}
            parent = {r["id"]: r["parent"] for r in rows}

            def chain(i: str | None) -> list[str]:
                out = []
                while i:
                    out.append(i)
                    i = parent[i]
                return out
            objs: list[tuple[str, str, int, list[str], bool]] = []   # kind, name, own layer, chain, in use
            for r in rows:
                i = r["id"]
                objs.append(("image", i[:12], 0, chain(i), bool(kids.get(i) or conts.get(i))))
            for i, cl in conts.items():
                for c in cl:
                    objs.append(("container", c.labels.get("labkit.container", c.name), self.sn.usage(c.name).size,
                                 chain(i), False))
            holders: dict[str, int] = {}
            for o in objs:
                for i in o[3]:
                    holders[i] = holders.get(i, 0) + 1
            out = []
            for kind, name, own, ch, used in objs:
                total = own + sum(layer[i] for i in ch)
                # an image is itself the first element of its own chain; containers are not in any chain
                shared = sum(layer[i] for i in ch if holders[i] > 1)
                if kind == "image":
                    reclaim = 0 if used else layer[ch[0]]
                else:
                    reclaim = own
                out.append({"kind": kind, "name": name, "total": total, "shared": shared,
                            "exclusive": total - shared, "reclaimable": reclaim})
        return pd.DataFrame(out, columns=["kind", "name", "total", "shared", "exclusive", "reclaimable"])
