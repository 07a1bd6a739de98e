"""The SQLite plumbing labkit's stores share: a connection set up the same way, and one transaction helper.

>>> import tempfile, threading
>>> db = connect(tempfile.mktemp(suffix=".db"), "CREATE TABLE t (x INTEGER);")
>>> with transaction(db, threading.RLock()):
...     _ = db.execute("INSERT INTO t VALUES (1)")
>>> db.execute("SELECT x FROM t").fetchall()
[(1,)]
"""
from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager


def connect(path: str, schema: str) -> sqlite3.Connection:
    """Open ``path`` in autocommit mode (transactions are explicit), usable from several threads, with
    foreign keys on and a WAL journal (readers do not block the writer), and apply ``schema``."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    db.execute("PRAGMA foreign_keys=ON")
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(schema)
    return db


@contextmanager
def transaction(db: sqlite3.Connection, lock: threading.RLock) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` (the write lock, across processes) … ``COMMIT``, or ``ROLLBACK`` on any error."""
    with lock:
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        else:
            db.execute("COMMIT")
