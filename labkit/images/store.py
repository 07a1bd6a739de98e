"""The image store: images are committed snapshots, with tags, lineage and provenance in SQLite.

An image is the committed snapshot ``img-<id>`` of the store's snapshotter plus a row in
``<root>/images.db``: id (64 hex digits from random bytes; the short id is the first 12), parent image,
created, created_by, comment, size (apparent content bytes), config (Env, Cmd, Entrypoint, WorkingDir,
User, Labels). Tags are ``name:tag`` rows pointing at an id. Containers belong to the runtime; the store
sees them as active (or view) snapshots whose parent is an image's snapshot, and treats them as users of
that image. Answers are frozen records (:mod:`labkit.images.records`); this module never imports
pandas.

>>> from labkit.snapshots import open_snapshotter            # doctest: +SKIP
>>> store = ImageStore("/tmp/imgs", open_snapshotter("copy", "/tmp/imgs/sn"))   # doctest: +SKIP
>>> img = store.import_busybox(tag="busybox")                 # doctest: +SKIP
>>> store.history("busybox")[0].created_by                    # doctest: +SKIP
'labkit import busybox'
"""
from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, BinaryIO

from .. import errors
from .._db import connect, transaction
from ..snapshots import BaseSnapshotter, Info, Kind
from ..snapshots.capabilities import PoolBacked
from .layout import (
    BUILD_PREFIX,
    ID_RE,
    L_BUILD,
    L_COMMENT,
    L_CREATED_BY,
    L_IMAGE,
    L_PARENT,
    L_RECIPE,
    L_TAG,
    L_VIEW,
    SNAPSHOT_PREFIX,
    TMP_DIR,
    UNMEASURED,
    VIEW_PREFIX,
)
from .records import ImageConfig
from .reference import NAME_RULE, TAG_RULE, normalize

# What only some verbs use is imported in the method that uses it, so that opening the store and
# running a container (``labkit run``) loads none of it: archives and tar extraction (archive, interop,
# tarsafe), recipes (build), exports (save), repair, lineage, the sources of base images, and the records
# of listings and reports.
if TYPE_CHECKING:
    from .build import RunStep
    from .listing import DfRow, HistoryEntry, ImageInfo, Requirements, TreeNode
    from .reports import BuildResult, CheckReport, PruneReport, Removal, RmiReport, SaveReport

__all__ = ["ImageStore", "SNAPSHOT_PREFIX", "ID_RULE"]

ID_RULE = "an image id is 64 lowercase hex digits (a prefix of 1 or more will do, 'sha256:' allowed)"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
  id TEXT PRIMARY KEY, snapshot TEXT UNIQUE NOT NULL, parent TEXT REFERENCES images(id),
  created REAL NOT NULL, created_by TEXT NOT NULL DEFAULT '', comment TEXT NOT NULL DEFAULT '',
  size INTEGER NOT NULL DEFAULT 0, removal_pending INTEGER NOT NULL DEFAULT 0,
  config TEXT NOT NULL DEFAULT '{}', recipe TEXT NOT NULL DEFAULT '', build_key TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS tags (ref TEXT PRIMARY KEY, image TEXT NOT NULL REFERENCES images(id));
CREATE INDEX IF NOT EXISTS images_parent ON images(parent);
CREATE INDEX IF NOT EXISTS tags_image ON tags(image);
"""
_COLS = ("id", "snapshot", "parent", "created", "created_by", "comment", "size", "removal_pending", "config",
         "recipe", "build_key")
#: columns added after the first release, with their definitions (a store made before gets them on open)
_ADDED = {"config": "TEXT NOT NULL DEFAULT '{}'", "recipe": "TEXT NOT NULL DEFAULT ''",
          "build_key": "TEXT NOT NULL DEFAULT ''"}


def _confined(path: str, root: str) -> str:
    """:func:`labkit.images.safeio.confined` (safeio loads tempfile and random: only making images needs them)."""
    from .safeio import confined as inside_store
    return inside_store(path, root)


def _new_id() -> str:
    """64 hex digits from the kernel's random source (``hashlib``, with OpenSSL, costs ~4 ms to import)."""
    return os.urandom(32).hex()


class ImageStore:
    """Images over committed snapshots of ``snapshotter``, with metadata at ``<root>/images.db``.

    >>> store = ImageStore("/tmp/imgs", sn)       # doctest: +SKIP
    >>> [i.tags for i in store.images()]          # doctest: +SKIP
    [('busybox:latest',)]
    """

    def __init__(self, root: str | os.PathLike[str], snapshotter: BaseSnapshotter) -> None:
        os.makedirs(root, exist_ok=True)
        self.root = os.path.realpath(root)      # resolved once: every path below is checked against it
        self.sn = snapshotter
        self._lock = threading.RLock()
        self._db: sqlite3.Connection | None = connect(os.path.join(self.root, "images.db"), _SCHEMA)
        cols = {r[1] for r in self._db.execute("PRAGMA table_info(images)")}
        for col, decl in _ADDED.items():     # a store made before images kept their config or recipe
            if col not in cols:
                self._db.execute(f"ALTER TABLE images ADD COLUMN {col} {decl}")
        self._db.execute("CREATE INDEX IF NOT EXISTS images_build_key ON images(build_key)")

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

    def __enter__(self) -> ImageStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _row(self, image_id: str) -> dict[str, Any]:
        r = self.db.execute(f"SELECT {','.join(_COLS)} FROM images WHERE id=?", (image_id,)).fetchone()
        if r is None:
            raise errors.NotFound(f"image {image_id[:12]}", fix="list images with images()")
        return dict(zip(_COLS, r))

    def _tags(self, image_id: str) -> tuple[str, ...]:
        return tuple(r[0] for r in self.db.execute("SELECT ref FROM tags WHERE image=? ORDER BY ref", (image_id,)))

    def _config(self, image_id: str | None) -> ImageConfig:
        if image_id is None:
            return ImageConfig()
        try:
            return ImageConfig.from_json(json.loads(self._row(image_id)["config"]))
        except ValueError:
            return ImageConfig()

    def _scratch(self, prefix: str) -> str:
        """A new private directory under ``<root>/tmp`` (checked to be inside the store)."""
        tmp = _confined(os.path.join(self.root, TMP_DIR), self.root)
        os.makedirs(tmp, mode=0o700, exist_ok=True)
        import tempfile
        return _confined(tempfile.mkdtemp(prefix=prefix, dir=tmp), self.root)

    def _drop_scratch(self, path: str) -> None:
        os.rmdir(_confined(path, self.root))

    def resolve(self, ref: str) -> str:
        """The full image id for a tag, a full id or a unique id prefix (``sha256:`` allowed).

        Anything that is neither a valid ``name[:tag]`` nor hex digits is ``InvalidArgument`` naming the
        rules; a valid one that matches nothing is ``NotFound``.

        >>> store.resolve("busybox")            # doctest: +SKIP
        '3f1c...'
        """
        if not isinstance(ref, str) or not ref:
            raise errors.InvalidArgument(f"image reference {ref!r}", "is empty", fix="give a tag or an image id")
        try:
            name: str | None = normalize(ref)
        except errors.InvalidArgument:
            name = None
        pre = ref[7:] if ref.startswith("sha256:") else ref
        is_id = bool(ID_RE.match(pre))
        if name is None and not is_id:
            raise errors.InvalidArgument(f"image reference {ref!r}", "is neither a name[:tag] nor an image id",
                                         fix=f"{NAME_RULE}; {TAG_RULE}; {ID_RULE}")
        with self._lock:
            if name is not None:
                r = self.db.execute("SELECT image FROM tags WHERE ref=?", (name,)).fetchone()
                if r:
                    return str(r[0])
            if is_id:
                hits = [x[0] for x in self.db.execute(
                    "SELECT id FROM images WHERE id >= ? AND id < ? ORDER BY id", (pre, pre + "g"))]
                if len(hits) == 1:
                    return str(hits[0])
                if len(hits) > 1:
                    raise errors.InvalidArgument(f"image id prefix {ref!r}", f"is ambiguous ({len(hits)} images)",
                                                 fix="give more digits or a tag")
        raise errors.NotFound(f"image {ref!r}", fix="list images with images() or import one")

    def _users(self) -> tuple[dict[str, list[str]], dict[str, list[Info]]]:
        """children image ids per image id, and container (active/view) snapshots per image id."""
        snap_to_id = {s: i for i, s in self.db.execute("SELECT id, snapshot FROM images")}
        kids: dict[str, list[str]] = {i: [] for i in snap_to_id.values()}
        for i, p in self.db.execute("SELECT id, parent FROM images WHERE parent IS NOT NULL ORDER BY created, id"):
            kids.setdefault(p, []).append(i)
        conts: dict[str, list[Info]] = {i: [] for i in snap_to_id.values()}
        for info in self.sn.walk("kind==active", "kind==view"):
            if info.parent in snap_to_id:
                conts[snap_to_id[info.parent]].append(info)
        return kids, conts

    @staticmethod
    def _container_name(info: Info) -> str:
        return info.labels.get("labkit.container", info.name)

    def _pool_budget(self) -> int | None:
        """Bytes a thin pool can still take (it may promise its devices more than it has), or None."""
        if not isinstance(self.sn, PoolBacked):
            return None
        from . import tarsafe
        space = self.sn.store_space()
        if space.capacity_bytes is None:
            return None
        free = space.capacity_bytes - space.used_bytes
        margin = min(tarsafe.MARGIN_MAX, max(tarsafe.MARGIN_MIN, space.capacity_bytes // tarsafe.MARGIN_FRACTION))
        return max(0, free - margin)

    def _limits(self, limits: dict[str, Any]) -> dict[str, Any]:
        budget = self._pool_budget()
        if budget is not None:
            for k in ("max_total_size", "max_member_size"):
                limits[k] = min(limits[k], budget) if limits.get(k) is not None else budget
        return limits

    # ---- making images -------------------------------------------------------------------------------
    def _build(self, fill: Callable[[str], Any], *, parent: str | None, tag: str | None, created_by: str,
               comment: str = "", config: ImageConfig | None = None, recipe: str = "", build_key: str = "",
               size: int | None = None, created: float | None = None) -> str:
        """prepare -> mount -> fill -> measure -> unmount -> commit -> register, all or nothing.

        The source (an archive, a directory, a live container) is untouched, so a failure at any step
        throws the new snapshot away: the store is left as it was. ``size`` given: not measured (a
        recipe's metadata step has its parent's content). ``recipe``/``build_key``: a recipe step's
        ``<file>:<line>`` and cache key.
        """
        from .sources import content_size
        ref = normalize(tag) if tag else None
        parent_id = self.resolve(parent) if parent else None
        parent_snap = self._row(parent_id)["snapshot"] if parent_id else None
        cfg = config if config is not None else self._config(parent_id)
        image_id = _new_id()
        key = f"{BUILD_PREFIX}{image_id[:12]}"
        snap = SNAPSHOT_PREFIX + image_id
        mnt_dir = self._scratch(f"build-{image_id[:12]}-")
        committed = False
        try:
            mnt = self.sn.prepare(key, parent_snap, labels={L_BUILD: image_id})
            try:
                with mnt.mount(_confined(mnt_dir, self.root)) as target:
                    fill(target)
                    if size is None:
                        size = content_size(target)
                self.sn.commit(snap, key, labels=self._journal(image_id, parent_id, ref, created_by, comment,
                                                               recipe=recipe, build_key=build_key))
                committed = True
                self._register(image_id, snap, parent_id, ref, created_by, comment, size, cfg, created,
                               recipe=recipe, build_key=build_key)
            except BaseException:
                self.sn.remove(snap if committed else key)
                raise
        finally:
            self._drop_scratch(mnt_dir)
        return image_id

    @staticmethod
    def _journal(image_id: str, parent_id: str | None, ref: str | None, created_by: str,
                 comment: str, *, recipe: str = "", build_key: str = "") -> dict[str, str]:
        """Labels that let ``check(repair=True)`` re-register a committed snapshot whose row is missing."""
        labels = {L_IMAGE: image_id, L_PARENT: parent_id or "", L_TAG: ref or "",
                  L_CREATED_BY: created_by[:4096], L_COMMENT: comment[:4096]}
        if recipe:
            labels[L_RECIPE] = recipe[:4096]
        return labels

    def _register(self, image_id: str, snap: str, parent_id: str | None, ref: str | None, created_by: str,
                  comment: str, size: int | None, config: ImageConfig, created: float | None = None, *,
                  recipe: str = "", build_key: str = "") -> None:
        with self._tx() as db:
            db.execute("INSERT INTO images(id,snapshot,parent,created,created_by,comment,size,config,recipe,build_key) "
                       "VALUES (?,?,?,?,?,?,?,?,?,?)",
                       (image_id, snap, parent_id, created or time.time(), created_by, comment,
                        UNMEASURED if size is None else size, json.dumps(config.to_json()), recipe, build_key))
            if ref:   # a tag moves to the newest image, as in docker; the old one may become dangling
                db.execute("INSERT OR REPLACE INTO tags(ref,image) VALUES (?,?)", (ref, image_id))

    def _set_size(self, image_id: str, size: int) -> None:
        with self._tx() as db:
            db.execute("UPDATE images SET size=? WHERE id=?", (size, image_id))

    def import_busybox(self, *, tag: str | None = "busybox:latest") -> str:
        """A base image from the host's busybox-static; returns its id.

        >>> store.import_busybox(tag="busybox")      # doctest: +SKIP
        """
        from .busybox import build_busybox_rootfs
        return self._build(build_busybox_rootfs, parent=None, tag=tag, created_by="labkit import busybox")

    def import_dir(self, path: str | os.PathLike[str], *, tag: str | None = None, parent: str | None = None,
                   comment: str = "") -> str:
        """A new image from a host directory, copied with ownership, modes, xattrs and hard links.

        >>> store.import_dir("/srv/rootfs", tag="myroot")   # doctest: +SKIP
        """
        from .._sys.fs import copy_tree
        src = os.path.abspath(path)
        if not os.path.isdir(src):
            raise errors.NotFound(f"directory {src!r}", fix="give an existing directory")
        return self._build(lambda t: copy_tree(src, t, reflink="auto"), parent=parent, tag=tag,
                           created_by=f"labkit import dir {src}", comment=comment)

    def import_tar(self, source: str | os.PathLike[str] | BinaryIO, *, tag: str | None = None,
                   parent: str | None = None, comment: str = "", created_by: str | None = None,
                   config: ImageConfig | None = None, name: str | None = None, **limits: Any) -> str:
        """A new image from a rootfs tar (plain, gz, bz2, xz, zst; recognised by content), extracted as
        hostile input. ``source`` is a path or a binary reader (then ``name`` names it in errors).

        With ``parent`` the archive is applied as a layer on top of it, honouring ``.wh.`` whiteouts.
        ``limits`` go to :func:`labkit.images.tarsafe.extract` (``allow_devices``, ``keep_setuid``,
        ``keep_privileged_xattrs``, ``max_member_size``, ``max_total_size``, ``max_members``, ``whiteouts``);
        unset size limits derive from the free space where the image is written (and, for a thin pool, the
        pool's free space). A malformed archive is one ``InvalidArgument`` naming it.

        >>> store.import_tar("rootfs.tar.xz", tag="alpine")    # doctest: +SKIP
        """
        from . import archive, tarsafe
        if isinstance(source, (str, os.PathLike)):
            path = os.fspath(source)
            archive.check_file(path)          # before a snapshot is made
            label = name or archive.describe(path)
            what = os.path.basename(path)
        else:
            label = name or archive.describe(source)
            what = label
        limits.setdefault("whiteouts", parent is not None)
        limits = self._limits(limits)
        return self._build(lambda t: tarsafe.extract(source, t, name=label, **limits), parent=parent, tag=tag,
                           created_by=created_by or f"labkit import tar {what}", comment=comment, config=config)

    def import_auto(self, path: str | os.PathLike[str], *, tag: str | None = None, ref: str | None = None,
                    **limits: Any) -> str:
        """Import whatever ``path`` holds, recognised by content; returns the id of the (top) image.

        A rootfs tar (any compression) or a rootfs directory gives one image; a ``docker save`` /
        ``podman save`` archive or an OCI image layout (a directory or an ``oci-archive`` tar) gives a
        chain of images, one per layer (whiteouts honoured; ``history(id)`` walks it), whose top keeps the
        image config (Env, Cmd, Entrypoint, WorkingDir, User, Labels) and gets ``tag`` or the archive's
        own name. An archive holding several images is narrowed with ``ref`` (a RepoTag or image name, a
        ref name annotation, or a manifest/config digest prefix); without it, the one-line error lists
        them. See :mod:`labkit.images.interop`.

        >>> store.import_auto("alpine-oci.tar", tag="alpine")     # doctest: +SKIP
        """
        from . import interop
        return interop.import_auto(self, path, tag=tag, ref=ref, **limits)[-1]

    def import_docker_save(self, archive: str | os.PathLike[str], *, tag: str | None = None,
                           ref: str | None = None, **limits: Any) -> list[str]:
        """Import one image of a ``docker save`` archive as a chain of images, one per layer; returns the
        ids, base first (all or nothing). See :meth:`import_auto`.

        >>> store.import_docker_save("alpine.tar")     # doctest: +SKIP
        """
        from . import interop
        return interop.import_docker_archive(self, archive, tag=tag, ref=ref, **limits)

    def import_debian(self, *, tag: str | None = "debian:bookworm", suite: str = "bookworm") -> str:
        """Debian minbase from the host's apt mirror via mmdebstrap, cached under ``<root>/cache``.

        >>> store.import_debian()       # doctest: +SKIP
        """
        from .sources import debian_tarball
        cache = _confined(os.path.join(self.root, "cache"), self.root)
        tar = debian_tarball(cache, suite=suite)
        # built by us from a signed mirror: keep its setuid binaries (su, passwd) and file capabilities
        return self.import_tar(tar, tag=tag, keep_setuid=True, keep_privileged_xattrs=True,
                               created_by=f"mmdebstrap --variant=minbase {suite}")

    def commit(self, active_key: str, tag: str | None = None, *, created_by: str = "", comment: str = "") -> str:
        """Turn a container's active snapshot into a new image whose parent is the container's image.

        A stopped container (its snapshot not mounted) is committed in place: the key is consumed, as in
        the snapshot contract. From that moment the container's data lives only in the new snapshot, so
        it is never removed: the image is registered at once (the snapshot's labels carry the same
        facts, so that ``check(repair=True)`` can register it if the process dies first) and its size is
        measured afterwards, best effort (``size`` None until measured). A container still mounted
        (running, best frozen) keeps its snapshot: a fresh snapshot of its image receives only what
        differs (:func:`labkit.images.sync.sync_tree`), so unchanged files stay shared on copy-on-write
        backends. The new image inherits its parent's config.

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
            from .sync import sync_tree
            live = where[-1]
            return self._build(lambda target: sync_tree(live, target), parent=parent_id, tag=ref,
                               created_by=created_by, comment=comment)
        config = self._config(parent_id)
        image_id = _new_id()
        snap = SNAPSHOT_PREFIX + image_id
        self.sn.commit(snap, active_key, labels=self._journal(image_id, parent_id, ref, created_by, comment))
        # the point of no return: the container's data is in `snap` now; keep it whatever happens next
        try:
            self._register(image_id, snap, parent_id, ref, created_by, comment, None, config)
        except Exception as e:
            raise errors.FailedPrecondition(
                f"container snapshot {active_key!r}",
                f"was committed as snapshot {snap} but registering image {image_id[:12]} failed "
                f"({' '.join(str(e).split())})", fix="run check(repair=True) to register it") from e
        self._measure_best_effort(image_id, snap)
        return image_id

    def _measure_best_effort(self, image_id: str, snap: str) -> None:
        try:
            self._set_size(image_id, self._measure(snap))
        except Exception:  # noqa: BLE001 - the image exists; check() reports the missing size, repair measures it
            pass

    def _measure(self, snap: str) -> int:
        from .sources import content_size
        return int(self._with_view(snap, content_size))

    def _with_view(self, snap: str, fn: Callable[[str], Any]) -> Any:
        with self._view(snap) as target:
            return fn(target)

    @contextmanager
    def _view(self, snap: str) -> Iterator[str]:
        key = f"{VIEW_PREFIX}{os.urandom(6).hex()}"
        mnt_dir = self._scratch("view-")
        try:
            mnt = self.sn.view(key, snap, labels={L_VIEW: snap})
            try:
                with mnt.mount(_confined(mnt_dir, self.root)) as target:
                    yield target
            finally:
                self.sn.remove(key)
        finally:
            self._drop_scratch(mnt_dir)

    @contextmanager
    def mounted(self, ref: str) -> Iterator[str]:
        """A read-only view of the image mounted on a temporary directory for a ``with`` block.

        >>> with store.mounted("busybox") as root:       # doctest: +SKIP
        ...     os.listdir(root)
        """
        with self._view(self._row(self.resolve(ref))["snapshot"]) as target:
            yield target

    def export(self, ref: str, tarpath: str | os.PathLike[str]) -> int:
        """Write the image's root filesystem as a PAX tar (numeric owners, sorted, reproducible: the same
        image gives the same bytes) through a read-only view; returns the bytes written. The same as
        ``save(ref, tarpath, format="rootfs")``.

        The tar is written to a temporary file (``mkstemp``, mode 0600) in the destination's directory
        and renamed over ``tarpath`` at the end: a symlink at ``tarpath`` is replaced, never followed,
        and a failure leaves no partial file.

        >>> store.export("busybox", "/tmp/bb.tar")     # doctest: +SKIP
        """
        return self.save(ref, tarpath, format="rootfs").bytes

    def save(self, ref: str, path: str | os.PathLike[str], *, format: str = "oci-archive",
             compress: str | None = None) -> SaveReport:
        """Write an image to ``path`` as ``oci-archive`` (default), ``docker-archive`` or ``rootfs``.

        Each image of the chain becomes one layer: the diff of its tree against its parent's (whiteouts
        for deletions, an opaque marker for a directory emptied of what the parent had), with the top
        image's config (Env, Cmd, Entrypoint, WorkingDir, User, Labels), the history (``created_by``),
        diff_ids and digests of the OCI image spec. The archive is reproducible (the same image saves
        to the same bytes) and is read by ``podman load``, ``skopeo``, ``umoci`` and :meth:`import_auto`.
        ``compress``: ``gzip`` (the default for oci-archive) or ``none`` (the default for the others).
        The archive carries ``ref``'s name when ``ref`` is a tag. Written through a temporary file and
        renamed into place (see :meth:`export`). See :mod:`labkit.images.save`.

        >>> store.save("app:v1", "/tmp/app.tar").layers       # doctest: +SKIP
        ('sha256:…', 'sha256:…')
        """
        from . import save as save_mod
        return save_mod.save(self, ref, path, format=format, compress=compress)

    def build(self, recipe: str | os.PathLike[str], context: str | os.PathLike[str] | None = None, *,
              tag: str | None = None, run_step: RunStep | None = None, build_args: dict[str, str] | None = None,
              no_cache: bool = False, progress: Callable[[str], Any] | None = print) -> BuildResult:
        """Build an image from a recipe (a Labfile: a Dockerfile subset); see :func:`labkit.images.build.build`.

        ``run_step(parent_id, argv, env, workdir, user) -> image_id`` runs a ``RUN`` step in a container
        on the parent image and commits it (the Lab gives one); without it a recipe with ``RUN`` is refused.

        >>> store.build("Labfile", ".", tag="app:v1", run_step=step).id       # doctest: +SKIP
        """
        from . import build as build_mod
        return build_mod.build(self, recipe, context, tag=tag, run_step=run_step, build_args=build_args,
                               no_cache=no_cache, progress=progress)

    # ---- recipe steps --------------------------------------------------------------------------------
    def _cached(self, parent_id: str | None, build_key: str) -> str | None:
        """The newest image a recipe step with ``build_key`` made on ``parent_id`` (None: not cached)."""
        r = self.db.execute("SELECT id FROM images WHERE build_key=? AND parent IS ? AND removal_pending=0 "
                            "ORDER BY created DESC, id LIMIT 1", (build_key, parent_id)).fetchone()
        return str(r[0]) if r else None

    def _annotate(self, image_id: str, *, created_by: str, recipe: str, build_key: str) -> None:
        """Say that ``image_id`` (made by a runner's commit) is a recipe step: created_by, recipe, cache key;
        the snapshot's labels (what ``check`` re-registers from) say it too."""
        with self._tx() as db:
            db.execute("UPDATE images SET created_by=?, recipe=?, build_key=? WHERE id=?",
                       (created_by, recipe, build_key, image_id))
        row = self._row(image_id)
        try:
            labels = dict(self.sn.stat(row["snapshot"]).labels)
            labels.update({L_CREATED_BY: created_by[:4096], L_RECIPE: recipe[:4096]})
            self.sn.update(row["snapshot"], labels=labels)
        except errors.NotFound:
            pass

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
        return str(r[0])

    # ---- removing -----------------------------------------------------------------------------------
    def _delete(self, image_id: str) -> Removal:
        """Remove an unused image: row and snapshot together; returns what it freed (its exclusive usage)."""
        from .reports import Removal
        with self._tx() as db:
            row = self._row(image_id)
            tags = self._tags(image_id)
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
        return Removal(id=image_id, short_id=image_id[:12], tags=tags, freed=freed)

    def rmi(self, ref: str, *, force: bool = False) -> RmiReport:
        """Remove an image (or, given one of several tags, just that tag).

        Refused while a container or a child image uses it. ``force=True`` cannot remove a snapshot that
        has children either: it removes every tag, marks the image ``removal_pending`` and reports what
        still holds it (``kept_by``); ``prune()`` deletes it once its containers and children are gone.

        >>> store.rmi("app:v1")     # doctest: +SKIP
        RmiReport(ref='app:v1', id='...', untagged=('app:v1',), removals=(Removal(...),), kept_by=())
        """
        from .reports import RmiReport
        with self._lock:
            image_id = self.resolve(ref)
            tags = self._tags(image_id)
            try:
                named = normalize(ref)
            except errors.InvalidArgument:
                named = None
            if named in tags and len(tags) > 1 and not force:
                self.untag(named)
                return RmiReport(ref=ref, id=image_id, untagged=(named,), removals=(), kept_by=())
            kids, conts = self._users()
            users = tuple([f"image {k[:12]}" for k in kids.get(image_id, [])]
                          + [f"container {self._container_name(c)} ({c.kind.value} snapshot {c.name})"
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
                return RmiReport(ref=ref, id=image_id, untagged=tags, removals=(), kept_by=users)
            return RmiReport(ref=ref, id=image_id, untagged=tags, removals=(self._delete(image_id),), kept_by=())

    def prune(self, *, dangling_only: bool = True, all: bool = False, dry_run: bool = False) -> PruneReport:
        """Delete unneeded images; one :class:`Removal` (id, tags, bytes freed) per image deleted.

        Dangling: untagged, no child image, no container — repeated, so an untagged chain goes up to the
        first image that is tagged or that a container or a tagged descendant needs.
        ``all=True`` (or ``dangling_only=False``) is ``docker image prune -a``: tagged or not, every image
        that no container needs (directly or through a descendant) is deleted. ``dry_run`` deletes
        nothing and says what would go (``freed`` is each layer's usage now).

        >>> store.prune().freed    # doctest: +SKIP
        0
        """
        from .reports import PruneReport, Removal
        everything = all or not dangling_only
        removals: list[Removal] = []
        gone: set[str] = set()
        with self._lock:
            while True:
                kids, conts = self._users()
                ids = [r[0] for r in self.db.execute("SELECT id FROM images ORDER BY created DESC, id")]
                tagged = {r[0] for r in self.db.execute("SELECT DISTINCT image FROM tags")}
                victims = [i for i in ids if i not in gone and not [k for k in kids.get(i, []) if k not in gone]
                           and not conts.get(i) and (everything or i not in tagged)]
                if not victims:
                    break
                for i in victims:
                    if dry_run:
                        gone.add(i)
                        removals.append(Removal(id=i, short_id=i[:12], tags=self._tags(i),
                                                freed=self._usage(self._row(i)["snapshot"])))
                    else:
                        removals.append(self._delete(i))
        return PruneReport(removals=tuple(removals), dry_run=dry_run)

    # ---- after a crash ------------------------------------------------------------------------------
    def check(self, *, repair: bool = False) -> CheckReport:
        """What a crash left inconsistent between images.db, the snapshotter and the store's directories;
        ``repair=True`` fixes what it can. Run it while nothing else uses the store.

        Found, and the repair:

        * build (``imgbuild-*``) and view (``imgview-*``) snapshots nobody finished: removed (a mounted
          one is left for ``labkit gc`` to unmount first);
        * a committed ``img-<id>`` snapshot without an image row (a crash between commit and register): it
          may hold a container's only copy, so it is **registered** (untagged unless its labels name a
          tag that is free; ``prune()`` deletes it if nobody wants it), never deleted;
        * a row whose snapshot is gone: the row and its tags are removed (children lose their parent);
        * an image whose size was never measured: measured;
        * directories the store made for mounts and scratch (``<root>/tmp/*``, old ``mnt-*``,
          ``view-*``, ``rootfs-*``, unfinished downloads in ``cache/``): removed unless something is
          mounted in them.

        Each problem has its repair at the same index: done, ``would ...`` (without ``repair``),
        ``not repaired (...): why``, or ``none: ...`` when labkit will not touch it.

        >>> store.check()         # doctest: +SKIP
        CheckReport(problems=(), repairs=())
        """
        from . import repair as repair_mod
        return repair_mod.check(self, repair=repair)

    # ---- looking ------------------------------------------------------------------------------------
    def _all_rows(self) -> list[dict[str, Any]]:
        return [self._row(r[0]) for r in self.db.execute("SELECT id FROM images ORDER BY created, id")]

    def _usage(self, snap: str) -> int:
        try:
            return self.sn.usage(snap).size
        except errors.NotFound:      # a row whose snapshot is gone: check() reports it
            return 0

    def _info(self, row: dict[str, Any], kids: dict[str, list[str]], conts: dict[str, list[Info]]) -> ImageInfo:
        from .listing import ImageInfo
        cfg = ImageConfig.from_json(_loads(row["config"]))
        return ImageInfo(
            id=row["id"], short_id=row["id"][:12], tags=self._tags(row["id"]), parent=row["parent"],
            created=row["created"], created_by=row["created_by"], comment=row["comment"],
            size=None if row["size"] < 0 else row["size"], exclusive=self._usage(row["snapshot"]),
            snapshot=row["snapshot"], backend=self.sn.name, children=tuple(kids.get(row["id"], [])),
            containers=tuple(self._container_name(c) for c in conts.get(row["id"], [])),
            removal_pending=bool(row["removal_pending"]), env=cfg.env, cmd=cfg.cmd, entrypoint=cfg.entrypoint,
            workdir=cfg.workdir, user=cfg.user, labels=cfg.labels, recipe=row["recipe"])

    def images(self) -> list[ImageInfo]:
        """Every image, oldest first.

        >>> [(i.short_id, i.tags) for i in store.images()]      # doctest: +SKIP
        [('3f1c2b...', ('busybox:latest',))]
        """
        with self._lock:
            kids, conts = self._users()
            return [self._info(r, kids, conts) for r in self._all_rows()]

    def inspect(self, ref: str) -> ImageInfo:
        """Everything known about one image.

        >>> store.inspect("busybox").tags     # doctest: +SKIP
        ('busybox:latest',)
        """
        with self._lock:
            row = self._row(self.resolve(ref))
            kids, conts = self._users()
            return self._info(row, kids, conts)

    def run_info(self, ref: str) -> tuple[str, str, ImageConfig]:
        """What starting a container on an image needs: ``(image id, snapshot name, config)``, from one row
        (:meth:`inspect` also measures the image's usage and walks the snapshots for its users).

        >>> store.run_info("busybox")[1]      # doctest: +SKIP
        'img-3f1c...'
        """
        with self._lock:
            row = self._row(self.resolve(ref))
        return row["id"], row["snapshot"], ImageConfig.from_json(_loads(row["config"]))

    def history(self, ref: str) -> list[HistoryEntry]:
        """The chain from this image back to its base, newest first, with created_by and sizes.

        >>> [h.created_by for h in store.history("app")]    # doctest: +SKIP
        ['sh -c make', 'labkit import busybox']
        """
        from .listing import HistoryEntry
        with self._lock:
            out = []
            image_id: str | None = self.resolve(ref)
            while image_id:
                r = self._row(image_id)
                out.append(HistoryEntry(id=r["id"], short_id=r["id"][:12], tags=self._tags(r["id"]),
                                        parent=r["parent"], created=r["created"], created_by=r["created_by"],
                                        comment=r["comment"], size=None if r["size"] < 0 else r["size"],
                                        exclusive=self._usage(r["snapshot"]), recipe=r["recipe"]))
                image_id = r["parent"]
            return out

    def tree(self) -> tuple[str, list[TreeNode]]:
        """Lineage of every image as text and as :class:`TreeNode` roots, containers as leaves.

        >>> text, roots = store.tree()      # doctest: +SKIP
        """
        from .lineage import render_tree
        from .listing import TreeNode
        with self._lock:
            rows = self._all_rows()
            kids, conts = self._users()
            by_id = {r["id"]: r for r in rows}

            def node(i: str) -> TreeNode:
                r = by_id[i]
                return TreeNode(id=i, short_id=i[:12], tags=self._tags(i), size=None if r["size"] < 0 else r["size"],
                                exclusive=self._usage(r["snapshot"]), created_by=r["created_by"],
                                containers=tuple(self._container_name(c) for c in conts.get(i, [])),
                                children=tuple(node(k) for k in kids.get(i, [])), recipe=r["recipe"])
            roots = [node(r["id"]) for r in rows if r["parent"] is None]
        return render_tree(roots), roots

    def whatrequires(self, ref: str) -> Requirements:
        """Images (ids) and containers (names) that depend on this image, transitively.

        >>> store.whatrequires("busybox")     # doctest: +SKIP
        Requirements(images=('1a2b...',), containers=('web',))
        """
        from .listing import Requirements
        with self._lock:
            root = self.resolve(ref)
            kids, conts = self._users()
            imgs: list[str] = []
            cs: list[str] = []
            stack = [root]
            while stack:
                i = stack.pop()
                cs += [self._container_name(c) for c in conts.get(i, [])]
                for k in kids.get(i, []):
                    imgs.append(k)
                    stack.append(k)
            return Requirements(images=tuple(imgs), containers=tuple(cs))

    def df(self) -> list[DfRow]:
        """Disk use per image and container: total, shared, exclusive, reclaimable (bytes).

        ``layer`` = snapshotter.usage of the object's own snapshot. ``total`` = layers of the object and its
        ancestors. A layer counts as *shared* for an object when some other image or container also has it
        in its chain; ``exclusive = total - shared``; ``reclaimable`` = what removing the object now frees.

        >>> [(r.kind, r.name, r.total) for r in store.df()]   # doctest: +SKIP
        """
        from .lineage import df_rows
        with self._lock:
            rows = self._all_rows()
            _, conts = self._users()
            parent = {r["id"]: r["parent"] for r in rows}
            layer = {r["id"]: self._usage(r["snapshot"]) for r in rows}
            containers = {i: [(self._container_name(c), c.name, self._usage(c.name)) for c in cl]
                          for i, cl in conts.items() if cl}
        return df_rows(parent, layer, containers)


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return {}

