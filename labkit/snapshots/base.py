"""The snapshot contract, in containerd's vocabulary (``core/snapshots/snapshotter.go``).

Vocabulary
----------
* A **key** names an *active* snapshot: writable, mounted by a container as its root filesystem.
* A **name** names a *committed* snapshot: read-only, never changes again; it can be a parent.
* A **view** is a read-only snapshot of a committed parent (for inspecting an image).
* A **parent** is always committed. A chain of parents is an image's lineage.

Keys and names share one namespace per store. Kinds: ``active``, ``view``, ``committed``.

Lifecycle (exactly what ``docker run`` / ``docker commit`` do)::

    mnt = sn.prepare("c1", parent="base")    # active snapshot of the image
    with mnt.mount("/run/c1/rootfs"):        # the container's root filesystem
        ...                                  # the container writes
    sn.commit("app", "c1")                   # -> a new image "app" whose parent is "base"
    # or: sn.remove("c1")                    # docker run --rm: the snapshot is thrown away

Worked example (any backend)::

    >>> from labkit.snapshots import open_snapshotter          # doctest: +SKIP
    >>> sn = open_snapshotter("copy", "/tmp/store")            # doctest: +SKIP
    >>> m = sn.prepare("base-build")                          # doctest: +SKIP
    >>> with m.mount("/mnt/x"): open("/mnt/x/hello", "w").write("hi")   # doctest: +SKIP
    >>> sn.commit("base", "base-build")                       # doctest: +SKIP
    >>> sn.stat("base").kind                                  # doctest: +SKIP
    <Kind.COMMITTED: 'committed'>

Methods and their edge cases
----------------------------
``prepare(key, parent=None, *, labels=None) -> Mount``
    A new active snapshot whose content equals ``parent`` (empty when None). ``AlreadyExists`` if the key
    is taken (by any kind); ``NotFound`` if the parent does not exist; ``FailedPrecondition`` if the parent
    is active or a view. A failure leaves nothing behind (no metadata row, no directory, no mount).
``view(key, parent=None, *, labels=None) -> Mount``
    Like prepare but the mount is read-only and the snapshot cannot be committed.
``commit(name, key, *, labels=None)``
    Turns the active snapshot ``key`` into the committed snapshot ``name`` (same parent); ``key`` is gone
    afterwards. The caller must have unmounted it (data written through a still-mounted writable mount
    after commit is undefined, as in containerd). ``NotFound`` for an unknown key, ``FailedPrecondition``
    for a view or an already committed snapshot, ``AlreadyExists`` if ``name`` is taken.
``remove(key_or_name)``
    Removes any kind. ``FailedPrecondition`` if it has children (children first) or if an active snapshot
    is still mounted somewhere (unmount first: removing a tree under a running container would empty it
    on some backends and not on others). Its space is released.
``stat(key_or_name) -> Info`` / ``update(key_or_name, *, labels)``
    Metadata only. ``NotFound`` for an unknown key.
``usage(key_or_name) -> Usage``
    Bytes and inodes **exclusive** to this snapshot's own layer: what removing it alone would free.
    Parents never count; data shared with a parent (a reflinked extent, a btrfs extent, a thin block) is
    not counted for the child, but a real copy of the parent's data is the child's own and counts (the
    ``copy`` baseline). For an active snapshot it is computed now; it grows with writes.
``mounts(key) -> Mount``
    The mount for an active snapshot or a view (the same value prepare/view returned);
    ``FailedPrecondition`` for a committed one (mount a view of it instead).
``walk(*filters) -> Iterator[Info]``
    Every snapshot, oldest first, optionally filtered with containerd-style filter strings:
    ``"kind==committed"``, ``"parent==base"``, ``"name!=x"``, ``"labels.role==image"``; a comma inside one
    string means AND, several strings mean OR.
``close()``
    Releases what the backend holds (a loop-file filesystem, the metadata connection). Idempotent: calling
    it twice is fine. Any other call after close raises ``FailedPrecondition``.

``recover() -> list[Recovered]``
    Settles what a crashed process left half done (see below); runs on open too. Never touches an
    operation whose process is still alive.

Ephemeral snapshots
-------------------
An active snapshot prepared with the label :data:`EPHEMERAL` (``labkit.ephemeral=true``) is one its
caller means to throw away, as ``docker run --rm`` does its container's: its writes need not survive a
crash, so a backend may skip making them durable (overlay mounts it ``volatile``, as podman does for
``--rm`` containers: no sync of the upper layer on unmount, ~1-5 ms). Committing one anyway first makes
its content durable (the backend's ``_persist``); the committed snapshot is an ordinary one.

Crash safety
------------
A snapshot's storage is made and released outside any database transaction, so a crash cannot roll the
row back while the storage stays. ``prepare``/``view`` first **reserve** the row (and thereby its id) in a
committed transaction, marked *pending create*; then the backend makes the storage; then the mark is
cleared. ``remove`` marks the row *pending remove*, releases the storage, and deletes the row last. A
pending row is invisible to ``stat``/``walk``/``usage``/``mounts``/``commit`` but keeps its key taken and
its parent un-removable. While an operation is in flight its process holds an ``flock`` on
``<root>/locks/<id>`` (open file descriptions: another process, or another snapshotter in the same one,
cannot take it); ``recover`` settles only pending rows whose lock it can take, i.e. whose owner died: the
storage is released through the backend's ``_remove`` (made to tolerate storage never fully made) and the
row deleted — a half-made snapshot is rolled back, a half-done removal finished.

Backends implement a handful of ``_hooks`` on :class:`BaseSnapshotter`; the metadata, the checks above and
the all-or-nothing behaviour live here once.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator
from enum import Enum
from typing import Any, ClassVar, NamedTuple, Protocol, runtime_checkable

from .. import errors
from .._db import connect, transaction
from .._sys.fs import tree_usage
from .._sys.record import Record, field
from .capabilities import StoreSpace
from .mount import Mount

__all__ = ["Kind", "Info", "Usage", "Snapshotter", "BaseSnapshotter", "Mount", "Recovered", "parse_filters",
           "EPHEMERAL"]

#: the label that marks an active snapshot as thrown away after use (see "Ephemeral snapshots")
EPHEMERAL = "labkit.ephemeral"


_SCHEMA = """CREATE TABLE IF NOT EXISTS snapshots (
                 id INTEGER PRIMARY KEY AUTOINCREMENT,
                 name TEXT UNIQUE NOT NULL,
                 kind TEXT NOT NULL CHECK (kind IN ('active','view','committed')),
                 parent_id INTEGER REFERENCES snapshots(id),
                 created REAL NOT NULL, updated REAL NOT NULL,
                 labels TEXT NOT NULL DEFAULT '{}', state TEXT NOT NULL DEFAULT '{}',
                 pending TEXT);
               CREATE INDEX IF NOT EXISTS snapshots_parent ON snapshots(parent_id);"""
# ``pending``: NULL for a settled snapshot; JSON ``{"op": "create"|"remove", "pid": N}`` while an operation
# is in flight (see "Crash safety"). Stores made before it existed gain the column, NULL everywhere.


def _migrate(db: sqlite3.Connection, lock: threading.RLock) -> None:
    """Bring an older store's table up to :data:`_SCHEMA` (a no-op for a current one)."""
    def columns() -> set[str]:
        return {r[1] for r in db.execute("PRAGMA table_info(snapshots)")}
    if "pending" in columns():
        return
    with transaction(db, lock):
        if "pending" not in columns():       # another process may have migrated meanwhile
            db.execute("ALTER TABLE snapshots ADD COLUMN pending TEXT")


class Kind(str, Enum):
    """The three kinds of snapshot."""

    ACTIVE = "active"
    VIEW = "view"
    COMMITTED = "committed"


class Info(Record):
    """Metadata of one snapshot (``stat``/``walk``)."""

    name: str
    kind: Kind
    parent: str | None
    created: float
    updated: float
    labels: dict[str, str] = field(default_factory=dict)


class Usage(Record):
    """Space exclusive to one snapshot's own layer (parents never count)."""

    size: int
    inodes: int


class Recovered(Record):
    """One operation a crashed process left half done, as :meth:`BaseSnapshotter.recover` settled it.

    ``operation`` is ``prepare``, ``view`` or ``remove``; ``outcome`` is ``rolled back`` (the half-made
    snapshot is gone, its key free again), ``finished`` (the removal completed) or ``failed`` (``error``
    says why the storage could not be released; the row stays pending and the next recover tries again).
    """

    name: str
    operation: str
    outcome: str
    error: str = ""


@runtime_checkable
class Snapshotter(Protocol):
    """The contract every backend fulfils; see the module docstring for each method's edge cases."""

    name: ClassVar[str]

    def prepare(self, key: str, parent: str | None = None, *, labels: dict[str, str] | None = None) -> Mount: ...
    def view(self, key: str, parent: str | None = None, *, labels: dict[str, str] | None = None) -> Mount: ...
    def commit(self, name: str, key: str, *, labels: dict[str, str] | None = None) -> None: ...
    def remove(self, key: str) -> None: ...
    def stat(self, key: str) -> Info: ...
    def update(self, key: str, *, labels: dict[str, str]) -> Info: ...
    def usage(self, key: str) -> Usage: ...
    def mounts(self, key: str) -> Mount: ...
    def walk(self, *filters: str) -> Iterator[Info]: ...
    def close(self) -> None: ...


_FILTER_FIELDS = {"name", "kind", "parent"}


def parse_filters(filters: tuple[str, ...]) -> list[list[tuple[str, str, str]]]:
    """Parse containerd-style filters into OR-of-AND clauses of ``(field, op, value)``.

    >>> parse_filters(("kind==committed,parent==base", "name!=x"))
    [[('kind', '==', 'committed'), ('parent', '==', 'base')], [('name', '!=', 'x')]]
    """
    out = []
    for f in filters:
        clause = []
        for part in f.split(","):
            part = part.strip()
            op = "!=" if "!=" in part else "==" if "==" in part else None
            if op is None:
                raise errors.InvalidArgument(f"filter {part!r}", "has no == or !=", fix="write e.g. kind==committed")
            k, _, v = part.partition(op)
            k = k.strip()
            if k not in _FILTER_FIELDS and not k.startswith("labels."):
                raise errors.InvalidArgument(f"filter field {k!r}", "is unknown",
                                             fix="use name, kind, parent or labels.<key>")
            clause.append((k, op, v.strip()))
        out.append(clause)
    return out


def _matches(info: Info, clauses: list[list[tuple[str, str, str]]]) -> bool:
    if not clauses:
        return True
    for clause in clauses:
        ok = True
        for k, op, v in clause:
            if k.startswith("labels."):
                actual = info.labels.get(k[7:])
            elif k == "kind":
                actual = info.kind.value
            else:
                actual = getattr(info, k)
            if (actual == v) != (op == "=="):
                ok = False
                break
        if ok:
            return True
    return False


class Row(NamedTuple):
    """A metadata row as backends see it: ``id`` names the backend's storage (e.g. ``snapshots/<id>``).
    (A named tuple: it is made on every open, and a frozen dataclass costs ~1 ms to create.)"""

    id: int
    name: str
    kind: Kind
    parent_id: int | None
    state: dict[str, Any]


class BaseSnapshotter:
    """Metadata (SQLite, transactional), the contract's checks, and all-or-nothing behaviour.

    A backend subclass sets ``name`` and implements ``_create``, ``_mount``, ``_commit``, ``_remove``,
    ``_usage`` and optionally ``_open``/``_close``/``supported``. ``chain`` arguments list the parent rows
    nearest first. ``root`` is the backend's own directory; it is created if missing.
    """

    name: ClassVar[str] = "base"

    def __init__(self, root: str | os.PathLike[str]) -> None:
        reason = type(self).supported(str(root))
        if reason:
            raise errors.Unsupported(f"{self.name} backend", reason)
        self.root = os.path.abspath(root)
        #: where snapshot storage lives; a backend may point it elsewhere in ``_open`` (a loop-file fs)
        self.storage = os.path.join(self.root, "snapshots")
        os.makedirs(self.storage, exist_ok=True)
        self._locks = os.path.join(self.root, "locks")
        os.makedirs(self._locks, exist_ok=True)
        self._lock = threading.RLock()
        self._db: sqlite3.Connection | None = connect(os.path.join(self.root, "metadata.db"), _SCHEMA)
        try:
            _migrate(self._db, self._lock)
            self._open()
        except BaseException:
            self._db.close()
            self._db = None
            raise
        try:
            #: what opening settled of operations a crashed process had left half done (see :meth:`recover`)
            self.recovered: list[Recovered] = self.recover()
        except BaseException:
            self.close()
            raise

    # ---- hooks for backends -------------------------------------------------------------------------
    @classmethod
    def supported(cls, root: str) -> str | None:
        """Why this backend cannot run with its store at ``root`` (with the fix), or None when it can."""
        return None

    def _open(self) -> None:
        """Acquire what the backend needs (e.g. mount its loop-file filesystem)."""

    def _close(self) -> None:
        """Release what ``_open`` acquired."""

    def _create(self, row: Row, chain: list[Row]) -> dict[str, Any] | None:
        """Make the storage of a new active snapshot or view; return backend state to persist."""
        raise NotImplementedError

    def _mount(self, row: Row, chain: list[Row]) -> Mount:
        """The mount for an active snapshot or view."""
        raise NotImplementedError

    def _commit(self, row: Row, chain: list[Row]) -> dict[str, Any] | None:
        """Freeze an active snapshot's storage; return updated backend state (or None to keep it)."""
        return None

    def _persist(self, row: Row) -> None:
        """Make the content of an ephemeral snapshot (``row.state["ephemeral"]``) durable before it is
        committed; backends that skip nothing for ephemeral snapshots need not override it."""

    def _remove(self, row: Row) -> None:
        """Release a snapshot's storage (any kind). Must tolerate storage that was never fully made, or
        not made at all: after a crash during prepare, :meth:`recover` calls it with ``row.state == {}``
        (what ``_create`` returned was never saved), so derive names from ``row.id``, as ``_create`` did."""
        raise NotImplementedError

    def _usage(self, row: Row, chain: list[Row]) -> Usage:
        """Bytes and inodes exclusive to this snapshot's own layer."""
        raise NotImplementedError

    def _mounted_at(self, row: Row, chain: list[Row]) -> list[str]:
        """Where an active snapshot or view is mounted now. Backends whose ``_mount`` has side effects
        (attaching a device) override this to look without making anything."""
        return self._mount(row, chain).targets()

    # ---- abilities every backend has (see :mod:`labkit.snapshots.capabilities`) -------------------------
    @classmethod
    def options_for(cls, largest_image_bytes: int) -> dict[str, Any]:
        """Store options big enough for images of up to ``largest_image_bytes`` (``{}``: none needed).

        >>> BaseSnapshotter.options_for(1 << 30)
        {}
        """
        return {}

    def store_space(self) -> StoreSpace:
        """Bytes the whole store occupies now. The default counts the allocated bytes of the snapshot
        directories (hard links once); backends on a pool or a loop-file filesystem count that instead."""
        return StoreSpace(tree_usage(self.storage).size, None, "allocated bytes of the snapshot directories")

    # ---- helpers --------------------------------------------------------------------------------------
    def path(self, row: Row, *parts: str) -> str:
        """The storage directory of ``row``: ``<storage>/<id>/...`` (``storage`` is ``<root>/snapshots``)."""
        return os.path.join(self.storage, str(row.id), *parts)

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise errors.FailedPrecondition(f"{self.name} snapshotter at {self.root}", "is closed",
                                            fix="open a new one")
        return self._db

    def _tx(self) -> Any:
        return transaction(self.db, self._lock)

    @staticmethod
    def _row(r: tuple[Any, ...]) -> Row:
        return Row(r[0], r[1], Kind(r[2]), r[3], json.loads(r[4]))

    def _get(self, name: str) -> Row:
        r = self.db.execute("SELECT id,name,kind,parent_id,state FROM snapshots WHERE name=? AND pending IS NULL",
                            (name,)).fetchone()
        if r is None:
            raise errors.NotFound(f"snapshot {name!r}", fix="list snapshots with walk()")
        return self._row(r)

    def _chain(self, row: Row) -> list[Row]:
        chain = []
        pid = row.parent_id
        while pid is not None:
            r = self.db.execute("SELECT id,name,kind,parent_id,state FROM snapshots WHERE id=?", (pid,)).fetchone()
            chain.append(self._row(r))
            pid = chain[-1].parent_id
        return chain

    def _info(self, r: tuple[Any, ...]) -> Info:
        return Info(r[0], Kind(r[1]), r[2], r[3], r[4], json.loads(r[5]))

    _INFO_SQL = ("SELECT s.name, s.kind, p.name, s.created, s.updated, s.labels FROM snapshots s "
                 "LEFT JOIN snapshots p ON s.parent_id = p.id WHERE s.pending IS NULL")

    # ---- in-flight operations (see "Crash safety" in the module docstring) -------------------------------
    def _claim(self, row_id: int) -> int | None:
        """Take the flock of ``row_id``'s operation: its descriptor, or None while another holds it."""
        fd = os.open(os.path.join(self._locks, str(row_id)),
                     os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return None
            raise
        return fd

    def _unclaim(self, row_id: int, fd: int) -> None:
        """Drop a claim once its row is settled (or abandoned, for a later :meth:`recover`)."""
        try:
            os.unlink(os.path.join(self._locks, str(row_id)))
        except FileNotFoundError:
            pass
        finally:
            os.close(fd)

    @staticmethod
    def _pending(op: str) -> str:
        return json.dumps({"op": op, "pid": os.getpid()})

    # ---- the contract -----------------------------------------------------------------------------------
    def prepare(self, key: str, parent: str | None = None, *, labels: dict[str, str] | None = None) -> Mount:
        """A new active (writable) snapshot of ``parent``.

        >>> m = sn.prepare("c1", "base")   # doctest: +SKIP
        """
        return self._new(key, parent, Kind.ACTIVE, labels)

    def view(self, key: str, parent: str | None = None, *, labels: dict[str, str] | None = None) -> Mount:
        """A new read-only view of ``parent``.

        >>> m = sn.view("look", "base")    # doctest: +SKIP
        """
        return self._new(key, parent, Kind.VIEW, labels)

    def _new(self, key: str, parent: str | None, kind: Kind, labels: dict[str, str] | None) -> Mount:
        _check_name(key)
        with self._lock:
            try:
                made, chain, claim = self._reserve(key, parent, kind, labels)
            except _Busy:
                self.recover()               # its owner may have died: then the key is free again
                made, chain, claim = self._reserve(key, parent, kind, labels)
            try:
                os.makedirs(self.path(made), exist_ok=True)
                if kind is Kind.ACTIVE and (labels or {}).get(EPHEMERAL) == "true":
                    made = made._replace(state={"ephemeral": True})
                state = self._create(made, chain)
                if state:
                    made = made._replace(state={**made.state, **state})
                mount = self._mount(made, chain)
                with self._tx() as db:
                    db.execute("UPDATE snapshots SET state=?, pending=NULL WHERE id=?",
                               (json.dumps(made.state), made.id))
            except BaseException:
                self._abandon(made, claim)
                raise
            self._unclaim(made.id, claim)
            return mount

    def _reserve(self, key: str, parent: str | None, kind: Kind,
                 labels: dict[str, str] | None) -> tuple[Row, list[Row], int]:
        """Commit the new row, pending create, with its claim held: nothing is made yet, but the key, the id
        and the parent (a pending child counts as a child) are taken."""
        with self._tx() as db:
            r = db.execute("SELECT pending FROM snapshots WHERE name=?", (key,)).fetchone()
            if r is not None:
                if r[0] is None:
                    raise errors.AlreadyExists(f"snapshot {key!r}", fix="choose another key or remove it first")
                busy = json.loads(r[0])
                raise _Busy(f"snapshot {key!r}", f"is being {'made' if busy.get('op') == 'create' else 'removed'} "
                            f"by process {busy.get('pid')}", fix="wait for it, or choose another key")
            parent_row = None
            if parent is not None:
                parent_row = self._get(parent)
                if parent_row.kind is not Kind.COMMITTED:
                    raise errors.FailedPrecondition(
                        f"parent {parent!r}", f"is {parent_row.kind.value}, not committed",
                        fix=f"commit it first: commit(name, {parent!r})")
            now = time.time()
            cur = db.execute(
                "INSERT INTO snapshots(name,kind,parent_id,created,updated,labels,pending) VALUES (?,?,?,?,?,?,?)",
                (key, kind.value, parent_row.id if parent_row else None, now, now, json.dumps(labels or {}),
                 self._pending("create")))
            assert cur.lastrowid is not None
            claim = self._claim(cur.lastrowid)
            if claim is None:   # nobody can hold a claim on an id that was not in the table: a stray lock file
                raise errors.FailedPrecondition(f"lock file {self._locks}/{cur.lastrowid}",
                                                "is held by another process",
                                                fix="see which with `fuser`; remove the file once it is gone")
            try:
                made = Row(cur.lastrowid, key, kind, parent_row.id if parent_row else None, {})
                chain = [parent_row, *self._chain(parent_row)] if parent_row else []
            except BaseException:
                self._unclaim(cur.lastrowid, claim)
                raise
        return made, chain, claim

    def _abandon(self, made: Row, claim: int) -> None:
        """Undo a prepare that failed after its row was reserved. If even that fails, the row stays pending
        and the claim is dropped, so a later :meth:`recover` (in any process) finishes the job."""
        try:
            self._discard_storage(made)
            with self._tx() as db:
                db.execute("DELETE FROM snapshots WHERE id=?", (made.id,))
        except Exception:  # noqa: BLE001 - the original error matters more; recover() retries this
            pass
        finally:
            self._unclaim(made.id, claim)

    def _discard_storage(self, row: Row) -> None:
        try:
            self._remove(row)
        finally:
            shutil.rmtree(self.path(row), ignore_errors=True)

    def recover(self) -> list[Recovered]:
        """Settle the operations that crashed processes left half done; returns what was settled.

        A pending prepare/view is rolled back (its storage released, its row deleted: the key is free again),
        a pending remove is finished. Operations of processes that are still alive (they hold their flock)
        are left alone. Runs on open; ``labkit check`` calls it too. Safe to call any time, from any process.

        >>> sn.recover()                   # doctest: +SKIP
        [Recovered(name='c1', operation='prepare', outcome='rolled back', error='')]
        """
        with self._lock:
            # the usual case, nothing pending, without taking the write lock (a row made pending after this
            # look belongs to a live process, which recover would leave alone anyway)
            if self.db.execute("SELECT 1 FROM snapshots WHERE pending IS NOT NULL LIMIT 1").fetchone() is None:
                return []
            claimed: list[tuple[Row, dict[str, Any], int]] = []
            with self._tx() as db:
                rows = db.execute("SELECT id,name,kind,parent_id,state,pending FROM snapshots "
                                  "WHERE pending IS NOT NULL ORDER BY id DESC").fetchall()
                for r in rows:
                    fd = self._claim(r[0])
                    if fd is not None:
                        claimed.append((self._row(r[:5]), json.loads(r[5]), fd))
            out = []
            for row, pending, fd in claimed:
                op = "remove" if pending.get("op") == "remove" else "view" if row.kind is Kind.VIEW else "prepare"
                try:
                    self._discard_storage(row)
                    with self._tx() as db:
                        db.execute("DELETE FROM snapshots WHERE id=?", (row.id,))
                except Exception as e:  # noqa: BLE001 - reported; the row stays pending for the next recover
                    out.append(Recovered(row.name, op, "failed", f"{type(e).__name__}: {e}"))
                else:
                    out.append(Recovered(row.name, op, "finished" if op == "remove" else "rolled back"))
                finally:
                    self._unclaim(row.id, fd)
            return out

    def commit(self, name: str, key: str, *, labels: dict[str, str] | None = None) -> None:
        """Turn active snapshot ``key`` into committed snapshot ``name``.

        >>> sn.commit("app", "c1")         # doctest: +SKIP
        """
        _check_name(name)
        with self._tx() as db:
            row = self._get(key)
            if row.kind is not Kind.ACTIVE:
                raise errors.FailedPrecondition(f"snapshot {key!r}",
                                                f"is {row.kind.value}, only an active one can be committed",
                                                fix="prepare() a writable snapshot to commit")
            if name != key and db.execute("SELECT 1 FROM snapshots WHERE name=?", (name,)).fetchone():
                raise errors.AlreadyExists(f"snapshot {name!r}", fix="choose another name")
            if row.state.get("ephemeral"):
                self._persist(row)
            state = self._commit(row, self._chain(row))
            state = {k: v for k, v in (state if state is not None else row.state).items() if k != "ephemeral"}
            old = db.execute("SELECT labels FROM snapshots WHERE id=?", (row.id,)).fetchone()[0]
            merged_labels = dict(json.loads(old))
            merged_labels.update(labels or {})
            merged_labels.pop(EPHEMERAL, None)
            db.execute("UPDATE snapshots SET name=?, kind='committed', updated=?, labels=?, state=? WHERE id=?",
                       (name, time.time(), json.dumps(merged_labels), json.dumps(state), row.id))

    def remove(self, key: str) -> None:
        """Remove a snapshot of any kind; refused while it has children.

        >>> sn.remove("c1")                # doctest: +SKIP
        """
        with self._lock:
            with self._tx() as db:
                row = self._get(key)
                kids = [r[0] + (" (being made)" if r[1] else "")
                        for r in db.execute("SELECT name, pending FROM snapshots WHERE parent_id=?", (row.id,))]
                if kids:
                    raise errors.FailedPrecondition(f"snapshot {key!r}", f"has children {', '.join(kids)}",
                                                    fix="remove the children first")
                if row.kind is Kind.ACTIVE:  # (a view may share its mount source with other views of the parent)
                    where = self._mounted_at(row, self._chain(row))
                    if where:
                        raise errors.FailedPrecondition(f"snapshot {key!r}", f"is mounted at {where[0]}",
                                                        fix="unmount it first (leave its `with` block)")
                claim = self._claim(row.id)
                if claim is None:
                    raise errors.FailedPrecondition(f"lock file {self._locks}/{row.id}", "is held by another process",
                                                    fix="see which with `fuser`; remove the file once it is gone")
                try:
                    db.execute("UPDATE snapshots SET pending=? WHERE id=?", (self._pending("remove"), row.id))
                except BaseException:
                    self._unclaim(row.id, claim)
                    raise
            try:
                try:
                    self._remove(row)
                except BaseException:   # the backend could not release it: the snapshot stays as it was
                    with self._tx() as db:
                        db.execute("UPDATE snapshots SET pending=NULL WHERE id=?", (row.id,))
                    raise
                shutil.rmtree(self.path(row), ignore_errors=True)
                with self._tx() as db:
                    db.execute("DELETE FROM snapshots WHERE id=?", (row.id,))
            finally:
                self._unclaim(row.id, claim)

    def stat(self, key: str) -> Info:
        """Metadata of one snapshot.

        >>> sn.stat("base").kind           # doctest: +SKIP
        <Kind.COMMITTED: 'committed'>
        """
        with self._lock:
            r = self.db.execute(self._INFO_SQL + " AND s.name=?", (key,)).fetchone()
            if r is None:
                raise errors.NotFound(f"snapshot {key!r}", fix="list snapshots with walk()")
            return self._info(r)

    def update(self, key: str, *, labels: dict[str, str]) -> Info:
        """Replace a snapshot's labels; returns the new Info."""
        with self._tx() as db:
            row = self._get(key)
            db.execute("UPDATE snapshots SET labels=?, updated=? WHERE id=?", (json.dumps(labels), time.time(), row.id))
        return self.stat(key)

    def usage(self, key: str) -> Usage:
        """Bytes and inodes exclusive to the snapshot's own layer (parents do not count).

        >>> sn.usage("c1").size            # doctest: +SKIP
        4096
        """
        with self._lock:
            row = self._get(key)
            return self._usage(row, self._chain(row))

    def mounts(self, key: str) -> Mount:
        """The mount of an active snapshot or a view."""
        with self._lock:
            row = self._get(key)
            if row.kind is Kind.COMMITTED:
                raise errors.FailedPrecondition(f"snapshot {key!r}", "is committed and has no mount",
                                                fix=f"view(key, {key!r}) gives a read-only mount of it")
            return self._mount(row, self._chain(row))

    def walk(self, *filters: str) -> Iterator[Info]:
        """Every snapshot (oldest first) matching any of ``filters``.

        >>> [i.name for i in sn.walk("kind==committed")]   # doctest: +SKIP
        ['base', 'app']
        """
        clauses = parse_filters(filters)
        with self._lock:
            rows = self.db.execute(self._INFO_SQL + " ORDER BY s.id").fetchall()
        for r in rows:
            info = self._info(r)
            if _matches(info, clauses):
                yield info

    def close(self) -> None:
        """Release the backend's resources; safe to call twice."""
        with self._lock:
            if self._db is None:
                return
            try:
                self._close()
            finally:
                self._db.close()
                self._db = None

    def __enter__(self) -> BaseSnapshotter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.root}{' closed' if self._db is None else ''}>"


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not name or len(name) > 255 or "\0" in name or "\n" in name:
        raise errors.InvalidArgument(f"snapshot key {name!r}", "is empty, too long or has NUL/newline",
                                     fix="use a short printable name")


class _Busy(errors.AlreadyExists):
    """The key is taken by a pending row: an operation in flight, or one a crashed process left."""
